"""Logits, per-token log-probs and per-example NLL of every family against transformers (float32)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxforget import models
from tests.models import tiny_hf

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(tiny_hf.CASES))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = tiny_hf.save(request.param, path)
    model, tokenizer = models.load(path)
    return request.param, hf, model, tokenizer


@pytest.mark.parametrize("padding", ["left", "right"])
def test_logits_match_transformers(pair, padding):
    _, hf, model, _ = pair
    ids, mask = tiny_hf.batch(padding=padding)
    ref = tiny_hf.hf_logits(hf, ids, mask)
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert got.shape == ref.shape == (*ids.shape, tiny_hf.VOCAB)
    assert got.dtype == np.float32
    real = mask.astype(bool)
    assert np.abs(got - ref)[real].max() <= TOL


def test_mean_nll_matches_transformers_loss(pair):
    _, hf, model, _ = pair
    ids, mask = tiny_hf.batch(padding="left", seed=1)
    ref = tiny_hf.hf_example_losses(hf, ids, mask)
    got = np.asarray(models.mean_nll(model, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_chunked_token_logprobs_match_log_softmax(pair):
    _, hf, model, _ = pair
    ids, mask = tiny_hf.batch(padding="right", seed=2)
    logp = torch.log_softmax(torch.tensor(tiny_hf.hf_logits(hf, ids, mask)), -1).numpy()
    ref = np.take_along_axis(logp[:, :-1], ids[:, 1:, None].astype(np.int64), -1)[..., 0]
    got = np.asarray(models.token_logprobs(model, jnp.asarray(ids), jnp.asarray(mask), chunk_size=5))
    assert got.dtype == np.float32 and got.shape == ids.shape
    assert np.all(got[:, 0] == 0)
    targets = np.asarray(models.target_mask(jnp.asarray(mask)))[:, 1:]
    assert np.abs(got[:, 1:] - ref)[targets].max() <= TOL


def test_loss_mask_selects_targets(pair):
    _, hf, model, _ = pair
    ids, mask = tiny_hf.batch(B=2, T_=10, padding="right", seed=3)
    mask[:] = 1
    loss_mask = np.zeros_like(mask)
    loss_mask[:, 6:] = 1  # score only the last 4 tokens, as for a prompt/answer split
    lp = tiny_hf.hf_logits(hf, ids, mask)
    logp = torch.log_softmax(torch.tensor(lp), -1).numpy()
    per_tok = np.take_along_axis(logp[:, 5:-1], ids[:, 6:, None].astype(np.int64), -1)[..., 0]
    got = np.asarray(models.mean_nll(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(loss_mask)))
    np.testing.assert_allclose(got, -per_tok.mean(1), atol=TOL, rtol=0)


def test_tokenizer_is_returned(pair):
    _, _, _, tokenizer = pair
    assert tokenizer is not None
    assert tokenizer("w0 w5")["input_ids"] == [3, 8]


def test_bfloat16_compute_keeps_float32_params_and_logits(tmp_path):
    hf = tiny_hf.save("llama", tmp_path, tokenizer=False)
    model, _ = models.load(tmp_path, dtype=jnp.bfloat16)
    assert model.wq[...].dtype == jnp.float32
    ids, mask = tiny_hf.batch(padding="left")
    got = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert got.dtype == jnp.float32
    ref = tiny_hf.hf_logits(hf, ids, mask)
    err = np.abs(np.asarray(got) - ref)[mask.astype(bool)]
    # bfloat16 keeps ~3 significant digits: close to, but measurably different from, float32
    assert 1e-4 < err.max() < 0.25
    nll = np.asarray(models.mean_nll(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert nll.dtype == np.float32
    np.testing.assert_allclose(nll, tiny_hf.hf_example_losses(hf, ids, mask), atol=0.05)
