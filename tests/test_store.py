import json

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
    with pytest.raises(RunError, match=r"2 of 3 task rows missing \(tasks \[1, 2\]\)"):
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
