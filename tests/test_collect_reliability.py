"""What collect guarantees when things go wrong (issue 18): a damaged checkpoint is one clear error and
never a resume, one process per run directory (shard jobs share it, task by task), a diverging task
fails, a base model that outputs NaN is refused before any task is trained. The subprocess scenarios
(external SIGKILL, two processes at once, shard jobs at once) are marked slow."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_collect import TASKS, TRAIN_NO_CKPT, flags, tiny

from jaxforget.collect import DataConfig, TrainConfig, cli, collect
from jaxforget.collect.loop import diverged
from jaxforget.store import RunDir

# a one-task run that checkpoints at step 5 of 12 (on top of flags(out); its train step is the tiny run's)
ONE_TASK = ["--data.n-upstream", "20", "--data.task-names", TASKS[0]]


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing of collect catches it, nothing after it runs."""


@pytest.fixture(scope="module")
def interrupted(cache, tmp_path_factory):
    """A run directory left by a process killed right after its checkpoint at step 5 of task 0."""
    out = tmp_path_factory.mktemp("interrupted") / "run"

    def fault(where: str) -> None:
        if where == "checkpoint:0:5":
            raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("jaxforget.collect.loop.fault_point", fault)
        with pytest.raises(Killed):
            cli([*flags(out), *ONE_TASK])
    assert (out / "checkpoints" / "task_00000" / "5").is_dir() and not RunDir(out).finished()
    return out


def _flip_a_bit(step_dir: Path) -> None:
    data = max((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))


def _garble_every_file(step_dir: Path) -> None:
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0garbage")


def _edit_record(step_dir: Path, edit) -> None:
    path = step_dir / "extra" / "metadata"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


DAMAGE = {
    "one bit flipped in the array data": (_flip_a_bit, r"(does not match the digest saved with it|is unreadable)"),
    "the step edited in the record": (lambda d: _edit_record(d, lambda r: r.update(step=7)),
                                      "checkpoint directory 5 records step 7; the checkpoint was edited or damaged"),
    "a loss edited in the record": (lambda d: _edit_record(d, lambda r: r["losses"][0].__setitem__(0, 1.0)),
                                    "checkpoint at step 5 does not match the digest saved with it"),
    "no digest (an older version's checkpoint)": (lambda d: _edit_record(d, lambda r: r.pop("digest")),
                                                  "checkpoint at step 5 has no digest, so it cannot be verified"),
    "the manifest deleted": (lambda d: os.remove(d / "state" / "manifest.ocdbt"), "checkpoint at step 5 is unreadable"),
    "every file garbled": (_garble_every_file, "checkpoint at step 5 is unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_one_clear_error_never_a_resume(interrupted, tmp_path, capfd, damage):
    import re

    out = tmp_path / "run"
    shutil.copytree(interrupted, out)  # another path: the run directory is what it is, not its spelling
    ckpt = out / "checkpoints" / "task_00000"
    edit, message = DAMAGE[damage]
    edit(ckpt / "5")
    capfd.readouterr()
    assert cli([*flags(out), *ONE_TASK]) == 2
    err = capfd.readouterr().err
    assert re.search(rf"^error: {ckpt}: .*{message}.*Delete the directory to restart", err, re.M), err
    assert "Traceback" not in err and err.count("\n") == 1, err  # orbax's own tracebacks held back
    assert not RunDir(out).finished()  # nothing was trained from it


def test_a_second_process_on_a_run_directory_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    other = RunDir(out).lock_run()  # what a collect process holds while it works
    try:
        assert cli(flags(out)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}: another collect process is working on this run directory "
                              f"(pid {os.getpid()} on ")
        assert "--shard i/n" in err
        assert cli([*flags(out), "--shard", "0/2"]) == 2
        assert "a collect process without --shard is working on this run directory" in capsys.readouterr().err
        assert not (out / "meta.json").exists()
    finally:
        other.release()


def test_shard_jobs_share_a_run_directory_and_leave_a_task_another_job_is_training(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path / "run")
    shard, task0 = run.lock_run(shard=True), run.lock_task(0)  # another job of --shard 0/2, training task 0
    lines: list[str] = []
    try:
        config = tiny(Path("run"), shard="0/2", data=DataConfig(n_upstream=20, task_names=TASKS), train=TRAIN_NO_CKPT)
        assert collect(config, echo=lines.append) == 0
        assert run.finished() == [2]
        assert f"task 1/3 {TASKS[0]}: done or in progress in another process; left to it" in lines
        # the same directory by its absolute path is the same run (not "another configuration"); task 0 is
        # still another job's, task 2 done: nothing left to do
        lines.clear()
        assert collect(dataclasses.replace(config, out=run.root.resolve()), echo=lines.append) == 0
        assert lines[1].startswith(f"resuming {run.root.resolve()}") and run.finished() == [2]
    finally:
        task0.release()
        shard.release()


def test_the_divergence_rule():
    assert diverged([2.0, 1.0, 0.5], 2.0) is None
    assert diverged([1.0] + [1.5] * 20, 2.0) is None
    assert diverged([1.0, 9.0] + [1.9] * 10, 2.0) is None  # only the last 10 count
    reason = diverged([1.0] + [2.5] * 10, 2.0)
    assert reason == ("diverged: mean training loss of the last 10 steps 2.5 > 2 x the first step's 1 "
                      "(--train.divergence-factor)")
    assert diverged([1.0, 5.0], 2.0).startswith("diverged: mean training loss of the last 2 steps 3 >")
    assert diverged([1.0] + [100.0] * 10, 0) is None  # 0: off


def test_a_task_whose_loss_grows_fails_with_the_reason_and_exit_status_1(cache, tmp_path):
    out = tmp_path / "lr1"
    # lr 1 does not give a NaN here: the loss grows about 5-fold, which only the divergence rule catches
    config = tiny(out, data=DataConfig(n_upstream=20, task_names=TASKS[:2]),
                  train=TrainConfig(max_steps=8, batch_size=8, lr=1.0, warmup_steps=0, checkpoint_every=0))
    assert collect(config, echo=lambda *_: None) == 1
    rows = [RunDir(out).read_row(i) for i in range(2)]
    assert [str(r["status"]) for r in rows] == ["failed", "failed"]
    assert all(str(r["reason"]).startswith("diverged: mean training loss of the last 8 steps") for r in rows)
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert [t["status"] for t in tasks] == ["failed", "failed"]
    assert RunDir(out).read_meta()["failed_tasks"] == list(TASKS[:2])


def test_nan_weights_are_refused_before_any_task_is_trained(cache, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from jaxforget.pretrain import ensure_base_model

    ref = tiny(tmp_path / "unused")
    base = tmp_path / "nan_model"
    shutil.copytree(ensure_base_model(ref.world, ref.base, ref.pretrain, echo=lambda *_: None), base)
    tensors = load_file(base / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * np.nan
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "run"
    assert cli([*flags(out), "--model.path", str(base), "--data.n-upstream", "20"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {base}: the base model's NLL is NaN/inf on all 20 upstream examples: 1 weight arrays hold "
                   "NaN/inf (final_norm_scale). No task was trained.\n")
    assert not RunDir(out).finished() and not RunDir(out).base_path.exists()


def test_a_corpus_smaller_than_n_upstream_is_refused_naming_the_flag(cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli([*flags(out), "--data.n-upstream", "5000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data.n-upstream 5000: cannot sample 5000 upstream examples from a corpus of 1500")
    assert err.count("\n") == 1 and "give --data.n-upstream at most the corpus size" in err
    assert not RunDir(out).finished()


# ------------------------------------------------------------------------------------------------
# Subprocesses (slow): a real SIGKILL from outside, two processes at once, shard jobs at once


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxforget.collect", *flags(out), *extra]


def _env(cache) -> dict[str, str]:
    return dict(os.environ, JAXFORGET_CACHE=str(cache))


@pytest.mark.slow
def test_sigkill_from_outside_during_training_then_resume_gives_the_same_z(tiny_run, cache, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(out), env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "task_00001").is_dir() and time.time() < deadline:  # task 1 in progress
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere in task 1's steps or checkpoint writes
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    again = subprocess.run(_command(out), env=_env(cache), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    np.testing.assert_allclose(np.load(out / "forgetting.npz")["Z"], np.load(tiny_run / "forgetting.npz")["Z"],
                               atol=1e-6)


@pytest.mark.slow
def test_two_processes_on_one_run_directory_one_is_refused_the_other_finishes(tiny_run, cache, tmp_path):
    out = tmp_path / "both"
    procs = [subprocess.Popen(_command(out), env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another collect process is working on this run directory" in refused
    np.testing.assert_allclose(np.load(out / "forgetting.npz")["Z"], np.load(tiny_run / "forgetting.npz")["Z"],
                               atol=1e-6)


@pytest.mark.slow
def test_shard_jobs_at_once_fill_one_run_directory(tiny_run, cache, tmp_path):
    out = tmp_path / "shards"
    procs = [subprocess.Popen(_command(out, "--shard", f"{i}/2"), env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    # whichever job wrote its last row second saw every row and assembled Z
    assert RunDir(out).finished() == [0, 1, 2] and not list((out / "locks").glob("task_*"))
    np.testing.assert_allclose(np.load(out / "forgetting.npz")["Z"], np.load(tiny_run / "forgetting.npz")["Z"],
                               atol=1e-6)
