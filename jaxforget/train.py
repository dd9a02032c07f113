"""One jitted LM training step, reused by pretraining and by every fine-tuning run.

    split, base = init_train_state(model, tx)                      # nnx.split once
    step = make_train_step(split, tx)                              # jitted, traced once per batch shape
    state = start_state(base.params, tx)                           # per task: a copy of the base weights
    state, metrics = step(state, input_ids, attention_mask, loss_mask)
    model = merge_model(split, state)                              # back to an nnx module

K tasks at once (K LoRA adapters stacked on a leading axis, `add_lora(..., n_adapters=K)`):

    step = make_stacked_train_step(split, tx)                      # the same step, mapped over K
    state = stacked_start_state(adapters_k, tx)                    # K optimizer states, K step counters
    state, metrics = step(state, ids_kbt, attn_kbt, loss_kbt, active_k)
    nll_sum_kb, n_kb = make_stacked_eval_step(split)(state.params, ids_bt, attn_bt, loss_bt)

The step is a pure function of arrays (flax issue 4336: graph traversal on every call of an
`nnx.jit` is slow for small models), so it compiles once per (batch, length) shape and is reused
across tasks that share shapes; `state` buffers are donated. Loss = mean NLL over the target tokens
of the whole batch (token-weighted, float32), targets as in `jaxforget.models.target_mask`.
Full fine-tuning trains every `nnx.Param`; pass `wrt=LoRAParam` to train adapters only (the rest
of the model is then a frozen, non-donated input).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxforget.models.logprobs import nll_sums, segment_nll_sums, target_mask


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, linear decay and global grad-norm clipping."""

    lr: float = 1e-3
    """Peak learning rate."""
    warmup_steps: int = 10
    """Steps of linear warm-up from 0 to lr."""
    total_steps: int = 1000
    """Length of the schedule: linear decay from lr (after warm-up) to lr * end_lr_fraction at this step."""
    end_lr_fraction: float = 0.0
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); applied to every trained array."""
    b1: float = 0.9
    """Adam beta1."""
    b2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    clip_norm: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""

    def schedule(self) -> optax.Schedule:
        warmup = max(0, min(self.warmup_steps, self.total_steps))
        decay = max(1, self.total_steps - warmup)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, self.lr, max(warmup, 1)),
             optax.linear_schedule(self.lr, self.lr * self.end_lr_fraction, decay)],
            boundaries=[warmup],
        )


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """optax chain: clip (optional) -> AdamW(schedule), with float32 moments (`float32_moments`)."""
    adamw = optax.adamw(config.schedule(), b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay)
    tx = adamw if config.clip_norm is None else optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
    return float32_moments(tx)


def _to_float32(tree: Any) -> Any:
    # only arrays (and tracers): optax.tree_map_params passes placeholders through init
    return jax.tree.map(lambda x: x.astype(jnp.float32) if isinstance(x, jax.Array) else x, tree)


def float32_moments(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` computed in float32 whatever the parameter dtype: its state (Adam's two moments) is
    float32, gradients are clipped and normalised in float32, and the float32 update is added to the
    parameters and rounded once to their dtype (optax.apply_updates). With bfloat16 parameters this
    is the usual mixed recipe without a float32 master copy (2 + 4 + 4 bytes per parameter instead
    of 4 + 4 + 4); with float32 parameters it changes nothing."""

    def init(params):
        return tx.init(_to_float32(params))

    def update(updates, state, params=None):
        return tx.update(_to_float32(updates), state, None if params is None else _to_float32(params))

    return optax.GradientTransformation(init, update)


class TrainState(NamedTuple):
    """Everything the step updates (a pytree; donated to the step)."""

    params: nnx.State
    """The trained variables (nnx.Param, or LoRAParam for adapters)."""
    opt_state: optax.OptState
    step: jax.Array
    """int32 scalar: optimizer steps taken."""


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """A model as nnx.split left it: static graph + the frozen variables the step does not train."""

    graphdef: nnx.GraphDef
    frozen: nnx.State


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, *,
                     wrt: Any = nnx.Param) -> tuple[SplitModel, TrainState]:
    """Split `model` once into (graph + frozen state, trainable state) and initialise the optimizer."""
    graphdef, params, frozen = nnx.split(model, wrt, ...)
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    return SplitModel(graphdef, frozen), _on_mesh(state, frozen, tx)


def start_state(params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    """A fresh TrainState from a copy of `params` (e.g. the base model's, for the next task).

    The step donates its state, so the base parameters are copied, never handed over. With the same
    graph, frozen part and optimizer, one step function (compiled once per shape) serves every task:

        split, base = init_train_state(base_model, tx); step = make_train_step(split, tx)
        for task in tasks:
            state = start_state(base.params, tx)
            for batch in ...: state, metrics = step(state, ...)
    """
    params = jax.tree.map(jnp.copy, params)
    return _on_mesh(TrainState(params, tx.init(params), jnp.zeros((), jnp.int32)), tx=tx)


def opt_state_shardings(tx: optax.GradientTransformation, opt_state: Any, param_shardings: Any, default: Any) -> Any:
    """The placement of each leaf of `opt_state`: a per-parameter leaf (Adam's moments) takes its
    parameter's sharding (so on a mesh with an fsdp axis the moments are split like the weights,
    never replicated), every other leaf (step counts) `default`."""
    return optax.tree_map_params(tx, lambda _, s: s, opt_state, param_shardings,
                                 transform_non_params=lambda _: default)


def abstract_state(params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    """The TrainState `start_state` would build, as ShapeDtypeStructs with shardings (nothing allocated):
    `params` are ShapeDtypeStructs with NamedShardings (e.g. of an `nnx.eval_shape` model), for
    lowering and compiling the step ahead of a run (jaxforget.plan)."""
    shardings = jax.tree.map(lambda x: x.sharding, params)
    mesh = jax.tree.leaves(shardings)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = jax.eval_shape(tx.init, params)
    opt_sh = opt_state_shardings(tx, opt, shardings, replicated)
    opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt, opt_sh)
    return TrainState(params, opt, jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated))


def _on_mesh(state: TrainState, frozen: nnx.State | None = None, tx: optax.GradientTransformation | None = None
             ) -> TrainState:
    """Commit every leaf to a fixed placement: on the mesh of the parameters, else of `frozen`
    (replicated, for leaves created off it such as the step counters and fresh LoRA adapters),
    else on the parameters' device. With `tx`, the optimizer's per-parameter leaves go on their
    parameter's sharding (`opt_state_shardings`).

    The jitted step returns committed arrays with these placements; a fresh state holding
    uncommitted or single-device leaves would be another input signature and cost one more
    compilation per task.
    """

    leaves = jax.tree.leaves(state.params)
    meshes = [x.sharding.mesh for x in leaves + jax.tree.leaves(frozen) if isinstance(x.sharding, NamedSharding)]
    default = NamedSharding(meshes[0], PartitionSpec()) if meshes else next(iter(leaves[0].devices()))

    def place(x):
        return jax.device_put(x, x.sharding if isinstance(x.sharding, NamedSharding) else default)

    if tx is None:
        return jax.tree.map(place, state)
    shardings = jax.tree.map(lambda x: x.sharding if isinstance(x.sharding, NamedSharding) else default, state.params)
    try:
        opt = optax.tree_map_params(tx, lambda x, s: jax.device_put(x, s), state.opt_state, shardings,
                                    transform_non_params=place)
    except ValueError:  # a state that does not mirror the parameters leaf for leaf (optax.multi_transform's
        opt = jax.tree.map(place, state.opt_state)  # masked nodes, e.g. rep_dot's): placed like the rest
    return TrainState(jax.tree.map(place, state.params), opt, place(state.step))


def merge_model(split: SplitModel, state: TrainState) -> nnx.Module:
    """An nnx module with the trained parameters of `state` (no copy of the arrays)."""
    return nnx.merge(split.graphdef, state.params, split.frozen)


def batch_loss(graphdef: nnx.GraphDef, params: nnx.State, frozen: nnx.State, input_ids: jax.Array,
               attention_mask: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-weighted mean NLL (float32 scalar) of a (B, T) batch and per-example (sum, count) aux.

    A batch with no target token has loss 0 (and zero gradient), so padding-only batches are harmless.
    """
    model = nnx.merge(graphdef, params, frozen)
    sums_b, counts_b = nll_sums(model, input_ids, attention_mask, loss_mask)
    n = jnp.sum(counts_b)
    loss = jnp.sum(sums_b) / jnp.maximum(n, 1).astype(jnp.float32)
    return loss, dict(nll_sum=sums_b, n_targets=counts_b)


def _step_fn(split: SplitModel, tx: optax.GradientTransformation, schedule: optax.Schedule | None, *,
             task_rows: int | None = None, extra_weight: float = 1.0):
    """The pure single-task step `(state, frozen, input_ids, attention_mask, loss_mask) -> (state, metrics)`
    that `make_train_step` jits and `make_stacked_train_step` vmaps (see `make_train_step` for the contract).
    `task_rows`: see `make_train_step`."""
    graphdef = split.graphdef

    def summed_nll(params, frozen, ids, attn, loss_mask, row_weight=None):
        sums_b, counts_b = nll_sums(nnx.merge(graphdef, params, frozen), ids, attn, loss_mask)
        return jnp.sum(sums_b if row_weight is None else sums_b * row_weight), (sums_b, counts_b)

    grad_fn = jax.grad(summed_nll, has_aux=True)

    def step(state: TrainState, frozen: nnx.State, input_ids, attention_mask, loss_mask):
        rows_shape = input_ids.shape[:-1]
        if input_ids.ndim == 2:
            input_ids, attention_mask, loss_mask = input_ids[None], attention_mask[None], loss_mask[None]
        A, B = input_ids.shape[:2]
        xs = (input_ids, attention_mask, loss_mask)
        if task_rows is not None:  # rows >= task_rows are extra: task mean + extra_weight x extra mean
            counts = jax.vmap(target_mask)(attention_mask, loss_mask).sum(-1)  # (A, B), from the masks alone
            extra = jnp.arange(B) >= task_rows
            n_task = jnp.maximum(jnp.sum(jnp.where(extra, 0, counts)), 1).astype(jnp.float32)
            n_extra = jnp.maximum(jnp.sum(jnp.where(extra, counts, 0)), 1).astype(jnp.float32)
            n_all = jnp.maximum(jnp.sum(counts), 1).astype(jnp.float32)
            # scaled by the total count, which the common normalisation below divides out again
            xs += (jnp.broadcast_to(jnp.where(extra, extra_weight / n_extra, 1 / n_task) * n_all, (A, B)),)

        def micro(acc, xs):  # gradients of the (weighted) NLL sum, normalised once by the total target count
            grads, aux = grad_fn(state.params, frozen, *xs)
            return jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc, grads), aux

        # accumulated in float32 whatever the parameter dtype
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), state.params)
        grad_sum, (sums, counts) = jax.lax.scan(micro, zeros, xs)
        n = jnp.maximum(jnp.sum(counts), 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / n, grad_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(loss=jnp.sum(sums) / n, n_targets=jnp.sum(counts), grad_norm=optax.tree.norm(grads),
                       example_nll_sum=sums.reshape(rows_shape), example_n_targets=counts.reshape(rows_shape))
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


def _jit_state_step(step: Callable, split: SplitModel) -> Callable:
    """`jax.jit(step)` with the state donated and kept on the shardings of the first state passed in.

    The frozen part is an argument, not a closed-over constant: constants would be baked into the
    compiled program (a copy of a frozen 7B base per LoRA step function) and could not be sharded.
    Left to the compiler, GSPMD may pick other output shardings (e.g. replicate what was
    FSDP-sharded), and a fresh state for the next task would then no longer match the compiled
    signature. `.jitted` is set on the first call, for compile-count checks (`jitted._cache_size()`).
    """

    def jitted_for(state):
        if call.jitted is None:
            shardings = jax.tree.map(lambda x: x.sharding, state)
            call.jitted = jax.jit(step, donate_argnums=(0,), out_shardings=(shardings, None))
        return call.jitted

    def call(state: TrainState, *batch):
        return jitted_for(state)(state, split.frozen, *batch)

    def lower(state: TrainState, *batch):
        """The step lowered for `state` and batch arrays or ShapeDtypeStructs (with shardings): the
        program a run compiles, for its memory and cost analysis before any weight exists."""
        return jitted_for(state).lower(state, split.frozen, *batch)

    call.jitted = None
    call.lower = lower
    return call


def make_train_step(split: SplitModel, tx: optax.GradientTransformation, *,
                    schedule: optax.Schedule | None = None, task_rows: int | None = None,
                    extra_weight: float = 1.0
                    ) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """A jitted `step(state, input_ids, attention_mask, loss_mask) -> (state, metrics)`.

    `task_rows` (None: every row alike): the first `task_rows` rows of each micro-batch are the task's
    and the rest extra rows (replay's upstream examples); the gradient is then that of the mean NLL over
    the task's targets plus `extra_weight` x the mean NLL over the extra rows' targets (over the step's
    micro-batches; 0 when a step has none), so extra rows add to the task's loss instead of diluting it.
    The reported loss stays the mean over all targets.

    Inputs are (B, T), or (A, B, T) for gradient accumulation over A micro-batches (one optimizer
    update; the gradient is that of the token-weighted mean NLL over all A * B rows, so accumulating
    equals one big batch). metrics: loss (mean target NLL of the batch before the update,
    nats/token), n_targets (tokens), grad_norm (before clipping), lr (when `schedule` is given), and
    per-example example_nll_sum / example_n_targets, shaped like the rows of the input, for
    per-group accounting. `state` is donated: do not reuse the one passed in.
    """
    return _jit_state_step(_step_fn(split, tx, schedule, task_rows=task_rows, extra_weight=extra_weight), split)


def map_slots(f: Callable, xs: Any, per_pass: int | None = None) -> Any:
    """`f` over the leading (slot) axis of the pytree `xs`: `per_pass` slots at a time vectorised
    (vmap), the passes one after another inside the same program (lax.map); None: all at once.

    Vectorising fills an accelerator; on a CPU the K-fold activations (logits above all) overflow
    the caches and a loop of single passes is faster.
    """
    k = jax.tree.leaves(xs)[0].shape[0]
    if per_pass is None or per_pass >= k:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs) if per_pass == 1 else jax.lax.map(f, xs, batch_size=per_pass)


def make_stacked_train_step(split: SplitModel, tx: optax.GradientTransformation, *,
                            schedule: optax.Schedule | None = None, per_pass: int | None = None,
                            lengths: Sequence[int] = ()) -> Callable[..., tuple[TrainState, dict]]:
    """A jitted `step(state, input_ids, attention_mask, loss_mask, active) -> (state, metrics)` that
    trains K parameter sets stacked on a leading axis (K LoRA adapters of `add_lora(n_adapters=K)`),
    each on its own batch, in one program.

    `state` is a `stacked_start_state`; inputs are (K, B, T), or (K, A, B, T) with gradient
    accumulation; `active` is (K,) bool. Slice k is exactly `make_train_step`'s step on (state[k],
    batch[k]): its own token-weighted loss, gradient clipping, Adam moments and schedule step
    (`state.step` is (K,)). Where `active[k]` is False, slice k of the state is returned unchanged
    (give it an all-padding batch): tasks of a group may take different numbers of steps, and a
    group may be padded with dummy slots. metrics are those of `make_train_step` with a leading K
    axis (meaningless for inactive slots). `per_pass`: slots computed together (see `map_slots`).
    `state` is donated.

    The K batches of a step are right-padded to the longest among them. With `per_pass=1` and the
    bucket `lengths` they were cut to, each slot instead runs at its own bucket length (a
    `lax.switch` over the lengths up to T, only the taken branch is executed), so the padding
    costs nothing, and an inactive slot runs no branch at all. Vectorised slots (per_pass > 1)
    share one length: a switch under vmap would execute every branch.
    """
    one = _step_fn(split, tx, schedule)

    def one_slot(frozen, xs):
        state, input_ids, attention_mask, loss_mask, active = xs
        T = input_ids.shape[-1]
        if per_pass != 1 or not lengths:
            return one(state, frozen, input_ids, attention_mask, loss_mask)
        cuts = sorted({n for n in lengths if n < T} | {T})

        def at(n):
            return lambda st, ids, attn, lm: one(st, frozen, ids[..., :n], attn[..., :n], lm[..., :n])

        def idle(st, ids, attn, lm):  # the outputs of a step, without computing one
            shapes = jax.eval_shape(at(cuts[0]), st, ids, attn, lm)
            return st, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes[1])

        longest = jnp.max(jnp.sum(attention_mask, axis=-1))  # rows are right-padded: real length
        branch = jnp.where(active, jnp.searchsorted(jnp.asarray(cuts), longest) + 1, 0)
        return jax.lax.switch(jnp.minimum(branch, len(cuts)), [idle] + [at(n) for n in cuts],
                              state, input_ids, attention_mask, loss_mask)

    def step(state: TrainState, frozen: nnx.State, input_ids, attention_mask, loss_mask, active):
        new, metrics = map_slots(partial(one_slot, frozen), (state, input_ids, attention_mask, loss_mask, active),
                                 per_pass)

        def keep_inactive(n, o):  # a select, not arithmetic: NaNs of an inactive slot cannot leak in
            return jnp.where(active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)

        return jax.tree.map(keep_inactive, new, state), metrics

    return _jit_state_step(step, split)


def stacked_start_state(params_k: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    """A fresh TrainState for `make_stacked_train_step` from parameters stacked on a leading K axis:
    a copy of them, K independent optimizer states (`tx.init` vmapped) and K step counters."""
    params_k = jax.tree.map(jnp.copy, params_k)
    k = jax.tree.leaves(params_k)[0].shape[0]
    return _on_mesh(TrainState(params_k, jax.vmap(tx.init)(params_k), jnp.zeros((k,), jnp.int32)))


def _scores(model, input_ids, attention_mask, loss_mask, segment_ids, n_segments):
    """nll_sums of a padded batch, or segment_nll_sums of a packed one (segment_ids given)."""
    if segment_ids is None:
        return nll_sums(model, input_ids, attention_mask, loss_mask)
    return segment_nll_sums(model, input_ids, segment_ids, loss_mask, n_segments=n_segments)


def make_eval_step(split: SplitModel) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted `eval(params, input_ids, attention_mask, loss_mask) -> (nll_sum (B,), n_targets (B,))`.

    Packed rows (`jaxforget.data.pack_examples`): `eval(params, input_ids, None, loss_mask,
    segment_ids=..., n_segments=S) -> (nll_sum (B, S), n_targets (B, S))`, one entry per example."""

    graphdef = split.graphdef

    @partial(jax.jit, static_argnames=("n_segments",))
    def jitted(params, frozen, input_ids, attention_mask, loss_mask, segment_ids=None, n_segments=None):
        return _scores(nnx.merge(graphdef, params, frozen), input_ids, attention_mask, loss_mask, segment_ids,
                       n_segments)

    def evaluate(params, input_ids, attention_mask, loss_mask, *, segment_ids=None, n_segments=None):
        if segment_ids is None:  # the call of the unpacked step as it always was (the same program)
            return jitted(params, split.frozen, input_ids, attention_mask, loss_mask)
        return jitted(params, split.frozen, input_ids, attention_mask, loss_mask, segment_ids, n_segments=n_segments)

    evaluate.jitted = jitted  # for compile-count checks
    evaluate.lower = lambda params, *batch: jitted.lower(params, split.frozen, *batch)
    return evaluate


def make_stacked_eval_step(split: SplitModel, *, per_pass: int | None = None
                           ) -> Callable[[nnx.State, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """A jitted `eval(params_k, input_ids, attention_mask, loss_mask) -> (nll_sum (K, B), n_targets (K, B))`:
    K stacked parameter sets (adapters) on one (B, T) batch, so the batch is read once for all K.
    Packed rows: `segment_ids=..., n_segments=S` as in `make_eval_step`, outputs (K, B, S).

    The batch is not mapped (vmap in_axes None): the frozen base projections of the first layer are
    computed once and only what depends on an adapter is batched over K. `per_pass`: adapters
    computed together (see `map_slots`).
    """
    graphdef = split.graphdef

    @partial(jax.jit, static_argnames=("n_segments",))
    def jitted(params_k, frozen, input_ids, attention_mask, loss_mask, segment_ids=None, n_segments=None):
        def one(params):
            return _scores(nnx.merge(graphdef, params, frozen), input_ids, attention_mask, loss_mask, segment_ids,
                           n_segments)

        return map_slots(one, params_k, per_pass)

    def evaluate(params_k, input_ids, attention_mask, loss_mask, *, segment_ids=None, n_segments=None):
        if segment_ids is None:
            return jitted(params_k, split.frozen, input_ids, attention_mask, loss_mask)
        return jitted(params_k, split.frozen, input_ids, attention_mask, loss_mask, segment_ids,
                      n_segments=n_segments)

    evaluate.jitted = jitted  # for compile-count checks
    evaluate.lower = lambda params_k, *batch: jitted.lower(params_k, split.frozen, *batch)
    return evaluate
