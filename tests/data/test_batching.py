"""Batching: every example once per epoch, fixed shapes, seeded order, epoch/step accounting."""

from __future__ import annotations

import numpy as np
import pytest

from jaxforget.data.batching import Batcher, assign_buckets, bucket_lengths, num_train_steps, plan_epoch
from jaxforget.data.tokenize import Tokenized


def examples(n: int = 53, seed: int = 0) -> list[Tokenized]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        L = int(rng.integers(3, 60))
        mask = rng.random(L) < 0.7
        mask[0] = False
        out.append(Tokenized(rng.integers(3, 100, L).astype(np.int32), mask, f"ex{i}", "g", False))
    return out


def test_bucket_lengths():
    assert bucket_lengths(96, 4) == (16, 32, 56, 96)  # 16 * (96/16) ** (k/3), rounded up to 8
    assert bucket_lengths(64, 1) == (64,)
    assert bucket_lengths(10, 3) == (10,)
    assert all(b % 8 == 0 for b in bucket_lengths(128, 5)[:-1])
    assert assign_buckets(np.array([1, 24, 25, 96]), (24, 40, 64, 96)).tolist() == [0, 0, 1, 3]
    with pytest.raises(ValueError, match="example 1 has 97 tokens, more than the largest bucket"):
        assign_buckets(np.array([5, 97]), (24, 96))


def test_every_example_exactly_once_per_epoch_with_fixed_shapes():
    ex = examples()
    batcher = Batcher(ex, batch_size=8, buckets=(16, 32, 64), seed=1, pad_id=0)
    for epoch in range(3):
        seen = []
        batches = list(batcher.epoch(epoch))
        assert len(batches) == batcher.steps_per_epoch
        for b in batches:
            assert b.input_ids.shape in batcher.shapes and b.input_ids.shape[1] in (16, 32, 64)
            assert b.input_ids.dtype == np.int32 and b.attention_mask.shape == b.loss_mask.shape == b.input_ids.shape
            for r, i in enumerate(b.index):
                if i < 0:  # padding row: nothing real, nothing to learn
                    assert b.attention_mask[r].sum() == 0 and not b.loss_mask[r].any()
                    assert (b.input_ids[r] == 0).all()
                    continue
                e, n = ex[i], len(ex[i].ids)
                assert n <= b.input_ids.shape[1]
                # the smallest bucket that holds it
                assert b.input_ids.shape[1] == min(t for t in (16, 32, 64) if t >= n)
                np.testing.assert_array_equal(b.input_ids[r, :n], e.ids)
                np.testing.assert_array_equal(b.loss_mask[r, :n], e.loss_mask)
                assert b.attention_mask[r].tolist() == [1] * n + [0] * (b.input_ids.shape[1] - n)
                assert not b.loss_mask[r, n:].any() and (b.input_ids[r, n:] == 0).all()
                seen.append(int(i))
        assert sorted(seen) == list(range(len(ex)))


def test_order_is_deterministic_per_seed_and_epoch():
    ex = examples()
    order = lambda seed, epoch: [b.index.tolist() for b in Batcher(ex, batch_size=4, buckets=(32, 64),  # noqa: E731
                                                                      seed=seed).epoch(epoch)]
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    unshuffled = [b.index.tolist() for b in Batcher(ex, batch_size=4, buckets=(32, 64), shuffle=False).epoch(0)]
    flat = [i for idx in unshuffled for i in idx if i >= 0]
    short = [i for i, e in enumerate(ex) if len(e.ids) <= 32]
    assert flat == short + [i for i in range(len(ex)) if i not in short]  # buckets in order, list order inside


def test_step_and_epoch_accounting_across_epochs():
    ex = examples(20)
    batcher = Batcher(ex, batch_size=6, buckets=(64,), seed=0)
    assert batcher.steps_per_epoch == 4  # 20 examples -> 3 full batches + 1 padded
    batches = list(batcher.batches(10))
    assert [b.step for b in batches] == list(range(10))
    assert [b.epoch for b in batches] == [0] * 4 + [1] * 4 + [2] * 2
    assert [b.index.tolist() for b in batches[4:8]] == [b.index.tolist() for b in batcher.epoch(1)]
    assert len(list(batcher.batches(max_epochs=2))) == 8
    assert len(list(batcher.batches(100, max_epochs=1))) == 4
    assert num_train_steps(4, max_steps=1000, max_epochs=3) == 12
    assert num_train_steps(400, max_steps=1000, max_epochs=3) == 1000
    assert num_train_steps(4, max_epochs=0.5) == 2
    with pytest.raises(ValueError, match="give max_steps or max_epochs"):
        num_train_steps(4)


def test_plan_epoch_pads_each_bucket_separately():
    plan = plan_epoch(np.array([5, 5, 5, 40]), batch_size=2, buckets=(8, 64), seed=0, epoch=0, shuffle=False)
    assert [(L, idx.tolist()) for L, idx in plan] == [(8, [0, 1]), (8, [2, -1]), (64, [3, -1])]


def test_batcher_rejects_too_long_examples_up_front():
    with pytest.raises(ValueError, match="more than the largest bucket"):
        Batcher(examples(), batch_size=4, buckets=(16,))
