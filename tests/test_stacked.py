"""Stacked LoRA over tasks (``--tasks-per-step K``): the same Z as one task at a time, one compilation
per shape, per-task failure, resume of a group from its checkpoint, and saved models that
transformers reads to the same NLL."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxforget.collect import CollectConfig, EvalConfig, TrainConfig, cli, collect
from jaxforget.store import RunDir
from tests.test_collect import TASKS, _torch_nll, flags, nan_start, tiny

# 3 tasks, K = 2: groups [0, 1] and [2, dummy]. The epoch cap gives country_qa 7 steps and the
# others 9, so slot 0 of the first group goes idle while slot 1 trains on.
LORA = TrainConfig(mode="lora", lora_rank=4, lora_targets=("q", "v", "up"), max_steps=12, max_epochs=0.5,
                   batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=5)
LORA_FLAGS = ["--train.mode", "lora", "--train.lora-rank", "4", "--train.lora-targets", "q", "v", "up",
              "--train.max-epochs", "0.5", "--eval.eval-every", "3"]


def lora_flags(out: Path, k: int) -> list[str]:
    """The same configuration as ``lora(out, k)`` on the command line."""
    base = flags(out)
    base[base.index("--train.lr") + 1] = "0.01"
    return [*base, *LORA_FLAGS, "--tasks-per-step", str(k)]


def lora(out: Path, k: int, **changes) -> CollectConfig:
    """``tiny(out)`` with LoRA (LORA) and K = k tasks per step."""
    return tiny(out, train=LORA, eval=EvalConfig(batch_size=16, eval_every=3), tasks_per_step=k, **changes)


@pytest.fixture(scope="module")
def sequential(cache, tmp_path_factory):
    """LoRA, one task at a time."""
    out = tmp_path_factory.mktemp("runs") / "seq"
    assert collect(lora(out, 1), echo=lambda *_: None) == 0
    return out


@pytest.fixture(scope="module")
def stacked(cache, tmp_path_factory):
    """LoRA, two tasks per step, models saved; returns (run dir, shapes of every train-step call)."""
    import jaxforget.collect.engine as T  # where build_engine looks the step factory up

    shapes: list[tuple[int, ...]] = []
    real = T.make_stacked_train_step

    def spy(*args, **kwargs):
        step = real(*args, **kwargs)

        def call(state, input_ids, *rest):
            shapes.append(input_ids.shape)
            return step(state, input_ids, *rest)

        call.__dict__ = step.__dict__  # `.jitted`, for the compile count
        return call

    out = tmp_path_factory.mktemp("runs") / "stacked"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "make_stacked_train_step", spy)
        assert collect(lora(out, 2, save_models=True), echo=lambda *_: None) == 0
    return out, shapes


def test_stacked_tasks_give_the_z_of_one_task_at_a_time(sequential, stacked):
    seq, stk = np.load(RunDir(sequential).forgetting_path), np.load(RunDir(stacked[0]).forgetting_path)
    assert stk["Z"].shape == (3, 50) and not stk["failed"].any()
    np.testing.assert_allclose(stk["nll_before"], seq["nll_before"], atol=1e-5)
    np.testing.assert_allclose(stk["Z"], seq["Z"], atol=1e-5)
    np.testing.assert_allclose(stk["Z_steps"], seq["Z_steps"], atol=1e-5)
    assert np.abs(seq["Z"]).mean() > 1e-2  # the adapters learned enough for the comparison to mean something
    rows = [(RunDir(sequential).read_row(i), RunDir(stacked[0]).read_row(i)) for i in range(3)]
    assert [int(s["steps_run"]) for s, _ in rows] == [7, 9, 9]  # slot 0 idled for the last 2 steps of group 0
    for s, k in rows:
        assert int(k["steps_run"]) == int(s["steps_run"]) and int(k["train_tokens"]) == int(s["train_tokens"])
        np.testing.assert_allclose(k["train_losses"], s["train_losses"], atol=1e-5)
        assert k["steps"].tolist() == s["steps"].tolist()


def test_the_stacked_step_compiles_once_per_shape_across_groups(stacked):
    out, shapes = stacked
    meta = RunDir(out).read_meta()
    assert all(s[:2] == (2, 8) for s in shapes)  # (K, B, T): K = 2 in the padded last group too
    assert len(shapes) == 9 + 9  # group [0, 1]: 9 steps, group [2, dummy]: 9
    assert {s[2] for s in shapes[:9]} & {s[2] for s in shapes[9:]}  # the second group reused shapes of the first
    assert meta["compilations"]["train_step"] == len(set(shapes))
    assert meta["compilations"]["eval_step"] <= len(meta["config"]["eval"]["buckets"]) == 4  # the built-in ones


def test_saved_stacked_adapters_reproduce_the_nll_in_transformers(stacked, cache):
    from jaxforget.collect import build_setup

    out = stacked[0]
    data = np.load(RunDir(out).forgetting_path)
    setup = build_setup(lora(out, 2), echo=lambda *_: None)
    for i in (0, 2):  # the first slot of a full group and the only real slot of the padded one
        np.testing.assert_allclose(_torch_nll(out / "models" / TASKS[i], setup.upstream_tok), data["nll_after"][i],
                                   atol=1e-4)


@pytest.mark.slow  # extra collect runs; the default run keeps stacked = sequential and the resume
def test_a_nan_adapter_fails_only_its_own_task_when_vectorised(sequential, tmp_path, monkeypatch):
    # both slots in one vmapped pass (the accelerator default; CPU defaults to one slot per pass):
    # the NaNs of slot 1 must not reach slot 0, and slot 0 must still match the sequential run
    nan_start(monkeypatch, bad=1)
    out = tmp_path / "nan"
    assert collect(lora(out, 2, tasks_per_pass=2), echo=lambda *_: None) == 1
    data = np.load(RunDir(out).forgetting_path)
    assert data["failed"].tolist() == [False, True, False]
    assert np.isnan(data["Z"][1]).all()
    assert "non-finite training loss (nan)" in str(RunDir(out).read_row(1)["reason"])
    np.testing.assert_allclose(data["Z"][[0, 2]], np.load(RunDir(sequential).forgetting_path)["Z"][[0, 2]],
                               atol=1e-5)


@pytest.mark.slow  # extra collect runs; the default run keeps stacked = sequential and the resume
def test_gradient_accumulation_stacked_equals_one_task_at_a_time(cache, tmp_path):
    # (K, A, B, T) inputs; micro-batches of one step may come from different buckets
    accum = dataclasses.replace(LORA, grad_accum=2, max_steps=3, checkpoint_every=0)
    runs = {}
    for k, per_pass in ((1, None), (2, 1), (2, 2)):
        out = tmp_path / f"k{k}_{per_pass}"
        assert collect(tiny(out, train=accum, tasks_per_step=k, tasks_per_pass=per_pass), echo=lambda *_: None) == 0
        runs[k, per_pass] = np.load(RunDir(out).forgetting_path)["Z"]
    assert np.abs(runs[1, None]).mean() > 1e-3
    np.testing.assert_allclose(runs[2, 1], runs[1, None], atol=1e-5)  # one slot per pass, each at its own length
    np.testing.assert_allclose(runs[2, 2], runs[1, None], atol=1e-5)  # both slots vmapped, padded to one length


def test_a_killed_group_resumes_from_its_checkpoint_to_the_same_z(stacked, cache, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, JAXFORGET_FAULT="kill@checkpoint:0:5", JAXFORGET_CACHE=str(cache))
    cmd = [sys.executable, "-m", "jaxforget.collect", *lora_flags(out, 2)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == -9, first.stderr[-2000:]
    assert RunDir(out).finished() == [] and (RunDir(out).checkpoints_dir / "task_00000").exists()
    env.pop("JAXFORGET_FAULT")
    cmd.remove("--quiet")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "task country_qa, arith_reversed: resumed from the checkpoint at step 5" in second.stderr
    np.testing.assert_allclose(np.load(RunDir(out).forgetting_path)["Z"],
                               np.load(RunDir(stacked[0]).forgetting_path)["Z"], atol=1e-6)


def test_tasks_per_step_without_lora_is_a_clear_error(tmp_path, capsys):
    assert cli([*flags(tmp_path / "full"), "--tasks-per-step", "2"]) == 2
    err = capsys.readouterr().err
    assert "--tasks-per-step 2" in err and "--train.mode lora" in err
    assert not (tmp_path / "full").exists()  # refused before any work
    assert cli([*flags(tmp_path / "zero"), "--train.mode", "lora", "--tasks-per-step", "0"]) == 2
    assert "--tasks-per-step must be >= 1" in capsys.readouterr().err


@pytest.mark.slow  # extra collect runs; the default run keeps stacked = sequential and the resume
def test_stacked_tasks_on_a_two_device_mesh_give_the_same_z(stacked, cache, tmp_path):
    # forced host devices need a fresh process; FSDP-sharded base, both slots vmapped, batches split
    out = tmp_path / "mesh"
    env = dict(os.environ, JAXFORGET_CACHE=str(cache), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, "-m", "jaxforget.collect", *lora_flags(out, 2), "--mesh", "1", "2", "1",
           "--tasks-per-pass", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(RunDir(out).forgetting_path)["Z"],
                               np.load(RunDir(stacked[0]).forgetting_path)["Z"], atol=1e-5)
