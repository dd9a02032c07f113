"""KV-cache greedy decoding against repeated full forward passes and transformers' generate."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxforget import models
from tests.models import tiny_hf

N_NEW = 4


def _reference_greedy(model, ids, mask, n_new):
    """Greedy tokens from a full forward pass per step (no cache); new tokens go after any padding."""
    fwd = nnx.jit(lambda m, x, k: m(x, attention_mask=k))
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)  # last real prompt token per row
    out = []
    for step in range(n_new):
        logits = np.asarray(fwd(model, jnp.asarray(ids), jnp.asarray(mask)))
        at = last if step == 0 else np.full_like(last, -1)
        nxt = logits[np.arange(len(ids)), at].argmax(-1).astype(np.int32)
        out.append(nxt)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(nxt[:, None])], axis=1)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("case, padding", [("llama", "left"), ("gpt_neox", "right"), ("gpt2", "left"),
                                           ("olmo2", "right")])
def test_cached_greedy_matches_full_forward(case, padding, tmp_path):
    tiny_hf.save(case, tmp_path, tokenizer=False)
    model, _ = models.load(tmp_path)
    ids, mask = tiny_hf.batch(B=3, T_=7, padding=padding, seed=4)
    ref = _reference_greedy(model, ids, mask, N_NEW)
    gen = models.greedy_generate(model, ids, mask, max_new_tokens=N_NEW, stop_tokens=())
    np.testing.assert_array_equal(np.asarray(gen.tokens), ref)
    np.testing.assert_array_equal(np.asarray(gen.lengths), [N_NEW] * 3)


def test_greedy_matches_transformers_generate(tmp_path):
    hf = tiny_hf.save("llama", tmp_path, tokenizer=False)
    model, _ = models.load(tmp_path)
    ids, mask = tiny_hf.batch(B=3, T_=7, padding="left", seed=5)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                          max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False, pad_token_id=tiny_hf.PAD)
    ref = out[:, ids.shape[1]:].numpy()
    gen = models.greedy_generate(model, ids, mask, max_new_tokens=N_NEW, stop_tokens=())
    np.testing.assert_array_equal(np.asarray(gen.tokens), ref)


def test_stop_tokens_end_each_row_and_pad_after(tmp_path):
    tiny_hf.save("llama", tmp_path, tokenizer=False)
    model, _ = models.load(tmp_path)
    ids, mask = tiny_hf.batch(B=3, T_=7, padding="left", seed=4)
    free = np.asarray(models.greedy_generate(model, ids, mask, max_new_tokens=N_NEW, stop_tokens=()).tokens)
    stop = int(free[0, 2])
    gen = models.greedy_generate(model, ids, mask, max_new_tokens=N_NEW, stop_tokens=(stop,), pad_id=-1)
    tokens, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    for row in range(3):
        hits = np.flatnonzero(free[row] == stop)
        n = hits[0] + 1 if hits.size else N_NEW
        assert lengths[row] == n
        np.testing.assert_array_equal(tokens[row, :n], free[row, :n])
        assert np.all(tokens[row, n:] == -1)


def test_generate_compiles_once_per_shape(tmp_path):
    from jaxforget.models import decode

    tiny_hf.save("llama", tmp_path, tokenizer=False)
    model, _ = models.load(tmp_path)
    ids, mask = tiny_hf.batch(B=2, T_=5, padding="left", seed=6)
    models.greedy_generate(model, ids, mask, max_new_tokens=3)
    before = decode._generate._cache_size()
    models.greedy_generate(model, ids[::-1].copy(), mask[::-1].copy(), max_new_tokens=3)
    assert decode._generate._cache_size() == before
