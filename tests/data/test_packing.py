"""The packing planner: every example once, rows within their length, one batch shape, little padding."""

from __future__ import annotations

import numpy as np
import pytest

from jaxforget.data import Batcher, Tokenized, bucket_lengths, first_fit_decreasing, pack_examples, padding_fraction


def long_tailed(n: int, seed: int = 0, median: int = 300, max_len: int = 2048) -> np.ndarray:
    """Log-normal lengths (median `median`, sigma 1), clipped to [2, max_len]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), 1.0, n)), 2, max_len).astype(int)


def fake(lengths) -> list[Tokenized]:
    return [Tokenized(np.full(n, 7, np.int32), np.arange(n) >= 1, str(i), "g", False) for i, n in enumerate(lengths)]


def test_first_fit_decreasing_places_every_example_once_within_the_row():
    lengths = long_tailed(3000, seed=1)
    rows = first_fit_decreasing(lengths, 2048)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert max(sum(lengths[r]) for r in rows) <= 2048
    assert len(rows) <= np.ceil(1.05 * lengths.sum() / 2048)  # near the lower bound on rows
    assert rows == first_fit_decreasing(lengths, 2048)  # a function of the lengths only


def test_first_fit_decreasing_is_first_fit():
    # decreasing: 6, 5, 4, 3, 2 into rows of 8: 6 | 5 | then 4 fits nowhere -> row 3; 3 -> row 2 (5+3); 2 -> row 1
    assert first_fit_decreasing([2, 5, 3, 6, 4], 8) == [[3, 0], [1, 2], [4]]


def test_too_long_an_example_is_an_error_naming_it():
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than a packed row"):
        first_fit_decreasing([3, 9], 8)


def test_packed_batches_have_one_shape_and_under_5_percent_padding_on_a_long_tail():
    lengths = long_tailed(2000)
    exs = fake(lengths)
    batches = pack_examples(exs, row_len=2048, rows_per_batch=32, row_multiple=2)
    shapes = {(b.input_ids.shape, b.index.shape) for b in batches}
    assert len(shapes) == 1
    (R, T), (_, S) = shapes.pop()
    assert T == 2048 and R <= 32 and R % 2 == 0 and S % 8 == 0
    index = np.concatenate([b.index[b.index >= 0] for b in batches])
    assert sorted(index.tolist()) == list(range(len(exs)))
    for b in batches:  # each segment holds exactly its example's tokens and loss mask
        for r, k in zip(*np.nonzero(b.index >= 0)):
            ex = exs[b.index[r, k]]
            at = b.segment_ids[r] == k + 1
            assert at.sum() == len(ex.ids)
            np.testing.assert_array_equal(b.loss_mask[r, at], ex.loss_mask)
    packed = padding_fraction(batches)
    bucketed = padding_fraction(list(Batcher(exs, batch_size=32, buckets=bucket_lengths(2048), shuffle=False).epoch(0)))
    assert packed <= 0.05 < bucketed
