"""What ``python -m jaxforget.replay`` reports: the summary of its result files and the report built on it.

:func:`summarize` turns the per-fine-tuning results into, per strategy: held-out forgetting, the effect
against no replay and against random replay (mean paired difference, its 95% t interval over (task,
seed) pairs and over tasks, the relative change and its interval, paired tests, and the number of
pairs a paired t-test needs to detect the observed difference with 80% power), and the held-out
forgetting and the replayed examples per upstream domain. :func:`report_markdown` renders it;
:func:`write_report` writes ``summary.json``, ``report.md`` and the TensorBoard scalars.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxforget.analysis import paired_sample_size, paired_test
from jaxforget.store import atomic_write_json
from jaxforget.tracking import open_tracker

SIGNS = "negative = less forgetting than the reference"
"""The sign of every change in forgetting that replay reports (report.md, summary.json, TensorBoard, console)."""

REFERENCES = ("none", "random")
"""The strategies every other strategy is compared with, when they were run."""

POWER, ALPHA, CONFIDENCE = 0.8, 0.05, 0.95
"""The power and two-sided level of the pairs-needed column, and the level of the confidence intervals."""

POWER_NOTE = (f"Pairs needed: the (task, seed) pairs a two-sided paired t-test at α = {ALPHA:g} needs to detect the "
              f"observed mean difference with {POWER:.0%} power, given the observed SD of the paired differences "
              "(exact noncentral t). A study with fewer pairs than needed cannot decide that difference: its "
              "'no significant difference' is not evidence of no difference; ∞: the observed difference is 0.")


def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


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


def summarize(results: list[dict[str, Any]], labels: Sequence[str], task_names: list[str], seeds: list[int], *,
              domains: Sequence[str] | None = None, heldout: np.ndarray | None = None) -> dict[str, Any]:
    """Per strategy label: held-out forgetting (mean and std over task x seed), its change relative to no
    replay and to random replay, forgetting on the candidate pool and on the replayed examples, extra
    forward passes; with ``domains`` and ``heldout`` (see :func:`domain_rows`) also ``per_domain`` and
    ``replayed_domains``.

    ``vs_<ref>`` (for ref in :data:`REFERENCES`), over the (task, seed) pairs both have: ``diff`` = mean of
    F - F_ref; ``relative_change`` = diff / mean F_ref; ``ci`` the 95% t interval of diff over the pairs
    and ``ci_over_tasks`` over the tasks (seeds averaged); ``relative_ci`` = ``ci`` / mean F_ref (the
    reference mean taken as known: its own uncertainty is not in the interval); ``over_tasks`` and
    ``over_pairs`` the paired tests (:func:`jaxforget.analysis.paired_test`); ``pairs_needed`` the
    (task, seed) pairs for 80% power at the observed difference and SD (:func:`paired_sample_size`;
    None when unknown (fewer than 2 pairs) or when no number of pairs suffices (a difference of 0)).
    Signs (:data:`SIGNS`): negative = less forgetting than the reference."""
    T, S = len(task_names), len(seeds)

    def grid(field: str) -> dict[str, np.ndarray]:  # label -> [T, S], NaN where failed or missing
        out = {label: np.full((T, S), np.nan) for label in labels}
        for r in results:
            if r["status"] == "ok" and r["strategy"] in out:
                out[r["strategy"]][task_names.index(r["task"]), seeds.index(r["seed"])] = r[field]
        return out

    held, cand, repl = grid("heldout_forgetting"), grid("candidate_forgetting"), grid("replayed_forgetting")
    extra = grid("extra_forward")
    per_domain = replayed_domains = None
    if domains is not None and heldout is not None:
        _, per_domain, replayed_domains = domain_rows(results, domains, heldout)
    summary: dict[str, Any] = {}
    for label in labels:
        h = held[label]
        entry = dict(heldout_forgetting=_mean(h), heldout_std=float(np.nanstd(h)) if np.isfinite(h).any() else None,
                     candidate_forgetting=_mean(cand[label]), replayed_forgetting=_mean(repl[label]),
                     extra_forward=_mean(extra[label]), n=int(np.isfinite(h).sum()),
                     per_task={n: _mean(v) for n, v in zip(task_names, h)})
        for ref in REFERENCES:
            if ref in held and ref != label:
                entry[f"vs_{ref}"] = _versus(h, held[ref])
        if per_domain is not None:
            entry["per_domain"] = per_domain.get(label, {})
            entry["replayed_domains"] = replayed_domains.get(label, {})
        summary[label] = entry
    return summary


def _versus(h: np.ndarray, base: np.ndarray) -> dict[str, Any]:
    """The comparison of a strategy's [T, S] held-out forgetting with a reference's (see summarize)."""
    both = np.isfinite(h) & np.isfinite(base)
    ref_mean = float(np.mean(base[both])) if both.any() else np.nan
    with np.errstate(all="ignore"):
        task_h, task_b = np.nanmean(np.where(both, h, np.nan), 1), np.nanmean(np.where(both, base, np.nan), 1)
    pairs, tasks = paired_test(h[both], base[both], confidence=CONFIDENCE), paired_test(task_h, task_b,
                                                                                       confidence=CONFIDENCE)
    diff = pairs.mean_diff
    relative = np.isfinite(diff) and ref_mean > 0
    ci = [_finite(pairs.ci_low), _finite(pairs.ci_high)]
    needed = paired_sample_size(diff, pairs.sd_diff, alpha=ALPHA, power=POWER) if pairs.n >= 2 else None
    return dict(
        diff=_finite(diff), relative_change=diff / ref_mean if relative else None,
        ci=ci if ci[0] is not None else None,
        ci_over_tasks=[_finite(tasks.ci_low), _finite(tasks.ci_high)] if np.isfinite(tasks.ci_low) else None,
        relative_ci=[ci[0] / ref_mean, ci[1] / ref_mean] if relative and ci[0] is not None else None,
        pairs_needed=needed if needed is not None and math.isfinite(needed) else None,
        over_tasks=tasks.to_json(), over_pairs=pairs.to_json())


def report_markdown(summary: dict[str, Any], *, header: str, heldout_per_domain: dict[str, int] | None = None,
                    pool_per_domain: dict[str, int] | None = None) -> str:
    """The report: the strategy table, the effects table (intervals and pairs needed), the per-task
    table and, when the summary has them, the per-domain tables (``heldout_per_domain`` /
    ``pool_per_domain``: example counts shown next to the domains)."""
    def f(x, fmt="{:+.4f}"):
        return "—" if x is None else fmt.format(x)

    def interval(ci, fmt="{:+.4f}"):
        return "—" if ci is None else f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"

    def test(entry, ref):
        v = entry.get(f"vs_{ref}")
        if v is None:
            return "—", "—"
        change = f(v["relative_change"], "{:+.1%}")
        t, p = v["over_tasks"], v["over_pairs"]
        return change, (f"{f(t['p_t'], '{:.3g}')} / {f(t['p_perm'], '{:.3g}')} · "
                        f"{f(p['p_t'], '{:.3g}')} / {f(p['p_perm'], '{:.3g}')}")

    lines = [header, "",
             "| strategy | held-out forgetting | replayed-pool forgetting | forgetting of replayed examples | "
             "change vs none | p vs none | change vs random | p vs random | extra forward passes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, e in summary.items():
        rn, pn = test(e, "none")
        rr, pr = test(e, "random")
        held = "—" if e["heldout_forgetting"] is None else f"{e['heldout_forgetting']:.4f} ± {e['heldout_std']:.4f}"
        lines.append(f"| {label} | {held} | {f(e['candidate_forgetting'], '{:.4f}')} | "
                     f"{f(e['replayed_forgetting'], '{:.4f}')} | {rn} | {pn} | {rr} | {pr} | "
                     f"{f(e['extra_forward'], '{:.0f}')} |")
    lines += ["", "Forgetting: mean NLL increase (log-perplexity) over the upstream examples that are never "
              f"replayed, mean ± std over task x seed. Change: (F - F_ref) / F_ref; {SIGNS}. p: paired t-test / "
              "sign-flip permutation test, across tasks (seeds averaged) · across (task, seed) pairs. Extra forward "
              "passes: upstream examples measured to choose the replay (oracle: the whole pool after a full "
              "fine-tuning).", ""]

    lines += ["| strategy | vs | mean difference | 95% CI, pairs | 95% CI, tasks | change | 95% CI of change | "
              "pairs | pairs needed (80% power) |", "|---|---|---|---|---|---|---|---|---|"]
    for label, e in summary.items():
        for ref in REFERENCES:
            v = e.get(f"vs_{ref}")
            if v is None:
                continue
            needed = v["pairs_needed"]
            never = v["diff"] == 0 and v["over_pairs"]["n"] >= 2
            needed = f"{needed:,}" if needed is not None else ("∞" if never else "—")
            lines.append(f"| {label} | {ref} | {f(v['diff'])} | {interval(v['ci'])} | {interval(v['ci_over_tasks'])} | "
                         f"{f(v['relative_change'], '{:+.1%}')} | {interval(v['relative_ci'], '{:+.1%}')} | "
                         f"{v['over_pairs']['n']} | {needed} |")
    lines += ["", "Mean difference: F - F_ref over the (task, seed) pairs both have; 95% CI: t interval over those "
              "pairs, and over tasks with seeds averaged. Change and its CI: the difference and its CI (over "
              "pairs) divided by the reference's mean forgetting (taken as known). " + POWER_NOTE, ""]

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
                 pool_per_domain: dict[str, int] | None = None) -> str:
    """``out/summary.json``, ``out/report.md`` and TensorBoard scalars under ``out/tb``; returns the report."""
    report = report_markdown(summary, header=header, heldout_per_domain=heldout_per_domain,
                             pool_per_domain=pool_per_domain)
    atomic_write_json(out / "summary.json", dict(
        summary=summary, tasks=task_names, seeds=seeds,
        signs=f"diff = F - F_ref, relative_change = (F - F_ref) / F_ref; {SIGNS}",
        intervals=f"ci: {CONFIDENCE:.0%} t interval of diff over (task, seed) pairs; ci_over_tasks: over tasks "
                  "(seeds averaged); relative_ci: ci / mean F_ref",
        power=POWER_NOTE, heldout_per_domain=heldout_per_domain, pool_per_domain=pool_per_domain, config=config))
    (out / "report.md").write_text(report)
    with open_tracker("tensorboard", out / "tb") as tracker:
        for label, e in summary.items():
            for i, t in enumerate(task_names):
                if e["per_task"][t] is not None:
                    tracker.scalar(f"heldout_forgetting/{label}", e["per_task"][t], i)
            if e["heldout_forgetting"] is not None:
                tracker.scalar(f"mean_heldout_forgetting/{label}", e["heldout_forgetting"], 0)
            for ref in REFERENCES:  # (F - F_ref) / F_ref: negative = less forgetting, as in report.md
                change = (e.get(f"vs_{ref}") or {}).get("relative_change")
                if change is not None:
                    tracker.scalar(f"change_vs_{ref}/{label}", change, 0)
        tracker.text("report", report)
    return report
