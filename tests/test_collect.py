"""End-to-end tests of ``python -m jaxforget.collect`` on a tiny world and a one-layer base model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxforget.collect import CollectConfig, DataConfig, EvalConfig, TrainConfig, cli, collect
from jaxforget.data.world import WorldConfig
from jaxforget.pretrain import BaseModelConfig, PretrainTrainConfig
from jaxforget.store import RunDir

TASKS = ("country_qa", "arith_reversed", "shift_cipher")

# The fine-tuning of `tiny`. Checkpointing, --eval.eval-every, --train.max-epochs and the data do not
# enter the compiled train step, so tests that vary only those share its compilation (conftest's
# session-wide XLA cache); the learning rate and the step count do, and are varied only where a
# test needs it.
TRAIN = TrainConfig(max_steps=12, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=5)
TRAIN_NO_CKPT = dataclasses.replace(TRAIN, checkpoint_every=0)


def tiny(out: Path, **changes) -> CollectConfig:
    config = CollectConfig(
        out=out,
        world=WorldConfig(n_upstream=1500, task_scale=0.25),
        base=BaseModelConfig(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=384),
        pretrain=PretrainTrainConfig(epochs=0.5, batch_size=32, warmup_steps=5),
        data=DataConfig(n_upstream=50, task_names=TASKS),
        train=TRAIN,
        eval=EvalConfig(batch_size=16),
        quiet=True,
    )
    return dataclasses.replace(config, **changes)


def flags(out: Path) -> list[str]:
    """The same configuration as ``tiny(out)`` on the command line."""
    return ["--out", str(out), "--world.n-upstream", "1500", "--world.task-scale", "0.25",
            "--base.n-layers", "1", "--base.d-model", "32", "--base.n-heads", "2", "--base.d-ff", "64",
            "--base.vocab-size", "384", "--pretrain.epochs", "0.5", "--pretrain.batch-size", "32",
            "--pretrain.warmup-steps", "5", "--data.n-upstream", "50", "--data.task-names", *TASKS,
            "--train.max-steps", "12", "--train.batch-size", "8", "--train.lr", "0.001", "--train.warmup-steps", "2",
            "--train.checkpoint-every", "5", "--eval.batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def reference(tiny_run):
    """One uninterrupted run of ``tiny(out, save_models=True)`` (conftest's session-wide `tiny_run`)."""
    return tiny_run


def _torch_nll(model_dir: Path, upstream_tok) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    out = []
    with torch.no_grad():
        for ex in upstream_tok:
            ids = torch.tensor(np.asarray(ex.ids)[None], dtype=torch.long)
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            tok = logp.gather(-1, ids[0, 1:, None])[:, 0].numpy()
            mask = np.asarray(ex.loss_mask)[1:]
            out.append(-tok[mask].mean())
    return np.asarray(out)


def test_z_equals_nll_recomputed_by_transformers_from_the_saved_weights(reference):
    from jaxforget.collect import build_setup

    run = RunDir(reference)
    data = np.load(run.forgetting_path)
    meta = run.read_meta()
    assert data["Z"].shape == (3, 50) and list(data["task_names"]) == list(TASKS)
    assert meta["status"] == "complete"
    setup = build_setup(tiny(reference), echo=lambda *_: None)
    assert [ex.id for ex in setup.upstream] == meta["example_ids"]
    before = _torch_nll(Path(meta["model_dir"]), setup.upstream_tok)
    np.testing.assert_allclose(data["nll_before"], before, atol=1e-4)
    for i, name in enumerate(TASKS):
        after = _torch_nll(reference / "models" / name, setup.upstream_tok)
        np.testing.assert_allclose(data["nll_after"][i], after, atol=1e-4)
        np.testing.assert_allclose(data["Z"][i], after - before, atol=2e-4)
    assert np.abs(data["Z"]).max() > 1e-3  # fine-tuning changed something


def test_the_train_step_compiles_once_per_shape_across_tasks(reference):
    from jaxforget.collect import build_setup
    from jaxforget.data.batching import Batcher

    meta = RunDir(reference).read_meta()
    setup = build_setup(tiny(reference), echo=lambda *_: None)
    from jaxforget.collect.config import resolve_lengths

    resolved = resolve_lengths(tiny(reference))  # the built-in buckets (unset flags)
    shapes = set()
    for name in TASKS:
        shapes |= set(Batcher(setup.task_train[name], batch_size=8, buckets=resolved.train.buckets).shapes)
    assert meta["compilations"]["train_step"] == len(shapes) < 3 * len(shapes)
    assert meta["compilations"]["eval_step"] <= len(resolved.eval.buckets) == 4


def test_sidecar_files_describe_tasks_and_examples(reference):
    tasks = [json.loads(line) for line in (reference / "tasks.jsonl").read_text().splitlines()]
    assert [t["name"] for t in tasks] == list(TASKS)
    assert all(t["status"] == "ok" and t["steps"] >= 1 and t["n_train_tokens"] > 0 for t in tasks)
    assert all(t["train_loss_after"] < t["train_loss_before"] for t in tasks)
    upstream = [json.loads(line) for line in (reference / "upstream.jsonl").read_text().splitlines()]
    assert len(upstream) == 50 and {"id", "source", "n_tokens", "nll_before"} <= set(upstream[0])
    assert list((reference / "tb").glob("events.out.tfevents.*"))
    assert not list((reference / "checkpoints").glob("task_*"))  # removed once each row is written


@pytest.mark.slow  # ~30 s; the checkpoint resume stays in the default run (test_stacked)
def test_sigkill_then_same_command_resumes_to_the_same_z(reference, cache, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, JAXFORGET_FAULT="kill@checkpoint:1:10", JAXFORGET_CACHE=str(cache))
    cmd = [sys.executable, "-m", "jaxforget.collect", *flags(out)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == -9, first.stderr[-2000:]
    run = RunDir(out)
    assert run.finished() == [0] and (run.checkpoints_dir / "task_00001").exists()
    row0_mtime = run.row_path(0).stat().st_mtime_ns
    env.pop("JAXFORGET_FAULT")
    cmd.remove("--quiet")  # not part of the run's configuration; lets the resume be logged
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from the checkpoint at step 10" in second.stderr
    assert run.row_path(0).stat().st_mtime_ns == row0_mtime  # the finished row was not recomputed
    np.testing.assert_allclose(np.load(run.forgetting_path)["Z"], np.load(RunDir(reference).forgetting_path)["Z"],
                               atol=1e-6)


def test_two_shards_then_merge_equal_one_job(reference, tmp_path, capsys):
    out = tmp_path / "sharded"
    assert collect(tiny(out, shard="0/2"), echo=lambda *_: None) == 0
    assert RunDir(out).finished() == [0, 2] and not RunDir(out).forgetting_path.exists()
    assert collect(tiny(out, shard="1/2"), echo=lambda *_: None) == 0
    os.remove(RunDir(out).forgetting_path)
    assert cli(["--merge", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(RunDir(out).forgetting_path)["Z"],
                               np.load(RunDir(reference).forgetting_path)["Z"], atol=1e-6)


def test_a_corrupted_row_is_reported_by_merge(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    RunDir(out).row_path(1).write_bytes(b"PK\x03\x04 truncated")
    assert cli(["--merge", str(out)]) == 2
    assert "task_00001.npz: corrupted or unreadable" in capsys.readouterr().err


def test_a_diverging_task_is_recorded_as_failed_and_the_exit_code_is_1(cache, tmp_path):
    out = tmp_path / "nan"
    config = tiny(out, data=DataConfig(n_upstream=20, task_names=TASKS[:2]),
                  train=TrainConfig(max_steps=6, batch_size=8, lr=1e30, warmup_steps=0, checkpoint_every=0))
    assert collect(config, echo=lambda *_: None) == 1
    data = np.load(RunDir(out).forgetting_path)
    assert data["failed"].tolist() == [True, True] and np.isnan(data["Z"]).all()
    row = RunDir(out).read_row(0)
    assert "non-finite" in str(row["reason"])
    assert RunDir(out).read_meta()["failed_tasks"] == list(TASKS[:2])


def nan_start(monkeypatch, bad: int) -> None:
    """Task `bad` starts from NaN parameters (so its first loss is NaN); the others as usual."""
    import jax

    from jaxforget.collect import Engine

    real = Engine.initial_params

    def poisoned(engine, index, train_seed):
        params = real(engine, index, train_seed)
        return jax.tree.map(lambda x: x * np.nan, params) if index == bad else params

    monkeypatch.setattr(Engine, "initial_params", poisoned)


def test_one_failed_task_does_not_stop_the_others(cache, tmp_path, monkeypatch):
    nan_start(monkeypatch, bad=1)
    out = tmp_path / "flaky"
    config = tiny(out, train=TRAIN_NO_CKPT)
    assert collect(config, echo=lambda *_: None) == 1
    data = np.load(RunDir(out).forgetting_path)
    assert data["failed"].tolist() == [False, True, False]
    assert np.isfinite(data["Z"][[0, 2]]).all()
    # losses are read every 10 steps (and at the end): the NaN of step 1 is seen at step 10
    assert "non-finite training loss (nan) at or before step 10" in str(RunDir(out).read_row(1)["reason"])


def test_eval_every_writes_the_m_by_t_by_n_tensor(reference, tmp_path):
    out = tmp_path / "steps"
    config = tiny(out, train=TRAIN_NO_CKPT, eval=EvalConfig(batch_size=16, eval_every=5))
    assert collect(config, echo=lambda *_: None) == 0
    data = np.load(RunDir(out).forgetting_path)
    assert data["Z_steps"].shape == (3, 3, 50)  # 3 tasks x (steps 5, 10 and the final 12) x 50 examples
    assert data["steps"].tolist() == [5, 10, 12]
    np.testing.assert_array_equal(data["Z_steps"][:, -1], data["Z"])
    # the intermediate measurements are real ones: forgetting grows from step 5 to the end
    assert not np.allclose(data["Z_steps"][:, 0], data["Z"], atol=1e-4)
    # and measuring them changed nothing about the training: the final Z is the run's without eval_every
    np.testing.assert_allclose(data["Z"], np.load(RunDir(reference).forgetting_path)["Z"], rtol=0, atol=1e-6)


def test_bad_flags_and_paths_give_clear_errors(cache, tmp_path, capsys):
    assert cli(["--out", str(tmp_path / "x"), "--shard", "3/2"]) == 2
    assert "--shard 3/2: need 0 <= i < n" in capsys.readouterr().err
    assert cli(["--out", str(tmp_path / "x"), "--model.path", str(tmp_path / "nope")]) == 2
    assert "--model.path" in capsys.readouterr().err
    assert cli([*flags(tmp_path / "y"), "--data.task-names", "no_such_task"]) == 2
    assert "unknown task(s) ['no_such_task']" in capsys.readouterr().err
    # an existing run with other settings is not silently overwritten
    assert cli([*flags(tmp_path / "y"), "--train.checkpoint-every", "0"]) == 0
    assert cli([*flags(tmp_path / "y"), "--train.max-steps", "4", "--train.checkpoint-every", "0"]) == 2
    assert "train.max_steps: 12 != 4" in capsys.readouterr().err


def test_console_one_line_per_task_and_a_progress_bar_that_ends_at_its_total(cache, tmp_path, capsys):
    import re

    lines: list[str] = []
    out = tmp_path / "console"
    # max_steps above what the epoch cap allows (7, 9 and 9 steps): the bar's total must be the steps really run
    config = tiny(out, quiet=False, train=dataclasses.replace(TRAIN_NO_CKPT, max_epochs=0.5))
    assert collect(config, echo=lines.append) == 0
    steps = [int(RunDir(out).read_row(i)["steps_run"]) for i in range(3)]
    assert max(steps) < config.train.max_steps
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [b for b in bar if b.startswith("collect:")][-1]
    assert "100%" in last and f"{sum(steps)}/{sum(steps)}" in last
    task_lines = [x for x in lines if x.startswith("task ")]
    assert len(task_lines) == 3
    for i, (name, line) in enumerate(zip(TASKS, task_lines)):
        assert re.fullmatch(rf"task {i + 1}/3 {name}: {steps[i]} steps, train loss \d+\.\d{{3}} -> \d+\.\d{{3}}, "
                            r"mean forgetting [+-]\d\.\d{4}", line), line
    # the epoch cap is announced before training (issue 27), and the run ends naming its files and next step
    lo, hi = min(steps), max(steps)
    assert [x for x in lines if "cuts --train.max-steps" in x] == [
        f"--train.max-epochs 0.5 cuts --train.max-steps {config.train.max_steps} to {lo if lo == hi else f'{lo}-{hi}'} "
        f"steps on 3 of 3 tasks ({', '.join(TASKS)}): a task's training set is seen at most 0.5 times; raise "
        "--train.max-epochs to train longer"]
    end = lines[-1].splitlines()
    assert f"wrote       {out / 'forgetting.npz'}" in end and f"open first  {out / 'summary.md'}" in end
    assert end[-1] == f"next        python -m jaxforget.analyze {out}"
    assert "R² (centred)" in (out / "summary.md").read_text()
    meta = RunDir(out).read_meta()
    assert Path(meta["model_dir"]).is_absolute()
    # --save-models may differ on a resume (it writes extra files, it does not change Z)
    assert collect(dataclasses.replace(config, save_models=True), echo=lines.append) == 0


def test_the_closing_summary_is_an_aligned_table_that_ranks_only_enough_tasks(monkeypatch):
    from jaxforget.collect.run import summarize

    # the fits themselves are tested in tests/completion; here the table (fully measured: rank 1 = multiplicative)
    fits = dict(row_mean=0.5, col_mean=0.1, additive=0.55, additive_exact=0.6, multiplicative=0.7, rank_1=0.7,
                rank_2=0.8)
    monkeypatch.setattr("jaxforget.collect.run.fit_table", lambda Z, ranks: dict(fits))

    rng = np.random.default_rng(0)
    alpha = np.linspace(-0.05, 0.2, 10)  # two tasks improve on average (negative mean Z)
    Z = (alpha[:, None] + 0.01 * rng.standard_normal((10, 30))).astype(np.float32)
    names, ids = [f"t{i}" for i in range(10)], [f"ex{j}" for j in range(30)]
    text = summarize(dict(Z=Z, failed=np.zeros(10, bool)), names, ids)
    lines = text.splitlines()
    col = len(lines[0]) - len(lines[0][1:].lstrip())  # where the first line's value ("Z   10 tasks ...") starts
    assert col == len("  multiplicative (α_i β_j, rank 1)") + 2  # the longest label, then two spaces
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines), text  # values in one column
    assert sum("rank 1" in line for line in lines) == 1 and not any("rank_1" in line for line in lines)
    most = next(line for line in lines if line.startswith("most forgetting tasks"))
    least = next(line for line in lines if line.startswith("least forgetting tasks"))
    assert most.split()[3:][::2] == ["t9", "t8", "t7"] and least.split()[3:][::2] == ["t0", "t1", "t2"]
    assert least.split()[4].startswith("-0.0") and most.split()[4].startswith("+0.1")  # signs read right
    # three tasks: no task ranking (it would list the same tasks twice, reversed)
    three = summarize(dict(Z=Z[:3], failed=np.zeros(3, bool)), names[:3], ids)
    assert "forgetting tasks" not in three and "most forgotten examples" in three


def test_a_run_of_an_older_version_resumes_under_the_same_flags(reference, tmp_path):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(reference, out)
    meta = json.loads((out / "meta.json").read_text())
    # what the run directory of the previous version recorded: none of the fields added since
    for section, field in (("data", "nll_tokens"), ("train", "remat"), ("train", "divergence_factor"),
                           ("model", "param_dtype"), ("data", "upstream_preset")):
        meta["config"][section].pop(field, None)
    (out / "meta.json").write_text(json.dumps(meta))
    assert collect(tiny(out), echo=lambda *_: None) == 0
    np.testing.assert_array_equal(np.load(RunDir(out).forgetting_path)["Z"], np.load(RunDir(reference).forgetting_path)["Z"])
    # a recorded field that really differs is still refused, named
    meta["config"]["train"]["lr"] = 0.5
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="train.lr: 0.5 != 0.001"):
        collect(tiny(out), echo=lambda *_: None)
