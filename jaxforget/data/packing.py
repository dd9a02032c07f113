"""Packed evaluation batches: several examples per row, so long-tailed lengths waste little padding.

Examples are placed into rows of `row_len` tokens by first-fit decreasing (longest first, each into
the first row with room), then the rows are cut into batches of one fixed shape (R, row_len), so a
jitted step compiles once. Each row carries segment ids (0 on padding, k on the tokens of the row's
k-th example) that the decoder uses to keep attention within an example and to restart positions
(`jaxforget.models.segment_nll_sums`). The order is a function of the lengths only (no seed): this is
for scoring, where order does not matter; training batches keep `batching.Batcher`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxforget.data.tokenize import Tokenized


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """R rows of T tokens, each holding up to S examples."""

    input_ids: np.ndarray
    """(R, T) int32, pad_id after the last example of a row."""
    segment_ids: np.ndarray
    """(R, T) int32: 0 on padding, k = 1..S on the tokens of the row's k-th example."""
    loss_mask: np.ndarray
    """(R, T) bool, each example's own loss mask at its tokens."""
    index: np.ndarray
    """(R, S) int32: the example list position of segment k + 1 of each row; -1 where none."""


def first_fit_decreasing(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Rows of example indices, each row's lengths summing to at most `row_len`.

    First-fit decreasing (ties in list order) uses at most 11/9 OPT + 1 rows; on many short
    examples with a long tail it leaves almost no room unused."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > row_len:
        i = int(np.argmax(lengths > row_len))
        raise ValueError(f"example {i} has {int(lengths[i])} tokens, more than a packed row ({row_len})")
    room = np.empty(max(1, len(lengths)), np.int64)  # free tokens of each open row
    rows: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable"):
        fits = room[: len(rows)] >= lengths[i]
        r = int(np.argmax(fits)) if fits.any() else len(rows)
        if r == len(rows):
            rows.append([])
            room[r] = row_len
        rows[r].append(int(i))
        room[r] -= lengths[i]
    return rows


def pack_examples(examples: Sequence[Tokenized], *, row_len: int, rows_per_batch: int, pad_id: int = 0,
                  row_multiple: int = 1, segment_multiple: int = 8) -> list[PackedBatch]:
    """Every example exactly once, in batches of one shape (R, row_len) with index (R, S).

    R is at most `rows_per_batch` and spreads the rows evenly over the fewest batches of that size
    (so the last batch is not mostly empty rows), rounded up to `row_multiple` (a data mesh axis).
    S, the most examples in a row, is rounded up to `segment_multiple`, so evaluators of similar
    example sets share one compilation.
    """
    if row_len < 1 or rows_per_batch < 1:
        raise ValueError(f"need row_len >= 1 and rows_per_batch >= 1, got {row_len}, {rows_per_batch}")
    if not examples:
        raise ValueError("pack_examples: no examples")
    rows = first_fit_decreasing([len(e.ids) for e in examples], row_len)
    n_batches = -(-len(rows) // rows_per_batch)
    R = -(-len(rows) // n_batches)
    R = -(-R // row_multiple) * row_multiple
    S = -(-max(len(r) for r in rows) // segment_multiple) * segment_multiple
    rows += [[]] * (n_batches * R - len(rows))
    out = []
    for b in range(n_batches):
        ids = np.full((R, row_len), pad_id, np.int32)
        seg = np.zeros((R, row_len), np.int32)
        loss = np.zeros((R, row_len), bool)
        index = np.full((R, S), -1, np.int32)
        for r, members in enumerate(rows[b * R:(b + 1) * R]):
            start = 0
            for k, i in enumerate(members):
                ex = examples[i]
                end = start + len(ex.ids)
                ids[r, start:end], seg[r, start:end], loss[r, start:end] = ex.ids, k + 1, ex.loss_mask
                index[r, k] = i
                start = end
        out.append(PackedBatch(ids, seg, loss, index))
    return out


def padding_fraction(batches: Sequence) -> float:
    """Padded tokens / evaluated tokens of packed (`segment_ids`) or bucketed (`attention_mask`) batches."""
    real = sum(int(np.count_nonzero(b.segment_ids if isinstance(b, PackedBatch) else b.attention_mask))
               for b in batches)
    total = sum(b.input_ids.size for b in batches)
    return 1.0 - real / max(total, 1)
