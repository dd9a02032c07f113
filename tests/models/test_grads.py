"""Gradients: the hand-written VJPs (attention, silu gate) against autodiff of the plain
expressions, and whole-model gradients of the mean NLL against torch autograd of transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxforget import models
from jaxforget.models import decoder
from tests.models import tiny_hf

_NEG = float(np.finfo(np.float32).min)


def _plain_attention(q_bthe, k_bske, v_bske, key_mask_bs, scale):
    """The textbook expression (masked scores, softmax, weighted values), differentiated by autodiff."""
    B, T, H, E = q_bthe.shape
    S, K = k_bske.shape[1], k_bske.shape[2]
    k = jnp.repeat(k_bske, H // K, axis=2)
    v = jnp.repeat(v_bske, H // K, axis=2)
    scores = jnp.einsum("bthe,bshe->bhts", q_bthe, k) * scale
    allowed = key_mask_bs[:, None, None, :].astype(bool) & (jnp.arange(S)[None, :] <= jnp.arange(T)[:, None])
    probs = jax.nn.softmax(jnp.where(allowed, scores, _NEG), axis=-1)
    return jnp.einsum("bhts,bshe->bthe", probs, v)


@pytest.mark.parametrize("transpose_small", [False, True])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_attention_vjp_matches_autodiff(monkeypatch, transpose_small, padding):
    monkeypatch.setattr(decoder, "_on_cpu", lambda: transpose_small)
    B, T, H, K, E = 4, 12, 6, 2, 8
    ks = jax.random.split(jax.random.key(0), 4)
    q, w = (jax.random.normal(kk, (B, T, H, E)) for kk in ks[:2])
    k, v = (jax.random.normal(kk, (B, T, K, E)) for kk in ks[2:])
    _, mask = tiny_hf.batch(B=B, T_=T, padding=padding)
    mask = jnp.asarray(mask)
    assert not bool(jnp.all(mask))  # fully masked query rows (left padding) are covered
    bias = decoder.attention_bias(mask, jnp.arange(T))

    def ours(q, k, v):
        return jnp.sum(decoder._masked_attention(q, k, v, bias, E ** -0.5, jnp.float32) * w)

    def ref(q, k, v):
        return jnp.sum(_plain_attention(q, k, v, mask, E ** -0.5) * w)

    got_val, got = jax.value_and_grad(ours, argnums=(0, 1, 2))(q, k, v)
    ref_val, want = jax.value_and_grad(ref, argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got_val, ref_val, rtol=1e-5)
    for name, g, r in zip("qkv", got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-5, rtol=1e-5, err_msg=name)


def test_silu_gate_vjp_matches_autodiff():
    g, u, d = (jax.random.normal(k, (3, 5, 16)) * 4 for k in jax.random.split(jax.random.key(1), 3))
    out, vjp = jax.vjp(decoder._silu_gate, g, u)
    ref_out, ref_vjp = jax.vjp(lambda g, u: jax.nn.silu(g) * u, g, u)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref_out))
    for got, want in zip(vjp(d), ref_vjp(d)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def _torch_loss(hf, ids, mask):
    """Mean over examples of each example's mean target NLL, as `models.mean_nll` defines it."""
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    pos = (mask_t.cumsum(1) - 1).clamp_min(0)
    logits = hf(input_ids=ids_t, attention_mask=mask_t, position_ids=pos).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids_t[:, 1:, None])[..., 0]
    tgt = (mask_t[:, 1:] * mask_t[:, :-1]).float()
    return (-(logp * tgt).sum(1) / tgt.sum(1)).mean()


@pytest.mark.parametrize("case", ["llama", "llama3_scaled", "olmo2", "gpt_neox", "gpt2"])
def test_model_gradients_match_torch(case, tmp_path):
    hf = tiny_hf.save(case, tmp_path, tokenizer=False)
    model, _ = models.load(tmp_path)
    ids, mask = tiny_hf.batch(padding="left", seed=4)

    hf.zero_grad()
    _torch_loss(hf, ids, mask).backward()
    ref_embed = hf.get_input_embeddings().weight.grad.numpy()
    ref_head = hf.get_output_embeddings().weight.grad.numpy()

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return jnp.mean(models.mean_nll(nnx.merge(graphdef, params, rest), jnp.asarray(ids), jnp.asarray(mask)))

    grads = nnx.to_pure_dict(jax.grad(loss)(params))
    # the input-embedding gradient has flowed back through every layer (attention, MLP, norms, RoPE)
    scale = np.abs(ref_embed).max()
    assert scale > 0
    np.testing.assert_allclose(np.asarray(grads["embed"]), ref_embed, atol=1e-5 * scale, rtol=0)
    if not model.arch.tie_embeddings:
        np.testing.assert_allclose(np.asarray(grads["lm_head"]), ref_head, atol=1e-5 * np.abs(ref_head).max(), rtol=0)
