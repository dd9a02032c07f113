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


def saved_k(path) -> int:
    return json.loads(path.read_text())["flags"]["k"]


def test_cli_writes_a_report(tmp_path, Z, capsys):
    with open(tmp_path / "ref.pkl", "wb") as fh:
        pickle.dump({"train_mat": Z[:7], "test_mat": Z[7:]}, fh)
    argv = ["--matrix", str(tmp_path / "ref.pkl"), "--methods", "additive", "knn", "--k", "10", "--seeds", "0", "1",
            "--top-n", "5"]
    report = cli(argv)
    out = tmp_path / "predict_ref" / "additive+knn.json"  # named by the method set: another set has its own file
    printed = capsys.readouterr().out
    assert printed.splitlines()[-3:] == [f"wrote       {out}", f"open first  {out}",
                                         "next        python -m jaxforget.predict --matrix runs/default   "
                                         "(a collected run's matrix)"]
    # another method set has its own file; the same file asked for other flags is refused before any work,
    # naming them, and replaced with --force
    from jaxforget.predict import PredictConfig, _default_out
    from jaxforget.store import check_output

    assert _default_out(PredictConfig(matrix=tmp_path / "ref.pkl", methods=("additive",))) == out.with_name(
        "additive.json")
    assert _default_out(PredictConfig(matrix=tmp_path / "ref.pkl", methods=("mf:rank=10",))).name == "mf-rank=10.json"
    with pytest.raises(SystemExit) as e:
        cli([*argv, "--k", "5"])
    assert e.value.code == 2 and f"{out}: holds the output of other settings (--k: 10 != 5" in capsys.readouterr().err
    check_output(out, {"k": 5}, force=True)  # --force: no question asked
    assert "| additive |" in printed and "| knn |" in printed
    assert "3 test tasks (test0, test1, test2)" in printed  # named, not only counted
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


def _inclusion(scores, n):
    """P(entry among the top n) with ties broken at random (the table's precision@n convention)."""
    cut = np.sort(scores)[::-1][n - 1]
    above, tied = scores > cut, scores == cut
    return np.where(above, 1.0, np.where(tied, (n - above.sum()) / tied.sum(), 0.0))


def _recompute(pred, truth, hidden, threshold, cut, top_n):
    """Metrics of one seed from the saved arrays alone: numpy + scipy, float64."""
    from scipy import stats

    p, z = pred[hidden].astype(np.float64), truth[hidden].astype(np.float64)
    lab, guess = z > threshold, p > cut
    tp = np.sum(lab & guess)
    ranks = stats.rankdata(p)
    n_pos, n_neg = lab.sum(), (~lab).sum()
    out = dict(rmse=np.sqrt(np.mean((p - z) ** 2)), f1=2 * tp / (lab.sum() + guess.sum()),
               precision=tp / max(guess.sum(), 1), recall=tp / lab.sum(),
               auc=(ranks[lab].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    per_row = []
    for t in range(truth.shape[0]):
        h = hidden[t]
        n = min(top_n, h.sum())
        per_row.append(np.sum(_inclusion(pred[t][h], n) * _inclusion(truth[t][h], n)) / n)
    out[f"precision@{top_n}"] = np.mean(per_row)
    return out


def _parse_table(text):
    rows = {}
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0].replace(" (baseline)", "")] = dict(zip(header[1:], cells[1:]))
    return rows


def test_saved_predictions_reproduce_the_printed_table(tmp_path, Z, capsys):
    with open(tmp_path / "ref.pkl", "wb") as fh:
        pickle.dump({"train_mat": Z[:7], "test_mat": Z[7:]}, fh)
    npz = tmp_path / "preds.npz"
    cli(["--matrix", str(tmp_path / "ref.pkl"), "--methods", "additive", "mf:rank=2", "--k", "10", "--seeds", "0", "1",
         "2", "--out", str(tmp_path / "r.json"), "--top-n", "5", "--threshold", "0.3", "--save-predictions", str(npz)])
    table = _parse_table(capsys.readouterr().out)
    f = np.load(npz)
    labels = f["labels"].tolist()
    assert labels == ["zero", "train_mean", "revealed_mean", "column_mean", "additive", "mf:rank=2"]
    assert f["predictions"].shape == (6, 3, 3, 60) and f["test_tasks"].tolist() == ["test0", "test1", "test2"]
    truth, hidden = f["truth"], f["hidden"]
    assert not (hidden & f["revealed"]).any() and not hidden[:, np.isnan(truth)].any()
    metrics = ["rmse", "f1", "precision", "recall", "auc", "precision@5"]
    recomputed = {}
    for i, label in enumerate(labels):
        per_seed = [_recompute(f["predictions"][i, s], truth, hidden[s], float(f["threshold"]),
                               float(f["pred_thresholds"][i]), int(f["top_n"])) for s in range(3)]
        recomputed[label] = {m: np.array([d[m] for d in per_seed]) for m in metrics}
        for m in metrics:
            mean, std = table[label][m].split(" (")[0].split(" ± ")
            v = recomputed[label][m]
            assert abs(float(mean) - v.mean()) < 1.5e-4 and abs(float(std) - v.std()) < 1.5e-4, (label, m, mean, v)
    # the all-positive classifier: every hidden entry called forgotten
    pos = [np.mean(truth[hidden[s]] > 0.3) for s in range(3)]
    assert float(table["all_positive"]["f1"].split(" ± ")[0]) == pytest.approx(
        np.mean([2 * p / (1 + p) for p in pos]), abs=1e-4)
    # each method's gain: paired per seed against the best baseline of the column
    for m, better in (("rmse", min), ("auc", max)):
        base = {b: recomputed[b][m] for b in labels[:4]}
        best = better(base, key=lambda b: base[b].mean())
        gain = recomputed["mf:rank=2"][m] - base[best]
        gain = -gain if m == "rmse" else gain
        printed = float(table["mf:rank=2"][m].split("(")[1].rstrip(")"))
        assert abs(printed - gain.mean()) < 1.5e-4, (m, printed, gain)


def test_bad_numeric_flags_name_the_flag(tmp_path, capsys):
    for argv, msg in ((["--k", "0"], "--k 0: at least one entry"), (["--top-n", "0"], "--top-n 0"),
                      (["--threshold", "nan"], "--threshold nan: must be a finite number"),
                      (["--save-predictions", str(tmp_path / "p.txt")], "name it *.npz")):
        with pytest.raises(SystemExit) as e:
            cli([*argv, "--out", str(tmp_path / "x.json")])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    np.save(tmp_path / "em.npy", (np.random.default_rng(0).random((8, 40)) < 0.5).astype(np.float32))
    with pytest.raises(SystemExit) as e:
        cli(["--matrix", str(tmp_path / "em.npy"), "--threshold", "1.5", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "--threshold 1.5: the matrix is binary" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_bad_method_options_output_paths_and_matrices_give_one_line(tmp_path, Z, capsys, caplog):
    for argv, msg in ((["--methods", "mf:rank=abc"], "method 'mf': option rank='abc' must be a number"),
                      (["--methods", "mf:rank=0"], "method 'mf': option rank=0 must be >= 1"),
                      (["--methods", "knn:k=2.5"], "option k=2.5 must be an integer"),
                      (["--methods", "mf:reg=nan"], "option reg=nan must be finite"),
                      (["--out", str(tmp_path)], f"--out {tmp_path}: is a directory"),
                      (["--save-predictions", str(tmp_path / "f" / "p.npz")], "f: is a file, not a directory")):
        (tmp_path / "f").write_text("")
        with pytest.raises(SystemExit) as e:
            cli([*argv, "--synthetic-rows", "8", "--synthetic-cols", "30"]
                + ([] if "--out" in argv else ["--out", str(tmp_path / "x.json")]))
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv
    # a garbage or truncated npz: one line naming the file
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(SystemExit) as e:
        cli(["--matrix", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "bad.npz" in capsys.readouterr().err
    # inf cells are counted and treated as not measured; values whose squares overflow are refused
    Zi = Z.copy()
    Zi[0, :3] = np.inf
    np.save(tmp_path / "inf.npy", Zi)
    with caplog.at_level("WARNING", logger="jaxforget.store"):
        loaded = load_matrix(tmp_path / "inf.npy").Z
    assert np.isnan(loaded[0, :3]).all() and "3 infinite cells" in caplog.text
    np.save(tmp_path / "big.npy", Z * 1e30)
    with pytest.raises(ValueError, match="values up to .*rescale the matrix"):
        load_matrix(tmp_path / "big.npy")
