import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxforget.store import RunDir, RunError, load_matrix


def _run(tmp_path, M=3, N=5):
    run = RunDir(tmp_path / "run")
    assert run.start({"config": {"lr": 1e-3, "tasks": ["a", "b", "c"][:M]}}) is False
    run.write_base(np.arange(N, dtype=np.float32))
    return run


def test_rows_assemble_into_forgetting_npz(tmp_path):
    run = _run(tmp_path)
    names = ["a", "b", "c"]
    for i in (2, 0, 1):
        steps = np.stack([np.full(5, i + 0.5), np.full(5, i + 1.0)]) + np.arange(5)
        run.write_row(i, name=names[i], nll_after=np.arange(5) + i + 1.0, nll_steps=steps, steps=np.array([5, 10]))
    out = run.assemble(names, [f"ex{j}" for j in range(5)])
    np.testing.assert_allclose(out["Z"], np.repeat([[1.0], [2.0], [3.0]], 5, axis=1))
    assert out["Z_steps"].shape == (3, 2, 5) and out["steps"].tolist() == [5, 10]
    np.testing.assert_allclose(out["Z_steps"][:, -1], out["Z"])
    # a task stopped early by its epoch cap is aligned on the steps it was measured at
    run.write_row(1, name="b", nll_after=np.arange(5) + 2.0, nll_steps=np.stack([np.arange(5) + 1.5]),
                  steps=np.array([7]))
    out = run.assemble(names, [f"ex{j}" for j in range(5)])
    assert out["steps"].tolist() == [5, 7, 10]
    assert np.isnan(out["Z_steps"][1, [0, 2]]).all() and np.allclose(out["Z_steps"][1, 1], 1.5)
    assert np.allclose(out["Z_steps"][0, [0, 2]], [[0.5] * 5, [1.0] * 5]) and np.isnan(out["Z_steps"][0, 1]).all()
    data = load_matrix(run.root)
    np.testing.assert_allclose(data.Z, out["Z"])
    assert data.row_names == names and data.col_ids[4] == "ex4"


def test_resume_checks_the_config(tmp_path):
    run = _run(tmp_path)
    assert RunDir(run.root).start({"config": {"lr": 1e-3, "tasks": ["a", "b", "c"]}}) is True
    with pytest.raises(RunError, match=r"another configuration \(lr: 0.001 != 0.002\)"):
        RunDir(run.root).start({"config": {"lr": 2e-3, "tasks": ["a", "b", "c"]}})
    assert json.loads(run.meta_path.read_text())["schema_version"] == 1


def test_missing_and_corrupted_rows_are_reported(tmp_path):
    run = _run(tmp_path)
    run.write_row(0, name="a", nll_after=np.ones(5))
    with pytest.raises(RunError, match=r"2 of 3 task rows missing \(task_00001.npz, task_00002.npz\)"):
        run.assemble(["a", "b", "c"], [str(j) for j in range(5)])
    run.row_path(1).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunError, match=r"task_00001.npz: corrupted or unreadable"):
        run.read_row(1)
    run.write_row(2, name="zzz", nll_after=np.ones(5))
    run.write_row(1, name="b", nll_after=np.ones(5), status="failed", reason="loss is nan at step 3")
    with pytest.raises(RunError, match="holds task 'zzz', expected 'c'"):
        run.assemble(["a", "b", "c"], [str(j) for j in range(5)])
    assert not list(run.rows_dir.glob(".*tmp*"))  # no temporary files left behind


def test_failed_rows_are_flagged(tmp_path):
    run = _run(tmp_path, M=2)
    run.write_row(0, name="a", nll_after=np.ones(5))
    run.write_row(1, name="b", nll_after=np.full(5, np.nan), status="failed", reason="nan loss")
    out = run.assemble(["a", "b"], [str(j) for j in range(5)])
    assert out["failed"].tolist() == [False, True] and np.isnan(out["Z"][1]).all()
    assert str(run.read_row(1)["reason"]) == "nan loss"


def test_a_meta_json_without_a_config_is_named_not_compared(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.meta_path.write_text("{}")
    with pytest.raises(RunError, match=r"meta.json: has no 'config' record, so it is not the meta.json of a "
                                       r"jaxforget run"):
        run.start({"config": {"lr": 1e-3}})
    run.meta_path.write_text("[1, 2]")
    with pytest.raises(RunError, match="meta.json: expected a JSON object, found list"):
        run.start({"config": {"lr": 1e-3}})


def test_resume_compares_the_config_without_the_ignored_keys(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start({"config": {"lr": 1e-3, "out": "run"}})
    assert run.start({"config": {"lr": 1e-3, "out": str(run.root.resolve())}}, ignore=("out",)) is True
    assert run.start({"config": {"lr": 1e-3}}, ignore=("out",)) is True  # a run recorded by an older version


def test_base_npz_is_written_once_by_the_first_job(tmp_path):
    run = _run(tmp_path)  # wrote arange(5)
    assert run.write_base(np.full(5, 7.0, np.float32)) is False
    np.testing.assert_array_equal(run.read_base()["nll_before"], np.arange(5))


# ------------------------------------------------------------------------------------------------
# Locks (issue 18): one process per run directory, or shard jobs each locking its tasks


def test_the_run_lock_is_exclusive_unless_every_holder_is_a_shard_job(tmp_path):
    run = RunDir(tmp_path / "run")
    whole = run.lock_run()
    with pytest.raises(RunError, match=rf"{run.root}: another collect process is working on this run directory "
                                       rf"\(pid {os.getpid()} on "):
        RunDir(run.root).lock_run()
    with pytest.raises(RunError, match="a collect process without --shard is working on this run directory"):
        run.lock_run(shard=True)
    whole.release()
    shards = [run.lock_run(shard=True), run.lock_run(shard=True)]  # shard jobs share it
    with pytest.raises(RunError, match="another collect process is working"):
        run.lock_run()
    task = run.lock_task(3)
    assert task is not None and run.lock_task(3) is None and run.lock_task(4) is not None
    task.release()
    task = run.lock_task(3)
    assert task is not None
    task.release(unlink=True)  # its row written: the file goes
    assert not (run.locks_dir / "task_00003.lock").exists() and (run.locks_dir / "task_00004.lock").exists()
    for lock in shards:
        lock.release()
    run.lock_run().release()


def test_a_lock_is_free_again_when_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from jaxforget.store import RunDir; RunDir(sys.argv[1]).lock_run(); "
        "print('locked', flush=True); time.sleep(600)"), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"pid {holder.pid} on"):
            RunDir(tmp_path / "run").lock_run()
    finally:
        holder.kill()
        holder.wait()
    RunDir(tmp_path / "run").lock_run().release()  # not stale: the kernel released it with the process


def test_a_filesystem_without_locks_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with caplog.at_level("WARNING", logger="jaxforget.locks"):
        lock = RunDir(tmp_path / "run").lock_run()
        RunDir(tmp_path / "run").lock_run().release()  # nothing is held, so nothing conflicts
    assert lock.unsupported and "does not support file locks (No locks available)" in caplog.text
    assert caplog.text.count("does not support file locks") == 1
    lock.release()


# ------------------------------------------------------------------------------------------------
# Damaged matrix files: one line naming the file


@pytest.mark.parametrize("name, data, message", [
    ("z.npy", b"this is not numpy at all", ": not a .npy file"),
    ("z.npz", b"garbage bytes, not a zip archive", ": not a readable .npz archive"),
    ("z.csv", "task,a,b\nx,1,2\ny,3,caf\xe9\n".encode("latin-1"), ", line 3: not valid UTF-8"),
])
def test_damaged_matrix_files_are_one_clear_error(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{path}{message}"):
        load_matrix(path)


def test_a_truncated_forgetting_npz_names_the_file(tmp_path):
    run = _run(tmp_path, M=1)
    run.write_row(0, name="a", nll_after=np.ones(5))
    run.assemble(["a"], [str(j) for j in range(5)])
    data = run.forgetting_path.read_bytes()
    run.forgetting_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{run.forgetting_path}: not a readable .npz archive"):
        load_matrix(run.root)


def test_a_csv_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "z.csv"
    path.write_bytes("\ufefftask,e1,e2\nt1,0.5,\nt2,1,2\n".encode("utf-8"))
    data = load_matrix(path)
    assert data.row_names == ["t1", "t2"] and data.col_ids == ["e1", "e2"] and np.isnan(data.Z[0, 1])
