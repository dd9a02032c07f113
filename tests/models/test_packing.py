"""Packed rows (segment ids): each example's NLL equals its NLL alone in a padded row, in every family."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget import models
from jaxforget.data import Tokenized, pack_examples
from tests.models import tiny_hf

LENGTHS = [5, 17, 9, 30, 1, 12, 3, 22, 8, 2]  # includes a 1-token example (no target: NaN both ways)
ROW = 40  # gpt2's tiny config has 64 learned positions


def examples(seed: int = 0) -> list[Tokenized]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(LENGTHS):
        ids = rng.integers(len(tiny_hf.SPECIALS), tiny_hf.VOCAB, size=n).astype(np.int32)
        loss = np.arange(n) >= 1
        loss[n // 2:n // 2 + 1] = False  # a hole in the loss mask, as task prompts have
        out.append(Tokenized(ids, loss, str(i), "g", False))
    return out


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox", "olmo2"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    tiny_hf.save(request.param, path, tokenizer=False)
    return models.load(path, tokenizer=False)[0]


def unpacked(model, exs):
    ids = np.zeros((len(exs), ROW), np.int32)
    attn, loss = np.zeros_like(ids), np.zeros((len(exs), ROW), bool)
    for r, e in enumerate(exs):
        ids[r, :len(e.ids)], attn[r, :len(e.ids)], loss[r, :len(e.ids)] = e.ids, 1, e.loss_mask
    return np.asarray(models.mean_nll(model, jnp.asarray(ids), jnp.asarray(attn), jnp.asarray(loss)))


def packed(model, exs):
    batches = pack_examples(exs, row_len=ROW, rows_per_batch=2, segment_multiple=1)
    total, count = np.zeros(len(exs)), np.zeros(len(exs))
    for b in batches:
        s, c = models.segment_nll_sums(model, jnp.asarray(b.input_ids), jnp.asarray(b.segment_ids),
                                       jnp.asarray(b.loss_mask), n_segments=b.index.shape[1])
        keep = b.index >= 0
        total[b.index[keep]], count[b.index[keep]] = np.asarray(s)[keep], np.asarray(c)[keep]
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), batches


def test_packed_nll_equals_unpacked(model):
    exs = examples()
    ref = unpacked(model, exs)
    got, batches = packed(model, exs)
    assert max(int((b.index >= 0).sum(1).max()) for b in batches) >= 3  # really several examples per row
    assert np.isnan(ref[4]) and np.isnan(got[4])
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_no_leak_between_packed_examples(model):
    """Changing every other example of the rows changes no example's NLL."""
    exs = examples()
    other = examples(seed=1)
    a, _ = packed(model, exs)
    for j in (3, 7):  # swap in different tokens for two examples (same lengths, so the same packing)
        exs[j] = other[j]
    b, _ = packed(model, exs)
    keep = np.isfinite(a) & (np.arange(len(exs)) != 3) & (np.arange(len(exs)) != 7)
    np.testing.assert_allclose(b[keep], a[keep], atol=1e-6, rtol=0)
    assert np.abs(b[[3, 7]] - a[[3, 7]]).min() > 1e-3


def test_segment_positions_restart():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(models.positions_from_segments(seg)),
                                  [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
