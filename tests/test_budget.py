"""``collect --eval.budget F``: the draws (anchors, random shares, held-back slices, active picks), the
completion's honesty on a planted matrix, and budgeted runs of the tiny world: measured entries equal to a
fully measured run's, the same masks whatever the order, shards, resume or --tasks-per-step, active
selection replayed exactly by :func:`jaxforget.collect.budget.simulate`, and the flags' errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from jaxforget.collect import EvalConfig, cli, collect
from jaxforget.collect.budget import Budget, RowCompleter, holdout_scores, leverage_picks, simulate
from jaxforget.store import RunDir
from tests.test_collect import flags, tiny
from tests.test_stacked import lora

# ------------------------------------------------------------------------------------------------
# the draws


def test_each_task_measures_the_anchors_and_its_own_seeded_share():
    b = Budget(n=1000, fraction=0.1, anchors=20)
    anchors = b.anchor_columns()
    assert anchors.shape == (20,) and np.unique(anchors).size == 20
    rows = [b.first_round(i) for i in range(5)]
    assert all(r.sum() == 100 and r[anchors].all() for r in rows)
    np.testing.assert_array_equal(rows[3], b.first_round(3))  # a function of (seed, task): order-free
    assert not np.array_equal(rows[0], rows[1])
    assert not np.array_equal(rows[0], dataclasses.replace(b, seed=1).first_round(0))
    held = b.held_back(2, rows[2])
    assert held.sum() == round(0.2 * 80) and not held[anchors].any() and (held <= rows[2]).all()
    active = dataclasses.replace(b, select="active")
    first = active.first_round(0)
    assert first.sum() == 20 + 40  # the larger half of the 80 random ones
    second = active.second_round(0, first, RowCompleter(active))  # no fit yet: drawn at random
    assert second.sum() == 40 and not (second & first).any()


def test_stratified_draws_take_one_column_per_stratum_of_the_base_nll_with_equal_probabilities():
    from jaxforget.collect.budget import strata_order

    nll = np.random.default_rng(3).gamma(2.0, size=1000)
    nll[7] = np.nan  # sorted last, drawn like any other
    order = np.array(strata_order(nll))
    assert order[-1] == 7 and (np.diff(nll[order[:-1]]) >= 0).all()
    b = Budget(n=1000, fraction=0.1, anchors=20, strata=tuple(order))
    rank = np.empty(1000, int)
    rank[order] = np.arange(1000)
    assert sorted(rank[b.anchor_columns()] // 50) == list(range(20))  # one anchor in each 50 sorted columns
    first = b.first_round(4)
    assert first.sum() == 100 and first[b.anchor_columns()].all()
    counts = np.zeros(1000)
    for seed in range(400):
        counts += dataclasses.replace(b, seed=seed).first_round(0)
    assert abs(counts.mean() / 400 - 0.1) < 1e-9 and counts.std() / 400 < 0.03  # every column about 1 in 10


def test_active_picks_the_columns_of_largest_predictive_variance():
    rng = np.random.default_rng(0)
    beta = rng.normal(size=500)
    measured = np.zeros(500, bool)
    measured[rng.choice(500, 50, replace=False)] = True
    # rank 1: the variance grows with beta_j^2, so the picks are the largest |beta| not yet measured
    picks = leverage_picks(beta[:, None], measured, 30)
    free = np.flatnonzero(~measured)
    np.testing.assert_array_equal(picks, np.sort(free[np.argsort(-np.abs(beta[free]))[:30]]))
    # rank 2: a direction already measured many times is not measured again
    V = np.concatenate([np.tile([1.0, 0.0], (50, 1)), np.tile([0.0, 0.5], (50, 1))])
    seen = np.zeros(100, bool)
    seen[:40] = True
    assert (leverage_picks(V, seen, 10) >= 50).all()


def test_rank_correlation_and_precision_against_scipy_and_by_hand():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=60).round(1), rng.normal(size=60).round(1)  # ties
    everything = np.ones(60, bool)
    assert holdout_scores(a, b, everything)["spearman"] == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    # of the 2 of 40 held-back entries predicted highest (top 100 of 2,000, scaled), one is among the 2 highest
    pred, true = np.zeros(2000), np.zeros(2000)
    pred[:5], true[:5] = [5.0, 4, 3, 2, 1], [5.0, 1, 4, 2, 3]
    held = np.zeros(2000, bool)
    held[:40] = True
    assert holdout_scores(pred, true, held)["precision"] == 0.5
    s = holdout_scores(np.arange(4000.0), np.arange(4000.0), np.arange(4000) % 10 == 0)
    assert (s["n"], s["top"], s["n_top_held"], s["precision"], s["rmse"]) == (400, 100, 10, 1.0, 0.0)


def test_the_sampled_r2_is_fit_tables_on_a_full_matrix_and_close_on_a_tenth():
    from jaxforget.completion import fit_table, planted_matrix, sampled_rank_r2

    Z = np.asarray(planted_matrix(40, 3000, rank=3, noise=0.1, n_blocks=0, seed=2).Z)
    full = fit_table(Z)
    got = sampled_rank_r2(Z, np.ones(Z.shape, bool))
    for k in range(1, 6):
        assert got[f"rank_{k}"] == pytest.approx(full[f"rank_{k}"], abs=1e-5)
    b = Budget(n=3000, fraction=0.1, anchors=150)  # every pair of rows shares >= 150 columns (with 60: off by 0.1-0.4)
    m = np.stack([b.first_round(i) for i in range(40)])
    est = sampled_rank_r2(np.where(m, Z, np.nan), m)
    naive = fit_table(np.where(m, Z, np.nan), m)  # rank-k fits to the sample itself overfit it
    for k in range(1, 6):
        assert abs(est[f"rank_{k}"] - full[f"rank_{k}"]) < 0.03, (k, est, full)
    assert naive["rank_3"] - full["rank_3"] > 0.03
    with pytest.raises(ValueError, match="share no measured column"):
        sampled_rank_r2(Z[:2], np.array([[True, False] * 1500, [False, True] * 1500]))


def test_the_held_back_error_estimates_the_error_on_the_unmeasured_entries():
    """On a planted rank-3 matrix with noise, the pooled RMSE on the held-back entries is within 20% of the
    RMSE of Z_completed against the truth on every unmeasured entry, for random and active selection."""
    from jaxforget.completion import planted_matrix

    Z = np.asarray(planted_matrix(60, 1500, rank=3, noise=0.1, seed=0).Z)
    for select in ("random", "active"):
        b = Budget(n=1500, fraction=0.15, anchors=45, select=select, holdout=0.3)
        sim = simulate(Z, b)
        m = sim["measured"]
        assert (m.sum(1) == b.per_task).all()
        np.testing.assert_array_equal(sim["Z_completed"][m], Z[m].astype(np.float32))
        truth = float(np.sqrt(np.mean((sim["Z_completed"][~m] - Z[~m]) ** 2)))
        held = sim["scores"]["pooled"]["rmse"]
        assert truth < 0.75 * float(np.sqrt(np.mean((Z - Z[m].mean()) ** 2)))  # beats the measured entries' mean
        if select == "random":
            assert held == pytest.approx(truth, rel=0.2), (held, truth)
        else:  # active columns are not a uniform sample: the estimate is looser (docs/collect.md, Budget)
            assert held == pytest.approx(truth, rel=0.3), (held, truth)


# ------------------------------------------------------------------------------------------------
# budgeted runs of the tiny world (3 tasks x 50 examples; half of each row measured)


def budgeted(out, select: str = "random", **changes):
    return tiny(out, eval=EvalConfig(batch_size=16, budget=0.5, select=select), **changes)


@pytest.fixture(scope="module")
def random_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "budget"
    assert collect(budgeted(out), echo=lambda *_: None) == 0
    return out


def test_a_budgeted_run_measures_its_share_and_the_measured_entries_are_the_full_runs(random_run, tiny_run):
    full, got = np.load(RunDir(tiny_run).forgetting_path), np.load(RunDir(random_run).forgetting_path)
    assert "measured" not in full and "Z_completed" not in full  # F = 1: today's file
    m = got["measured"]
    b = Budget.from_eval(budgeted(random_run).eval, 50, got["nll_before"])
    assert (m.sum(1) == b.per_task).all() and m[:, got["anchors"]].all()
    np.testing.assert_array_equal(m, [b.first_round(i) for i in range(3)])
    np.testing.assert_allclose(got["Z"][m], full["Z"][m], atol=1e-6)  # another batch composition, same NLL
    assert np.isnan(got["Z"][~m]).all() and np.isnan(got["nll_after"][~m]).all()
    np.testing.assert_array_equal(got["Z_completed"][m], got["Z"][m])
    assert np.isfinite(got["Z_completed"]).all()
    assert (got["holdout"] <= m).all() and got["holdout"].sum(1).tolist() == [4, 4, 4]
    meta = RunDir(random_run).read_meta()
    assert meta["budget"]["measured_fraction"] == 0.5 and meta["budget"]["method"] == "mf:reg=1"
    assert set(meta["budget"]["holdback"]["per_task"]) == set(meta["task_names"])
    row = RunDir(random_run).read_row(1)
    assert {"measured", "holdout", "z_fold", "fold_rmse", "eval_seconds"} <= set(row)
    summary = (random_run / "summary.md").read_text()
    assert "measured" in summary and "held back" in summary
    assert "| arith_reversed | 4 |" in summary  # the per-task table of the held-back error
    assert list((random_run / "tb" / "budget").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("select", ["active", "forgotten"])
def test_two_round_selection_is_replayed_exactly_by_simulate(cache, tmp_path, tiny_run, select):
    out = tmp_path / select
    assert collect(budgeted(out, select), echo=lambda *_: None) == 0
    got, full = np.load(RunDir(out).forgetting_path), np.load(RunDir(tiny_run).forgetting_path)
    b = Budget.from_eval(budgeted(out, select).eval, 50, got["nll_before"])
    sim = simulate(np.where(got["measured"], got["Z"], full["Z"]), b)
    np.testing.assert_array_equal(got["measured"], sim["measured"])
    np.testing.assert_allclose(got["Z_completed"], sim["Z_completed"], atol=1e-6)
    assert (got["measured"].sum(1) == b.per_task).all()
    criterion = RunDir(out).read_meta()["budget"]["active"]["criterion"]
    assert criterion.startswith("predictive variance" if select == "active" else "highest fold-in")


def test_shards_then_a_plain_resume_give_the_same_budgeted_run(random_run, tmp_path):
    out = tmp_path / "sharded"
    assert collect(budgeted(out, shard="0/2"), echo=lambda *_: None) == 0
    assert RunDir(out).finished() == [0, 2]
    assert collect(budgeted(out), echo=lambda *_: None) == 0  # resumes: task 1 folded into the rows on disk
    one, two = np.load(RunDir(random_run).forgetting_path), np.load(RunDir(out).forgetting_path)
    for key in ("measured", "holdout", "anchors"):
        np.testing.assert_array_equal(two[key], one[key])
    np.testing.assert_allclose(two["Z"], one["Z"], atol=1e-6)
    np.testing.assert_allclose(two["Z_completed"], one["Z_completed"], atol=1e-5)


def test_stacked_lora_tasks_keep_their_own_entries(cache, tmp_path):
    runs = {}
    for k in (1, 2):
        config = lora(tmp_path / f"k{k}", k)
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, budget=0.5))
        assert collect(config, echo=lambda *_: None) == 0
        runs[k] = np.load(RunDir(config.out).forgetting_path)
    np.testing.assert_array_equal(runs[2]["measured"], runs[1]["measured"])
    np.testing.assert_allclose(runs[2]["Z"], runs[1]["Z"], atol=2e-5)
    # --eval.eval-every: every measurement of a task covers (at most) its own entries, NaN elsewhere
    steps, measured = runs[2]["Z_steps"], runs[2]["measured"]
    assert all(np.isnan(steps[i][:, ~measured[i]]).all() and np.isfinite(steps[i][:, measured[i]]).any()
               for i in range(3))


@pytest.mark.parametrize("args, message", [
    (["--eval.budget", "0.5", "--eval.anchors", "25"], "--eval.anchors 25: must be below the 25 examples"),
    (["--eval.select", "active"], "--eval.select only apply with --eval.budget < 1"),
    (["--eval.budget", "0.5", "--eval.completion", "nope"], "--eval.completion nope:"),
    (["--eval.budget", "0.5", "--eval.completion", "logistic_mf"], "predicts probabilities"),
    (["--eval.budget", "0"], "--eval.budget"),
])
def test_budget_flags_are_checked_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert cli([*flags(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_analyze_of_a_budgeted_run_gives_collects_estimated_r2_beside_its_measured_fits(random_run, tmp_path,
                                                                                         capsys):
    import shutil

    from jaxforget.analyze import cli as analyze

    run = tmp_path / "run"
    shutil.copytree(random_run, run, ignore=shutil.ignore_patterns("tb", "locks"))
    analyze([str(run), "--max-rank", "2"])
    printed = capsys.readouterr().out
    estimated = RunDir(run).read_meta()["budget"]["r2_estimated"]
    assert f"rank 1 {estimated['rank_1']:.3f}" in printed and "estimated from the measured entries" in printed
    assert "fitted on 75 of 150 entries (50.0%) measured" in printed
