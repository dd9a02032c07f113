"""The inference behind replay's report (jaxforget.inference, jaxforget.replay_report): oracles for each
function, and a simulation of replay-like studies that guards the level of the primary test and the
coverage of the relative-change interval where seeds of one task are nearly the same experiment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from jaxforget.analysis import paired_power
from jaxforget.inference import (bootstrap_interval, cluster_means, holm, minimum_detectable_effect, paired_t,
                                 ratio_interval, tost_paired, tost_relative)
from jaxforget.replay_report import CONFIDENCE, RATIO_SCALE, report_markdown, summarize

# ------------------------------------------------------------------------------------------------
# oracles


def test_holm_matches_statsmodels_and_skips_missing():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 13):
        p = rng.uniform(0, 0.2, m) ** 2
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-15)
    tied = [0.01, 0.04, 0.01, 0.03, 0.5]
    np.testing.assert_allclose(holm(tied), multipletests(tied, method="holm")[1], atol=1e-15)
    # None / NaN are not in the family: m counts the others
    with_missing = holm([0.01, None, 0.04, np.nan])
    assert np.isnan(with_missing[[1, 3]]).all()
    np.testing.assert_allclose(with_missing[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert holm([]).shape == (0,)


def test_paired_t_matches_scipy_on_a_batch():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.1, 1, (4, 9)), rng.normal(0, 1, (4, 9))
    for alternative in ("two-sided", "less", "greater"):
        res = paired_t(x, y, alternative=alternative, null=0.05)
        for i in range(4):
            ref = stats.ttest_1samp(x[i] - y[i], 0.05, alternative=alternative)
            assert res["t"][i] == pytest.approx(ref.statistic, rel=1e-12)
            assert res["p"][i] == pytest.approx(ref.pvalue, rel=1e-10)
    res = paired_t(x, y)
    for i in range(4):
        d = x[i] - y[i]
        low, high = stats.t.interval(0.95, 8, loc=d.mean(), scale=stats.sem(d))
        assert (res["low"][i], res["high"][i]) == pytest.approx((low, high), rel=1e-12)
    assert np.isnan(paired_t([1.0], [0.0])["p"])
    assert paired_t([1.0, 1.0], [0.0, 0.0])["p"] == 0 and paired_t([1.0, 1.0], [1.0, 1.0])["p"] == 1


def test_tost_matches_statsmodels_absolute_and_on_transformed_data_relative():
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(2)
    y = rng.lognormal(np.log(0.04), 0.5, (3, 8))
    x = y * (1 + rng.normal(0.0, 0.02, (3, 8)))
    for i in range(3):
        p, lo, up = ttost_paired(x[i], y[i], -0.002, 0.001)
        ours = tost_paired(x[i], y[i], -0.002, 0.001)
        assert (ours["p"], ours["p_low"], ours["p_upp"]) == pytest.approx((p, lo[1], up[1]), rel=1e-10)
    m = 0.03
    rel = tost_relative(x, y, m)  # batched over the 3 studies
    for i in range(3):
        # H0a mean(x - (1 + m) y) >= 0 is ttost_paired's upper test on (x, (1 + m) y) with margin 0; H0b its lower
        upper = ttost_paired(x[i], (1 + m) * y[i], -1.0, 0.0)[2][1]
        lower = ttost_paired(x[i], (1 - m) * y[i], 0.0, 1.0)[1][1]
        assert rel["p_upp"][i] == pytest.approx(upper, rel=1e-10) and rel["p_low"][i] == pytest.approx(lower, rel=1e-10)
        assert rel["p"][i] == max(upper, lower)
    # a clear 10% increase is not equivalent within 3%; a copy with 0.1% noise is
    assert tost_relative(1.1 * y[0], y[0], m)["p"] > 0.5
    assert tost_relative(y[0] * (1 + rng.normal(0, 0.001, 8)), y[0], m)["p"] < 0.01
    with pytest.raises(ValueError, match="relative margin"):
        tost_relative(x, y, 3.0)


def test_minimum_detectable_effect_matches_statsmodels():
    from statsmodels.stats.power import TTestPower

    for n in (3, 5, 10, 40):
        es = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8)
        assert minimum_detectable_effect(n, 0.02) == pytest.approx(es * 0.02, rel=1e-6)
        assert paired_power(n, minimum_detectable_effect(n, 0.02), 0.02) == pytest.approx(0.8, abs=1e-9)
    assert minimum_detectable_effect(10, 0.02) < minimum_detectable_effect(5, 0.02)  # more clusters, finer
    assert np.isnan(minimum_detectable_effect(1, 0.02)) and minimum_detectable_effect(5, 0.0) == 0


def test_bootstrap_interval_is_the_numpy_percentile_of_resampled_cluster_means():
    d = np.array([-0.01, 0.003, -0.004, -0.02, 0.001, -0.006])
    idx = np.random.default_rng(7).integers(0, 6, (5000, 6))
    expect = np.quantile(d[idx].mean(1), [0.025, 0.975])
    assert bootstrap_interval(d, resamples=5000, seed=7) == pytest.approx(tuple(expect), abs=0)
    assert bootstrap_interval(d, seed=1) != bootstrap_interval(d, seed=2)
    assert bootstrap_interval(np.full(4, 0.5)) == (0.5, 0.5) and np.isnan(bootstrap_interval([1.0])).all()


def test_ratio_interval_is_the_delta_method_by_hand():
    x = np.array([0.031, 0.022, 0.05, 0.041, 0.018])
    y = np.array([0.035, 0.03, 0.052, 0.047, 0.02])
    n, q = 5, stats.t.ppf(0.975, 4)
    c = np.cov(x, y)  # ddof 1
    grad = np.array([1 / x.mean(), -1 / y.mean()])  # of log(mean x) - log(mean y)
    se = np.sqrt(grad @ c @ grad / n)
    r, low, high = ratio_interval(x, y, scale="log")
    assert r == pytest.approx(x.mean() / y.mean() - 1)
    assert (low, high) == pytest.approx((np.exp(np.log(x.mean() / y.mean()) + np.array([-q, q]) * se) - 1))
    _, low_lin, high_lin = ratio_interval(x, y, scale="linear")
    assert (low_lin, high_lin) == pytest.approx((r - q * se * x.mean() / y.mean(), r + q * se * x.mean() / y.mean()))
    assert np.isnan(ratio_interval(-x, y)[1])  # the log ratio needs positive means


def test_cluster_means_average_seeds_within_tasks_then_tasks_within_families():
    grid = np.array([[1.0, 3.0], [10.0, np.nan], [5.0, 7.0]])  # [T 3, S 2]
    mask = np.isfinite(grid) & np.array([[True, True], [True, True], [True, False]])
    np.testing.assert_allclose(cluster_means(grid, mask, [0, 1, 2]), [2.0, 10.0, 5.0])
    # family 0 = tasks 0 and 2: the mean of the task means (2 and 5), not of the 3 cells
    np.testing.assert_allclose(cluster_means(grid, mask, [0, 1, 0]), [3.5, 10.0])
    assert np.isnan(cluster_means(grid, np.zeros_like(mask), [0, 1, 0])).all()


# ------------------------------------------------------------------------------------------------
# the summary's primary figures, by hand


def _results(F: dict[str, np.ndarray], tasks, seeds):
    return [dict(task=t, seed=s, strategy=label, status="ok", heldout_forgetting=float(f[i, j]),
                 candidate_forgetting=0.0, replayed_forgetting=np.nan, extra_forward=0)
            for label, f in F.items() for (i, t), (j, s) in itertools.product(enumerate(tasks), enumerate(seeds))]


def test_summary_primary_figures_equal_hand_computations():
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.power import TTestPower
    from statsmodels.stats.weightstats import ttost_paired

    tasks, seeds = ["a", "b", "c", "d", "e", "f"], [0, 1, 2]
    rng = np.random.default_rng(4)
    base = rng.lognormal(np.log(0.04), 0.3, (6, 1)) * (1 + rng.normal(0, 0.02, (6, 3)))
    F = dict(none=base, random=base * 0.6 * (1 + rng.normal(0, 0.05, (6, 1))),
             oracle=base * 0.57 * (1 + rng.normal(0, 0.05, (6, 3))))
    F["twin"] = F["random"] * (1 + rng.normal(0, 0.002, (6, 1)))  # random again, up to 0.2% per task
    results = _results(F, tasks, seeds)
    failed = next(r for r in results if (r["task"], r["seed"], r["strategy"]) == ("b", 2, "oracle"))
    failed["status"] = "failed"  # a failed fine-tuning: (b, 2) leaves task b's oracle contrasts
    F["oracle"][1, 2] = np.nan
    out = summarize(results, list(F), tasks, seeds, bootstrap_seed=3, bootstrap_resamples=2000)
    v = out["oracle"]["vs_random"]
    both = np.isfinite(F["oracle"]) & np.isfinite(F["random"])
    x = np.array([F["oracle"][i][both[i]].mean() for i in range(6)])
    y = np.array([F["random"][i][both[i]].mean() for i in range(6)])  # task b: seeds 0 and 1 only
    d = x - y
    assert v["unit"] == "task" and v["n"] == 6 and v["clusters"] == tasks
    assert v["diff"] == pytest.approx(d.mean()) and v["sd_diff"] == pytest.approx(d.std(ddof=1))
    assert v["ci"] == pytest.approx(list(stats.t.interval(0.95, 5, loc=d.mean(), scale=stats.sem(d))))
    assert v["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue) == v["over_clusters"]["p_t"]
    assert v["relative_change"] == pytest.approx(x.mean() / y.mean() - 1)
    _, low, high = ratio_interval(x, y)  # the log delta method, checked by hand above
    assert v["relative_ci"] == pytest.approx([float(low), float(high)])
    idx = np.random.default_rng(3).integers(0, 6, (2000, 6))
    assert v["bootstrap_ci"] == pytest.approx(list(np.quantile(d[idx].mean(1), [0.025, 0.975])))
    upper = ttost_paired(x, 1.03 * y, -1.0, 0.0)[2][1]
    lower = ttost_paired(x, 0.97 * y, 0.0, 1.0)[1][1]
    assert v["p_tost"] == pytest.approx(max(upper, lower))
    es = TTestPower().solve_power(effect_size=None, nobs=6, alpha=0.05, power=0.8)
    assert v["mde"] == pytest.approx(es * d.std(ddof=1), rel=1e-6)
    assert v["mde_relative"] == pytest.approx(v["mde"] / y.mean(), rel=1e-6)
    # the secondary figures: over the 17 (task, seed) pairs both have, as if independent
    assert v["over_pairs"]["n"] == 17 and v["over_pairs"]["p_t"] == pytest.approx(
        stats.ttest_rel(F["oracle"][both], F["random"][both]).pvalue)
    # Holm: "random vs none" and "none vs random" are one hypothesis, so the difference family has 5 members;
    # the TOST family is every contrast (6 rows), its margin being relative to each row's reference
    rows = {(lb, ref): out[lb][f"vs_{ref}"] for lb in out for ref in ("none", "random") if f"vs_{ref}" in out[lb]}
    assert list(rows) == [("none", "random"), ("random", "none"), ("oracle", "none"), ("oracle", "random"),
                          ("twin", "none"), ("twin", "random")]
    distinct = [k for k in rows if k != ("none", "random")]
    adjusted = multipletests([rows[k]["p"] for k in distinct], method="holm")[1]
    assert [rows[k]["p_holm"] for k in distinct] == pytest.approx(adjusted)
    assert rows["none", "random"]["p_holm"] == rows["random", "none"]["p_holm"]
    tost = multipletests([rows[k]["p_tost"] for k in rows], method="holm")[1]
    assert [rows[k]["p_tost_holm"] for k in rows] == pytest.approx(tost)
    assert v["holm_family"] == dict(difference=5, tost=6)
    # the verdicts, read from the adjusted p's at 0.05
    assert rows["random", "none"]["p_holm"] < 0.05 and rows["random", "none"]["verdict"] == "less forgetting"
    assert rows["none", "random"]["verdict"] == "more forgetting"
    assert rows["twin", "random"]["p_tost_holm"] < 0.05 <= rows["twin", "random"]["p_holm"]
    assert rows["twin", "random"]["verdict"] == "equivalent within ±3%"
    assert v["p_holm"] >= 0.05 and v["p_tost_holm"] >= 0.05 and v["verdict"] == "undecided"
    assert "pairs_needed" not in v
    report = report_markdown(out, header="# h")
    row = next(ln for ln in report.splitlines() if ln.startswith("| oracle | random |"))
    assert row.startswith(f"| oracle | random | 6 | {d.mean():+.4f} [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}] |")
    assert f"| {v['p']:.3g} | {v['p_holm']:.3g} | {v['p_tost']:.3g} ({v['p_tost_holm']:.3g}) | undecided |" in row
    assert "adjusted over the 5 distinct difference hypotheses" in report and "own family of 6" in report


def test_family_clusters_average_task_means_within_families():
    tasks, seeds = ["a1", "a2", "b1", "c1", "c2", "c3"], [0, 1]
    rng = np.random.default_rng(5)
    base = rng.lognormal(np.log(0.04), 0.4, (6, 1)) * (1 + rng.normal(0, 0.02, (6, 2)))
    F = dict(none=base, random=base * (0.8 + 0.1 * rng.normal(size=(6, 2))))
    families = {t: t[0] for t in tasks}
    out = summarize(_results(F, tasks, seeds), ["none", "random"], tasks, seeds, clusters=families, cluster="family")
    v = out["random"]["vs_none"]
    task_x, task_y = F["random"].mean(1), F["none"].mean(1)
    x = np.array([task_x[:2].mean(), task_x[2], task_x[3:].mean()])
    y = np.array([task_y[:2].mean(), task_y[2], task_y[3:].mean()])
    assert v["unit"] == "family" and v["clusters"] == ["a", "b", "c"] and v["n"] == 3
    assert v["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert v["relative_change"] == pytest.approx(x.mean() / y.mean() - 1)
    assert "Unit: the family" in report_markdown(out, header="# h")
    with pytest.raises(ValueError, match=r"no family for task\(s\) \['c3'\]"):
        summarize(_results(F, tasks, seeds), ["none", "random"], tasks, seeds,
                  clusters={t: t[0] for t in tasks[:5]}, cluster="family")
    with pytest.raises(ValueError, match="needs clusters"):
        summarize([], ["none"], tasks, seeds, cluster="family")


# ------------------------------------------------------------------------------------------------
# the simulation that guards the inference


def _studies(R: int, T: int, S: int, effect: float, seed: int, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """R replay-like studies: [R, T, S] held-out forgetting of a strategy and of its reference.

    Each task's reference forgetting mu_t is lognormal around 0.04 (between-task CV ~0.5); the task's own
    relative effect delta_t ~ N(effect, spread^2), independent of mu_t, so the population mean difference is
    E[mu] * effect and the population relative change E[F] / E[F_ref] - 1 is ``effect``; each fine-tuning
    adds 2% multiplicative seed noise, so the seeds of one task nearly repeat each other."""
    rng = np.random.default_rng(seed)
    mu = 0.04 * np.exp(0.5 * rng.standard_normal((R, T, 1)) - 0.5**2 / 2)
    delta = effect + spread * rng.standard_normal((R, T, 1))
    ref = mu * (1 + 0.02 * rng.standard_normal((R, T, S)))
    return mu * (1 + delta) * (1 + 0.02 * rng.standard_normal((R, T, S))), ref


def _primary(f: np.ndarray, ref: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The report's primary figures on [R, T, S] grids, with the functions summarize's contrast uses."""
    T = f.shape[-2]
    mask = np.isfinite(f) & np.isfinite(ref)
    x, y = cluster_means(f, mask, np.arange(T)), cluster_means(ref, mask, np.arange(T))
    _, low, high = ratio_interval(x, y, confidence=CONFIDENCE, scale=RATIO_SCALE)
    return paired_t(x, y, confidence=CONFIDENCE), low, high


def test_simulated_studies_hold_the_level_and_the_coverage_where_pair_level_tests_do_not():
    R, T, S = 4000, 10, 5
    f, ref = _studies(R, T, S, 0.0, seed=11)
    # seeds correlate strongly: the intraclass correlation of the (task, seed) differences is near 1
    d = f - ref
    within = d.var(-1, ddof=1).mean()
    between = d.mean(-1).var(-1, ddof=1).mean() - within / S
    assert between / (between + within) > 0.9
    t, low, high = _primary(f, ref)
    level = np.mean(t["p"] < 0.05)
    assert level <= 0.07  # measured 0.045 (Monte Carlo SE 0.003)
    assert np.mean((low <= 0) & (0 <= high)) >= 0.90  # measured 0.934
    # the old pair-level t-test, over the T x S pairs as if independent, on the same studies
    pairs = paired_t(f.reshape(R, T * S), ref.reshape(R, T * S))
    assert np.mean(pairs["p"] < 0.05) > 0.30  # measured 0.42
    # the summary's own contrast gives the same p and interval on a few of these studies
    tasks, seeds = [f"t{i}" for i in range(T)], list(range(S))
    for i in range(3):
        results = _results(dict(none=ref[i], s=f[i]), tasks, seeds)
        v = summarize(results, ["none", "s"], tasks, seeds, bootstrap_resamples=100)["s"]["vs_none"]
        assert v["p"] == pytest.approx(t["p"][i], rel=1e-9)
        assert v["relative_ci"] == pytest.approx([low[i], high[i]], rel=1e-9)

    # a true -5% relative change: the interval still covers it
    f, ref = _studies(R, T, S, -0.05, seed=12)
    t, low, high = _primary(f, ref)
    assert np.mean((low <= -0.05) & (-0.05 <= high)) >= 0.90  # measured 0.935
    assert np.mean(t["p"] < 0.05) > 0.08  # and the test has some power against it (measured 0.13)

    # the equivalence test, where the tasks' relative effects spread by 1% only: at either edge of the ±3%
    # margin it claims equivalence at most at its level; with no effect it claims it nearly always
    for effect, seed, bound in ((0.03, 13, 0.07), (-0.03, 14, 0.07)):  # measured 0.047, 0.044
        f, ref = _studies(R, T, S, effect, seed, spread=0.01)
        x, y = (cluster_means(g, np.ones(g.shape, bool), np.arange(T)) for g in (f, ref))
        assert np.mean(tost_relative(x, y, 0.03)["p"] < 0.05) <= bound
    f, ref = _studies(R, T, S, 0.0, 15, spread=0.01)
    x, y = (cluster_means(g, np.ones(g.shape, bool), np.arange(T)) for g in (f, ref))
    assert np.mean(tost_relative(x, y, 0.03)["p"] < 0.05) > 0.9  # measured 0.997


def test_write_report_records_the_settings_and_the_contrasts(tmp_path):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jaxforget.replay_report import FIELDS, write_report

    tasks, seeds = ["a", "b", "c", "d", "e"], [0, 1]
    f, ref = _studies(1, 5, 2, -0.3, seed=3)
    out = summarize(_results(dict(none=ref[0], random=f[0]), tasks, seeds), ["none", "random"], tasks, seeds,
                    margin=0.05, bootstrap_seed=9, bootstrap_resamples=500)
    write_report(tmp_path, out, header="# h", task_names=tasks, seeds=seeds, config={})
    saved = json.loads((tmp_path / "summary.json").read_text())
    inference = saved["inference"]
    assert inference["unit"] == "task" and inference["margin"] == 0.05 and inference["alpha"] == 0.05
    assert inference["bootstrap"] == dict(seed=9, resamples=500)
    assert inference["holm_family"] == dict(difference=1, tost=2)
    assert saved["fields"] == FIELDS and "power" not in saved and "intervals" not in saved
    # every field of a contrast is described
    described = {k.strip() for key in FIELDS for k in key.split(",")}
    assert set(saved["summary"]["random"]["vs_none"]) <= described
    v = out["random"]["vs_none"]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}).Reload()
    assert acc.Scalars("change_vs_none/random")[0].value == pytest.approx(v["relative_change"], rel=1e-6)
    assert acc.Scalars("p_holm_vs_none/random")[0].value == pytest.approx(v["p_holm"], rel=1e-6)
    assert acc.Scalars("p_tost_holm_vs_none/random")[0].value == pytest.approx(v["p_tost_holm"], rel=1e-6)
    report = (tmp_path / "report.md").read_text()
    assert "equivalence within ±5% of F_ref" in report and "seed 9" in report and "500 resamples" in report
