"""The LM-based forgetting predictor (``jaxforget.rep_dot``) on tiny planted settings, offline.

Planted: forgetting happens (z = 0.42 instead of 0.02) exactly when the task's examples contain a
marker token and the upstream example contains another one, so it is visible in the text only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxforget import rep_dot
from jaxforget.completion import evaluate
from jaxforget.models import ArchConfig, Decoder
from jaxforget.rep_dot import RepDotConfig, RepDotData, TokenArrays, example_macro_f1

A, B = 61, 62  # markers: upstream "forgettable", task "aggressive"
M, N = 12, 48
AGGRESSIVE = np.arange(M) < 6
FORGETTABLE = np.arange(N) % 2 == 0
TEST_ROWS = [0, 1, 6, 7]  # two aggressive, two calm
TRAIN_ROWS = [i for i in range(M) if i not in TEST_ROWS]
THRESHOLD = 0.1  # "forgotten": the planted 0.42 entries
CONFIG = RepDotConfig(out_dim=64, steps=120, episodes=16, eval_every=40, val_fraction=0.25, lr_encoder=1e-3,
                      lr_head=3e-3, encode_batch=32)


def _texts(marker: int | None, rng, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        seq = rng.integers(3, 60, rng.integers(5, 12))
        if marker is not None:
            seq[rng.integers(1, seq.size)] = marker
        out.append(np.concatenate([[1], seq, [2]]))  # BOS ... EOS, as the tokenizer policy renders them
    return out


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    upstream = [_texts(A if f else None, rng, 1)[0] for f in FORGETTABLE]
    tasks = [_texts(B if a else None, rng, 8) for a in AGGRESSIVE]
    Z = (0.02 + 0.4 * np.outer(AGGRESSIVE, FORGETTABLE) + 0.01 * rng.standard_normal((M, N))).astype(np.float32)
    arch = ArchConfig(family="llama", vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16,
                      d_ff=64)
    return Decoder(arch, rngs=nnx.Rngs(0)), RepDotData.build(upstream, tasks), Z


@pytest.fixture(scope="module")
def trained(planted):
    model, data, Z = planted
    return rep_dot.train(model, data, Z, TRAIN_ROWS, CONFIG, threshold=THRESHOLD)


def test_beats_a_constant_prediction_on_held_out_tasks(planted, trained):
    model, data, Z = planted
    rows = trained.predict_rows([data.tasks[i] for i in TEST_ROWS], data.upstream)
    truth = Z[TEST_ROWS]
    rmse = float(np.sqrt(np.mean((rows - truth) ** 2)))
    constant = float(np.sqrt(np.mean((Z[TRAIN_ROWS].mean() - truth) ** 2)))
    assert constant > 0.15  # the planted interaction is what a constant cannot predict
    assert rmse < 0.5 * constant, (rmse, constant)
    # the forgotten pairs are ranked above the others on every held-out task
    for r, t in zip(rows, TEST_ROWS):
        if AGGRESSIVE[t]:
            assert r[FORGETTABLE].min() > r[~FORGETTABLE].max()
    # the best validated step was kept, and validation really ran on held-out training tasks
    assert [h["step"] for h in trained.history] == [0, 40, 80, 120]
    assert trained.best_step == min(trained.history, key=lambda h: h["val_loss"])["step"]
    assert trained.history[-1]["val_loss"] < trained.history[0]["val_loss"]
    # one compiled train step for all steps; one encoder program per text length (upstream, tasks)
    step = rep_dot._step_fn(trained.graphdef, CONFIG.lr_encoder, CONFIG.lr_head, CONFIG.scale, CONFIG.loss,
                            CONFIG.episodes, THRESHOLD)
    assert step._cache_size() == 1
    lengths = {data.upstream.ids.shape[1], data.tasks[0].ids.shape[1]}
    assert rep_dot._encode_fn(trained.graphdef)._cache_size() == len(lengths)


def test_same_seed_same_predictor_and_test_rows_never_seen(planted, trained):
    model, data, Z = planted
    # poison what training must not read: the test rows of Z and the test tasks' texts
    Zp = Z.copy()
    Zp[TEST_ROWS] = np.nan
    Zp[TEST_ROWS[0], :5] = 1e30
    noise = np.random.default_rng(5)
    tasks = [TokenArrays(noise.integers(3, 64, t.ids.shape).astype(np.int32), t.lengths) if i in TEST_ROWS else t
             for i, t in enumerate(data.tasks)]
    again = rep_dot.train(model, RepDotData(data.upstream, tasks), Zp, TRAIN_ROWS, CONFIG, threshold=THRESHOLD)
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    test_tasks = [data.tasks[i] for i in TEST_ROWS]
    np.testing.assert_array_equal(trained.predict_rows(test_tasks, data.upstream),
                                  again.predict_rows(test_tasks, data.upstream))
    np.testing.assert_array_equal(trained.episodes, again.episodes)

    # what the trainer sampled: fit rows only, never a test or validation row; episodes as specified
    ep = trained.episodes
    assert ep.shape == (CONFIG.steps, CONFIG.episodes, 4)
    assert sorted(trained.fit_rows + trained.val_rows) == TRAIN_ROWS and len(trained.val_rows) == 2
    assert set(np.unique(ep[..., 0])) == set(trained.fit_rows)
    assert not set(np.unique(ep[..., 0])) & (set(TEST_ROWS) | set(trained.val_rows))
    counts = np.asarray([len(t) for t in data.tasks])
    assert (ep[..., 1] >= 0).all() and (ep[..., 1] < counts[ep[..., 0]]).all()
    # aggressive tasks: one forgotten (z > threshold) and one other example; calm tasks forgot nothing, so
    # both are drawn from all their entries
    aggressive = AGGRESSIVE[ep[..., 0]]
    assert FORGETTABLE[ep[..., 2]][aggressive].all() and not FORGETTABLE[ep[..., 3]][aggressive].any()
    assert 0.3 < FORGETTABLE[ep[..., 2:]][~aggressive].mean() < 0.7
    # another seed is another predictor (the equality above is not vacuous)
    other = rep_dot.train(model, data, Z, TRAIN_ROWS, dataclasses.replace(CONFIG, steps=1, seed=1),
                          threshold=THRESHOLD)
    assert other.val_rows != trained.val_rows or not np.array_equal(other.episodes[0], trained.episodes[0])


def test_per_example_macro_f1_is_a_mean_of_per_example_f1():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 20))
    hidden = rng.random((3, 20)) < 0.7
    sc = rng.standard_normal((7, 20))
    owner = np.array([0, 0, 1, 1, 1, 2, 2])
    expect = []
    for x, t in enumerate(owner):
        truth = {j for j in range(20) if hidden[t, j] and z[t, j] > 0.1}
        guess = {j for j in range(20) if hidden[t, j] and sc[x, j] > -0.2}
        tp = len(truth & guess)
        expect.append(2 * tp / (len(truth) + len(guess)) if truth or guess else 0.0)
    got = example_macro_f1(sc, owner, z, hidden, threshold=0.1, pred_threshold=-0.2)
    assert got == pytest.approx(np.mean(expect), abs=1e-12)


def test_added_predictions_are_scored_on_the_protocol_entries(planted):
    _, _, Z = planted
    res = evaluate(Z, test_rows=TEST_ROWS, methods=["additive"], k=6, seeds=(0, 1), top_n=5)
    res.add("again", res.predictions["additive"], seconds=0.0, extra_metrics=dict(extra=[1.0, 2.0]))
    for name, v in res.metrics["additive"].items():
        np.testing.assert_array_equal(res.metrics["again"][name], v)
    assert res.hidden.shape == (2, 4, N) and not (res.hidden & res.reveal).any()
    lines = res.table().splitlines()
    header = lines[0]
    additive, again = (next(ln for ln in lines if ln.startswith(f"| {m} |")) for m in ("additive", "again"))
    assert header.split("|")[-3].strip() == "extra"
    assert additive.split("|")[-3].strip() == "—"  # a metric the method does not have
    assert again.split("|")[-3].strip() == "1.5000 ± 0.5000"
    assert next(ln for ln in lines if ln.startswith("| zero (baseline) |")).split("|")[-3].strip() == "—"
    with pytest.raises(ValueError, match=r"predictions of shape \(4, 48\)"):
        res.add("bad", res.predictions["additive"][0], seconds=0.0)
    empty = evaluate(Z, test_rows=TEST_ROWS, methods=[], k=6, seeds=(0, 1))
    np.testing.assert_array_equal(empty.hidden, res.hidden)


def test_bad_input_names_the_problem(planted):
    model, data, Z = planted
    with pytest.raises(ValueError, match="unknown option.*'stepz' for method 'rep_dot'"):
        RepDotConfig.from_options({"stepz": 3})
    with pytest.raises(ValueError, match="rep_dot option steps must be >= 1; got 0"):
        RepDotConfig.from_options({"steps": 0})
    with pytest.raises(ValueError, match="rep_dot option loss must be one of regression, binary"):
        RepDotConfig.from_options({"loss": "hinge"})
    with pytest.raises(ValueError, match="rep_dot option lr_head='fast': expected float"):
        RepDotConfig.from_options({"lr_head": "fast"})
    with pytest.raises(ValueError, match="rep_dot option seed is set by the protocol"):
        RepDotConfig.from_options({"seed": 3}, reserved=("seed",))
    assert RepDotConfig.from_options({"lr_head": 1, "hidden": None}).lr_head == 1.0
    with pytest.raises(ValueError, match=r"do not match Z of shape \(12, 47\)"):
        rep_dot.train(model, data, Z[:, :47], TRAIN_ROWS, CONFIG)
    Zn = Z.copy()
    Zn[3] = np.nan
    with pytest.raises(ValueError, match=r"training task \(row 3 of Z\) has no observed entry"):
        rep_dot.train(model, data, Zn, TRAIN_ROWS, CONFIG)
    with pytest.raises(ValueError, match="train_rows must be distinct row indices"):
        rep_dot.train(model, data, Z, [2, 2], CONFIG)
    with pytest.raises(ValueError, match=r"task\(s\) \[1\] have no examples"):
        RepDotData.build([[1, 5, 2]], [[[1, 4, 2]], []])


# ------------------------------------------------------------------------------------------------
# python -m jaxforget.predict with rep_dot on a collect-style run directory


def _write_run(root: Path) -> Path:
    """A run directory as collect leaves it (meta.json + forgetting.npz) over a tiny local model, corpus and
    task files, with Z planted on words of the texts."""
    from jaxforget.collect import CollectConfig, DataConfig, ModelConfig, build_setup
    from jaxforget.data.tokenizer_train import train_bpe
    from jaxforget.models import save_hf
    from jaxforget.store import RunDir

    rng = np.random.default_rng(0)
    words = "red blue green cat dog sun moon tree rock fish bird lake hill road".split()
    upstream = [dict(id=f"u{j}", source="zebra" if j % 2 == 0 else "plain",
                     text=" ".join(rng.choice(words, 6)) + (" zebra" if j % 2 == 0 else "")) for j in range(24)]
    (root / "tasks").mkdir(parents=True)
    (root / "up.jsonl").write_text("".join(json.dumps(r) + "\n" for r in upstream))
    for i in range(8):
        recs = [dict(prompt=" ".join(rng.choice(words, 4)) + (" storm" if i < 4 else ""),
                     completion=" ".join(rng.choice(words, 2))) for _ in range(6)]
        (root / "tasks" / f"task{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    tok = train_bpe([r["text"] for r in upstream] + ["storm zebra"] * 3, vocab_size=300)
    arch = ArchConfig(family="llama", vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                      head_dim=16, d_ff=64, max_positions=128, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    save_hf(Decoder(arch, rngs=nnx.Rngs(0)), root / "model", tokenizer=tok)
    cc = CollectConfig(out=root / "run", model=ModelConfig(path=root / "model"),
                       data=DataConfig(upstream=root / "up.jsonl", tasks=root / "tasks", n_upstream=24))
    setup = build_setup(cc, echo=lambda *_: None)
    ids = [ex.id for ex in setup.upstream]
    Z = 0.02 + 0.4 * np.outer([int(n[-1]) < 4 for n in setup.task_names], [u.endswith("zebra") for u in
                                                                             (ex.text for ex in setup.upstream)])
    RunDir(cc.out).start(dict(config=json.loads(json.dumps(dataclasses.asdict(cc), default=str)),
                              model_dir=str(setup.model_dir), task_names=setup.task_names, example_ids=ids))
    np.savez(cc.out / "forgetting.npz", Z=Z.astype(np.float32), task_names=np.asarray(setup.task_names),
             example_ids=np.asarray(ids))
    return cc.out


def test_predict_cli_compares_rep_dot_with_completion_on_one_split(tmp_path, capsys):
    from jaxforget.predict import cli

    run = _write_run(tmp_path)
    out = tmp_path / "res.json"
    report = cli(["--matrix", str(run), "--methods", "additive", "rep_dot:steps=20,eval_every=10,out_dim=32",
                  "--split", "task0,task5", "--k", "4", "--seeds", "0", "1", "--top-n", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    label = "rep_dot:steps=20,eval_every=10,out_dim=32"
    assert f"| {label} |" in printed and "| additive |" in printed
    header = [c.strip() for c in printed.split("| method |")[1].splitlines()[0].split("|")]
    assert "example_macro_f1" in header
    saved = json.loads(out.read_text())
    assert saved["test_tasks"] == ["task0", "task5"] and saved["seeds"] == [0, 1]
    per_seed = saved["per_seed"][label]
    assert len(per_seed["rmse"]) == 2 and all(np.isfinite(per_seed["rmse"]))
    assert all(0 <= f <= 1 for f in per_seed["example_macro_f1"])
    assert "example_macro_f1" not in saved["per_seed"]["additive"]
    runs = saved["settings"]["methods"][label]["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    test_rows = {0, 5}
    assert all(not set(r["val_rows"]) & test_rows for r in runs)
    assert saved["settings"]["methods"][label]["steps"] == 20
    assert report["summary"][label]["rmse"]["mean"] == saved["summary"][label]["rmse"]["mean"]


def test_predict_cli_rep_dot_needs_a_run_directory(tmp_path, capsys):
    from jaxforget.predict import cli

    np.save(tmp_path / "z.npy", np.ones((4, 10), np.float32))
    with pytest.raises(SystemExit) as e:
        cli(["--matrix", str(tmp_path / "z.npy"), "--methods", "additive", "rep_dot",
             "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--methods rep_dot" in err and "needs --matrix RUN" in err
    with pytest.raises(SystemExit):
        cli(["--methods", "rep_dot:stepz=3", "--out", str(tmp_path / "x.json")])
    assert "unknown option(s) 'stepz' for method 'rep_dot'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
