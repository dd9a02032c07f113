"""One ``collect --distributed`` run over 2 processes (``jax.distributed`` on CPU, gloo collectives, 2
devices each, the model sharded across the processes) gives the Z of a single-process run, and only
process 0 writes the run directory."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxforget.collect import CollectConfig, collect
from jaxforget.store import RunDir, atomic_write_json
from tests.test_collect import TASKS, flags, tiny

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
MESH = (1, 2, 2)  # data, fsdp (across the 2 processes), tensor (the 2 devices of each)  # a hang (e.g. a process stuck in a collective) fails the test instead of blocking the suite


def small(out: Path) -> CollectConfig:
    """``tiny(out)`` with one train and one eval bucket (one compilation each), 6 steps with a checkpoint
    at step 3, and the fine-tuned models saved."""
    base = tiny(out)
    return dataclasses.replace(
        base, train=dataclasses.replace(base.train, max_steps=6, checkpoint_every=3, buckets=(96,)),
        eval=dataclasses.replace(base.eval, buckets=(64,)), save_models=True)


def small_flags(out: Path) -> list[str]:
    """The same configuration as ``small(out)`` on the command line (later flags override ``flags``)."""
    return [*flags(out), "--train.max-steps", "6", "--train.checkpoint-every", "3", "--train.buckets", "96",
            "--eval.buckets", "64", "--save-models"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(args: list[str], cache: Path) -> list[subprocess.CompletedProcess]:
    """`python -m jaxforget.collect ARGS --distributed` as processes 0 and 1 on this host."""
    port = _free_port()
    env = dict(os.environ, JAXFORGET_CACHE=str(cache), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, "-m", "jaxforget.collect", *args, "--distributed",
                               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    deadline = time.monotonic() + TIMEOUT_S
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [p.communicate()[1][-3000:] for p in procs]
        pytest.fail(f"2-process collect did not finish in {TIMEOUT_S}s; stderr tails:\n" + "\n----\n".join(tails))
    return out


def _files(root: Path) -> list[str]:
    """Relative paths under `root`; TensorBoard event files (named by host and pid) by their prefix."""
    return sorted(str(p.relative_to(root)).split(".out.tfevents.")[0] for p in root.rglob("*") if p.is_file())


@pytest.mark.slow  # two processes with gloo, ~20 s
def test_two_process_run_equals_one_process_and_only_process_0_writes(cache, tmp_path):
    import jax
    from safetensors.numpy import load_file

    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip(f"jax {jax.__version__} has no cross-process CPU collectives (gloo) for a multi-process run")
    ref = tmp_path / "one"
    assert collect(small(ref), echo=lambda *_: None) == 0

    # A run directory from an interrupted earlier run: task 0 finished (row and saved model), nothing
    # else, not even the base NLL. Process 0 alone reads it; both processes must skip task 0.
    out = tmp_path / "two"
    (out / "rows").mkdir(parents=True)
    meta = RunDir(ref).read_meta()
    atomic_write_json(out / "meta.json", {**meta, "config": {**meta["config"], "out": str(out), "mesh": list(MESH)}})
    shutil.copy(RunDir(ref).row_path(0), RunDir(out).row_path(0))
    shutil.copytree(ref / "models" / TASKS[0], out / "models" / TASKS[0])
    row0_mtime = RunDir(out).row_path(0).stat().st_mtime_ns

    # 2 processes x 2 CPU devices, MESH: every weight is split between the processes (the loading,
    # checkpoints and gathers that implies) and every batch too.
    p0, p1 = _run_two_processes([*small_flags(out), "--mesh", *map(str, MESH)], cache)
    assert p0.returncode == 0 and p1.returncode == 0, (p0.stderr[-3000:], p1.stderr[-3000:])
    assert "3 tasks, 1 already done" in p0.stdout and f"wrote       {out / 'forgetting.npz'}" in p0.stdout
    # Only process 0 echoes. gloo announces its connections on stdout from several threads, so its
    # lines can arrive in fragments: compare with what process 0 echoed instead of expecting silence.
    ours = [line for line in p0.stdout.splitlines() if len(line) > 20 and "Gloo" not in line and "peer" not in line]
    assert len(ours) >= 3 and [line for line in ours if line in p1.stdout] == [], p1.stdout[-2000:]

    one, two = np.load(RunDir(ref).forgetting_path), np.load(RunDir(out).forgetting_path)
    np.testing.assert_allclose(two["nll_before"], one["nll_before"], atol=1e-5)
    np.testing.assert_allclose(two["Z"], one["Z"], atol=1e-5)
    assert np.abs(one["Z"][1:]).max() > 1e-3  # fine-tuning changed something worth comparing
    for name in TASKS[1:]:  # written by process 0 from weights gathered across the processes
        a = load_file(str(ref / "models" / name / "model.safetensors"))
        b = load_file(str(out / "models" / name / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=f"{name}: {key}")

    # exactly the files of the single-process run: one meta, one set of rows, one event file, no
    # temporary or checkpoint leftovers, and the row of the finished task untouched
    assert _files(out) == [f for f in _files(ref) if not f.startswith("tb/hparams/")]  # a resume logs no hparams
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert RunDir(out).row_path(0).stat().st_mtime_ns == row0_mtime
    meta = RunDir(out).read_meta()
    assert meta["status"] == "complete" and meta["config"]["out"] == str(out)


def test_cluster_flags_are_checked_before_any_work(tmp_path, capsys):
    from jaxforget.collect import cli

    assert cli(["--out", str(tmp_path / "a"), "--coordinator", "localhost:1234", "--num-processes", "2"]) == 2
    assert "--coordinator --num-processes only apply to a multi-process run: add --distributed" in capsys.readouterr().err
    assert cli(["--out", str(tmp_path / "b"), "--distributed", "--num-processes", "2", "--process-id", "2"]) == 2
    assert "--process-id 2: need 0 <= id < --num-processes 2" in capsys.readouterr().err
    assert cli(["--out", str(tmp_path / "c"), "--distributed", "--coordinator", "localhost"]) == 2
    assert "expected host:port" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow  # two processes with gloo, ~20 s
@pytest.mark.parametrize("select", ["forgotten"])
def test_a_budgeted_two_process_run_equals_one_process(cache, tmp_path, select):
    """--eval.budget with a second round: process 0 alone reads the rows, folds them in and chooses the
    columns; every process measures the same columns."""
    import jax

    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip(f"jax {jax.__version__} has no cross-process CPU collectives (gloo) for a multi-process run")
    budget = ["--eval.budget", "0.5", "--eval.select", select]
    ref = tmp_path / "one"
    base = small(ref)
    config = dataclasses.replace(base, eval=dataclasses.replace(base.eval, budget=0.5, select=select))
    assert collect(config, echo=lambda *_: None) == 0
    out = tmp_path / "two"
    p0, p1 = _run_two_processes([*small_flags(out), *budget, "--mesh", *map(str, MESH)], cache)
    assert p0.returncode == 0 and p1.returncode == 0, (p0.stderr[-3000:], p1.stderr[-3000:])
    one, two = np.load(RunDir(ref).forgetting_path), np.load(RunDir(out).forgetting_path)
    np.testing.assert_array_equal(two["measured"], one["measured"])
    np.testing.assert_allclose(two["Z"], one["Z"], atol=1e-5)
    np.testing.assert_allclose(two["Z_completed"], one["Z_completed"], atol=1e-4)
