"""The compiled engine every fine-tuning of a run goes through: one jitted train step and one jitted
eval step (per padded batch shape), built once by :func:`build_engine` and reused for every task.

The public surface, for collect and for any experiment that fine-tunes from a run's base model
(replay, forecast, your own):

    setup = build_setup(config)                     # or: config, setup, meta = setup_from_run(run_dir)
    engine = build_engine(setup, config)
    plan = engine.schedule(name, setup.task_train[name], seed=task_seed(config.train.seed, i))
    state = engine.start([engine.initial_params(i, config.train.seed)])
    loop = TrainLoop(engine, [plan], state)         # jaxforget.collect.loop
    for done, active in loop: ...                   # one optimizer step per iteration
    nll = engine.evaluate(loop.state.params)        # float32 (K, N) upstream NLL

A group of K tasks (K = ``--tasks-per-step``) shares one engine: K = 1 is plain fine-tuning (full or
one LoRA adapter); K > 1 stacks K LoRA adapters on a leading axis of one model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxforget import models
from jaxforget.collect.config import CollectConfig, EvalConfig, TrainConfig, resolve_lengths
from jaxforget.collect.setup import Setup
from jaxforget.data.batching import Batch, Batcher, num_train_steps, quantile_buckets
from jaxforget.data.packing import pack_examples
from jaxforget.data.tokenize import Tokenized
from jaxforget.models.lora import LoRA, LoRAParam
from jaxforget.models.sharding import logical_to_spec, put_global, to_host
from jaxforget.train import (OptimConfig, TrainState, init_train_state, make_eval_step, make_optimizer,
                             make_stacked_eval_step, make_stacked_train_step, make_train_step, merge_model,
                             stacked_start_state, start_state)

log = logging.getLogger("jaxforget.collect")


def task_seed(train_seed: int, index: int) -> int:
    """The seed of task `index` (its batch order and LoRA initialisation) under the run's --train.seed."""
    return int(np.random.SeedSequence([train_seed, index]).generate_state(1)[0] % (2**31 - 1))


def batch_sharding(mesh, batch_size: int) -> NamedSharding:
    """(B, T) batches are split over the mesh axes of the logical 'batch' axis ('data' and 'fsdp': with
    fsdp each device trains on its own rows, as the activations inside the model are laid out);
    axes that do not divide the batch are dropped (replicated over them, with a warning)."""
    spec = logical_to_spec(("batch", "length"), (batch_size, 1), mesh)
    split = spec[0] if isinstance(spec[0], tuple) else (spec[0],) if spec[0] else ()
    dropped = [a for a in ("data", "fsdp") if mesh.shape[a] > 1 and a not in split]
    if dropped:
        log.warning("batch size %d is not a multiple of the %s mesh axes: batches are replicated over %s",
                    batch_size, "/".join(dropped), "/".join(dropped))
    return NamedSharding(mesh, spec)


def lead_sharding(sharding: NamedSharding, n_lead: int) -> NamedSharding:
    """`sharding` of (B, T) batches for arrays with `n_lead` more leading axes (slots, micro-batches)."""
    return NamedSharding(sharding.mesh, PartitionSpec(*(None,) * n_lead, *sharding.spec))


def stack_slots(slots: Sequence[Sequence[Batch] | None], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask, loss_mask (K, A, B, T) of K slots' A micro-batches of B rows each
    (A = 1: (K, B, T)); None: an inactive slot, all padding. At least one slot must be active.

    T is the longest bucket among them: right padding leaves a causal model's NLL unchanged, and the
    shapes stay the bucket lengths (one compilation each).
    """
    active = [slot for slot in slots if slot]
    if not active:
        raise ValueError("stack_slots: every slot is inactive (None); at least one needs its batches")
    A, B = len(active[0]), active[0][0].input_ids.shape[0]
    T = max(b.input_ids.shape[1] for slot in active for b in slot)
    shape = (len(slots), A, B, T)
    ids, attn, loss = np.full(shape, pad_id, np.int32), np.zeros(shape, np.int32), np.zeros(shape, bool)
    for k, slot in enumerate(slots):
        for a, b in enumerate(slot or ()):
            n = b.input_ids.shape[1]
            ids[k, a, :, :n], attn[k, a, :, :n], loss[k, a, :, :n] = b.input_ids, b.attention_mask, b.loss_mask
    if A == 1:
        return ids[:, 0], attn[:, 0], loss[:, 0]
    return ids, attn, loss


@dataclasses.dataclass
class TaskSchedule:
    """One task's fine-tuning: ``n_steps`` optimizer steps of ``grad_accum`` micro-batches each, drawn
    in the seeded order of ``batches`` (an iterator of exactly ``n_steps * grad_accum`` batches)."""

    name: str
    seed: int
    n_steps: int
    batches: Iterator[Batch]


@dataclasses.dataclass
class Engine:
    """The compiled steps every group of K tasks (K = --tasks-per-step) trains and is measured with.

    K = 1: the plain single-task steps (full fine-tuning or one adapter). K > 1: K LoRA adapters
    stacked on a leading axis of one model, one train step for all K and one eval step that reads
    each upstream batch once for all K (the K slots vectorised, or looped inside the step on CPU:
    --tasks-per-pass). Either way a group has K slots: batches (K, [A,] B, T), losses (K,), NLL (K, N).
    """

    k: int
    split: Any
    """train.SplitModel: graph + frozen variables."""
    tx: Any
    """The optax optimizer (the same for every task)."""
    base_params: Any
    """The trained variables of the split model: base weights (full) or adapters (stacked when k > 1)."""
    lora: models.LoraConfig | None
    """The adapters' configuration, or None for full fine-tuning."""
    arch: models.ArchConfig
    train: TrainConfig
    eval: EvalConfig
    pad_id: int
    mesh: Any
    train_step: Callable
    eval_step: Callable
    sharding: NamedSharding
    """Of a (B, T) training batch."""
    evaluate: Callable[[Any], np.ndarray] = dataclasses.field(init=False)
    """params -> float32 (K, N) NLL of the run's upstream examples (set by build_engine)."""
    upstream: Sequence[Tokenized] = ()
    """The run's upstream examples (`evaluate`'s; `evaluate_columns` measures a subset of them)."""

    def schedule(self, name: str, examples: Sequence[Tokenized], seed: int) -> TaskSchedule:
        """The fine-tuning of one task on `examples`: --train.max-steps capped at --train.max-epochs, the
        batches in the order `seed` draws (the run's: ``task_seed(train.seed, index)``)."""
        t = self.train
        batcher = Batcher(examples, batch_size=t.batch_size, buckets=t.buckets, seed=seed, pad_id=self.pad_id)
        n_steps = num_train_steps(-(-batcher.steps_per_epoch // t.grad_accum), max_steps=t.max_steps,
                                  max_epochs=t.max_epochs)
        return TaskSchedule(name, seed, n_steps, batcher.batches(n_steps * t.grad_accum))

    def initial_params(self, index: int, train_seed: int) -> Any:
        """Where task `index` starts (`start` copies it): the base weights (full fine-tuning), or a
        fresh adapter drawn from the task's seed exactly as ``add_lora(seed=<task seed>)`` draws it, so
        a task's result does not depend on --tasks-per-step or on which tasks share its group. Laid out
        as one slot of `base_params`."""
        if self.lora is None:
            return self.base_params
        fresh = nnx.state(LoRA(self.arch, self.lora, rngs=nnx.Rngs(task_seed(train_seed, index))), LoRAParam)
        # Same leaves in the same (name-sorted) order as the model's adapters; the tree structure (and
        # its metadata) is the model's, so every group's state matches the compiled signature.
        base = jax.tree.leaves(self.base_params)[0].sharding  # adapters are replicated (see train.start_state)
        put = NamedSharding(base.mesh, PartitionSpec()) if isinstance(base, NamedSharding) else base
        leaves = [put_global(x, put) for x in jax.tree.leaves(fresh)]
        return jax.tree.unflatten(jax.tree.structure(self.base_params), leaves)

    def start(self, inits: list) -> TrainState:
        """A fresh TrainState from the K slots' starting parameters (`initial_params`)."""
        if self.k == 1:
            return start_state(inits[0], self.tx)
        return stacked_start_state(models.stack_adapters(inits), self.tx)

    def step(self, state: TrainState, arrays: tuple[np.ndarray, ...], active: np.ndarray):
        """One optimizer step of every active slot; arrays (K, [A,] B, T) (`stack_slots`), active (K,) bool.
        Returns (state, metrics with a leading K axis)."""
        if self.k == 1:  # the plain step: one task, active whenever it is called
            arrays = tuple(a[0] for a in arrays)
        put = lead_sharding(self.sharding, arrays[0].ndim - 2)
        args = [put_global(a, put) for a in arrays]
        if self.k == 1:
            return self.train_step(state, *args)
        replicated = NamedSharding(self.sharding.mesh, PartitionSpec())
        return self.train_step(state, *args, put_global(active, replicated))

    def model(self, params, slot: int):
        """The fine-tuned nnx model of one slot (sharing the frozen arrays)."""
        model = merge_model(self.split, TrainState(params, None, None))
        return model if self.k == 1 else models.select_adapter(model, slot)

    def evaluator(self, examples: Sequence[Tokenized]) -> Callable[[Any], np.ndarray]:
        """``evaluate(params) -> float32 [K, len(examples)]`` mean token NLL of every example under each
        of the K parameter sets. One jitted step per bucket shape; all batches are dispatched before one
        host transfer. With a mesh over several processes every process must call it (each feeds its
        own devices) and gets the whole result. --eval.pack: see `_packed_evaluator`."""
        if self.eval.pack:
            return self._packed_evaluator(examples)
        B = self.eval.batch_size
        batches = list(Batcher(examples, batch_size=B, buckets=self.eval.buckets, shuffle=False,
                               pad_id=self.pad_id).epoch(0))
        N = len(examples)
        sharding = batch_sharding(self.mesh, B)

        def evaluate(params) -> np.ndarray:
            outs = []
            for b in batches:
                args = [put_global(x, sharding) for x in (b.input_ids, b.attention_mask, b.loss_mask)]
                outs.append(self.eval_step(params, *args))
            outs = to_host(outs)
            K = np.size(outs[0][0]) // B
            total, count = np.zeros((K, N)), np.zeros((K, N))
            for b, (s, c) in zip(batches, outs):
                keep = b.index >= 0
                total[:, b.index[keep]] = np.reshape(s, (K, B))[:, keep]
                count[:, b.index[keep]] = np.reshape(c, (K, B))[:, keep]
            return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)

        return evaluate

    def evaluate_columns(self, params, columns: np.ndarray) -> np.ndarray:
        """float32 (K, N): `evaluate` on the upstream examples where ``columns`` (bool [N]) is True, NaN
        elsewhere (--eval.budget). The subset's batches have the bucket shapes of the full set (no new
        compilation; --eval.pack: rounded segment counts, rarely one more), so the time falls with the
        subset's size. Every process of a multi-process mesh must call it with the same columns."""
        idx = np.flatnonzero(columns)
        if idx.size == len(self.upstream):
            return self.evaluate(params)
        sub = self.evaluator([self.upstream[j] for j in idx])(params)
        out = np.full((sub.shape[0], len(self.upstream)), np.nan, np.float32)
        out[:, idx] = sub
        return out

    def _packed_evaluator(self, examples: Sequence[Tokenized]) -> Callable[[Any], np.ndarray]:
        """`evaluator` over packed rows of the largest eval bucket's length (`pack_examples`): at most
        --eval.batch-size rows per batch, one batch shape (one compilation), each example scored
        alone within its row (segment ids)."""
        n_data = self.mesh.shape["data"]
        batches = pack_examples(examples, row_len=max(self.eval.buckets), rows_per_batch=self.eval.batch_size,
                                pad_id=self.pad_id, row_multiple=n_data)
        R, S = batches[0].index.shape
        N = len(examples)
        sharding = batch_sharding(self.mesh, R)

        def evaluate(params) -> np.ndarray:
            outs = []
            for b in batches:
                ids, loss, seg = (put_global(x, sharding) for x in (b.input_ids, b.loss_mask, b.segment_ids))
                outs.append(self.eval_step(params, ids, None, loss, segment_ids=seg, n_segments=S))
            outs = to_host(outs)
            K = np.size(outs[0][0]) // (R * S)
            total, count = np.zeros((K, N)), np.zeros((K, N))
            for b, (s, c) in zip(batches, outs):
                keep = b.index >= 0
                total[:, b.index[keep]] = np.reshape(s, (K, R, S))[:, keep]
                count[:, b.index[keep]] = np.reshape(c, (K, R, S))[:, keep]
            return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)

        return evaluate

    def compilations(self) -> dict[str, int]:
        """Traces of the jitted steps so far in this process: one per batch shape, whatever the number of
        tasks (recorded in meta.json; the tests check it)."""
        train_jit = self.train_step.jitted
        return dict(train_step=train_jit._cache_size() if train_jit else 0,
                    eval_step=self.eval_step.jitted._cache_size())


def resolve_buckets(setup: Setup, train: TrainConfig, eval: EvalConfig) -> tuple[TrainConfig, EvalConfig]:
    """`train` and `eval` with empty bucket lists replaced by four lengths from the length quantiles of
    the tasks' training examples, resp. the upstream examples (``data.batching.quantile_buckets``)."""
    if not train.buckets:
        lengths = [len(x.ids) for examples in setup.task_train.values() for x in examples]
        train = dataclasses.replace(train, buckets=quantile_buckets(lengths))
        log.info("train buckets from the tasks' lengths: %s", train.buckets)
    if not eval.buckets:
        eval = dataclasses.replace(eval, buckets=quantile_buckets([len(x.ids) for x in setup.upstream_tok]))
        log.info("eval buckets from the upstream lengths: %s", eval.buckets)
    return train, eval


def make_tx(t: TrainConfig):
    """(OptimConfig, optax optimizer) of --train.*: the lr schedule spans --train.max-steps."""
    optim = OptimConfig(lr=t.lr, warmup_steps=t.warmup_steps, total_steps=max(1, t.max_steps),
                        end_lr_fraction=t.end_lr_fraction, weight_decay=t.weight_decay, clip_norm=t.clip_norm)
    return optim, make_optimizer(optim)


def build_engine(setup: Setup, config: CollectConfig) -> Engine:
    """Adapters (LoRA), optimizer, split model and the jitted steps, built once per run. Empty
    --train.buckets / --eval.buckets are chosen here from the setup's length quantiles
    (`engine.train.buckets`, `engine.eval.buckets`)."""
    config = resolve_lengths(config)  # unset buckets: the built-in ones, or empty (from the quantiles)
    t, e = resolve_buckets(setup, config.train, config.eval)
    K = config.tasks_per_step
    lora = None
    if t.mode == "lora":
        lora = models.LoraConfig(rank=t.lora_rank, alpha=t.lora_alpha, targets=t.lora_targets)
        # the adapters drawn here only fix the layout: every task starts from its own (initial_params)
        models.add_lora(setup.model, lora, seed=t.seed, n_adapters=None if K == 1 else K)
    optim, tx = make_tx(t)
    split, base_state = init_train_state(setup.model, tx, wrt=models.LoRAParam if lora else nnx.Param)
    if K == 1:
        train_step, eval_step = make_train_step(split, tx, schedule=optim.schedule()), make_eval_step(split)
    else:
        per_pass = config.tasks_per_pass or (1 if jax.default_backend() == "cpu" else K)
        train_step = make_stacked_train_step(split, tx, schedule=optim.schedule(), per_pass=per_pass,
                                             lengths=t.buckets)
        eval_step = make_stacked_eval_step(split, per_pass=per_pass)
    engine = Engine(k=K, split=split, tx=tx, base_params=base_state.params, lora=lora, arch=setup.model.arch,
                    train=t, eval=e, pad_id=setup.pad_id, mesh=setup.mesh, train_step=train_step,
                    eval_step=eval_step, sharding=batch_sharding(setup.mesh, t.batch_size))
    engine.evaluate, engine.upstream = engine.evaluator(setup.upstream_tok), setup.upstream_tok
    return engine
