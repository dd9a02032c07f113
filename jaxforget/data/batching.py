"""Fixed-shape batches: length buckets, right padding, seeded order, epoch and step accounting.

Every batch has shape (batch_size, L) with L one of a few bucket lengths, so a jitted step compiles
once per bucket and is reused for every task with the same buckets. Each example lands in the
smallest bucket that holds it; a bucket's last batch is completed with padding rows (index -1,
attention and loss masks all zero), so every example appears exactly once per epoch and nothing
is dropped. The order within an epoch is a function of (seed, epoch) only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np

from jaxforget.data.tokenize import Tokenized


@dataclasses.dataclass(frozen=True)
class Batch:
    """A padded batch. B = batch size, T = bucket length."""

    input_ids: np.ndarray
    """(B, T) int32, right-padded with pad_id."""
    attention_mask: np.ndarray
    """(B, T) int32, 1 on real tokens."""
    loss_mask: np.ndarray
    """(B, T) bool, True on target tokens (see jaxforget.data.tokenize)."""
    index: np.ndarray
    """(B,) int32 positions in the example list; -1 for padding rows."""
    epoch: int
    step: int
    """Global step: batches yielded before this one, counted across epochs."""


def bucket_lengths(max_len: int, n_buckets: int = 4, *, min_len: int = 16, multiple: int = 8) -> tuple[int, ...]:
    """Geometrically spaced lengths from ~min_len to max_len, rounded up to `multiple` (max_len is last)."""
    if max_len < 1 or n_buckets < 1:
        raise ValueError(f"need max_len >= 1 and n_buckets >= 1, got {max_len}, {n_buckets}")
    lo = min(min_len, max_len)
    ratio = (max_len / lo) ** (1 / max(n_buckets - 1, 1))
    out = {min(max_len, multiple * math.ceil(lo * ratio**k / multiple)) for k in range(n_buckets - 1)}
    return tuple(sorted(out | {max_len}))


def quantile_buckets(lengths: Sequence[int], n_buckets: int = 4, *, multiple: int = 8) -> tuple[int, ...]:
    """Bucket lengths chosen from a length distribution: its 1/n, 2/n, ..., n/n quantiles rounded up to
    `multiple` (the last holds the longest), so each bucket takes about as many examples and a
    long-tailed distribution does not pad every batch to its maximum."""
    lengths = np.asarray(lengths)
    if lengths.size == 0 or n_buckets < 1:
        raise ValueError(f"need at least one length and n_buckets >= 1, got {lengths.size}, {n_buckets}")
    q = np.quantile(lengths, np.arange(1, n_buckets + 1) / n_buckets, method="higher")
    return tuple(sorted({int(multiple * math.ceil(x / multiple)) for x in q}))


def assign_buckets(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """Index of the smallest bucket holding each length (int, same shape as lengths)."""
    lengths = np.asarray(lengths)
    b = np.searchsorted(np.asarray(buckets), lengths, side="left")
    if lengths.size and (b >= len(buckets)).any():
        i = int(np.argmax(b >= len(buckets)))
        raise ValueError(f"example {i} has {int(lengths[i])} tokens, more than the largest bucket ({buckets[-1]})")
    return b


def plan_epoch(lengths: np.ndarray, *, batch_size: int, buckets: Sequence[int], seed: int, epoch: int,
               shuffle: bool = True) -> list[tuple[int, np.ndarray]]:
    """[(bucket length, (batch_size,) example indices with -1 padding)] covering every example once.

    shuffle=False: buckets in increasing length, examples in list order (evaluation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    which = assign_buckets(lengths, buckets)
    rng = np.random.default_rng([seed, epoch])
    plan = []
    for k, length in enumerate(buckets):
        idx = np.flatnonzero(which == k)
        if shuffle:
            idx = rng.permutation(idx)
        n_batches = -(-len(idx) // batch_size)
        padded = np.full(n_batches * batch_size, -1, np.int64)
        padded[: len(idx)] = idx
        plan += [(length, padded[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def collate(examples: Sequence[Tokenized], index: np.ndarray, length: int, pad_id: int, *, epoch: int = 0,
            step: int = 0) -> Batch:
    """Right-padded (B, length) arrays for the examples at `index` (-1 rows stay empty)."""
    B = len(index)
    ids = np.full((B, length), pad_id, np.int32)
    attn = np.zeros((B, length), np.int32)
    loss = np.zeros((B, length), bool)
    for r, i in enumerate(index):
        if i < 0:
            continue
        ex = examples[i]
        n = len(ex.ids)
        ids[r, :n], attn[r, :n], loss[r, :n] = ex.ids, 1, ex.loss_mask
    return Batch(ids, attn, loss, np.asarray(index, np.int32), epoch, step)


def with_extra_rows(batch: Batch, extra: Sequence[Tokenized], pad_id: int, n_rows: int,
                    buckets: Sequence[int]) -> Batch:
    """``batch`` (B rows) with the ``extra`` examples as rows B, B + 1, ... (replay mixes upstream examples
    into a task's batches this way), padded to ``n_rows`` rows and to the smallest of ``buckets`` holding
    every row. ``index``, ``epoch`` and ``step`` stay the batch's (the extra rows are not its examples)."""
    longest = max([batch.input_ids.shape[1]] + [len(ex.ids) for ex in extra])
    T = min(b for b in buckets if b >= longest)
    B, t = batch.input_ids.shape
    ids = np.full((n_rows, T), pad_id, np.int32)
    attn, loss = np.zeros((n_rows, T), np.int32), np.zeros((n_rows, T), bool)
    ids[:B, :t], attn[:B, :t], loss[:B, :t] = batch.input_ids, batch.attention_mask, batch.loss_mask
    for r, ex in enumerate(extra):
        n = len(ex.ids)
        ids[B + r, :n], attn[B + r, :n], loss[B + r, :n] = ex.ids, 1, ex.loss_mask
    return Batch(ids, attn, loss, batch.index, batch.epoch, batch.step)


class Batcher:
    """Fixed-shape batches over a list of tokenised examples, epoch after epoch.

        batcher = Batcher(examples, batch_size=16, buckets=(32, 64), seed=0)
        for batch in batcher.batches(num_steps):      # crosses epoch boundaries, reshuffling each epoch
            state, metrics = step(state, batch.input_ids, batch.attention_mask, batch.loss_mask)
    """

    def __init__(self, examples: Sequence[Tokenized], *, batch_size: int, buckets: Sequence[int] | None = None,
                 seed: int = 0, shuffle: bool = True, pad_id: int = 0):
        if not examples:
            raise ValueError("Batcher: no examples")
        self.examples = list(examples)
        self.lengths = np.array([len(e.ids) for e in self.examples])
        self.buckets = tuple(buckets) if buckets is not None else bucket_lengths(int(self.lengths.max()))
        assign_buckets(self.lengths, self.buckets)  # fail now, not in epoch 3
        self.batch_size, self.seed, self.shuffle, self.pad_id = batch_size, seed, shuffle, pad_id
        self.steps_per_epoch = len(plan_epoch(self.lengths, batch_size=batch_size, buckets=self.buckets, seed=seed,
                                              epoch=0, shuffle=False))

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """The (B, T) shapes batches can have (one compilation each)."""
        used = sorted(set(np.asarray(self.buckets)[assign_buckets(self.lengths, self.buckets)].tolist()))
        return tuple((self.batch_size, int(t)) for t in used)

    def epoch(self, epoch: int, *, first_step: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, in the (seed, epoch) order."""
        plan = plan_epoch(self.lengths, batch_size=self.batch_size, buckets=self.buckets, seed=self.seed,
                          epoch=epoch, shuffle=self.shuffle)
        for k, (length, index) in enumerate(plan):
            yield collate(self.examples, index, length, self.pad_id, epoch=epoch, step=first_step + k)

    def batches(self, num_steps: int | None = None, *, max_epochs: int | None = None) -> Iterator[Batch]:
        """Batches across epochs until num_steps batches or max_epochs epochs (whichever is first)."""
        if num_steps is None and max_epochs is None:
            raise ValueError("give num_steps or max_epochs")
        step, epoch = 0, 0
        while (num_steps is None or step < num_steps) and (max_epochs is None or epoch < max_epochs):
            for batch in self.epoch(epoch, first_step=step):
                if num_steps is not None and step >= num_steps:
                    return
                yield batch
                step += 1
            epoch += 1


def num_train_steps(steps_per_epoch: int, *, max_steps: int | None = None, max_epochs: float | None = None) -> int:
    """Optimizer steps for a run of at most max_steps steps and at most max_epochs epochs.

    The paper's fine-tuning: 1,000 steps capped at 3 epochs -> num_train_steps(spe, max_steps=1000, max_epochs=3).
    """
    limits = [x for x in (max_steps, None if max_epochs is None else int(math.ceil(max_epochs * steps_per_epoch)))
              if x is not None]
    if not limits:
        raise ValueError("give max_steps or max_epochs")
    return max(1, min(limits))
