"""collect's public engine, as research code outside collect uses it: rebuild a finished run's setup,
fine-tune one of its tasks through ``TrainLoop`` and measure the upstream examples."""

from __future__ import annotations

import numpy as np
import pytest

from jaxforget.collect import TrainLoop, build_engine, setup_from_run, stack_slots, task_seed
from jaxforget.store import RunDir


@pytest.fixture(scope="module")
def rebuilt(tiny_run):
    """(config, setup, meta) of the shared tiny run, rebuilt once for this module (treat as read-only)."""
    return setup_from_run(tiny_run, echo=lambda *_: None)


def test_the_documented_engine_loop_reproduces_a_row_of_the_run(tiny_run, rebuilt):
    config, setup, meta = rebuilt
    engine = build_engine(setup, config)
    i = 1
    name = setup.task_names[i]
    plan = engine.schedule(name, setup.task_train[name], seed=task_seed(config.train.seed, i))
    loop = TrainLoop(engine, [plan], engine.start([engine.initial_params(i, config.train.seed)]))
    steps = [done for done, active in loop]
    assert steps == list(range(1, plan.n_steps + 1)) and loop.failed == [None]
    assert len(loop.losses[0]) == plan.n_steps
    row = RunDir(tiny_run).read_row(i)
    np.testing.assert_array_equal(engine.evaluate(loop.state.params)[0], row["nll_after"])
    np.testing.assert_array_equal(np.asarray(loop.losses[0], np.float32), row["train_losses"])
    assert loop.n_tokens[0] == int(row["train_tokens"])
    # a subset of the examples measured by its own evaluator: the same numbers
    sub = engine.evaluator(setup.upstream_tok[:7])(loop.state.params)[0]
    np.testing.assert_allclose(sub, row["nll_after"][:7], rtol=0, atol=1e-6)


def test_stack_slots_pads_inactive_slots_and_short_buckets():
    from jaxforget.data.batching import Batch

    def batch(rows: int, length: int, fill: int) -> Batch:
        ids = np.full((rows, length), fill, np.int32)
        return Batch(ids, np.ones_like(ids), np.ones((rows, length), bool), np.arange(rows, dtype=np.int32), 0, 0)

    ids, attn, loss = stack_slots([[batch(2, 3, 5)], None, [batch(2, 4, 6)]], pad_id=9)
    assert ids.shape == attn.shape == loss.shape == (3, 2, 4)
    assert (ids[1] == 9).all() and not attn[1].any() and not loss[1].any()
    assert (ids[0, :, :3] == 5).all() and (ids[0, :, 3] == 9).all() and attn[0].sum() == 6
    ids, _, _ = stack_slots([[batch(2, 3, 1), batch(2, 3, 2)]], pad_id=0)  # two micro-batches
    assert ids.shape == (1, 2, 2, 3) and (ids[0, 1] == 2).all()
    with pytest.raises(ValueError, match="every slot is inactive"):
        stack_slots([None], pad_id=0)


def test_packed_evaluation_equals_padded_for_one_and_for_stacked_tasks(tiny_run, rebuilt):
    """--eval.pack: the same per-example NLL (to 1e-5) as one padded row per example, for K = 1 and for
    K = 2 stacked adapters (each slot its own numbers), with one compilation of the packed step."""
    import dataclasses

    import jax

    config, setup, _ = rebuilt
    engine = build_engine(setup, config)
    ref = engine.evaluate(engine.base_params)
    packed = build_engine(setup, dataclasses.replace(config, eval=dataclasses.replace(config.eval, pack=True)))
    before = packed.compilations()["eval_step"]
    got = packed.evaluate(packed.base_params)
    assert got.shape == ref.shape == (1, len(setup.upstream_tok))
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    sub = packed.evaluator(setup.upstream_tok[:7])(packed.base_params)  # fewer rows: a second shape
    np.testing.assert_allclose(sub, ref[:, :7], atol=1e-5, rtol=0)
    packed.evaluate(packed.base_params)
    assert packed.compilations()["eval_step"] - before == 2

    lora = dataclasses.replace(config.train, mode="lora", lora_rank=4, lora_targets=("q", "v", "up"))
    config2, setup2, _ = setup_from_run(tiny_run, echo=lambda *_: None)
    stacked = build_engine(setup2, dataclasses.replace(config2, train=lora, tasks_per_step=2))
    keys = iter(jax.random.split(jax.random.key(0), 64))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), stacked.base_params)
    ref2 = stacked.evaluate(params)
    stacked.eval = dataclasses.replace(stacked.eval, pack=True)
    got2 = stacked.evaluator(setup2.upstream_tok)(params)
    assert got2.shape == ref2.shape == (2, len(setup2.upstream_tok))
    assert np.abs(ref2[0] - ref2[1]).max() > 1e-3  # the slots differ, so a mix-up would show
    np.testing.assert_allclose(got2, ref2, atol=1e-5, rtol=0)


def test_empty_bucket_lists_are_chosen_from_the_length_quantiles(rebuilt):
    import dataclasses

    from jaxforget.collect import resolve_buckets
    from jaxforget.data.batching import quantile_buckets

    assert quantile_buckets([5, 9, 17, 17, 30, 100, 101, 300]) == (24, 32, 104, 304)  # 17, 30, 101, 300 rounded up
    assert quantile_buckets([3] * 10) == (8,)
    config, setup, _ = rebuilt
    train, ev = resolve_buckets(setup, dataclasses.replace(config.train, buckets=()),
                                dataclasses.replace(config.eval, buckets=()))
    task_lengths = np.array([len(x.ids) for xs in setup.task_train.values() for x in xs])
    up_lengths = np.array([len(x.ids) for x in setup.upstream_tok])
    assert train.buckets == quantile_buckets(task_lengths) and max(train.buckets) >= task_lengths.max()
    assert ev.buckets == quantile_buckets(up_lengths) and max(ev.buckets) >= up_lengths.max()
    assert resolve_buckets(setup, config.train, config.eval) == (config.train, config.eval)  # given lists are kept


def test_the_epoch_cap_is_announced_when_it_cuts_max_steps(rebuilt):
    import dataclasses

    from jaxforget.collect.loop import epoch_cap_note

    config, setup, _ = rebuilt
    name = setup.task_names[0]
    engine = build_engine(setup, config)
    capped = dataclasses.replace(engine, train=dataclasses.replace(config.train, max_steps=100_000))
    n = capped.schedule(name, setup.task_train[name], seed=0).n_steps
    assert n < 100_000  # the tiny task's 3 epochs
    assert epoch_cap_note({name: n, "other": 100_000}, 100_000, 3.0) == (
        f"--train.max-epochs 3 cuts --train.max-steps 100000 to {n} steps on 1 of 2 tasks ({name}): a task's "
        "training set is seen at most 3 times, as in the paper; raise --train.max-epochs to train longer")
    assert epoch_cap_note({name: 12}, 12, 3.0) is None  # the tiny run's 12 steps: nothing cut, nothing said
