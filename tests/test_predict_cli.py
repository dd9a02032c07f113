import json
import pickle

import numpy as np
import pytest

from jaxforget.predict import PredictConfig, cli, main, resolve_test_rows
from jaxforget.store import load_matrix


@pytest.fixture
def Z():
    rng = np.random.default_rng(0)
    Z = np.outer(rng.random(10) + 0.5, rng.random(60)).astype(np.float32)
    Z[1, 2] = np.nan
    return Z


def test_every_format_loads_the_same_matrix(tmp_path, Z):
    np.save(tmp_path / "z.npy", Z)
    np.savez(tmp_path / "z.npz", Z=Z, task_names=np.array([f"t{i}" for i in range(10)]))
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "forgetting.npz", Z=Z)
    with open(tmp_path / "z.csv", "w") as fh:
        fh.write("task," + ",".join(f"e{j}" for j in range(60)) + "\n")
        for i, row in enumerate(Z):
            fh.write(f"t{i}," + ",".join("" if np.isnan(v) else repr(float(v)) for v in row) + "\n")
    with open(tmp_path / "ref.pkl", "wb") as fh:
        pickle.dump({"train_mat": Z[:7], "test_mat": Z[7:]}, fh)
    for name in ("z.npy", "z.npz", "run", "z.csv", "ref.pkl"):
        data = load_matrix(tmp_path / name)
        np.testing.assert_array_equal(data.Z, Z)
    assert load_matrix(tmp_path / "z.csv").row_names[3] == "t3"
    assert load_matrix(tmp_path / "z.csv").col_ids[5] == "e5"
    assert load_matrix(tmp_path / "z.npz").row_names[9] == "t9"
    assert load_matrix(tmp_path / "ref.pkl").test_rows == [7, 8, 9]


def test_bad_files_name_the_problem(tmp_path, Z):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_matrix(tmp_path / "missing.npy")
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2: 2 values where earlier lines have 3"):
        load_matrix(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("1,2,3\n4,x,6\n")
    with pytest.raises(ValueError, match=r"bad2.csv, line 2: not a number"):
        load_matrix(tmp_path / "bad2.csv")
    np.savez(tmp_path / "two.npz", a=Z, b=Z)
    with pytest.raises(ValueError, match="no array named 'Z' and several arrays"):
        load_matrix(tmp_path / "two.npz")
    with open(tmp_path / "other.pkl", "wb") as fh:
        pickle.dump([1, 2], fh)
    with pytest.raises(ValueError, match="train_mat"):
        load_matrix(tmp_path / "other.pkl")
    (tmp_path / "z.txt").write_text("1")
    with pytest.raises(ValueError, match="unknown matrix format '.txt'"):
        load_matrix(tmp_path / "z.txt")
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="without forgetting.npz"):
        load_matrix(tmp_path / "run")


def test_split_by_fraction_indices_and_names(tmp_path, Z):
    np.savez(tmp_path / "z.npz", Z=Z, task_names=np.array([f"t{i}" for i in range(10)]))
    data = load_matrix(tmp_path / "z.npz")
    assert len(resolve_test_rows("0.3", data, 0)) == 3
    assert resolve_test_rows("2,5", data, 0) == [2, 5]
    assert resolve_test_rows("t4,t1", data, 0) == [4, 1]
    with pytest.raises(ValueError, match="'nope' is neither a row index nor a row name"):
        resolve_test_rows("t1,nope", data, 0)
    with pytest.raises(ValueError, match="row 12 out of range"):
        resolve_test_rows("12", data, 0)


def test_cli_writes_a_report(tmp_path, Z, capsys):
    with open(tmp_path / "ref.pkl", "wb") as fh:
        pickle.dump({"train_mat": Z[:7], "test_mat": Z[7:]}, fh)
    out = tmp_path / "res.json"
    report = cli(["--matrix", str(tmp_path / "ref.pkl"), "--methods", "additive", "knn", "--k", "10",
                  "--seeds", "0", "1", "--out", str(out), "--top-n", "5"])
    printed = capsys.readouterr().out
    assert "| additive |" in printed and "| knn |" in printed
    saved = json.loads(out.read_text())
    assert saved["test_tasks"] == ["test0", "test1", "test2"]
    assert len(saved["per_seed"]["additive"]["rmse"]) == 2
    assert saved["summary"]["knn"]["precision@5"]["mean"] == report["summary"]["knn"]["precision@5"]["mean"]
    assert saved["config"]["k"] == 10 and saved["seeds"] == [0, 1]


def test_cli_rejects_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--methods", "mf:rnk=3", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    assert "unknown option(s) 'rnk' for method 'mf'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_default_run_on_the_synthetic_matrix(tmp_path):
    report = main(PredictConfig(synthetic_rows=20, synthetic_cols=200, seeds=(0,), out=tmp_path / "s.json",
                                methods=("additive", "mf")))
    assert report["shape"] == [20, 200]
    # the planted matrix has low-rank structure: MF beats the additive model
    assert report["summary"]["mf"]["rmse"]["mean"] < report["summary"]["additive"]["rmse"]["mean"]
