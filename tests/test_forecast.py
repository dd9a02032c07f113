"""``python -m jaxforget.forecast`` on the tiny world: a run of two tasks forecasts the third."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxforget.collect import DataConfig, collect
from jaxforget.forecast import ForecastConfig, cli, main
from jaxforget.store import RunDir
from test_collect import TASKS, tiny


@pytest.fixture(scope="module")
def two_tasks(cache, tmp_path_factory):
    """The tiny run without its last task (TASKS[2] is held out)."""
    out = tmp_path_factory.mktemp("runs") / "two"
    assert collect(tiny(out, data=DataConfig(n_upstream=50, task_names=TASKS[:2])), echo=lambda *_: None) == 0
    return out


def test_forecast_measures_k_scores_against_the_row_and_appends_it_as_collect_would(two_tasks, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_tasks, run)
    lines: list[str] = []
    summary = main(ForecastConfig(run=run, task=TASKS[2], k=10, seeds=(0, 1), measure_all=True, append=True,
                                  top_n=5), echo=lines.append)
    out = run / "forecast" / TASKS[2] / "measured"  # --measure-all's own directory
    end = lines[-1].splitlines()  # the files, top.md first to open, the next command
    assert end[0] == f"wrote       {out / 'top.md'}" and f"open first  {out / 'top.md'}" in end
    assert end[-1] == f"next        python -m jaxforget.analyze {run}   (the run, now with {TASKS[2]})"
    assert (out / "forecast.png").stat().st_size > 0
    f = np.load(out / "forecast.npz")
    ref = np.load(RunDir(tiny_run).forgetting_path)
    # the measured row is the row collect trains for this task at this position: bit for bit on one machine
    np.testing.assert_allclose(f["z"], ref["Z"][2], rtol=0, atol=1e-6)
    for s in (0, 1):
        rev = f[f"revealed/seed{s}"]
        assert rev.size == 10 and np.unique(rev).size == 10
        for label in ("mf", "knn_baseline", "additive", "revealed_mean", "column_mean", "zero"):
            pred = f[f"pred/{label}/seed{s}"]
            assert pred.shape == (50,) and np.isfinite(pred).all()
            np.testing.assert_allclose(pred[rev], f["z"][rev], atol=1e-6)  # measured entries are kept
        hidden = np.setdiff1d(np.arange(50), rev)
        # the revealed-mean baseline is the mean of the k measured entries, by hand
        np.testing.assert_allclose(f[f"pred/revealed_mean/seed{s}"][hidden], f["z"][rev].mean(), atol=1e-6)
    # scores recomputed from the saved rows
    z, rmse = f["z"], []
    for s in (0, 1):
        hidden = np.setdiff1d(np.arange(50), f[f"revealed/seed{s}"])
        rmse.append(np.sqrt(np.mean((f[f"pred/mf/seed{s}"][hidden] - z[hidden]) ** 2)))
    assert summary["scores"]["mf"]["rmse"]["mean"] == pytest.approx(np.mean(rmse), abs=1e-6)
    assert summary["forward_passes"] == dict(per_seed=10, all_seeds=len(set(f["revealed/seed0"]) | set(f["revealed/seed1"])),
                                             measure_all=50)
    top = [json.loads(x) for x in (out / "top.jsonl").read_text().splitlines()]
    assert len(top) == 5 and [t["predicted"] for t in top] == sorted((t["predicted"] for t in top), reverse=True)
    replay = [json.loads(x) for x in (out / "replay.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in replay}) == len(replay) == summary["replay_set"]["n"] > 0
    # drawn as replay draws an arm for row M = 2: ratio x the examples seen over every step, a budget in
    # tokens, the paper's softmax with the common noise of (seed 0, row 2)
    from jaxforget.collect import setup_from_run
    from jaxforget.replay import choose, streams, token_budget

    rs = summary["replay_set"]
    _, setup, _ = setup_from_run(run, lambda *_: None)
    targets = np.array([ex.n_targets for ex in setup.upstream_tok])
    n = round(rs["examples_seen"] * rs["ratio"])
    cc = RunDir(run).read_meta()["config"]["train"]
    assert summary["steps"] <= rs["examples_seen"] <= summary["steps"] * cc["batch_size"] * cc["grad_accum"]
    assert rs["token_budget"] == token_budget(n, targets)
    chosen, keep, d = choose("softmax", f["pred/mf/seed0"], targets, n, budget=rs["token_budget"],
                             gumbel=streams(0, 2, 50)["gumbel"], strata=np.zeros(50, np.int64), temperature=0.1)
    assert [r["id"] for r in replay] == [setup.upstream[j].id for j in chosen]
    assert sum(r["target_tokens"] for r in replay) == rs["tokens"] == rs["token_budget"]
    assert rs["temperature"] == 0.1 and rs["ess"] == pytest.approx(d.ess) and rs["stream"] == "crn-v1:0,2"
    # --append, then collect --merge: the run now holds the three tasks, as if collected with all of them
    from jaxforget.collect import merge

    merge(run, echo=lambda *_: None)
    got, meta, ref_meta = np.load(RunDir(run).forgetting_path), RunDir(run).read_meta(), RunDir(tiny_run).read_meta()
    assert got["task_names"].tolist() == list(TASKS) and meta["task_names"] == list(TASKS)
    np.testing.assert_allclose(got["Z"], ref["Z"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["example_ids"], ref["example_ids"])
    drop = lambda c: {**c, "out": None}  # noqa: E731
    assert drop(meta["config"]) == drop(ref_meta["config"])
    tasks = [json.loads(x) for x in (run / "tasks.jsonl").read_text().splitlines()]
    ref_tasks = [json.loads(x) for x in (RunDir(tiny_run).root / "tasks.jsonl").read_text().splitlines()]
    strip = lambda t: {k: v for k, v in t.items() if k != "seconds"}  # noqa: E731
    assert [strip(t) for t in tasks] == [strip(t) for t in ref_tasks]


def test_forecast_refuses_a_task_of_the_run_and_bad_flags(two_tasks, capsys):
    with pytest.raises(SystemExit) as e:
        cli([str(two_tasks), "--task", TASKS[0]])
    assert e.value.code == 2 and f"--task {TASKS[0]!r} is already a task of the run (row 0)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli([str(two_tasks), "--task", TASKS[2], "--append"])
    assert "--append adds the measured row to the run: add --measure-all" in capsys.readouterr().err
    # a run that measured per-step forgetting cannot grow by a row without it (its Z_steps would be lost)
    import shutil

    steps_run = two_tasks.parent / "with_steps"
    if not steps_run.exists():
        shutil.copytree(two_tasks, steps_run)
        meta = json.loads((steps_run / "meta.json").read_text())
        meta["config"]["eval"]["eval_every"] = 5
        (steps_run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit):
        cli([str(steps_run), "--task", TASKS[2], "--measure-all", "--append"])
    assert "--append: the run measures per-step or exact-match forgetting" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli([str(two_tasks), "--task", "no_such_task"])
    assert "'no_such_task': not a file, and not a task of the run's source" in capsys.readouterr().err


def test_online_forecast_without_measuring_the_row(two_tasks, tmp_path, capsys):
    config = ForecastConfig(run=two_tasks, task=TASKS[2], k=8, online=True, online_fraction=0.5)
    summary = main(config, echo=lambda *_: None)
    out = two_tasks / "forecast" / TASKS[2] / "online"  # its own directory: no other variant replaces it
    assert summary["flags"]["k"] == 8 and (out / "forecast.png").exists()
    assert summary["scores"] is None and summary["forward_passes"]["measure_all"] == 0
    assert summary["measured_at_step"] == -(-summary["steps"] // 2)
    f = np.load(out / "forecast.npz")
    assert "z" not in f.files and f["revealed/seed0"].size == 8
    assert "Not scored" in (out / "report.md").read_text()
    # other flags in the same directory are refused before any work, naming them; --force replaces
    with pytest.raises(SystemExit) as e:
        cli([str(two_tasks), "--task", TASKS[2], "--online", "--online-fraction", "0.5", "--k", "9"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: {out / 'summary.json'}: holds the output of other settings (--k: 8 != 9" in err
    assert "add --force to replace it" in err
