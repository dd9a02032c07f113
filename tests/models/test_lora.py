"""LoRA: separate adapter parameters, merge/unmerge, export, adapter-only training, stacked adapters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxforget import models
from jaxforget.models import LoraConfig, LoRAParam
from tests.models import tiny_hf

CFG = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_lora")
    tiny_hf.save("llama", path)
    return path


def _randomize_b(model, seed=1):
    """Fresh adapters have B = 0; give them values so that the delta is non-zero."""
    key = jax.random.key(seed)
    for name in model.lora.names:
        if name.startswith("b_"):
            key, sub = jax.random.split(key)
            var = getattr(model.lora, name)
            var[...] = 0.2 * jax.random.normal(sub, var.shape)


def _logits(model, ids, mask):
    return np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


def test_fresh_adapter_is_identity_and_trained_one_is_not(hf_dir):
    model, _ = models.load(hf_dir)
    ids, mask = tiny_hf.batch()
    base = _logits(model, ids, mask)
    models.add_lora(model, CFG)
    np.testing.assert_array_equal(_logits(model, ids, mask), base)
    _randomize_b(model)
    assert np.abs(_logits(model, ids, mask) - base).max() > 1e-2


def test_merge_unmerge_and_export_match(hf_dir, tmp_path):
    model, tok = models.load(hf_dir)
    base_wq = np.asarray(model.wq[...])
    models.add_lora(model, CFG)
    _randomize_b(model)
    ids, mask = tiny_hf.batch(padding="right")
    real = mask.astype(bool)
    adapted = _logits(model, ids, mask)

    models.save_hf(model, tmp_path / "merged", tokenizer=tok)  # merges on the fly, model unchanged
    assert not model.lora.merged
    hf = tiny_hf.load_hf(tmp_path / "merged")
    assert np.abs(tiny_hf.hf_logits(hf, ids, mask) - adapted)[real].max() <= 1e-4

    models.merge_lora(model)
    assert model.lora.merged
    assert np.abs(_logits(model, ids, mask) - adapted)[real].max() <= 1e-5
    models.unmerge_lora(model)
    np.testing.assert_allclose(np.asarray(model.wq[...]), base_wq, atol=1e-6)
    assert np.abs(_logits(model, ids, mask) - adapted)[real].max() <= 1e-5


def test_only_adapters_train(hf_dir):
    model, _ = models.load(hf_dir)
    models.add_lora(model, LoraConfig(rank=4, alpha=8.0, targets=("q", "v")))
    ids, mask = tiny_hf.batch(seed=7)
    base = {k: np.asarray(v) for k, v in model.weights().items()}
    before = {k: np.asarray(v) for k, v in model.lora.weights().items()}
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=LoRAParam)

    @nnx.jit
    def step(model, opt, ids, mask):
        def loss_fn(m):
            return jnp.mean(models.mean_nll(m, ids, mask))
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, LoRAParam))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, jnp.asarray(ids), jnp.asarray(mask))) for _ in range(5)]
    assert losses[-1] < losses[0]
    for k, v in model.weights().items():
        np.testing.assert_array_equal(np.asarray(v), base[k])
    assert all(np.abs(np.asarray(v) - before[k]).max() > 0 for k, v in model.lora.weights().items())


def test_stacked_adapters_vmap_equals_each_alone(hf_dir):
    model, _ = models.load(hf_dir)
    models.add_lora(model, LoraConfig(rank=2, alpha=4.0, targets=("q", "up")), n_adapters=3)
    _randomize_b(model, seed=3)
    assert model.lora.a_wq.shape[0] == 3
    ids, mask = tiny_hf.batch(seed=8)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    all_nll = jax.jit(models.vmap_adapters(models.mean_nll, model))(ids, mask)
    assert all_nll.shape == (3, ids.shape[0])
    for i in range(3):
        alone = models.mean_nll(models.select_adapter(model, i), ids, mask)
        np.testing.assert_allclose(np.asarray(all_nll[i]), np.asarray(alone), atol=1e-5, rtol=0)
    assert np.abs(np.asarray(all_nll[0] - all_nll[1])).max() > 1e-4


def test_adapter_save_load_round_trip(hf_dir, tmp_path):
    model, _ = models.load(hf_dir)
    models.add_lora(model, CFG)
    _randomize_b(model)
    ids, mask = tiny_hf.batch()
    adapted = _logits(model, ids, mask)
    models.save_adapter(model, tmp_path / "adapter")
    fresh, _ = models.load(hf_dir)
    models.load_adapter(fresh, tmp_path / "adapter")
    np.testing.assert_array_equal(_logits(fresh, ids, mask), adapted)


def test_lora_dropout_only_with_key(hf_dir):
    model, _ = models.load(hf_dir)
    models.add_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.5, targets=("q", "v")))
    _randomize_b(model)
    ids, mask = jnp.asarray(tiny_hf.batch()[0]), jnp.asarray(tiny_hf.batch()[1])
    a, b = model(ids, attention_mask=mask), model(ids, attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = model(ids, attention_mask=mask, dropout_key=jax.random.key(0))
    assert np.abs(np.asarray(c - a)).max() > 1e-3


def test_vmapped_training_gradients_equal_each_adapter_alone(hf_dir):
    model, _ = models.load(hf_dir)
    models.add_lora(model, LoraConfig(rank=2, alpha=4.0, targets=("v", "down")), n_adapters=2)
    _randomize_b(model, seed=5)
    ids, mask = tiny_hf.batch(B=2, seed=9)
    ids_nbt = jnp.asarray(np.stack([ids, ids[::-1]]))  # each adapter trains on its own task batch
    mask_nbt = jnp.asarray(np.stack([mask, mask[::-1]]))
    graphdef, lora, rest = nnx.split(model, LoRAParam, ...)

    def task_loss(lora_i, x, m):
        return jnp.mean(models.mean_nll(nnx.merge(graphdef, lora_i, rest), x, m))

    grads = jax.jit(jax.grad(lambda l: jnp.sum(jax.vmap(task_loss)(l, ids_nbt, mask_nbt))))(lora)
    grad_one = jax.jit(jax.grad(task_loss))
    for i in range(2):
        alone = grad_one(jax.tree.map(lambda a: a[i], lora), ids_nbt[i], mask_nbt[i])
        for g_all, g_one in zip(jax.tree.leaves(grads), jax.tree.leaves(alone)):
            np.testing.assert_allclose(np.asarray(g_all[i]), np.asarray(g_one), atol=1e-6, rtol=1e-5)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
