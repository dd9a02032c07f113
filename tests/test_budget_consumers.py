"""analyze and predict on a budgeted run (collect --eval.budget): fits, reveals and scores use the measured
entries only; the completed matrix is shown apart and never scored.

The budgeted run is fabricated here (:func:`budget_run`) from a run directory of a planted matrix, in the
format of issue 24 (``collect --eval.budget``): Z NaN where not measured, ``measured``, ``Z_completed``,
``holdout``, ``anchors`` and ``meta["budget"]``. It takes any finished run directory (a real collect run too).
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxforget import analysis as A
from jaxforget import completion as C
from jaxforget.analysis import ADDITIVE_REG
from jaxforget.store import load_matrix

M, N = 24, 200
FRACTION, ANCHORS = 0.3, 8
TEST_ROWS = [1, 5, 9, 14, 20]


def planted_run(root: Path) -> Path:
    """A finished run directory as collect writes it (forgetting.npz, tasks.jsonl, upstream.jsonl,
    meta.json) holding a rank-2 Z plus noise."""
    rng = np.random.default_rng(0)
    Z = (np.outer(rng.lognormal(0, 0.5, M), rng.gamma(2.0, 0.05, N))
         + 0.3 * np.outer(rng.normal(0, 0.3, M), rng.normal(0, 0.3, N)) + 0.02 * rng.normal(size=(M, N)))
    Z = Z.astype(np.float32)
    nll_before = rng.uniform(1, 4, N).astype(np.float32)
    tasks, ids = [f"task_{i:02d}" for i in range(M)], [f"doc{j}" for j in range(N)]
    root.mkdir(parents=True)
    np.savez(root / "forgetting.npz", Z=Z, nll_before=nll_before, nll_after=Z + nll_before, failed=np.zeros(M, bool),
             task_names=np.array(tasks), example_ids=np.array(ids))
    (root / "tasks.jsonl").write_text("".join(json.dumps(dict(name=t, n_train=100 + i)) + "\n"
                                              for i, t in enumerate(tasks)))
    (root / "upstream.jsonl").write_text("".join(json.dumps(dict(id=d, source="web", n_tokens=50 + j)) + "\n"
                                                 for j, d in enumerate(ids)))
    (root / "meta.json").write_text(json.dumps({"schema_version": 1, "config": {"eval": {}},
                                                "task_names": tasks, "example_ids": ids}))
    return root


def budget_run(src: Path, dst: Path, *, fraction: float = FRACTION, n_anchors: int = ANCHORS, seed: int = 0,
               row_fraction: dict[int, float] | None = None) -> dict[str, np.ndarray]:
    """Copy the finished run `src` to `dst` as a budgeted run would have written it: each entry measured
    with probability `fraction` (`row_fraction`: other probabilities for some rows), `n_anchors` columns
    measured for every task, Z and nll_after NaN elsewhere, Z_completed the additive completion with the
    measured entries put back, holdout a fifth of the measured entries. Returns the rewritten arrays."""
    shutil.copytree(src, dst)
    with np.load(dst / "forgetting.npz") as f:
        arrays = dict(f)
    Z_full = arrays["Z"]
    rng = np.random.default_rng(seed)
    p = np.full((Z_full.shape[0], 1), fraction)
    for i, frac in (row_fraction or {}).items():
        p[i] = frac
    measured = rng.random(Z_full.shape) < p
    anchors = np.sort(rng.choice(Z_full.shape[1], n_anchors, replace=False))
    measured[:, anchors] = True
    measured[arrays["failed"]] = False
    Z = np.where(measured, Z_full, np.nan).astype(np.float32)
    completed = np.where(measured, Z, np.asarray(C.additive(Z, measured).predict())).astype(np.float32)
    completed[arrays["failed"]] = np.nan
    holdout = measured & (rng.random(Z.shape) < 0.2)
    arrays.update(Z=Z, nll_after=np.where(measured, arrays["nll_after"], np.nan), measured=measured,
                  Z_completed=completed, holdout=holdout, anchors=anchors.astype(np.int64))
    np.savez(dst / "forgetting.npz", **arrays)
    meta = json.loads((dst / "meta.json").read_text())
    meta["budget"] = dict(fraction=fraction, select="random", anchors=n_anchors, method="additive", seed=seed,
                          holdout=0.2, measured_fraction=float(measured.mean()))
    (dst / "meta.json").write_text(json.dumps(meta))
    return dict(arrays, Z_full=Z_full)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    full = planted_run(root / "full")
    return full, budget_run(full, root / "budgeted"), root / "budgeted"


def coverage_text(b: dict[str, np.ndarray]) -> tuple[int, int, int]:
    n = int(b["measured"].sum())
    return n, b["measured"].size, int((np.isfinite(b["Z_completed"]) & ~b["measured"]).sum())


# ----------------------------------------------------------------------------------------------
# store


def test_load_matrix_reads_the_budget_arrays_and_checks_their_shapes(runs, tmp_path):
    full, b, run = runs
    data = load_matrix(run)
    np.testing.assert_array_equal(data.measured, b["measured"])
    np.testing.assert_array_equal(data.Z_completed, b["Z_completed"])
    assert np.array_equal(np.isfinite(data.Z), b["measured"])
    n, total, completed = coverage_text(b)
    assert data.coverage() == dict(n_entries=total, n_measured=n, n_completed=completed, n_disagree=0)
    assert 0.3 < n / total < 0.4 and completed == total - n
    plain = load_matrix(full)
    assert plain.Z_completed is None and plain.measured is None
    assert plain.coverage() == dict(n_entries=M * N, n_measured=M * N, n_completed=0, n_disagree=0)

    arrays = {k: v for k, v in b.items() if k != "Z_full"}
    np.savez(tmp_path / "bad.npz", **(arrays | {"Z_completed": b["Z_completed"][:, :10]}))
    with pytest.raises(ValueError, match=r"bad.npz: Z_completed has shape \(24, 10\) but Z has shape \(24, 200\)"):
        load_matrix(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad2.npz", **(arrays | {"measured": b["measured"] * 2.5}))
    with pytest.raises(ValueError, match="bad2.npz: array 'measured' must be a boolean mask"):
        load_matrix(tmp_path / "bad2.npz")


# ----------------------------------------------------------------------------------------------
# analyze


def test_drop_empty_rows_drops_them_from_the_completed_matrix_and_the_mask_too(runs):
    import dataclasses

    from jaxforget.analyze import RunMetadata, drop_empty_rows

    _, b, run = runs
    data = load_matrix(run)
    failed = dict(Z=data.Z.copy(), Z_completed=data.Z_completed.copy(), measured=data.measured.copy())
    failed["Z"][3], failed["Z_completed"][3], failed["measured"][3] = np.nan, np.nan, False  # a failed task
    kept, md = drop_empty_rows(dataclasses.replace(data, **failed), RunMetadata())
    rows = np.delete(np.arange(M), 3)
    np.testing.assert_array_equal(kept.Z_completed, b["Z_completed"][rows])
    np.testing.assert_array_equal(kept.measured, b["measured"][rows])
    assert kept.row_names == [f"task_{i:02d}" for i in rows] and md.notes == [
        "left out 1 task(s) without any measured entry: task_03"]


def test_analyze_fits_measured_entries_only_and_shows_the_completed_matrix_apart(runs, capsys):
    from jaxforget.analyze import cli

    _, b, run = runs
    result = cli([str(run), "--max-rank", "1", "--tracker", "jsonl", "--max-blocks", "0"])
    printed = capsys.readouterr().out
    out = run / "analysis"
    n, total, completed = coverage_text(b)
    note = f"fitted on {n:,} of {total:,} entries ({n / total:.1%}) measured; {completed:,} completed entries not used"
    assert note in printed.splitlines()
    report = (out / "report.md").read_text()
    assert f"Every fit below uses the measured entries only: {note}." in report
    assert "A budgeted run (`collect --eval.budget 0.3 --eval.select random`, 8 anchor columns" in report

    # The R² tables, recomputed here: measured entries only; the completed matrix on its own.
    fit = dict(ranks=(1,), reg_row=ADDITIVE_REG[0], reg_col=ADDITIVE_REG[1], seed=0)
    measured_r2 = C.fit_table(b["Z"], b["measured"], **fit)
    completed_r2 = C.fit_table(b["Z_completed"], **fit)
    assert result["r2"] == pytest.approx(measured_r2, rel=1e-6, abs=1e-7)
    assert result["completed"]["r2"] == pytest.approx(completed_r2, rel=1e-6, abs=1e-7)
    assert abs(result["completed"]["r2"]["rank_1"] - result["r2"]["rank_1"]) > 0.01  # two different tables
    assert result["fit_method"] == "masked_als" and result["completed"]["fit_method"] == "truncated_svd"
    assert result["counts"]["n_observed"] == n
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["coverage"] == dict(n_entries=total, n_measured=n, n_completed=completed, n_disagree=0,
                                     fit_note=note)
    assert saved["completed"]["n_predicted"] == completed and saved["completed"]["n_entries"] == total

    # Files: the completed matrix's table and heatmap under their own names, linked under their own heading.
    from jaxforget.analyze import _r2_markdown

    assert (out / "completed_fit_table.md").read_text() == _r2_markdown(saved["completed"]["r2"]) + "\n"
    assert (out / "fit_table.md").read_text() == _r2_markdown(saved["r2"]) + "\n"
    assert {"heatmap_sorted.png", "completed_heatmap_sorted.png"} <= {p.name for p in out.glob("*.png")}
    section = report.split("## The completed matrix (not measurements)")[1]
    assert "![Z_completed sorted as Z: not measurements](completed_heatmap_sorted.png)" in section
    assert "completed_heatmap_sorted.png" not in report.split("## The completed matrix")[0]
    assert "completed matrix (Z_completed: " in printed and "NOT measurements" in printed
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    scalars = {e["name"]: e["value"] for e in events if e["kind"] == "scalar"}
    assert scalars["completed_r2/rank_1"] == pytest.approx(completed_r2["rank_1"], rel=1e-6)
    assert scalars["r2/rank_1"] == pytest.approx(measured_r2["rank_1"], rel=1e-6)


def test_analyze_of_a_matrix_with_nan_but_no_completion_says_how_many_entries_it_fitted(runs, tmp_path, capsys):
    from jaxforget.analyze import cli

    _, b, _ = runs
    np.save(tmp_path / "z.npy", b["Z"])
    result = cli([str(tmp_path / "z.npy"), "--max-rank", "1", "--max-blocks", "0", "--tracker", "none"])
    n, total, _ = coverage_text(b)
    note = f"fitted on {n:,} of {total:,} entries ({n / total:.1%}) measured"
    assert note in capsys.readouterr().out.splitlines()
    assert "completed" not in result and result["coverage"]["fit_note"] == note
    assert not list((tmp_path / "analysis_z").glob("completed_*"))


def test_block_null_rotates_each_rows_measured_entries_among_themselves():
    rng = np.random.default_rng(0)
    R = rng.normal(size=(6, 40)).astype(np.float32)
    mask = rng.random(R.shape) < 0.4
    mask[:, [3, 7]] = True  # anchors
    R = np.where(mask, R, 0.0)
    order = jax.numpy.argsort(~mask, axis=1, stable=True)
    shuffled = np.asarray(A._rotate_measured(R, order, jax.numpy.argsort(order, axis=1),
                                             mask.sum(axis=1, keepdims=True), jax.random.key(1)))
    assert np.all(shuffled[~mask] == 0)
    for i in range(R.shape[0]):
        np.testing.assert_array_equal(np.sort(shuffled[i][mask[i]]), np.sort(R[i][mask[i]]))
        kept = np.flatnonzero(mask[i])
        assert any(np.array_equal(shuffled[i][kept], np.roll(R[i][kept], -s)) for s in range(len(kept)))
    # With nothing hidden it is the plain rotation the full-matrix search uses.
    full = np.ones(R.shape, bool)
    order = jax.numpy.argsort(~full, axis=1, stable=True)
    np.testing.assert_array_equal(
        A._rotate_measured(R, order, jax.numpy.argsort(order, axis=1), full.sum(axis=1, keepdims=True),
                           jax.random.key(1)),
        A._shuffle_rows(R, jax.random.key(1)))


def test_block_search_on_noise_with_anchor_columns_finds_no_block():
    """Rank-1 Z plus noise, 10% measured plus 30 anchor columns: a null that scatters the anchors' entries
    found a block (p = 0.05, the floor of 19 permutations) in 14 of 20 such matrices, seeds 2, 3 and 4 among
    them; this one keeps the mask."""
    p_values = []
    for seed in (2, 3, 4):
        rng = np.random.default_rng(seed)
        Z = np.outer(rng.lognormal(0, 0.5, 30), rng.gamma(2, 0.05, 300)) + 0.03 * rng.normal(size=(30, 300))
        measured = rng.random(Z.shape) < 0.1
        measured[:, rng.choice(300, 30, replace=False)] = True
        search = A.find_blocks(np.where(measured, Z, np.nan).astype(np.float32), max_blocks=1, alpha=1.0, seed=seed)
        p_values.append(search.blocks[0].p_value)
    assert min(p_values) > 0.05, p_values


# ----------------------------------------------------------------------------------------------
# predict


def test_protocol_reveals_and_scores_measured_entries_only(runs):
    _, b, _ = runs
    test_rows, kw = TEST_ROWS, dict(methods=["additive"], k=10, seeds=(0, 1), top_n=20, batch_size=64)
    result = C.evaluate(b["Z"], test_rows=test_rows, **kw)
    measured_test = b["measured"][test_rows]
    assert not (result.reveal & ~measured_test[None]).any()
    assert (result.reveal.sum(axis=-1) == 10).all()
    np.testing.assert_array_equal(result.hidden, measured_test[None] & ~result.reveal)
    # The unmeasured cells' values cannot change a score: nonsense there gives the same draws and numbers.
    other = C.evaluate(np.where(b["measured"], b["Z"], 1e3), b["measured"], test_rows=test_rows, **kw)
    np.testing.assert_array_equal(other.reveal, result.reveal)
    for label in ("additive", "revealed_mean", "column_mean"):
        mine = result.metrics[label] if label in result.metrics else result.baselines[label]
        theirs = other.metrics[label] if label in other.metrics else other.baselines[label]
        for metric, values in mine.items():
            np.testing.assert_array_equal(values, theirs[metric], err_msg=f"{label} {metric}")


def test_predict_cli_on_a_budgeted_run(runs, tmp_path, capsys):
    from jaxforget.predict import cli

    _, b, run = runs
    out = tmp_path / "p.json"
    argv = ["--matrix", str(run), "--methods", "additive", "--k", "10", "--seeds", "0", "1", "--top-n", "20",
            "--split", "1,5,9,14,20", "--out", str(out)]
    report = cli(argv)
    printed = capsys.readouterr().out
    n, total, completed = coverage_text(b)
    line = (f"measured: {n:,} of {total:,} entries of Z ({n / total:.1%}); only measured entries are revealed and "
            f"scored, the {completed:,} completed entries (Z_completed) are never used")
    assert line in printed.splitlines()
    saved = json.loads(out.read_text())
    assert saved["measured"] == n and saved["completed_not_used"] == completed and saved["not_measured"] == total - n
    oracle = C.evaluate(b["Z_completed"], b["measured"], test_rows=TEST_ROWS, methods=["additive"], k=10,
                        seeds=(0, 1), top_n=20)
    assert saved["per_seed"]["additive"]["rmse"] == pytest.approx(oracle.metrics["additive"]["rmse"].tolist(),
                                                                  rel=1e-5)
    assert report["per_seed"] == saved["per_seed"]


def test_k_beyond_a_test_tasks_measured_entries_names_the_task_and_counts(runs, tmp_path, capsys):
    from jaxforget.predict import cli

    full, _, _ = runs
    budget_run(full, tmp_path / "sparse", row_fraction={5: 0.0, 9: 0.02}, seed=3)
    counts = {i: int(c) for i, c in enumerate(np.isfinite(load_matrix(tmp_path / "sparse").Z).sum(axis=1))}
    with pytest.raises(SystemExit) as e:
        cli(["--matrix", str(tmp_path / "sparse"), "--split", "1,5,9", "--k", "12", "--out", str(tmp_path / "p.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (f"error: --k 12: 2 test tasks with no more than k measured entries: 'task_05' ({counts[5]} of {N} "
            f"measured), 'task_09' ({counts[9]} of {N} measured); each needs k revealed plus at least one to score "
            f"(13). Lower --k to {min(counts[5], counts[9]) - 1} or fewer, or leave them out of the test tasks "
            "(--split)") in err
    assert counts[5] == ANCHORS and counts[1] > 12


def test_reference_reveal_on_a_budgeted_run_says_how_many_entries_were_revealed(runs):
    from jaxforget.predict import reference_shortfall

    _, b, _ = runs
    kw = dict(test_rows=TEST_ROWS, methods=[], k=30, seeds=(0, 1), top_n=20, reveal="reference")
    result = C.evaluate(b["Z"], **kw)
    revealed = result.reveal.sum(axis=-1)  # [seeds, test tasks]
    drawn = [int(C.reference_reveal(s, np.ones((1, N), bool), 30).sum()) for s in (0, 1)]
    assert revealed.max() < min(drawn)
    warning = reference_shortfall(result, [f"task_{i:02d}" for i in range(M)], 30)
    s, t = np.unravel_index(np.argmin(revealed - np.array(drawn)[:, None]), revealed.shape)
    assert warning.startswith("--reveal reference reveals the same drawn columns in every test task")
    assert (f"test tasks got {revealed.min()}–{revealed.max()} revealed entries of the {min(drawn)}–{max(drawn)} "
            f"distinct columns drawn (k = 30); fewest: {revealed[s, t]} of {drawn[s]} in 'task_{TEST_ROWS[t]:02d}', "
            f"seed {s}") in warning
    full = C.evaluate(b["Z_full"], **kw)
    assert reference_shortfall(full, [f"task_{i:02d}" for i in range(M)], 30) is None
