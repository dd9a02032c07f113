"""What ``python -m jaxforget.replay`` reports: the summary of its result files and the report built on it.

:func:`summarize` turns the per-fine-tuning results into, per strategy: held-out forgetting and the
other per-fine-tuning figures, and the contrasts against no replay and random replay. The seeds of one
task are nearly the same experiment, so every conclusion is drawn over clusters -- tasks (seeds
averaged) or task families -- with one pre-specified test (the two-sided paired t-test over clusters),
Holm-adjusted across all the contrasts, an equivalence test (TOST) against a relative margin, and the
prospective minimum detectable effect (:mod:`jaxforget.inference`). The old (task, seed) pair-level
figures stay as a secondary table, used for no conclusion. Also: the held-out forgetting and the
replayed examples per upstream domain. :func:`report_markdown` renders it; :func:`write_report` writes
``summary.json``, ``report.md`` and the TensorBoard scalars.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxforget.analysis import paired_test
from jaxforget.inference import (bootstrap_interval, cluster_means, holm, minimum_detectable_effect, paired_t,
                                 ratio_interval, tost_relative)
from jaxforget.store import atomic_write_json
from jaxforget.tracking import open_tracker

FIGURE = "heldout_forgetting.png"
"""The report's figure, beside report.md."""

SIGNS = "negative = less forgetting than the reference"
"""The sign of every change in forgetting that replay reports (report.md, summary.json, TensorBoard, console)."""

REFERENCES = ("none", "random")
"""The strategies every other strategy is compared with, when they were run."""

ALPHA, CONFIDENCE, POWER, MARGIN = 0.05, 0.95, 0.8, 0.03
"""Defaults: the level of every test (two-sided difference, TOST, after Holm), the level of the
intervals, the power of the minimum detectable effect, and the relative equivalence margin (±3%)."""

BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 10_000, 0
"""Default cluster bootstrap: resamples and the numpy seed."""

RATIO_SCALE = "log"
"""The delta-method interval of the relative change is built on the log ratio (:func:`ratio_interval`):
its simulated coverage was at least the linear one's in every setting tried (see its docstring)."""

OPTIONAL = ("ess", "temperature", "replayed_tokens", "replay_token_share")

FLAT_DRAW = 0.9
"""An online arm whose predicted draw has an ESS of at least this share of the eligible pool draws nearly
uniformly: random replay by construction (the probe saw too little forgetting to rank the pool)."""

"""Per-fine-tuning result keys that newer replay runs add; the strategy table shows their means, "—" when absent."""

SECONDARY = "Secondary: pairs are not independent (seeds of one task); not used for any conclusion."

FIELDS = {
    "unit": "the inference unit: 'task' (seeds averaged within a task) or 'family' (task means averaged within "
            "a family)",
    "clusters": "the clusters that both the strategy and the reference have (at least one (task, seed) pair)",
    "n": "the number of those clusters",
    "mean, ref_mean": "mean over the clusters of the strategy's / the reference's cluster-mean held-out forgetting",
    "diff": "mean over the clusters of F - F_ref (cluster means); negative = less forgetting than the reference",
    "sd_diff": "sample SD (ddof 1) of the cluster differences",
    "ci": "95% t interval of diff over the clusters (n - 1 df)",
    "bootstrap_ci": "95% percentile interval of diff from resampling clusters with replacement (see bootstrap)",
    "relative_change": "mean(F) / mean(F_ref) - 1 over the clusters (= diff / ref_mean)",
    "relative_ci": "95% delta-method interval of relative_change: log(mean F / mean F_ref) -+ t_{n-1} se, se from "
                   "the sample covariance of the paired cluster means, mapped back by exp(.) - 1",
    "t, df, p": "the primary test: two-sided paired t-test of diff = 0 over the clusters",
    "p_holm": "p adjusted by Holm over every distinct difference hypothesis of the report (a pair of strategies "
              "compared both ways, none vs random and random vs none, is one hypothesis)",
    "p_tost, p_tost_low, p_tost_upp": "equivalence within the relative margin m: p_tost_upp tests H0 mean(F - "
                                      "(1 + m) F_ref) >= 0, p_tost_low H0 mean(F - (1 - m) F_ref) <= 0, one-sided "
                                      "paired t-tests over the clusters; p_tost = the larger",
    "p_tost_holm": "p_tost adjusted by Holm over every contrast (strategy x reference), a family of its own",
    "verdict": "at alpha after Holm: 'less forgetting' / 'more forgetting' when the difference test rejects, else "
               "'equivalent within ±m' when the TOST rejects, else 'undecided'",
    "mde, mde_relative": "minimum detectable effect: the true |diff| a two-sided paired t-test at alpha over n "
                         "clusters detects with 80% power given sd_diff (noncentral t); prospective, a property of "
                         "the design, not of the observed difference; mde_relative = mde / ref_mean",
    "over_clusters": "paired_test over the clusters (its p_t is p; p_perm the sign-flip permutation p, secondary)",
    "over_pairs": "paired_test over the (task, seed) pairs as if independent: secondary, not used for any "
                  "conclusion (pairs of one task are nearly the same experiment)",
    "margin, alpha, bootstrap, holm_family": "the settings behind these figures",
}
"""What each field of a contrast (``vs_<ref>``) means; written to summary.json."""


def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _interval(low: Any, high: Any) -> list[float] | None:
    low, high = _finite(low), _finite(high)
    return None if low is None or high is None else [low, high]


def domain_counts(domains: Sequence[str], columns: Sequence[int]) -> dict[str, int]:
    """{domain: how many of ``columns`` belong to it}, over every domain of ``domains`` ([N], sorted)."""
    counts = Counter(domains[j] for j in columns)
    return {d: counts.get(d, 0) for d in sorted(set(domains))}


def domain_rows(results: list[dict[str, Any]], domains: Sequence[str], heldout: np.ndarray
                ) -> tuple[list[str], dict[str, dict[str, float | None]], dict[str, dict[str, float | None]]]:
    """Per upstream domain and strategy: the held-out forgetting (mean over the domain's held-out examples
    of the result's ``z`` row, then over task x seed) and the share of the replayed examples that come
    from the domain (mean over the fine-tunings that replayed any). ``domains``: [N] each upstream
    example's domain; ``heldout``: the held-out column indices. Results without a ``z`` row are skipped.
    Returns (the sorted domains, {label: {domain: forgetting}}, {label: {domain: share}})."""
    domains = np.asarray(domains, dtype=object)
    names = sorted(set(domains.tolist()))
    held_of = {d: np.asarray([j for j in heldout if domains[j] == d], np.int64) for d in names}
    forgetting: dict[str, dict[str, list[float]]] = {}
    shares: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r["status"] != "ok" or "z" not in r:
            continue
        z = np.asarray(r["z"], np.float64)
        f = forgetting.setdefault(r["strategy"], {d: [] for d in names})
        for d in names:
            if held_of[d].size:
                f[d].append(float(np.mean(z[held_of[d]])))
        replayed = np.asarray(r.get("replayed", ()), np.int64)
        if replayed.size:
            s = shares.setdefault(r["strategy"], {d: [] for d in names})
            kinds = domains[replayed]
            for d in names:
                s[d].append(float(np.mean(kinds == d)))

    def means(table: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float | None]]:
        return {label: {d: (_mean(v) if v else None) for d, v in per.items()} for label, per in table.items()}

    return names, means(forgetting), means(shares)


def cluster_groups(task_names: Sequence[str], clusters: Mapping[str, str] | None, cluster: str
                   ) -> tuple[list[str], np.ndarray]:
    """The inference clusters: (their names [C], each task's cluster index [T]). ``cluster="task"``: one
    cluster per task; ``"family"``: ``clusters[task]`` names each task's family (sorted names)."""
    if cluster == "task":
        return list(task_names), np.arange(len(task_names))
    if cluster != "family":
        raise ValueError(f"cluster must be 'task' or 'family'; got {cluster!r}")
    if clusters is None:
        raise ValueError("cluster='family' needs clusters: a mapping from each task to its family")
    missing = [t for t in task_names if t not in clusters]
    if missing:
        raise ValueError(f"clusters gives no family for task(s) {missing}")
    names = sorted({clusters[t] for t in task_names})
    return names, np.array([names.index(clusters[t]) for t in task_names], np.int64)


def summarize(results: list[dict[str, Any]], labels: Sequence[str], task_names: list[str], seeds: list[int], *,
              domains: Sequence[str] | None = None, heldout: np.ndarray | None = None,
              clusters: Mapping[str, str] | None = None, cluster: Literal["task", "family"] = "task",
              margin: float = MARGIN, alpha: float = ALPHA, bootstrap_seed: int = BOOTSTRAP_SEED,
              bootstrap_resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Per strategy label: held-out forgetting (mean and std over task x seed), forgetting on the
    candidate pool and on the replayed examples, extra forward passes, the means of the optional keys
    (:data:`OPTIONAL`; None when no result has them), ``per_task`` (seeds averaged), and ``vs_<ref>``
    for each ref in :data:`REFERENCES` that was run (see :func:`contrast` and :data:`FIELDS`); with
    ``domains`` and ``heldout`` (see :func:`domain_rows`) also ``per_domain`` and ``replayed_domains``.

    The contrasts are drawn over clusters: tasks (``cluster="task"``), or task families
    (``cluster="family"``, ``clusters``: task name -> family name; per-task means averaged within each
    family). ``p_holm`` adjusts the difference tests of all contrasts together, ``p_tost_holm`` the
    equivalence tests (relative ``margin``); the verdict is read from them at ``alpha``. The cluster
    bootstrap draws ``bootstrap_resamples`` with numpy seed ``bootstrap_seed``. Signs (:data:`SIGNS`):
    diff = F - F_ref, negative = less forgetting than the reference."""
    T, S = len(task_names), len(seeds)
    cluster_names, groups = cluster_groups(task_names, clusters, cluster)

    def grid(field: str) -> dict[str, np.ndarray]:  # label -> [T, S], NaN where failed or missing
        out = {label: np.full((T, S), np.nan) for label in labels}
        for r in results:
            if r["status"] == "ok" and r["strategy"] in out:
                v = r.get(field)
                out[r["strategy"]][task_names.index(r["task"]), seeds.index(r["seed"])] = np.nan if v is None else v
        return out

    held, cand, repl = grid("heldout_forgetting"), grid("candidate_forgetting"), grid("replayed_forgetting")
    extra = grid("extra_forward")
    optional = {key: grid(key) for key in OPTIONAL}
    probe, probe_final = grid("probe_forgetting"), grid("probe_final_forgetting")  # online arms only
    per_domain = replayed_domains = None
    if domains is not None and heldout is not None:
        _, per_domain, replayed_domains = domain_rows(results, domains, heldout)
    settings = dict(unit=cluster, margin=margin, alpha=alpha,
                    bootstrap=dict(seed=bootstrap_seed, resamples=bootstrap_resamples))
    summary: dict[str, Any] = {}
    for label in labels:
        h = held[label]
        entry = dict(heldout_forgetting=_mean(h), heldout_std=float(np.nanstd(h)) if np.isfinite(h).any() else None,
                     candidate_forgetting=_mean(cand[label]), replayed_forgetting=_mean(repl[label]),
                     extra_forward=_mean(extra[label]), n=int(np.isfinite(h).sum()),
                     **{key: _mean(optional[key][label]) for key in OPTIONAL},
                     per_task={n: _mean(v) for n, v in zip(task_names, h)})
        for ref in REFERENCES:
            if ref in held and ref != label:
                v = contrast(h, held[ref], groups, cluster_names, margin=margin, alpha=alpha,
                             bootstrap_seed=bootstrap_seed, bootstrap_resamples=bootstrap_resamples)
                entry[f"vs_{ref}"] = dict(v, **settings)
        seen, final, ess = _mean(probe[label]), _mean(probe_final[label]), entry["ess"]
        if seen is not None:  # online: what the probe saw against what the same examples ended at
            entry["online_probe"] = dict(probe_forgetting=seen, final_forgetting=final,
                                         share=seen / final if final else None, predicted_ess=ess,
                                         random_by_construction=ess is not None and ess >= FLAT_DRAW)
        if per_domain is not None:
            entry["per_domain"] = per_domain.get(label, {})
            entry["replayed_domains"] = replayed_domains.get(label, {})
        summary[label] = entry
    adjust(summary, alpha=alpha, margin=margin)
    return summary


def contrast(h: np.ndarray, base: np.ndarray, groups: np.ndarray, cluster_names: Sequence[str], *,
             margin: float = MARGIN, alpha: float = ALPHA, bootstrap_seed: int = BOOTSTRAP_SEED,
             bootstrap_resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """A strategy's [T, S] held-out forgetting ``h`` against a reference's ``base`` (NaN = failed or not
    run), before the Holm adjustment (:func:`adjust`). Only the (task, seed) cells both have count;
    ``groups [T]`` maps the tasks to the clusters named ``cluster_names``. Fields: :data:`FIELDS`."""
    both = np.isfinite(h) & np.isfinite(base)
    x_all, y_all = cluster_means(h, both, groups), cluster_means(base, both, groups)
    keep = np.isfinite(x_all) & np.isfinite(y_all)
    x, y = x_all[keep], y_all[keep]
    n = int(keep.sum())
    if n == 0:  # no (task, seed) pair that both have: every figure unknown
        x = y = np.full(1, np.nan)
    t = paired_t(x, y, confidence=CONFIDENCE)  # n < 2: mean only, the rest NaN (and below likewise)
    r, r_low, r_high = ratio_interval(x, y, confidence=CONFIDENCE, scale=RATIO_SCALE)
    tost = tost_relative(x, y, margin)
    ref_mean = float(y.mean())
    mde = minimum_detectable_effect(n, float(t["sd"]), alpha=alpha, power=POWER)
    relative = ref_mean > 0  # False for NaN: no relative figures without a positive reference
    return dict(
        clusters=[c for c, k in zip(cluster_names, keep) if k], n=n,
        mean=_finite(x.mean()), ref_mean=_finite(ref_mean),
        diff=_finite(t["mean"]), sd_diff=_finite(t["sd"]), ci=_interval(t["low"], t["high"]),
        bootstrap_ci=_interval(*bootstrap_interval(x - y, resamples=bootstrap_resamples, seed=bootstrap_seed,
                                                   confidence=CONFIDENCE)),
        relative_change=_finite(r) if relative else None,
        relative_ci=_interval(r_low, r_high) if relative else None,
        t=_finite(t["t"]), df=_finite(t["df"]), p=_finite(t["p"]),
        p_tost=_finite(tost["p"]), p_tost_low=_finite(tost["p_low"]), p_tost_upp=_finite(tost["p_upp"]),
        mde=_finite(mde), mde_relative=_finite(mde / ref_mean) if relative else None,
        over_clusters=paired_test(x, y, confidence=CONFIDENCE).to_json(),
        over_pairs=paired_test(h[both], base[both], confidence=CONFIDENCE).to_json())


def _contrasts(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(strategy, reference, contrast) for every contrast of the summary, in the report's order."""
    return [(label, ref, e[f"vs_{ref}"]) for label, e in summary.items() for ref in REFERENCES if f"vs_{ref}" in e]


def adjust(summary: dict[str, Any], *, alpha: float = ALPHA, margin: float = MARGIN) -> None:
    """In place: ``p_holm``, ``p_tost_holm``, ``holm_family`` and ``verdict`` of every contrast.

    The difference family holds each distinct hypothesis once: "A vs B" and "B vs A" test one mean
    difference (same p), so counting both would only inflate the adjustment. The TOST family holds every
    contrast: the margin is relative to the reference, so the two directions are different hypotheses."""
    rows = _contrasts(summary)
    keys = list(dict.fromkeys(frozenset((label, ref)) for label, ref, _ in rows))
    first = {}
    for label, ref, v in rows:
        first.setdefault(frozenset((label, ref)), v["p"])
    adjusted = dict(zip(keys, holm([first[k] for k in keys])))
    tost = holm([v["p_tost"] for _, _, v in rows])
    family = dict(difference=int(sum(first[k] is not None for k in keys)),
                  tost=int(sum(v["p_tost"] is not None for _, _, v in rows)))
    for (label, ref, v), p_tost in zip(rows, tost):
        v["p_holm"], v["p_tost_holm"] = _finite(adjusted[frozenset((label, ref))]), _finite(p_tost)
        v["holm_family"] = family
        v["verdict"] = verdict(v["diff"], v["p_holm"], v["p_tost_holm"], alpha=alpha, margin=margin)


def verdict(diff: float | None, p_holm: float | None, p_tost_holm: float | None, *, alpha: float = ALPHA,
            margin: float = MARGIN) -> str:
    """The word for a contrast: the difference test first ("less forgetting" when diff < 0, "more
    forgetting" when > 0), then the equivalence test, each on its Holm-adjusted p at ``alpha``."""
    if p_holm is not None and p_holm < alpha and diff:
        return "less forgetting" if diff < 0 else "more forgetting"
    if p_tost_holm is not None and p_tost_holm < alpha:
        return f"equivalent within ±{margin * 100:g}%"
    return "undecided"


def _settings(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The inference settings the contrasts were computed with (None when the summary has no contrast)."""
    for e in summary.values():
        for ref in REFERENCES:
            v = e.get(f"vs_{ref}")
            if v is not None:
                return dict(unit=v["unit"], margin=v["margin"], alpha=v["alpha"], bootstrap=v["bootstrap"],
                            holm_family=v["holm_family"], confidence=CONFIDENCE, power=POWER,
                            relative_interval=f"delta method on the {RATIO_SCALE} ratio, t quantile (n - 1 df)")
    return None


def report_markdown(summary: dict[str, Any], *, header: str, heldout_per_domain: dict[str, int] | None = None,
                    pool_per_domain: dict[str, int] | None = None) -> str:
    """The report: the primary table (cluster-level contrasts, one test, Holm, TOST, verdict, minimum
    detectable effect) and its legend, the strategy table, the secondary (task, seed) pair-level table,
    the per-task table and, when the summary has them, the per-domain tables (``heldout_per_domain`` /
    ``pool_per_domain``: example counts shown next to the domains)."""
    def f(x, fmt="{:+.4f}"):
        return "—" if x is None else fmt.format(x)

    def interval(ci, fmt="{:+.4f}"):
        return "—" if ci is None else f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"

    def with_interval(x, ci, fmt="{:+.4f}"):  # "value [low, high]", the value alone when there is no interval
        return f(x, fmt) + ("" if x is None or ci is None else " " + interval(ci, fmt))

    p = "{:.3g}"
    lines = [header, ""]
    settings = _settings(summary)
    contrasts = _contrasts(summary)
    if settings is not None:
        margin, alpha, family = settings["margin"], settings["alpha"], settings["holm_family"]
        unit = settings["unit"]
        what = ("seeds averaged within a task" if unit == "task"
                else "task means (seeds averaged) averaged within a family")
        lines += ["| strategy | vs | clusters n | mean difference [95% t CI] | bootstrap CI | "
                  "relative change [95% CI] | p (t, over clusters) | Holm p | TOST p (Holm) | verdict | "
                  "MDE (80% power) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, ref, v in contrasts:
            mde = "—" if v["mde"] is None else (f"{v['mde']:.4f}" + (
                "" if v["mde_relative"] is None else f" ({v['mde_relative']:.1%})"))
            lines.append(
                f"| {label} | {ref} | {v['n']} | {with_interval(v['diff'], v['ci'])} | "
                f"{interval(v['bootstrap_ci'])} | "
                f"{with_interval(v['relative_change'], v['relative_ci'], '{:+.1%}')} | {f(v['p'], p)} | "
                f"{f(v['p_holm'], p)} | {f(v['p_tost'], p)} ({f(v['p_tost_holm'], p)}) | {v['verdict']} | {mde} |")
        boot = settings["bootstrap"]
        lines += ["", f"Primary inference. Unit: the {unit} ({what}); "
                  f"n clusters that both strategies have. Mean difference: F - F_ref over the clusters ({SIGNS}), "
                  f"95% t interval (n - 1 df); bootstrap: 95% percentile interval from {boot['resamples']:,} "
                  f"resamples of the clusters (seed {boot['seed']}). Relative change: mean F / mean F_ref - 1, "
                  "95% delta-method interval on the log ratio. One pre-specified test: the two-sided paired t-test "
                  f"over the clusters; Holm p: adjusted over the {family['difference']} distinct difference "
                  f"hypotheses of this report (A vs B and B vs A are one). TOST: equivalence within "
                  f"±{margin * 100:g}% of "
                  f"F_ref (two one-sided paired t-tests over the clusters, p = the larger), Holm-adjusted over its "
                  f"own family of {family['tost']}. Verdict at α = {alpha:g} on the adjusted p's: less / more "
                  f"forgetting when the difference test rejects, else equivalent when the TOST rejects, else "
                  f"undecided. MDE: the true difference a two-sided paired t-test at α = {alpha:g} over n clusters "
                  f"detects with {POWER:.0%} power given the observed SD of the cluster differences (noncentral t), "
                  "absolute and relative to mean F_ref; prospective, a property of the design, not a judgement of "
                  "the observed difference.", ""]

    lines += ["| strategy | held-out forgetting | replayed-pool forgetting | forgetting of replayed examples | "
              "change vs none | change vs random | ESS (share of pool) | τ | replayed tokens | replay token share | "
              "extra forward passes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, e in summary.items():
        held = "—" if e["heldout_forgetting"] is None else f"{e['heldout_forgetting']:.4f} ± {e['heldout_std']:.4f}"
        change = [f((e.get(f"vs_{ref}") or {}).get("relative_change"), "{:+.1%}") for ref in REFERENCES]
        lines.append(f"| {label} | {held} | {f(e['candidate_forgetting'], '{:.4f}')} | "
                     f"{f(e['replayed_forgetting'], '{:.4f}')} | {change[0]} | {change[1]} | "
                     f"{f(e.get('ess'), '{:.1%}')} | {f(e.get('temperature'), '{:.3g}')} | "
                     f"{f(e.get('replayed_tokens'), '{:,.0f}')} | {f(e.get('replay_token_share'), '{:.1%}')} | "
                     f"{f(e['extra_forward'], '{:,.0f}')} |")
    lines += ["", "Forgetting: mean NLL increase (log-perplexity) over the upstream examples that are never "
              f"replayed, mean ± std over task x seed. Change: the relative change of the primary table, "
              f"mean F / mean F_ref - 1 over the clusters; {SIGNS}. ESS: effective sample size of the replay draw "
              "as a share of the pool; τ: the sampling temperature; replayed tokens and their share of the loss "
              "tokens (means over the fine-tunings; — where the results do not carry them). Extra forward "
              "passes: upstream examples measured to choose the replay — the oracle's whole pool and offline's "
              "k both after a full fine-tuning on the task, which they cost on top; online's k during the "
              "fine-tuning itself.", ""]

    online = {label: e["online_probe"] for label, e in summary.items() if e.get("online_probe")}
    if online:
        lines += ["| online strategy | probe forgetting at the switch | the same examples at the end | share seen | "
                  "ESS of the predicted draw | random by construction? |", "|---|---|---|---|---|---|"]
        for label, o in online.items():
            lines.append(f"| {label} | {f(o['probe_forgetting'], '{:+.4f}')} | {f(o['final_forgetting'], '{:+.4f}')} | "
                         f"{f(o['share'], '{:.1%}')} | {f(o['predicted_ess'], '{:.1%}')} | "
                         f"{'yes' if o['random_by_construction'] else 'no'} |")
        lines += ["", "The online probe's signal (means over the fine-tunings): the forgetting of the probe examples "
                  "when they were measured, against the same examples' after the whole fine-tuning. A probe that "
                  "sees little of the final forgetting gives a flat predicted row and a draw close to uniform: "
                  f"with its ESS at {FLAT_DRAW:.0%} of the pool or more the online arm is random replay by "
                  "construction, and its comparison with random says nothing about prediction "
                  "(--online-fraction later, --probe-k larger).", ""]

    if contrasts:
        lines += [SECONDARY, "",
                  "| strategy | vs | (task, seed) pairs | mean difference | 95% t CI over pairs | p (t, pairs) | "
                  "sign-flip p (pairs) | sign-flip p (clusters) |", "|---|---|---|---|---|---|---|---|"]
        for label, ref, v in contrasts:
            q, c = v["over_pairs"], v["over_clusters"]
            ci = None if q["ci_low"] is None else [q["ci_low"], q["ci_high"]]
            lines.append(f"| {label} | {ref} | {q['n']} | {f(q['mean_diff'])} | {interval(ci)} | {f(q['p_t'], p)} | "
                         f"{f(q['p_perm'], p)} | {f(c['p_perm'], p)} |")
        lines += ["", "Over the (task, seed) pairs both have, as if they were independent; sign-flip: the "
                  "permutation test of the mean difference (exact up to 16 pairs or clusters).", ""]

    tasks = list(next(iter(summary.values()))["per_task"])
    lines += ["| task | " + " | ".join(summary) + " |", "|---|" + "---|" * len(summary)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(f(e["per_task"][t], "{:.4f}") for e in summary.values()) + " |")

    if any("per_domain" in e for e in summary.values()):
        names = sorted({d for e in summary.values() for d in e.get("per_domain", {})})
        labels = list(summary)
        lines += ["", "| domain | held-out examples | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for d in names:
            n = "—" if heldout_per_domain is None else str(heldout_per_domain.get(d, 0))
            lines.append(f"| {d} | {n} | " + " | ".join(
                f(summary[lb].get("per_domain", {}).get(d), "{:.4f}") for lb in labels) + " |")
        lines += ["", "Held-out forgetting per upstream domain (the examples' `source`): mean over the domain's "
                  "held-out examples, then over task x seed.", ""]
        replaying = [lb for lb in labels if summary[lb].get("replayed_domains")]
        if replaying:
            lines += ["| domain | pool examples | " + " | ".join(replaying) + " |",
                      "|---|---|" + "---|" * len(replaying)]
            for d in names:
                n = "—" if pool_per_domain is None else str(pool_per_domain.get(d, 0))
                lines.append(f"| {d} | {n} | " + " | ".join(
                    f(summary[lb]["replayed_domains"].get(d), "{:.1%}") for lb in replaying) + " |")
            lines += ["", "Share of the replayed examples from each domain, mean over the fine-tunings.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"




def write_report(out: Path, summary: dict[str, Any], *, header: str, task_names: list[str], seeds: list[int],
                 config: dict[str, Any], heldout_per_domain: dict[str, int] | None = None,
                 pool_per_domain: dict[str, int] | None = None, tb_dir: Path | None = None) -> str:
    """``out/summary.json``, ``out/report.md``, ``out/heldout_forgetting.png`` (:func:`jaxforget.viz.arm_intervals`:
    per strategy the task-level held-out forgetting, its mean and 95% t interval over tasks) and TensorBoard
    scalars under ``tb_dir`` (default ``out/tb``; replay passes ``RUN/tb/replay``); returns the report.

    summary.json: the summary, the tasks and seeds, ``signs``, ``inference`` (unit, margin, alpha,
    confidence, power, bootstrap seed and resamples, Holm family sizes, the relative interval's method;
    null without any contrast), ``fields`` (what each contrast field means, :data:`FIELDS`), the domain
    counts and the run's config. TensorBoard: per task and strategy the held-out forgetting, and per
    contrast the relative change (``change_vs_<ref>``), the Holm-adjusted p of the difference test
    (``p_holm_vs_<ref>``) and of the TOST (``p_tost_holm_vs_<ref>``)."""
    report = report_markdown(summary, header=header, heldout_per_domain=heldout_per_domain,
                             pool_per_domain=pool_per_domain)
    atomic_write_json(out / "summary.json", dict(
        summary=summary, tasks=task_names, seeds=seeds,
        signs=f"diff = F - F_ref, relative_change = mean F / mean F_ref - 1 over the clusters; {SIGNS}",
        inference=_settings(summary), fields=FIELDS, secondary=SECONDARY,
        heldout_per_domain=heldout_per_domain, pool_per_domain=pool_per_domain, config=config))
    (out / "report.md").write_text(report)
    from jaxforget import viz

    fig, _ = viz.arm_intervals({label: [e["per_task"][t] for t in task_names] for label, e in summary.items()},
                               title=f"Held-out forgetting per strategy: {len(task_names)} tasks x {len(seeds)} seeds")
    viz.save_png(fig, out / FIGURE)
    with open_tracker("tensorboard", tb_dir or out / "tb") as tracker:
        for label, e in summary.items():
            for i, t in enumerate(task_names):
                if e["per_task"][t] is not None:
                    tracker.scalar(f"heldout_forgetting/{label}", e["per_task"][t], i)
            if e["heldout_forgetting"] is not None:
                tracker.scalar(f"mean_heldout_forgetting/{label}", e["heldout_forgetting"], 0)
            for ref in REFERENCES:  # mean F / mean F_ref - 1: negative = less forgetting, as in report.md
                v = e.get(f"vs_{ref}") or {}
                for tag, key in (("change", "relative_change"), ("p_holm", "p_holm"), ("p_tost_holm", "p_tost_holm")):
                    if v.get(key) is not None:
                        tracker.scalar(f"{tag}_vs_{ref}/{label}", v[key], 0)
        tracker.text("report", report)
    return report
