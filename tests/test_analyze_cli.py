import json
import pickle
import re

import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxforget.analyze import AnalyzeConfig, cli

M, N = 30, 300
DOMAINS = ("web", "code", "books")


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b)


def planted():
    """Multiplicative Z with a block of 5 tasks x 40 examples (mostly 'code') and per-step tensors."""
    rng = np.random.default_rng(0)
    alpha = rng.lognormal(0.0, 0.5, M)
    nll_before = rng.uniform(1.0, 4.0, N)
    beta = 0.05 * nll_before + rng.gamma(2.0, 0.02, N)  # the example effect grows with the base NLL
    domains = [DOMAINS[i] for i in rng.integers(0, 3, N)]
    code = np.flatnonzero(np.array(domains) == "code")
    block_rows = np.sort(rng.choice(M, 5, replace=False))
    block_cols = np.sort(np.concatenate([rng.choice(code, 34, replace=False),
                                         rng.choice(np.setdiff1d(np.arange(N), code), 6, replace=False)]))
    Z = np.outer(alpha, beta) + 0.03 * rng.normal(size=(M, N))
    Z[np.ix_(block_rows, block_cols)] += 0.3
    steps = np.stack([np.zeros_like(Z), 0.5 * Z + 0.01 * rng.normal(size=Z.shape), Z], axis=1)  # [M, 3, N]
    return dict(Z=Z.astype(np.float32), alpha=alpha, nll_before=nll_before, domains=domains, rows=block_rows,
                cols=block_cols, Z_steps=steps.astype(np.float32))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `collect` will write it: forgetting.npz, tasks.jsonl, upstream.jsonl, meta.json."""
    p = planted()
    run = tmp_path_factory.mktemp("run")
    tasks = [f"task_{i:02d}" for i in range(M)]
    ids = [f"doc{j}" for j in range(N)]
    np.savez(run / "forgetting.npz", Z=p["Z"], task_names=np.array(tasks), example_ids=np.array(ids),
             nll_before=p["nll_before"].astype(np.float32), nll_after=p["Z"] + p["nll_before"][None].astype(np.float32),
             Z_steps=p["Z_steps"], steps=np.array([0, 50, 100]))
    rng = np.random.default_rng(1)
    with open(run / "tasks.jsonl", "w") as fh:
        for i in reversed(range(M)):  # matched by name, not by line order
            drop = 0.5 * p["alpha"][i] + 0.05 * rng.normal()
            fh.write(json.dumps(dict(name=tasks[i], source="flan" if i % 2 else "tulu", n_train=100 + i,
                                     n_train_tokens=int(rng.integers(1_000, 50_000)), steps=200,
                                     train_loss_before=2.0, train_loss_after=2.0 - drop,
                                     base_loss=float(rng.uniform(1, 3)))) + "\n")
    with open(run / "upstream.jsonl", "w") as fh:
        for j in range(N):
            fh.write(json.dumps(dict(id=ids[j], source=p["domains"][j], n_tokens=int(rng.integers(20, 500)),
                                     nll_before=float(p["nll_before"][j]), text=f"text of document {j} | with a pipe"))
                     + "\n")
    (run / "meta.json").write_text(json.dumps({"schema_version": 1, "config": {"model": "tiny"}}))
    return run, p


def check_png(path, size_in):
    img = mpimg.imread(path)
    assert img.shape[:2] == (round(size_in[1] * 100), round(size_in[0] * 100)), path.name
    assert img[..., :3].std() > 0.01, f"{path.name} is blank"


def check_report_links(out):
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert links, "report.md links nothing"
    for link in links:
        assert (out / link).is_file(), f"report.md links {link}, which does not exist"
    for png in out.glob("*.png"):
        assert png.name in links, f"{png.name} is written but not in report.md"
    return report, links


def test_run_directory_full_analysis(run_dir):
    run, p = run_dir
    result = cli([str(run), "--max-rank", "3"])
    out = run / "analysis"
    sizes = {"heatmap_sorted.png": (10, 6), "rank1_residual.png": (16, 5), "component_1.png": (10, 6),
             "component_2.png": (10, 6), "component_3.png": (10, 6), "r2_vs_rank.png": (9, 4),
             "task_distributions.png": (8, 0.16 * M + 1.5), "correlations_tasks.png": (12.6, 7.6),
             "correlations_examples.png": (12.6, 4.2), "residual_blocks.png": (10, 6), "r2_over_steps.png": (6, 4)}
    assert sorted(f.name for f in out.glob("*.png")) == sorted(sizes)
    for name, size in sizes.items():
        check_png(out / name, size)
    report, _ = check_report_links(out)
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["r2"] == pytest.approx(result["r2"])
    assert saved["r2"]["rank_1"] > saved["r2"]["additive"]
    assert (out / "fit_table.md").read_text().startswith("| model | R² |")

    # Correlations: alpha with the train-loss drop (planted), beta with the base NLL (planted).
    tasks = {(r["statistic"], r["level"]): r for r in saved["correlations"]["tasks"]}
    assert set(tasks) >= {("train_loss_drop", None), ("n_train_tokens", None), ("base_loss", None),
                          ("source", "flan"), ("source", "tulu")}
    assert tasks[("train_loss_drop", None)]["pearson"] > 0.8 and tasks[("train_loss_drop", None)]["pearson_p"] < 1e-6
    assert tasks[("steps", None)]["pearson"] is None  # constant statistic: no correlation
    examples = {(r["statistic"], r["level"]): r for r in saved["correlations"]["examples"]}
    assert examples[("nll_before", None)]["spearman"] > 0.5 and examples[("nll_before", None)]["spearman_p"] < 1e-6
    assert ("source", "code") in examples and ("n_tokens", None) in examples

    # The planted block, its tasks, examples, texts and domain.
    blocks = saved["blocks"]["found"]
    assert len(blocks) == 1 and saved["blocks"]["seed"] == 0 and len(saved["blocks"]["null_scores"]) == 19
    b = blocks[0]
    assert jaccard(b["rows"], p["rows"].tolist()) >= 0.8 and jaccard(b["cols"], p["cols"].tolist()) >= 0.8
    assert b["tasks"] == [f"task_{i:02d}" for i in b["rows"]] and b["sign"] == 1 and b["mean_residual"] > 0.15
    assert b["top_examples"][0]["text"].startswith("text of document")
    assert b["domain_enrichment"][0]["domain"] == "code" and b["domain_enrichment"][0]["p"] < 1e-3
    assert "### Block 1: 5 tasks × 40 examples" in report and "with a pipe" in report

    # Forgetting over time.
    steps = saved["over_steps"]
    assert [s["step"] for s in steps] == [0, 50, 100] and steps[0]["r2_rank1"] is None
    assert steps[2]["r2_rank1"] == pytest.approx(saved["r2"]["rank_1"], abs=1e-4)
    assert saved["run_meta"]["config"]["model"] == "tiny"
    assert saved["run_files"] == ["tasks.jsonl", "upstream.jsonl", "meta.json"]

    # The same scalars and images in the run's TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb" / "analyze"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert acc.Scalars("r2/rank_1")[0].value == pytest.approx(saved["r2"]["rank_1"], rel=1e-6)
    assert [e.step for e in acc.Scalars("over_steps/r2_rank1")] == [50, 100]
    assert {f"analyze/{name[:-4]}" for name in sizes} <= set(acc.Tags()["images"])
    img = acc.Images("analyze/r2_vs_rank")[0]
    assert (img.width, img.height) == (900, 400)


def test_bare_matrix_with_nan_and_column_sample(tmp_path):
    Z = planted()["Z"]
    holes = np.random.default_rng(2).random(Z.shape) < 0.1
    Z[holes] = np.nan
    np.save(tmp_path / "z.npy", Z)
    out = tmp_path / "an"
    result = cli([str(tmp_path / "z.npy"), "--out", str(out), "--sample-cols", "100", "--seed", "4",
                  "--max-rank", "2", "--tracker", "jsonl", "--vmax", "0.5"])
    assert result["counts"]["n_missing"] == int(holes.sum()) and result["fit_method"] == "masked_als"
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["display"] == {"vmax": 0.5, "columns": "100 of 300 examples (random sample, seed 4)", "sample_seed": 4}
    assert saved["correlations"] == {"tasks": [], "examples": []}
    report, links = check_report_links(out)
    assert "No task or example statistics" in report
    assert not any("correlations" in link for link in links)
    assert f"{int(holes.sum()):,} not measured" in report
    assert "100 of 300 examples (random sample, seed 4)" in report
    records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    r2 = {r["name"]: r["value"] for r in records if r["kind"] == "scalar"}
    assert r2["r2/rank_2"] == pytest.approx(saved["r2"]["rank_2"], rel=1e-6)
    images = [r for r in records if r["kind"] == "image"]
    assert {r["name"] for r in images} >= {"analyze/heatmap_sorted", "analyze/component_2"}
    assert all((out / r["file"]).is_file() for r in images)


def test_reference_pickle(tmp_path):
    Z = planted()["Z"]
    with open(tmp_path / "splits.pkl", "wb") as fh:
        pickle.dump({"train_mat": Z[:20], "test_mat": Z[20:]}, fh)
    result = cli([str(tmp_path / "splits.pkl"), "--max-rank", "1", "--max-blocks", "0", "--tracker", "none"])
    out = tmp_path / "analysis_splits"
    assert result["shape"] == [M, N] and result["blocks"]["found"] == []
    report, _ = check_report_links(out)
    assert "Block search disabled" in report and "`train0`" not in report
    assert sorted(f.name for f in out.glob("*.png")) == sorted(
        ["heatmap_sorted.png", "rank1_residual.png", "component_1.png", "r2_vs_rank.png", "task_distributions.png"])


def test_all_nan_row_is_an_error_naming_it(tmp_path, capsys):
    Z = planted()["Z"]
    Z[4] = np.nan
    np.savez(tmp_path / "z.npz", Z=Z, task_names=np.array([f"t{i}" for i in range(M)]))
    with pytest.raises(SystemExit) as e:
        cli([str(tmp_path / "z.npz"), "--tracker", "none"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "rows without a measured entry: 4 (t4)" in err
    assert not (tmp_path / "analysis_z").exists()  # nothing written for an unusable input
    result = cli([str(tmp_path / "z.npz"), "--tracker", "none", "--drop-empty-rows", "--max-blocks", "0",
                  "--max-rank", "1"])
    assert result["shape"] == [M - 1, N]
    assert "left out 1 task(s) without any measured entry: t4" in result["notes"][0]


def test_one_task_run_writes_what_is_computable_and_says_what_is_not(tmp_path, run_dir, capsys):
    # A run directory with a single task (its stats, the per-step tensor): no error with internal names.
    run, p = run_dir
    one = tmp_path / "one"
    one.mkdir()
    with np.load(run / "forgetting.npz") as f:
        np.savez(one / "forgetting.npz", Z=f["Z"][:1], task_names=f["task_names"][:1], example_ids=f["example_ids"],
                 nll_before=f["nll_before"], Z_steps=f["Z_steps"][:1], steps=f["steps"])
    first = next(line for line in (run / "tasks.jsonl").read_text().splitlines() if '"task_00"' in line)
    (one / "tasks.jsonl").write_text(first + "\n")
    (one / "upstream.jsonl").write_text((run / "upstream.jsonl").read_text())
    result = cli([str(one), "--tracker", "none"])
    console = capsys.readouterr().out
    out = one / "analysis"
    assert result["shape"] == [1, N] and result["blocks"]["found"] == []
    assert set(result["not_computed"]) == {"blocks", "task_correlations"}
    assert "min_rows" not in console and "min_cols" not in console
    assert "not computed: residual blocks: a block needs at least 2 tasks and 2 examples " \
           "(--min-block-rows / --min-block-cols); the matrix has 1 task and 300 examples" in console
    assert "rank 1 and column mean only reproduce Z exactly" in console
    assert result["correlations"]["tasks"] == [] and result["correlations"]["examples"]  # examples still correlate
    report, _ = check_report_links(out)
    assert report.count("Not computed: residual blocks") == 2  # at the top and in its section
    assert "1 task × 300 upstream examples" in report
    assert {"heatmap_sorted.png", "rank1_residual.png", "correlations_examples.png", "r2_over_steps.png"} <= \
        {f.name for f in out.glob("*.png")}
    assert "correlations_tasks.png" not in {f.name for f in out.glob("*.png")}
    assert json.loads((out / "analysis.json").read_text())["not_computed"] == result["not_computed"]
    # the closing block names report.md first and the next command; other flags in the same place need --force
    assert f"open first  {out / 'report.md'}" in console.splitlines()
    assert console.splitlines()[-1] == (f"next        python -m jaxforget.predict --matrix {one}   "
                                        "(can forgetting be predicted?)")
    with pytest.raises(SystemExit) as e:
        cli([str(one), "--tracker", "none", "--max-rank", "1"])
    assert e.value.code == 2 and f"{out / 'analysis.json'}: holds the output of other settings (--max-rank: 5 != 1" \
        in capsys.readouterr().err


def test_labels_of_the_fit_table_and_p_values(run_dir, tmp_path):
    from jaxforget.analyze import _fmt_p, _note

    run, _ = run_dir
    cli([str(run), "--max-rank", "1", "--max-blocks", "0", "--tracker", "none", "--out", str(tmp_path / "a")])
    table = (tmp_path / "a" / "fit_table.md").read_text()
    assert "| additive (ridge ALS, λ 15/10) |" in table and "μ + a_i + b_j" not in table
    assert [_fmt_p(p) for p in (0.5, 0.0123, 0.004, 2.2e-15, 0.0, None)] == \
        ["0.50", "0.01", "4.0e-03", "2.2e-15", "< 1e-300", "–"]
    note = _note(dict(pearson=0.98, pearson_p=3e-7, spearman=0.9, spearman_p=0.2))
    assert note == "Pearson 0.98 (p 3.0e-07), Spearman 0.90 (p 0.20)" and "p 0.00" not in note


def test_bad_inputs_are_clean_errors(tmp_path, run_dir, capsys):
    run, _ = run_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "forgetting.npz").write_bytes((run / "forgetting.npz").read_bytes())
    lines = (run / "tasks.jsonl").read_text().splitlines()

    def error(*flags: str, tasks: str | None = None) -> str:
        if tasks is not None:
            (bad / "tasks.jsonl").write_text(tasks)
        with pytest.raises(SystemExit) as e:
            cli([str(bad), "--tracker", "none", "--max-rank", "1", "--max-blocks", "0", *flags])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ")
        return err

    assert "--max-rank must be >= 1" in error("--max-rank", "0")
    assert "--sample-cols must be >= 0" in error("--sample-cols", "-1")
    assert "--residual-rank 400 exceeds min(tasks, examples) = 30" in error("--residual-rank", "400")
    assert "tasks.jsonl, line 2: not valid JSON" in error(tasks=lines[0] + "\n{not json\n")
    assert "tasks.jsonl, line 1: expected a JSON object with a 'name' field" in error(tasks='{"n": 1}\n')
    assert "no line with name = 'task_" in error(tasks="\n".join(lines[:5]) + "\n")  # 5 of 30 tasks
    assert "field 'base_loss' must be a number" in error(
        tasks="\n".join(re.sub(r'"base_loss": [^,}]+', '"base_loss": "high"', line) for line in lines))
    with pytest.raises(SystemExit):
        cli([str(tmp_path / "missing.npy")])
    assert "missing.npy: no such file" in capsys.readouterr().err


def test_every_config_field_has_a_docstring(tmp_path):
    import dataclasses
    import inspect

    import jaxforget.analyze

    text = inspect.getsource(jaxforget.analyze.AnalyzeConfig)
    for field in dataclasses.fields(AnalyzeConfig):
        assert re.search(rf"\n    {field.name}: [^\n]+\n    \"\"\"\S", text), f"{field.name} has no docstring"
    assert AnalyzeConfig(path=tmp_path).out_dir == tmp_path / "analysis"
    assert AnalyzeConfig(path=tmp_path / "z.npy").out_dir == tmp_path / "analysis_z"


def test_out_that_is_a_file_and_damaged_matrices_are_one_line(tmp_path, capsys):
    z = tmp_path / "z.npy"
    np.save(z, np.ones((3, 4), np.float32))
    (tmp_path / "report.txt").write_text("not a directory")
    cases = [
        ([str(z), "--out", str(tmp_path / "report.txt")], "--out {t}/report.txt: is a file, not a directory"),
        ([str(z), "--out", str(tmp_path / "report.txt" / "sub")],
         "--out {t}/report.txt/sub: {t}/report.txt is a file, so no directory can be created under it"),
        ([str(z), "--vmax", "inf"], "--vmax must be a finite number > 0; got inf"),
    ]
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 a truncated zip")
    cases.append(([str(tmp_path / "bad.npz")], "{t}/bad.npz: not a readable .npz archive"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            cli([*argv, "--tracker", "none"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message.format(t=tmp_path)}") and err.count("\n") == 1, err
