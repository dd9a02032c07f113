"""Precision and memory knobs: remat policies leave results unchanged, bfloat16 parameters train
with float32 Adam moments, and jax.nn.dot_product_attention (its XLA implementation, the one
that runs on CPU) equals the native attention path, forward and backward."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxforget import models
from jaxforget.models import decoder
from jaxforget.train import OptimConfig, init_train_state, make_optimizer, make_train_step, start_state
from tests.models import tiny_hf

ARCH = models.ArchConfig(family="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         head_dim=8, d_ff=48)


def _batch(B=4, T=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, ARCH.vocab_size, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[0, 11:] = 0  # right padding
    mask[1, :5] = 0  # left padding
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(mask.astype(bool))


def _train(remat="none", param_dtype=jnp.float32, steps=2):
    model = models.Decoder(ARCH, rngs=nnx.Rngs(0), param_dtype=param_dtype, remat=remat)
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, total_steps=10))
    split, base = init_train_state(model, tx)
    step = make_train_step(split, tx)
    state = start_state(base.params, tx)
    losses = []
    for i in range(steps):
        state, m = step(state, *_batch())
        losses.append(float(m["loss"]))
    return state, np.asarray(losses)


@pytest.mark.slow
def test_remat_equals_no_remat_and_saves_memory():
    """Gradients under each policy equal those without remat, and the policies really apply: the
    compiled backward pass needs less temporary memory with 'full' than without (a 4-layer model:
    the layer loop rolled, as remat makes it; the largest buffers are per-layer activations)."""
    arch = dataclasses.replace(ARCH, n_layers=4, d_ff=256)
    ids, mask, loss = _batch(B=8, T=64)
    out = {}
    for remat in decoder.REMAT_POLICIES:
        graphdef, params = nnx.split(models.Decoder(arch, rngs=nnx.Rngs(0), remat=remat, scan_unroll=1))

        def f(p, graphdef=graphdef):
            return jnp.sum(models.nll_sums(nnx.merge(graphdef, p), ids, mask, loss)[0])

        compiled = jax.jit(jax.value_and_grad(f)).lower(params).compile()
        out[remat] = compiled(params), compiled.memory_analysis().temp_size_in_bytes
    (ref_val, ref_grads), ref_temp = out["none"]
    for remat in ("full", "dots-saveable"):
        (val, grads), _ = out[remat]
        np.testing.assert_allclose(float(val), float(ref_val), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            # float32 rounding of recomputed fusions: 1e-5 of each gradient's scale (a sum over 512 tokens)
            b = np.asarray(b)
            np.testing.assert_allclose(np.asarray(a), b, atol=1e-5 * np.abs(b).max(), rtol=1e-5, err_msg=remat)
    assert out["full"][1] < out["dots-saveable"][1] < 0.7 * ref_temp


def test_unknown_remat_is_refused():
    with pytest.raises(ValueError, match="remat must be one of"):
        models.Decoder(ARCH, rngs=nnx.Rngs(0), remat="some")


@pytest.mark.slow
def test_bfloat16_parameters_train_with_float32_moments():
    state, losses = _train(param_dtype=jnp.bfloat16, steps=3)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {jnp.dtype(jnp.float32)}
    assert np.all(np.isfinite(losses))
    assert losses[2] < losses[1] < losses[0]  # the same batch three times: the updates are not lost to rounding
    # the same initial weights rounded to bfloat16: the first loss is close to float32's
    ref = models.Decoder(ARCH, rngs=nnx.Rngs(0))
    ids, mask, loss = _batch()
    ref_loss = float(jnp.sum(models.nll_sums(ref, ids, mask, loss)[0]) / jnp.sum(models.nll_sums(ref, ids, mask, loss)[1]))
    assert abs(losses[0] - ref_loss) < 0.01


def test_bfloat16_parameters_load_from_a_checkpoint(tmp_path):
    tiny_hf.save("llama", tmp_path, tokenizer=False)
    ref, _ = models.load(tmp_path, tokenizer=False)
    bf, _ = models.load(tmp_path, tokenizer=False, param_dtype=jnp.bfloat16)
    for name in ref.param_names:
        w = getattr(bf, name)[...]
        assert w.dtype == jnp.bfloat16, name
        np.testing.assert_array_equal(np.asarray(w), np.asarray(getattr(ref, name)[...].astype(jnp.bfloat16)))


@pytest.mark.parametrize("padding", ["left", "right"])
def test_dot_product_attention_xla_equals_native(padding):
    B, T, H, K, E = 3, 12, 6, 2, 8
    ks = jax.random.split(jax.random.key(0), 4)
    q, w = (jax.random.normal(kk, (B, T, H, E)) for kk in ks[:2])
    k, v = (jax.random.normal(kk, (B, T, K, E)) for kk in ks[2:])
    _, mask = tiny_hf.batch(B=B, T_=T, padding=padding)
    bias = decoder.attention_bias(jnp.asarray(mask), jnp.arange(T))
    valid = jnp.asarray(mask, jnp.float32)[:, :, None, None]  # padding query rows are not compared

    def loss(impl):
        def f(q, k, v):
            if impl == "native":
                out = decoder._native_attention(q, k, v, bias, E ** -0.5, jnp.float32)
            else:
                out = decoder._dpa_attention(q, k, v, bias, E ** -0.5, jnp.float32, impl)
            return jnp.sum(out * w * valid), out
        return f

    (val, out), grads = jax.value_and_grad(loss("xla"), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (rval, rout), rgrads = jax.value_and_grad(loss("native"), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(np.asarray(out * valid), np.asarray(rout * valid), atol=1e-5)
    np.testing.assert_allclose(float(val), float(rval), rtol=1e-5)
    for name, g, r in zip("qkv", grads, rgrads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-5, rtol=1e-5, err_msg=name)


def test_model_with_xla_attention_equals_native(monkeypatch):
    model = models.Decoder(ARCH, rngs=nnx.Rngs(1))
    ids, mask, loss = _batch()
    ref = models.mean_nll(model, ids, mask, loss)
    monkeypatch.setenv("JAXFORGET_ATTENTION", "xla")
    # `forward` is jitted and the choice is made at trace time: a fresh jit of a copy of it, for this test
    # only (jit shares its cache between wrappers of one function object, which would hand back the
    # native trace of the reference call above)
    f = decoder.forward.__wrapped__
    copy = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    copy.__kwdefaults__ = f.__kwdefaults__
    fresh = jax.jit(copy, static_argnames=("arch", "dtype", "lora_config", "unroll", "remat"))
    monkeypatch.setattr(decoder, "forward", fresh)
    got = models.mean_nll(model, ids, mask, loss)
    assert fresh._cache_size() == 1
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5)
    monkeypatch.delenv("JAXFORGET_ATTENTION")
    assert decoder.attention_impl(jnp.float32, 8, 16, 16) == "native"  # CPU, auto


def test_unknown_attention_env_is_refused(monkeypatch):
    monkeypatch.setenv("JAXFORGET_ATTENTION", "flash")
    with pytest.raises(ValueError, match="JAXFORGET_ATTENTION"):
        decoder.attention_impl(jnp.bfloat16, 64, 8, 8)


@pytest.mark.slow
def test_collect_with_bfloat16_parameters_and_remat(cache, tmp_path):
    """End to end: a tiny collect run with bfloat16 parameters and full remat finishes with a finite Z."""
    from test_collect import tiny

    from jaxforget.collect import collect
    from jaxforget.collect.config import ModelConfig

    base = tiny(tmp_path / "run")
    config = dataclasses.replace(base, model=ModelConfig(param_dtype="bfloat16", dtype="bfloat16"),
                                 train=dataclasses.replace(base.train, remat="full"))
    assert collect(config, echo=lambda *_: None) == 0
    z = np.load(tmp_path / "run" / "forgetting.npz")["Z"]
    assert z.shape[1] == 50 and np.all(np.isfinite(z))
