"""replay, forecast --append and plan on budgeted runs (``collect --eval.budget F``: Z NaN where not measured,
``measured``, ``Z_completed``, ``holdout``, ``anchors``). The budgeted runs are fabricated from the tiny finished
run (:func:`budgeted_copy`), so these tests do not depend on collect's side of the budget."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_collect import TASKS

from jaxforget.store import RunDir, RunError, atomic_write_json, atomic_write_npz

TASK = TASKS[1]


def budgeted_copy(src: Path, dst: Path, *, n_tasks: int | None = None, fraction: float = 0.4, n_anchors: int = 4,
                  holdout: float = 0.2, seed: int = 0) -> Path:
    """A copy of the finished run ``src`` (its first ``n_tasks`` tasks) as ``collect --eval.budget fraction`` would
    leave it: each row measures ``n_anchors`` shared columns plus a seeded random share; the row files hold
    ``nll_after`` NaN where not measured and their ``measured`` / ``holdout`` masks; forgetting.npz holds Z and
    nll_after NaN where not measured, ``measured``, ``holdout`` (a share of the random measured entries),
    ``Z_completed`` (an additive completion, the measured entries kept) and ``anchors``; meta.json a ``budget``.
    (collect's ``config.eval.budget`` fields are left out: this branch's CollectConfig does not know them yet.)"""
    from jaxforget.completion import additive

    skip = shutil.ignore_patterns("models", "checkpoints", "tb", "locks", "replay", "forecast")
    shutil.copytree(src, dst, ignore=skip)
    run = RunDir(dst)
    meta = run.read_meta()
    names = meta["task_names"][:n_tasks]
    M, N = len(names), len(meta["example_ids"])
    for i in range(M, len(meta["task_names"])):
        run.row_path(i).unlink()
    rng = np.random.default_rng(seed)
    anchors = np.sort(rng.choice(N, n_anchors, replace=False)).astype(np.int64)
    measured = rng.random((M, N)) < fraction
    measured[:, anchors] = True
    held = measured & (rng.random((M, N)) < holdout)
    held[:, anchors] = False
    for i in range(M):
        row = run.read_row(i)
        row["nll_after"] = np.where(measured[i], row["nll_after"], np.nan).astype(np.float32)
        atomic_write_npz(run.row_path(i), **row, measured=measured[i], holdout=held[i])
    meta["task_names"] = names
    meta["config"]["data"]["task_names"] = names
    meta["budget"] = dict(fraction=fraction, select="random", anchors=n_anchors, method="additive", seed=seed,
                          holdout=holdout, measured_fraction=float(measured.mean()),
                          measured_entries=int(measured.sum()))
    atomic_write_json(run.meta_path, meta)
    tasks = (run.root / "tasks.jsonl").read_text().splitlines()[:M]
    (run.root / "tasks.jsonl").write_text("\n".join(tasks) + "\n")
    out = run.assemble(names, meta["example_ids"], write=False)
    Z = out["Z"]
    Z_completed = np.where(measured, Z, np.asarray(additive(Z, measured).predict())).astype(np.float32)
    atomic_write_npz(run.forgetting_path, **{**out, "measured": measured, "holdout": held}, Z_completed=Z_completed,
                     anchors=anchors)
    return dst


def check_budget_format(f: dict[str, np.ndarray]) -> None:
    """The budgeted forgetting.npz format: measured where Z is finite (nothing on a failed row), Z_completed equal
    to Z where measured and finite on every ok row, holdout a subset of measured, anchors measured everywhere."""
    ok = ~f["failed"]
    np.testing.assert_array_equal(f["measured"], np.isfinite(f["Z"]) & ok[:, None])
    np.testing.assert_array_equal(f["Z_completed"][f["measured"]], f["Z"][f["measured"]])
    assert np.isfinite(f["Z_completed"][ok]).all()
    assert not (f["holdout"] & ~f["measured"]).any()
    assert f["measured"][ok][:, f["anchors"]].all()


@pytest.fixture(scope="module")
def budgeted(tiny_run, tmp_path_factory) -> Path:
    return budgeted_copy(tiny_run, tmp_path_factory.mktemp("budget") / "run")


@pytest.fixture(scope="module")
def full_Z(tiny_run) -> np.ndarray:
    return np.load(RunDir(tiny_run).forgetting_path)["Z"]


def test_the_fabricated_run_is_a_valid_budgeted_run(budgeted, full_Z):
    f = RunDir(budgeted).read_forgetting()
    check_budget_format(f)
    np.testing.assert_array_equal(f["Z"][f["measured"]], full_Z[f["measured"]])
    assert 0.3 < f["measured"].mean() < 0.7 and not f["measured"].all(axis=1).any()


# ------------------------------------------------------------------------------------------------
# replay


@pytest.fixture(scope="module")
def context(budgeted, tmp_path_factory):
    from jaxforget.replay import ReplayConfig, load_context

    config = ReplayConfig(run=budgeted, tasks=(TASK,), ratio=0.15, k=5, seeds=(0,), quiet=True,
                          out=tmp_path_factory.mktemp("replay") / "out",
                          strategies=("none", "oracle", "offline:additive", "online:additive"))
    return load_context(config, echo=lambda *_: None)


def _pool_measured(ctx, row: int) -> np.ndarray:
    return np.isfinite(ctx.Z[row, ctx.columns.candidates])


def test_offline_reveals_measured_entries_and_fits_only_measured_ones(context, budgeted):
    from jaxforget.completion import evaluate
    from jaxforget.replay import Strategy, offline_scores

    ctx, row = context, context.task_rows[0]
    pool = ctx.columns.candidates
    f = RunDir(budgeted).read_forgetting()
    measured = _pool_measured(ctx, row)
    assert ctx.config.k < measured.sum() < pool.size  # the row is partly measured, with more than k candidates
    scores, revealed = offline_scores(ctx, Strategy.parse("offline:additive"), 0)[row]
    assert revealed.size == 5 and measured[revealed].all()  # revealed: measured entries only
    np.testing.assert_array_equal(scores[revealed], ctx.Z[row, pool[revealed]])
    assert np.isfinite(scores).all()
    # the same protocol fed the completion's matrix with the measurement mask: its completed entries are hidden,
    # so the prediction is the same; fed as if every entry were measured, it is not (the test has power)
    rows = ctx.train_rows + [row]
    Zc, mask = f["Z_completed"][np.ix_(rows, pool)], f["measured"][np.ix_(rows, pool)]
    masked = evaluate(Zc, mask, test_rows=[len(rows) - 1], methods=["additive"], k=5, seeds=[0])
    np.testing.assert_array_equal(np.flatnonzero(masked.reveal[0, 0]), revealed)
    np.testing.assert_allclose(np.where(masked.reveal[0, 0], Zc[-1], masked.predictions["additive"][0, 0]), scores,
                               rtol=0, atol=1e-6)
    train_as_measured = mask.copy()
    train_as_measured[:-1] = True  # the same reveal (it depends on the task's row only), completed training entries
    wrong = evaluate(Zc, train_as_measured, test_rows=[len(rows) - 1], methods=["additive"], k=5, seeds=[0])
    np.testing.assert_array_equal(wrong.reveal, masked.reveal)
    assert np.abs(wrong.predictions["additive"] - masked.predictions["additive"]).max() > 1e-4


def test_offline_k_needs_more_measured_candidates_than_k(context):
    from jaxforget.replay import check_revealable

    ctx, row = context, context.task_rows[0]
    n = int(_pool_measured(ctx, row).sum())
    config = dataclasses.replace(ctx.config, k=n)
    with pytest.raises(ValueError) as e:
        check_revealable(config, ctx.setup.task_names, ctx.Z, ctx.columns, ctx.task_rows, {})
    assert str(e.value) == (f"--k {n}: offline prediction reveals k measured candidate entries of a task's row and "
                            f"needs more than k; measured candidates per task: {{'{TASK}': {n}}} (of "
                            f"{ctx.columns.candidates.size}; the run measured only part of each row); lower --k")
    check_revealable(dataclasses.replace(config, k=n - 1), ctx.setup.task_names, ctx.Z, ctx.columns, ctx.task_rows, {})
    no_offline = dataclasses.replace(config, strategies=("oracle",))
    check_revealable(no_offline, ctx.setup.task_names, ctx.Z, ctx.columns, ctx.task_rows, {})  # nothing to reveal


def test_oracle_measures_the_pool_the_run_left_unmeasured(context, full_Z, budgeted, tmp_path):
    from jaxforget.replay import Strategy, choose, fine_tune, oracle_row, streams, token_budget

    ctx, row = context, context.task_rows[0]
    pool = ctx.columns.candidates
    missing = pool[~_pool_measured(ctx, row)]
    o = oracle_row(ctx, row)
    # the run's values where it measured; the run's own fine-tuning, measured here, elsewhere: the unbudgeted row
    assert o.measured_here == missing.size > 0 and o.gap < 1e-6
    np.testing.assert_array_equal(o.z[np.isfinite(ctx.Z[row])], ctx.Z[row][np.isfinite(ctx.Z[row])])
    np.testing.assert_allclose(o.z[pool], full_Z[row, pool], rtol=0, atol=1e-6)
    completed = RunDir(budgeted).read_forgetting()["Z_completed"][row]
    assert np.abs(o.z[missing] - completed[missing]).min() > 1e-4  # the completion's values are not used
    # a row the run measured whole: the run's row, nothing measured
    whole = dataclasses.replace(ctx, Z=full_Z)
    same = oracle_row(whole, row)
    assert same.measured_here == 0 and math.isnan(same.gap) and np.array_equal(same.z, full_Z[row])
    # the none arm at the run's seed, when it measured the pool, is read instead of fine-tuning again
    shifted = full_Z[row].copy()
    shifted[missing] += 5.0
    atomic_write_npz(tmp_path / f"{TASK}.s0.none.npz", status=np.asarray("ok"), z=shifted)
    reused = oracle_row(ctx, row, tmp_path)
    np.testing.assert_allclose(reused.z[missing], full_Z[row, missing] + 5.0, rtol=0, atol=1e-6)
    assert reused.gap < 1e-6
    # the oracle arm draws by the unbudgeted row: what softmax at τ 0.1 with the common noise draws from it
    res = fine_tune(ctx, row, 0, Strategy("oracle"), oracle=o)
    assert res["status"] == "ok" and res["extra_forward"] == pool.size
    assert int(res["oracle_measured_here"]) == missing.size and float(res["oracle_gap"]) < 1e-6
    targets = ctx.targets[pool]
    n = min(pool.size, round(int(res["task_examples"]) * ctx.config.ratio))
    chosen, _, _ = choose("softmax", full_Z[row, pool], targets, n, budget=token_budget(n, targets),
                          gumbel=streams(0, row, pool.size)["gumbel"], temperature=0.1)
    np.testing.assert_array_equal(np.sort(res["replayed"]), np.sort(pool[chosen]))


def test_online_completes_from_the_measured_entries_of_the_training_rows(context, monkeypatch):
    import jaxforget.replay as R

    ctx, row = context, context.task_rows[0]
    seen, original = [], R.complete_rows

    def spy(Z_train, z_rows, revealed, **kw):
        seen.append((np.array(Z_train), np.array(revealed)))
        return original(Z_train, z_rows, revealed, **kw)

    monkeypatch.setattr(R, "complete_rows", spy)
    res = R.fine_tune(ctx, row, 0, R.Strategy.parse("online:additive"))
    assert res["status"] == "ok" and len(seen) == 1
    Z_train, revealed = seen[0]
    pool = ctx.columns.candidates
    # the training rows as the run measured them: NaN (not observed) where it did not, never a completed value
    np.testing.assert_array_equal(Z_train, ctx.Z[np.ix_(ctx.train_rows, pool)])
    assert np.isnan(Z_train).any() and np.isfinite(Z_train).any(axis=1).all()
    assert revealed[0].sum() == res["probe"].size == 5


def test_replay_end_to_end_on_a_budgeted_run_reuses_the_none_arm_for_the_oracle(context, monkeypatch):
    import jaxforget.replay as R

    def refuse(*_):
        raise AssertionError("the oracle fine-tuned again although the none arm at the run's seed measured the pool")

    monkeypatch.setattr(R, "reproduce", refuse)
    config = dataclasses.replace(context.config, strategies=("none", "oracle"))
    summary = R.main(config, echo=lambda *_: None)
    assert set(summary) == {"none", "oracle"}
    results = config.out / "results"
    with np.load(results / f"{TASK}.s0.oracle.npz") as f:
        assert int(f["oracle_measured_here"]) == (~_pool_measured(context, context.task_rows[0])).sum()
        assert float(f["oracle_gap"]) < 1e-6
    report = (config.out / "report.md").read_text()
    share = np.isfinite(context.Z).mean()
    assert (f"Budgeted run: {share:.1%} of Z's entries measured; offline and online complete from the measured "
            "entries only and reveal only measured ones; the oracle ranks by the task's true row, the pool measured "
            f"here after the run's own fine-tuning of {TASK} (the run's completed entries are never used).") in report
    assert R.budget_note(dataclasses.replace(context, Z=np.nan_to_num(context.Z)), []) == ""


# ------------------------------------------------------------------------------------------------
# forecast --append


def test_forecast_append_keeps_a_budgeted_forgetting_npz_valid(tiny_run, full_Z, tmp_path):
    from jaxforget.completion import Completer
    from jaxforget.forecast import ForecastConfig, main

    run = budgeted_copy(tiny_run, tmp_path / "run", n_tasks=2)
    old = RunDir(run).read_forgetting()
    old_meta = RunDir(run).read_meta()
    summary = main(ForecastConfig(run=run, task=TASKS[2], k=10, methods=("additive",), measure_all=True, append=True,
                                  top_n=5), echo=lambda *_: None)
    f = np.load(run / "forecast" / TASKS[2] / "measured" / "forecast.npz")
    np.testing.assert_allclose(f["z"], full_Z[2], rtol=0, atol=1e-6)  # the row collect trains at this position
    # completed against the measured entries only: the completion's matrix with the mask, never as measured
    rev = f["revealed/seed0"]
    revealed = np.zeros(50, bool)
    revealed[rev] = True
    z_row = np.where(revealed, f["z"], 0.0)
    masked = Completer(old["Z_completed"], old["measured"], method="additive").fold_in(z_row, revealed)
    np.testing.assert_allclose(f["pred/additive/seed0"], np.where(revealed, f["z"], masked), rtol=0, atol=1e-5)
    unmasked = Completer(old["Z_completed"], method="additive").fold_in(z_row, revealed)
    assert np.abs(unmasked - masked)[~revealed].max() > 1e-4
    assert summary["scores"]["additive"]["rmse"]["mean"] > 0
    # the appended forgetting.npz: every key, the old rows as they were, the new row measured whole
    new = RunDir(run).read_forgetting()
    assert set(new) == set(old) and new["Z"].shape == (3, 50) and new["task_names"].tolist() == list(TASKS)
    check_budget_format(new)
    for key in ("Z", "measured", "holdout", "Z_completed"):
        np.testing.assert_array_equal(new[key][:2], old[key])
    np.testing.assert_array_equal(new["Z"][2], f["z"])
    assert new["measured"][2].all() and not new["holdout"][2].any()
    np.testing.assert_array_equal(new["Z_completed"][2], new["Z"][2])
    np.testing.assert_array_equal(new["anchors"], old["anchors"])
    row = RunDir(run).read_row(2)
    assert row["measured"].all() and not row["holdout"].any()  # its row file as collect writes a budgeted row
    meta = RunDir(run).read_meta()
    assert meta["task_names"] == list(TASKS)
    assert meta["budget"]["measured_entries"] == int(old["measured"].sum()) + 50
    assert meta["budget"]["measured_fraction"] == pytest.approx((old["measured"].sum() + 50) / 150, abs=1e-12)
    assert {k: v for k, v in meta["budget"].items() if not k.startswith("measured")} == {
        k: v for k, v in old_meta["budget"].items() if not k.startswith("measured")}


def test_append_refuses_what_it_cannot_extend(tmp_path):
    from jaxforget.forecast import with_budget_keys

    M, N = 2, 6
    Z = np.arange(M * N, dtype=np.float32).reshape(M, N)
    Z[0, 1] = np.nan
    measured = np.isfinite(Z)
    old = dict(Z=Z, measured=measured, holdout=np.zeros((M, N), bool), Z_completed=np.nan_to_num(Z),
               anchors=np.array([0], np.int64), failed=np.zeros(M, bool))
    out = dict(Z=np.concatenate([Z, np.ones((1, N), np.float32)]), failed=np.zeros(M + 1, bool))
    path = tmp_path / "forgetting.npz"
    got = with_budget_keys(old, out, path)
    assert got["measured"][2].all() and got["Z_completed"][2].tolist() == [1.0] * N and not got["holdout"][2].any()
    # a key the assembly already builds for M + 1 rows is kept as built
    built = dict(out, measured=np.zeros((M + 1, N), bool))
    assert not with_budget_keys(old, built, path)["measured"].any()
    with pytest.raises(RunError, match=r"forgetting.npz: holds foo, which forecast --append cannot extend by a row; "
                                       "nothing appended"):
        with_budget_keys(dict(old, foo=np.zeros(M)), out, path)
    wrong = dict(old, measured=np.ones((M, N), bool))
    with pytest.raises(RunError, match="its measured mask is not where the rows' Z is finite; reassemble it with "
                                       f"python -m jaxforget.collect --merge {tmp_path}"):
        with_budget_keys(wrong, out, path)


# ------------------------------------------------------------------------------------------------
# plan


def _olmo_1b_plan(**changes):
    """The paper's OLMo-1B plan of docs/plan.md (its model FLOPs per step as planned there), without compiling."""
    from jaxforget import plan as P

    step = dict(argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=0, xla_flops=0.0)
    plan = P.Plan(n_devices=1, mesh=dict(data=1, fsdp=1, tensor=1), n_params=1_177_000_000, param_bytes=0,
                  base_copy_bytes=0, optimizer_bytes=0, train=P.StepPlan(**step, model_flops=61.14e12),
                  eval=P.StepPlan(**step, model_flops=20.38e12), train_shape=(8, 1024), eval_shape=(8, 1024),
                  steps_per_task=1000, eval_batches=17734, n_upstream=141871, evals_per_task=1, n_tasks=85,
                  peak_tflops=989.0, mfu=0.4)
    return dataclasses.replace(plan, **changes)


def test_plan_budget_arithmetic_against_a_hand_count():
    from jaxforget.plan import fmt_seconds

    full = _olmo_1b_plan()
    rate = 0.4 * 989e12
    train, base = 85 * 1000 * 61.14e12, 17734 * 20.38e12
    full_share = (85 * 17734 * 20.38e12 + base) / (train + 85 * 17734 * 20.38e12 + base)
    assert full.seconds == pytest.approx((train + 85 * 17734 * 20.38e12 + base) / rate, rel=1e-12)
    assert full.seconds / 3600 == pytest.approx(25.5, abs=0.05)  # docs/plan.md's figure (printed as 25 h)
    assert full.eval_share == pytest.approx(full_share, rel=1e-12) and 0.85 < full_share < 0.86  # ~85% evaluation
    assert "budget" not in full.report()  # F = 1: the report as before
    assert "85 tasks x (1000 steps + 1 x 17734 eval batches): 25 h at 40% MFU" in full.report()
    for fraction in (0.05, 0.3, 0.5):
        per_task = round(fraction * 141871)  # examples each task measures, anchors included
        batches = math.ceil(per_task / 8)
        seconds = (train + 85 * batches * 20.38e12 + base) / rate
        plan = _olmo_1b_plan(budget=fraction)
        assert (plan.task_examples, plan.task_eval_batches) == (per_task, batches)
        assert plan.seconds == pytest.approx(seconds, rel=1e-12)
        eval_flops = 85 * batches * 20.38e12 + base
        assert plan.eval_share == pytest.approx(eval_flops / (train + eval_flops), rel=1e-12)
        saved = full.seconds - seconds
        line = next(ln for ln in plan.report().splitlines() if ln.startswith("  budget"))
        assert line == (f"  budget          {fraction:g}: each task measures {per_task:,} of the 141,871 upstream "
                         f"examples ({batches} eval batches), the base model all; evaluation "
                         f"{eval_flops / (train + eval_flops):.0%} of the time ({full_share:.0%} measuring all); saves "
                         f"{fmt_seconds(saved)} ({saved / full.seconds:.0%}) of 25 h")
        assert f"85 tasks x (1000 steps + 1 x {batches} eval batches): {fmt_seconds(seconds)} at" in plan.report()
    # per-step evaluations (--eval.eval-every) measure the budget too; a tiny budget still measures one example
    every = _olmo_1b_plan(budget=0.3, evals_per_task=3)
    assert every.seconds == pytest.approx((train + 85 * 3 * 5321 * 20.38e12 + base) / rate, rel=1e-12)
    assert _olmo_1b_plan(budget=1e-9).task_examples == 1


def test_plan_budget_flag_compiles_checks_its_range_and_names_the_collect_flag(tmp_path, capsys):
    from test_plan import TINY, _parse, tiny_args, write_config

    from jaxforget import plan as P

    path = write_config(tmp_path / "m", TINY)
    p = P.plan(P.PlanCommand(**_parse(tiny_args(path, "--data.n-upstream", "1000", "--eval.budget", "0.25"))))
    assert (p.budget, p.task_examples, p.task_eval_batches, p.eval_batches) == (0.25, 250, 63, 250)
    printed = capsys.readouterr().out
    assert "  budget          0.25: each task measures 250 of the 1,000 upstream examples (63 eval batches)" in printed
    assert printed.splitlines()[-1].endswith("--eval.budget 0.25")
    assert p.seconds < p.unbudgeted.seconds
    for bad, message in (("0", "--eval.budget must be in (0, 1]; got 0.0"),
                         ("1.5", "--eval.budget must be in (0, 1]; got 1.5"),
                         ("nan", "--eval.budget must be a finite number in (0, 1]; got nan")):
        with pytest.raises(SystemExit) as e:
            P.cli(tiny_args(path, "--eval.budget", bad))
        assert e.value.code == 2 and message in capsys.readouterr().err
