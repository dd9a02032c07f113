"""train.py (the reusable step) and pretrain.py (the built-in base model, HF export, caching)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxforget.data.batching import Batcher
from jaxforget.data.tokenize import Tokenized
from jaxforget.data.world import WorldConfig
from jaxforget.models import ArchConfig, Decoder
from jaxforget.pretrain import BaseModelConfig, PretrainTrainConfig, cli, ensure_base_model
from jaxforget.train import OptimConfig, batch_loss, init_train_state, make_eval_step, make_optimizer, \
    make_train_step, merge_model

ARCH = ArchConfig(family="llama", vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16,
                  d_ff=64, max_positions=64)


def tiny_examples(n=24, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):  # a learnable pattern: counting up from a random start
        L = int(rng.integers(6, 30))
        ids = (rng.integers(3, 40) + np.arange(L)) % 61 + 3
        mask = np.ones(L, bool)
        mask[0] = False
        out.append(Tokenized(ids.astype(np.int32), mask, f"e{i}", "g", False))
    return out


def test_schedule():
    sched = OptimConfig(lr=1e-2, warmup_steps=10, total_steps=110, end_lr_fraction=0.1).schedule()
    np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(60), sched(110)],
                               [0.0, 5e-3, 1e-2, 5.5e-3, 1e-3], rtol=1e-5)


def test_step_lowers_loss_and_compiles_once_per_shape():
    model = Decoder(ARCH, rngs=nnx.Rngs(0))
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=2, total_steps=40))
    split, state = init_train_state(model, tx)
    step = make_train_step(split, tx)
    batcher = Batcher(tiny_examples(), batch_size=8, buckets=(16, 32), seed=0)
    assert len(batcher.shapes) == 2
    losses = []
    for batch in batcher.batches(40):
        state, metrics = step(state, batch.input_ids, batch.attention_mask, batch.loss_mask)
        losses.append(float(metrics["loss"]))
        assert int(metrics["n_targets"]) == int(batch.loss_mask[:, 1:].sum())
    assert step.jitted._cache_size() == 2  # one trace per bucket shape, reused for 40 steps
    assert int(state.step) == 40
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    trained = merge_model(split, state)
    assert isinstance(trained, Decoder)
    np.testing.assert_array_equal(trained.embed[...], state.params["embed"][...])


def test_loss_is_the_token_weighted_mean_and_ignores_padding_rows():
    from jaxforget.models import nll_sums

    model = Decoder(ARCH, rngs=nnx.Rngs(1))
    split, state = init_train_state(model, make_optimizer(OptimConfig()))
    b = next(Batcher(tiny_examples(5), batch_size=8, buckets=(32,), shuffle=False).epoch(0))
    assert (b.index < 0).sum() == 3
    loss, aux = batch_loss(split.graphdef, state.params, split.frozen, b.input_ids, b.attention_mask, b.loss_mask)
    sums, counts = nll_sums(model, jnp.asarray(b.input_ids), jnp.asarray(b.attention_mask), jnp.asarray(b.loss_mask))
    np.testing.assert_allclose(float(loss), float(sums.sum() / counts.sum()), rtol=1e-6)
    real = b.index >= 0
    loss_real, _ = batch_loss(split.graphdef, state.params, split.frozen, b.input_ids[real], b.attention_mask[real],
                              b.loss_mask[real])
    np.testing.assert_allclose(float(loss), float(loss_real), rtol=1e-6)
    sums_e, counts_e = make_eval_step(split)(state.params, b.input_ids, b.attention_mask, b.loss_mask)
    np.testing.assert_allclose(np.asarray(sums_e), np.asarray(aux["nll_sum"]), rtol=1e-6)


def test_lora_step_trains_only_the_adapters():
    from jaxforget.models import LoraConfig, LoRAParam, add_lora

    model = add_lora(Decoder(ARCH, rngs=nnx.Rngs(0)), LoraConfig(rank=2, targets=("q", "v")))
    base_wq = np.asarray(model.wq[...])
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, total_steps=5))
    split, state = init_train_state(model, tx, wrt=LoRAParam)
    step = make_train_step(split, tx)
    b = next(Batcher(tiny_examples(8), batch_size=8, buckets=(32,), seed=0).epoch(0))
    for _ in range(3):
        state, _ = step(state, b.input_ids, b.attention_mask, b.loss_mask)
    trained = merge_model(split, state)
    np.testing.assert_array_equal(np.asarray(trained.wq[...]), base_wq)
    assert float(jnp.abs(trained.lora.b_wq[...]).max()) > 0  # B starts at 0 and moved


# ---------------------------------------------------------------------------------------------
# pretrain
# ---------------------------------------------------------------------------------------------

TINY_WORLD = WorldConfig(seed=0, n_countries=8, n_people=8, n_upstream=480, task_scale=0.05)
TINY_MODEL = BaseModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=300, max_len=64)
TINY_TRAIN = PretrainTrainConfig(epochs=2.0, batch_size=16, lr=1e-2, warmup_steps=5, buckets=(32, 64),
                                 eval_per_domain=8, log_every=0)


def test_arch_for_every_family():
    from jaxforget.data.tokenizer_train import train_bpe

    tok = train_bpe(["some text 1 + 2 = 3"] * 5, vocab_size=280)
    for family in ("llama", "gpt2", "gpt_neox", "olmo", "olmo2"):
        arch = BaseModelConfig(family=family, d_model=32, n_heads=2).arch(tok)
        assert (arch.family, arch.vocab_size, arch.d_model, arch.eos_token_id) == (family, len(tok), 32, 2)
    with pytest.raises(ValueError, match="not a multiple of n_heads"):
        BaseModelConfig(d_model=30, n_heads=4).arch(tok)


def test_pretrain_cli_writes_a_checkpoint_that_jaxforget_and_transformers_load(tmp_path, capsys, monkeypatch):
    import torch
    import transformers

    from jaxforget.models import load

    out = tmp_path / "base"
    argv = ["--out", str(out), "--world.n-countries", "8", "--world.n-people", "8", "--world.n-upstream", "480",
            "--world.task-scale", "0.05", "--base.d-model", "32", "--base.n-layers", "1", "--base.n-heads", "2",
            "--base.d-ff", "64", "--base.vocab-size", "300", "--pretrain.epochs", "2", "--pretrain.batch-size", "16",
            "--pretrain.lr", "1e-2", "--pretrain.warmup-steps", "5", "--pretrain.buckets", "32", "64",
            "--pretrain.eval-per-domain", "8", "--pretrain.log-every", "0"]
    monkeypatch.setenv("JAXFORGET_CACHE", str(tmp_path / "cache"))  # the world is cached here
    assert cli(argv) == out
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["world"]  # the model went to --out
    printed = capsys.readouterr().out
    assert "final training loss" in printed and "held-out draws" in printed
    report = json.loads((out / "pretrain.json").read_text())
    assert report["n_examples"] == 480 and report["steps"] == 2 * report["steps_per_epoch"] >= 60
    assert report["final_loss"] < report["first_loss"] - 1.5  # from ~ln(300) = 5.7
    assert set(report["corpus_nll"]) == {"facts", "arithmetic", "code", "dialogue", "lists", "stories", "all"}
    assert all(np.isfinite(v) for v in report["heldout_nll"].values())
    assert (out / ".complete").is_file() and (out / "tokenizer.json").is_file()

    model, tok = load(out)
    assert len(tok) == 300 and model.arch.n_layers == 1 and tok.eos_token_id == 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = [tok.bos_token_id] + tok("The capital of", add_special_tokens=False)["input_ids"]
    assert hf_tok("The capital of", add_special_tokens=False)["input_ids"] == ids[1:]
    x = np.array([ids, ids[:3] + [tok.pad_token_id] * (len(ids) - 3)], np.int32)
    mask = (np.arange(len(ids)) < np.array([[len(ids)], [3]])).astype(np.int32)
    ours = np.asarray(model(jnp.asarray(x), attention_mask=jnp.asarray(mask)))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(x, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours[1, :3], theirs[1, :3], atol=1e-4, rtol=1e-4)

    # an existing finished model is kept unless --force
    assert cli(argv) == out
    assert "already holds a finished model" in capsys.readouterr().out


def test_ensure_base_model_builds_once_then_reuses(tmp_path):
    messages = []
    path = ensure_base_model(TINY_WORLD, TINY_MODEL, TINY_TRAIN, cache_dir=tmp_path, echo=messages.append)
    assert path.parent == tmp_path / "base" and (path / "model.safetensors").is_file()
    assert any("building the base model" in m for m in messages)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    messages.clear()
    assert ensure_base_model(TINY_WORLD, TINY_MODEL, TINY_TRAIN, cache_dir=tmp_path, echo=messages.append) == path
    assert messages == [f"pretrain: reusing the base model in {path}"]
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == [path.name]  # no temp dir left behind
    report = json.loads((path / "pretrain.json").read_text())
    assert report["world"]["seed"] == 0 and report["model"]["n_layers"] == 1


def test_gradient_accumulation_equals_one_big_batch():
    import optax

    tx = optax.sgd(1.0)  # plain SGD: the update is the gradient (Adam's first step would amplify rounding)
    b = next(Batcher(tiny_examples(8), batch_size=8, buckets=(32,), shuffle=False).epoch(0))
    results = []
    for shape in [(8, 32), (2, 4, 32)]:
        split, state = init_train_state(Decoder(ARCH, rngs=nnx.Rngs(0)), tx)
        step = make_train_step(split, tx)
        state, m = step(state, b.input_ids.reshape(shape), b.attention_mask.reshape(shape),
                        b.loss_mask.reshape(shape))
        assert m["example_nll_sum"].shape == shape[:-1]
        results.append((float(m["loss"]), float(m["grad_norm"]), np.asarray(state.params["wq"][...])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-5, atol=1e-8)


def test_one_step_function_serves_every_task():
    """start_state copies the base parameters, so tasks run one after another on one compiled step."""
    from jaxforget.train import start_state

    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, total_steps=5))
    split, base = init_train_state(Decoder(ARCH, rngs=nnx.Rngs(0)), tx)
    base_embed = np.asarray(base.params["embed"][...])
    step = make_train_step(split, tx)
    finals = []
    for seed in (1, 2):  # two "tasks"
        state = start_state(base.params, tx)
        b = next(Batcher(tiny_examples(8, seed=seed), batch_size=8, buckets=(32,), seed=0).epoch(0))
        for _ in range(3):
            state, _ = step(state, b.input_ids, b.attention_mask, b.loss_mask)
        finals.append(np.asarray(state.params["embed"][...]))
        np.testing.assert_array_equal(np.asarray(base.params["embed"][...]), base_embed)  # base untouched
    assert step.jitted._cache_size() == 1
    assert not np.allclose(finals[0], finals[1])


def test_pretrain_flags_are_checked_before_any_work(tmp_path, capsys):
    from jaxforget.pretrain import cli

    with pytest.raises(SystemExit) as e:
        cli(["--out", str(tmp_path / "m"), "--pretrain.lr", "nan", "--base.n-layers", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: --base.n-layers must be >= 1; got 0; --pretrain.lr must be a finite "
                                       "number > 0; got nan\n")
    assert not (tmp_path / "m").exists()
