"""``rep_dot``: the LM-based forgetting predictor (Jin & Ren, ICML 2024), the baseline for completion.

Matrix completion predicts a new task's row of Z from k measured entries. This baseline instead
predicts it from text alone, with a trained encoder:

- **Representation** of a text: a jaxforget decoder's final-norm hidden state at the last non-pad
  token, then an MLP head ``D -> hidden -> out_dim`` (ReLU; hidden = D, out_dim = 768 by default).
- **Score** of upstream example j for an example x of a task: ``-scale * mean_d(r_x[d] * r_j[d])``
  (negated, as the issue specifies; the head's output layer starts small so that scores start near
  0, see :class:`Head`). With ``loss="binary"`` the score is a logit of "forgotten".
- **Training** on the training tasks' rows only: each step draws a batch of episodes (a task, one of
  its examples, one upstream example it forgot (``z > threshold``) and one it did not; a row with
  none of one kind draws that one from all its observed entries); loss MSE to z (``regression``) or
  BCE to ``1[z > threshold]`` (``binary``); Adam with separate learning rates for the encoder and the
  head. A seeded fraction of the training tasks is held out for validation: every ``eval_every``
  steps (and before the first) their rows are predicted and scored by the training loss over their
  observed entries; the best parameters are kept (in memory) and used to predict.
- **Prediction** of a task's row: the mean score over its examples (at most ``max_task_examples``,
  a seeded subset), i.e. ``-scale * mean_x(r_x) . r_j / out_dim``; upstream examples are encoded once.

The step is a pure function of arrays (``nnx.split`` once, ``jax.jit``): episodes are drawn on the
device from ``fold_in(key, step)``, so a step is one compiled program with fixed shapes and no host
transfer; losses and the sampled episodes stay on the device until the next validation.

Defaults are for the built-in 0.5M-parameter base model and a CPU budget of a few hundred steps.
The paper's Adam learning rates (1e-5 for the encoder, 10x for the head) are for 1B-parameter
models trained far longer; an Adam step moves a weight by at most about lr, so 300 steps at 1e-5
move the built-in model's weights (init std 0.02) by at most 3e-3. The defaults are 10x larger
(1e-4 and 1e-3), keeping the paper's 10x ratio; ``scale=0.1`` puts the initial scores in the range
of Z (log-perplexity increases of ~0.1). They were chosen on the validation tasks of the default
run's training split, never on its test tasks.

    python -m jaxforget.predict --matrix runs/default --methods additive knn_baseline mf rep_dot
    python -m jaxforget.predict --matrix runs/default --methods rep_dot:steps=600,loss=binary

From Python (``texts = load_run(run_dir)`` gives the model and token arrays of a collect run):

    predictor = train(texts.model, texts.data, Z, train_rows, RepDotConfig(seed=0))
    rows_tn = predictor.predict_rows([texts.data.tasks[i] for i in test_rows], texts.data.upstream)
"""

from __future__ import annotations

import dataclasses
import functools
import time
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxforget.collect import setup_from_run
from jaxforget.completion import check_options, split_rows
from jaxforget.train import TrainState, start_state

LOSSES = ("regression", "binary")


@dataclasses.dataclass(frozen=True)
class RepDotConfig:
    """The LM-based predictor; on the command line, options of ``rep_dot:name=value,...``."""

    hidden: int | None = None
    """Width of the MLP head's hidden layer (default: the model's d_model)."""
    out_dim: int = 768
    """Representation size (the head's output)."""
    scale: float = 0.1
    """Score = -scale * mean over the out_dim features of the product of the two representations. At
    initialisation all texts have nearly the same representation, so every score starts near -scale;
    0.1 is in the range of Z (log-perplexity), where 1.0 first drives every representation towards
    the zero saddle of the product (measured: stuck there for 100+ steps on the planted test setting)."""
    lr_encoder: float = 1e-4
    """Adam learning rate of the decoder (the paper: 1e-5 for 1B models; see the module docstring)."""
    lr_head: float = 1e-3
    """Adam learning rate of the MLP head (the paper: 10x the encoder's)."""
    steps: int = 300
    """Optimizer steps."""
    episodes: int = 32
    """Episodes per step (each: one task example, one forgotten and one not forgotten upstream example)."""
    eval_every: int = 50
    """Validate every this many steps (and before the first); the best step's parameters are kept."""
    val_fraction: float = 0.2
    """Fraction of the training tasks held out for validation (seeded; 0: none, the last step is kept)."""
    loss: Literal["regression", "binary"] = "regression"
    """regression: MSE of the score to z. binary: BCE of the score (a logit) to 1[z > threshold]."""
    seed: int = 0
    """Seed of the head's initialisation, the validation split and the episodes (predict: the protocol seed)."""
    max_upstream_len: int | None = None
    """Cut upstream examples to this many tokens, keeping the beginning (default: as the run measured them)."""
    max_task_len: int | None = None
    """Cut task examples to this many tokens, keeping the first (BOS) and the last (default: as trained on)."""
    max_task_examples: int | None = 256
    """A task's row is the mean over at most this many of its examples (a seeded subset; None: all)."""
    encode_batch: int = 128
    """Texts per encoding batch when predicting rows (one compilation per text length)."""

    def validate(self) -> "RepDotConfig":
        """ValueError naming the option when a value is out of range; returns self."""
        checks = [
            ("hidden", self.hidden is None or self.hidden >= 1, ">= 1 (or None)"),
            ("out_dim", self.out_dim >= 1, ">= 1"),
            ("scale", self.scale > 0, "> 0"),
            ("lr_encoder", self.lr_encoder >= 0, ">= 0"),
            ("lr_head", self.lr_head > 0, "> 0"),
            ("steps", self.steps >= 1, ">= 1"),
            ("episodes", self.episodes >= 1, ">= 1"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("max_upstream_len", self.max_upstream_len is None or self.max_upstream_len >= 2, ">= 2 (or None)"),
            ("max_task_len", self.max_task_len is None or self.max_task_len >= 2, ">= 2 (or None)"),
            ("max_task_examples", self.max_task_examples is None or self.max_task_examples >= 1, ">= 1 (or None)"),
            ("encode_batch", self.encode_batch >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"rep_dot option {name} must be {want}; got {getattr(self, name)!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"rep_dot option loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        return self

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, reserved: Sequence[str] = ()) -> "RepDotConfig":
        """From ``rep_dot:name=value,...`` options: unknown names, ``reserved`` ones (set by the caller)
        and values of the wrong type are errors naming the option."""
        for name in reserved:
            if name in options:
                raise ValueError(f"rep_dot option {name} is set by the protocol (--seeds gives one predictor per "
                                 f"seed); remove {name}=...")
        check_options("method 'rep_dot'", options, [f.name for f in dataclasses.fields(cls) if f.name not in reserved])
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in options.items():
            allowed = typing.get_args(hints[name]) or (hints[name],)
            if typing.get_origin(hints[name]) is Literal:
                allowed = (str,)
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kinds = tuple(type(None) if a is None else a for a in allowed)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"rep_dot option {name}={value!r}: expected "
                                 f"{' or '.join(getattr(k, '__name__', str(k)) for k in kinds)}")
            values[name] = value
        return cls(**values).validate()


# ------------------------------------------------------------------------------------------------
# texts as fixed-shape token arrays


@dataclasses.dataclass(frozen=True)
class TokenArrays:
    """Texts as right-padded token ids: ``ids [R, L]`` int32 and ``lengths [R]`` int32 (>= 1)."""

    ids: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], *, max_len: int | None = None, keep: str = "start",
              length: int | None = None) -> "TokenArrays":
        """``keep="start"`` cuts a sequence longer than ``max_len`` at its end; ``"end"`` keeps its first
        token (BOS) and its last ``max_len - 1``. ``length``: the padded L (default: the longest kept
        sequence rounded up to a multiple of 8)."""
        if not len(sequences):
            raise ValueError("no texts to encode")
        kept = []
        for seq in sequences:
            seq = np.asarray(seq, np.int32).reshape(-1)
            if seq.size == 0:
                raise ValueError("an empty token sequence cannot be encoded")
            if max_len is not None and seq.size > max_len:
                seq = seq[:max_len] if keep == "start" else np.concatenate([seq[:1], seq[seq.size - max_len + 1:]])
            kept.append(seq)
        longest = max(s.size for s in kept)
        L = -(-longest // 8) * 8 if length is None else length
        if L < longest:
            raise ValueError(f"padded length {L} is shorter than the longest text ({longest} tokens)")
        ids = np.zeros((len(kept), L), np.int32)  # the pad id is irrelevant: padding is masked out
        for r, s in enumerate(kept):
            ids[r, : s.size] = s
        return cls(ids, np.asarray([s.size for s in kept], np.int32))

    def __len__(self) -> int:
        return self.ids.shape[0]

    def take(self, index: np.ndarray) -> "TokenArrays":
        return TokenArrays(self.ids[index], self.lengths[index])

    @staticmethod
    def concat(parts: Sequence["TokenArrays"]) -> "TokenArrays":
        return TokenArrays(np.concatenate([p.ids for p in parts]), np.concatenate([p.lengths for p in parts]))


@dataclasses.dataclass(frozen=True)
class RepDotData:
    """The texts of a forgetting matrix: ``upstream`` (one per column) and ``tasks`` (one per row: the
    examples the task was fine-tuned on), every task padded to one length."""

    upstream: TokenArrays
    tasks: list[TokenArrays]

    @classmethod
    def build(cls, upstream: Sequence[Any], tasks: Sequence[Sequence[Any]], *, max_upstream_len: int | None = None,
              max_task_len: int | None = None) -> "RepDotData":
        """From ``jaxforget.data.Tokenized`` lists (or plain token-id sequences): upstream texts keep their
        beginning, task examples their end (where the answer is), as ``jaxforget.data.tokenize`` cuts them."""
        ids = lambda xs: [getattr(x, "ids", x) for x in xs]  # noqa: E731
        empty = [i for i, t in enumerate(tasks) if not len(t)]
        if empty:
            raise ValueError(f"task(s) {empty[:10]} have no examples")
        up = TokenArrays.build(ids(upstream), max_len=max_upstream_len, keep="start")
        per_task = [TokenArrays.build(ids(t), max_len=max_task_len, keep="end") for t in tasks]
        L = max(t.ids.shape[1] for t in per_task)
        return cls(up, [TokenArrays.build(ids(t), max_len=max_task_len, keep="end", length=L) for t in tasks])


# ------------------------------------------------------------------------------------------------
# the encoder


class Head(nnx.Module):
    """MLP ``D -> hidden -> out`` with a ReLU.

    The output layer starts ``out_init`` times smaller than LeCun-normal (default 0.1), so every score
    starts near 0 instead of near ``-scale``: at initialisation all texts share most of their
    representation, the negated product makes every score negative, and the fastest way down for the
    loss is to switch every ReLU off, after which no gradient flows (measured on the planted test
    setting: with the LeCun init, all units dead within 80 steps in most seeds).
    """

    def __init__(self, d_in: int, hidden: int, out: int, *, rngs: nnx.Rngs, out_init: float = 0.1):
        self.l1 = nnx.Linear(d_in, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, out, rngs=rngs,
                             kernel_init=nnx.initializers.variance_scaling(out_init**2, "fan_in", "truncated_normal"))

    def __call__(self, x_bd: jax.Array) -> jax.Array:
        return self.l2(jax.nn.relu(self.l1(x_bd)))


class RepEncoder(nnx.Module):
    """``r_bo = encoder(ids_bt, lengths_b)``: the decoder's final-norm hidden state at the last non-pad
    token of each right-padded row, through the head. float32 ``[B, out_dim]``."""

    def __init__(self, decoder: nnx.Module, head: Head):
        self.decoder = decoder
        self.head = head

    def __call__(self, ids_bt: jax.Array, lengths_b: jax.Array) -> jax.Array:
        T = ids_bt.shape[1]
        mask_bt = (jnp.arange(T)[None, :] < lengths_b[:, None]).astype(jnp.int32)
        hidden_btd, _ = self.decoder.hidden_states(ids_bt, mask_bt)
        last_bd = jnp.take_along_axis(hidden_btd, (lengths_b - 1)[:, None, None], axis=1)[:, 0]
        return self.head(last_bd.astype(jnp.float32))


def scores(r_x: jax.Array, r_u: jax.Array, scale: float) -> jax.Array:
    """Pairwise ``-scale * mean_d(r_x[d] * r_u[d])``: ``[X, D] x [U, D] -> [X, U]``."""
    return -scale * jnp.matmul(r_x, r_u.T, precision=jax.lax.Precision.HIGHEST) / r_x.shape[-1]


def _loss(s: jax.Array, z: jax.Array, w: jax.Array, loss: str, threshold: float) -> jax.Array:
    """Weighted mean of MSE(s, z) or of BCE(logit s, 1[z > threshold])."""
    if loss == "regression":
        per = (s - z) ** 2
    else:
        per = optax.sigmoid_binary_cross_entropy(s, (z > threshold).astype(s.dtype))
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


# ------------------------------------------------------------------------------------------------
# compiled functions, shared by every predictor with the same model structure and settings
# (one compilation per shape for all seeds: the graphdef is static and hashable, arrays are arguments)


@functools.lru_cache(maxsize=16)
def _encode_fn(graphdef: Any) -> Callable:
    """Jitted ``encode(params, rest, ids [B, L], lengths [B]) -> [B, out_dim]``."""
    return jax.jit(lambda params, rest, ids, lengths: nnx.merge(graphdef, params, rest)(ids, lengths))


def _optimizer(lr_encoder: float, lr_head: float) -> optax.GradientTransformation:
    """Adam, one learning rate for the decoder and another for the head."""

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: "head" if path[0].key == "head" else "encoder", params)

    return optax.multi_transform({"encoder": optax.adam(lr_encoder), "head": optax.adam(lr_head)}, labels)


@functools.lru_cache(maxsize=16)
def _step_fn(graphdef: Any, lr_encoder: float, lr_head: float, scale: float, loss: str, episodes: int,
             threshold: float) -> Callable:
    """Jitted ``step(state, rest, key, arrays) -> (state, (loss, episodes [B, 4]))``; ``state`` is donated.

    ``arrays``: task_ids [E, Lt], task_len [E], offsets [F], counts [F], up_ids [N, Lu], up_len [N],
    z [F, N], pos_logits [F, N], neg_logits [F, N] (0 where an episode may draw the column, -inf
    elsewhere). An episode is (fit task, flat example index, forgotten column, other column), drawn
    from ``fold_in(key, state.step)``.
    """
    tx = _optimizer(lr_encoder, lr_head)
    B = episodes

    def loss_fn(params, rest, x_ids, x_len, u_ids, u_len, z):
        enc = nnx.merge(graphdef, params, rest)
        r_x = enc(x_ids, x_len)  # [B, D]
        r_u = enc(u_ids, u_len)  # [2B, D]: the forgotten ones, then the others
        s = -scale * jnp.mean(jnp.concatenate([r_x, r_x]) * r_u, axis=-1)
        return _loss(s, z, jnp.ones_like(z), loss, threshold)

    grad_fn = jax.value_and_grad(loss_fn)

    def step(state, rest, key, arrays):
        task_ids, task_len, offsets, counts, up_ids, up_len, z, pos_logits, neg_logits = arrays
        kt, ke, kp, kn = jax.random.split(jax.random.fold_in(key, state.step), 4)
        t = jax.random.randint(kt, (B,), 0, offsets.shape[0])
        e = offsets[t] + jnp.minimum((jax.random.uniform(ke, (B,)) * counts[t]).astype(jnp.int32), counts[t] - 1)
        jp = jax.random.categorical(kp, pos_logits[t])
        jn = jax.random.categorical(kn, neg_logits[t])
        cols = jnp.concatenate([jp, jn])
        targets = jnp.concatenate([z[t, jp], z[t, jn]])
        value, grads = grad_fn(state.params, rest, task_ids[e], task_len[e], up_ids[cols], up_len[cols], targets)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), (value, jnp.stack([t, e, jp, jn], axis=1))

    return jax.jit(step, donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------
# the predictor


@dataclasses.dataclass
class Predictor:
    """A trained rep_dot predictor (the best validated parameters) and the record of its training."""

    config: RepDotConfig
    threshold: float
    graphdef: Any
    rest: Any
    params: Any
    fit_rows: list[int]
    """Rows of Z the episodes were drawn from (the training tasks minus the validation tasks)."""
    val_rows: list[int]
    """Training tasks held out to select the best step."""
    best_step: int
    history: list[dict[str, float]]
    """Per validation: step, val_loss, train_loss (mean over the steps since the previous validation)."""
    episodes: np.ndarray
    """``[steps, episodes, 4]`` every episode drawn: (row of Z, example index within that task,
    forgotten column, other column)."""
    seconds: float

    def encode_texts(self, texts: TokenArrays) -> jax.Array:
        """``[R, out_dim]`` representations, in fixed batches of ``encode_batch``."""
        return _encode_all(self.graphdef, self.params, self.rest, texts, self.config.encode_batch)

    def predict_rows(self, tasks: Sequence[TokenArrays], upstream: TokenArrays) -> np.ndarray:
        """Predicted rows ``[T, N]``: for each task, the mean score over (a seeded subset of) its examples."""
        return np.asarray(_predict_rows(self.graphdef, self.params, self.rest, self.config, tasks, upstream))

    def example_scores(self, tasks: Sequence[TokenArrays], upstream: TokenArrays) -> tuple[np.ndarray, np.ndarray]:
        """Per-example scores ``[X, N]`` of (the seeded subset of) every task's examples, and the task of
        each example ``[X]`` (an index into ``tasks``)."""
        chosen = [_subset(t, self.config.max_task_examples, self.config.seed) for t in tasks]
        r_x = self.encode_texts(TokenArrays.concat(chosen))
        r_u = self.encode_texts(upstream)
        owner = np.repeat(np.arange(len(tasks)), [len(c) for c in chosen])
        return np.asarray(scores(r_x, r_u, self.config.scale)), owner


def _subset(t: TokenArrays, cap: int | None, seed: int) -> TokenArrays:
    """At most ``cap`` examples of a task (a seeded subset, in their order)."""
    if cap is None or len(t) <= cap:
        return t
    return t.take(np.sort(np.random.default_rng([seed, len(t)]).choice(len(t), cap, replace=False)))


def _encode_all(graphdef: Any, params: Any, rest: Any, texts: TokenArrays, batch: int) -> jax.Array:
    """Representations ``[R, out_dim]`` in batches of ``batch`` rows (the last one padded), on the device."""
    encode = _encode_fn(graphdef)
    R = len(texts)
    n = -(-R // batch) * batch
    ids = np.zeros((n, texts.ids.shape[1]), np.int32)
    lengths = np.ones(n, np.int32)  # padding rows: one token, dropped below
    ids[:R], lengths[:R] = texts.ids, texts.lengths
    outs = [encode(params, rest, ids[i:i + batch], lengths[i:i + batch]) for i in range(0, n, batch)]
    return jnp.concatenate(outs)[:R]


def _predict_rows(graphdef, params, rest, config: RepDotConfig, tasks: Sequence[TokenArrays],
                  upstream: TokenArrays) -> jax.Array:
    """``[T, N]`` on the device: ``-scale * mean_x(r_x) . r_j / out_dim``, which is the mean of the scores."""
    r_u = _encode_all(graphdef, params, rest, upstream, config.encode_batch)
    chosen = [_subset(t, config.max_task_examples, config.seed) for t in tasks]
    r_x = _encode_all(graphdef, params, rest, TokenArrays.concat(chosen), config.encode_batch)
    owner = jnp.asarray(np.repeat(np.arange(len(tasks)), [len(c) for c in chosen]))
    sizes = jnp.asarray([len(c) for c in chosen], jnp.float32)
    means = jax.ops.segment_sum(r_x, owner, num_segments=len(tasks)) / sizes[:, None]
    return scores(means, r_u, config.scale)


def _sampling_logits(z: np.ndarray, obs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """0 where an episode may draw the column, -inf elsewhere: the forgotten / not forgotten observed
    entries of each row, or all its observed entries when it has none of that kind."""
    pos = obs & (np.where(obs, z, -np.inf) > threshold)
    neg = obs & ~pos
    pos = np.where(pos.any(axis=1, keepdims=True), pos, obs)
    neg = np.where(neg.any(axis=1, keepdims=True), neg, obs)
    return np.where(pos, 0.0, -np.inf).astype(np.float32), np.where(neg, 0.0, -np.inf).astype(np.float32)


def train(model: nnx.Module, data: RepDotData, Z: Any, train_rows: Sequence[int],
          config: RepDotConfig = RepDotConfig(), *, mask: Any | None = None, threshold: float = 0.0,
          echo: Callable[[str], None] | None = None) -> Predictor:
    """Train a predictor on the rows ``train_rows`` of ``Z [M, N]`` (``mask``: the observed entries,
    default the finite ones). Only these rows of Z and these tasks' texts are read; other rows may hold
    anything.

    ``model``: a jaxforget ``Decoder``; it is not modified (its parameters are copied).
    ``threshold``: "forgotten" means ``z > threshold`` (episodes; the binary loss's label).
    """
    config.validate()
    t0 = time.perf_counter()
    Z = np.asarray(Z, np.float32)
    if Z.ndim != 2:
        raise ValueError(f"Z must be a 2-D matrix (tasks x examples); got shape {Z.shape}")
    M, N = Z.shape
    obs = np.isfinite(Z) if mask is None else np.asarray(mask, bool)
    if obs.shape != Z.shape:
        raise ValueError(f"mask shape {obs.shape} does not match Z shape {Z.shape}")
    if len(data.tasks) != M or len(data.upstream) != N:
        raise ValueError(f"the texts ({len(data.tasks)} tasks, {len(data.upstream)} upstream examples) do not "
                         f"match Z of shape {Z.shape}")
    train_rows = [int(r) for r in train_rows]
    if not train_rows or len(set(train_rows)) != len(train_rows) or not all(0 <= r < M for r in train_rows):
        raise ValueError(f"train_rows must be distinct row indices of Z (0..{M - 1}); got {train_rows}")
    for r in train_rows:
        if not obs[r].any():
            raise ValueError(f"training task (row {r} of Z) has no observed entry")
        if not np.all(np.isfinite(Z[r][obs[r]])):
            raise ValueError(f"training task (row {r} of Z) has non-finite observed entries")
    if config.val_fraction > 0 and len(train_rows) >= 2:
        fit_i, val_i = split_rows(len(train_rows), config.val_fraction, config.seed)
    else:
        fit_i, val_i = list(range(len(train_rows))), []
    fit_rows, val_rows = [train_rows[i] for i in fit_i], [train_rows[i] for i in val_i]

    # fixed-shape arrays of the fit rows only: nothing else reaches the step
    pos_logits, neg_logits = _sampling_logits(Z[fit_rows], obs[fit_rows], threshold)
    tasks = [data.tasks[r] for r in fit_rows]
    counts = np.asarray([len(t) for t in tasks], np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    flat = TokenArrays.concat(tasks)
    arrays = tuple(jnp.asarray(a) for a in (
        flat.ids, flat.lengths, offsets, counts, data.upstream.ids, data.upstream.lengths,
        np.where(obs[fit_rows], Z[fit_rows], 0.0).astype(np.float32), pos_logits, neg_logits))

    D = model.arch.d_model
    head = Head(D, config.hidden or D, config.out_dim, rngs=nnx.Rngs(params=config.seed))
    graphdef, params, rest = nnx.split(RepEncoder(model, head), nnx.Param, ...)
    step = _step_fn(graphdef, float(config.lr_encoder), float(config.lr_head), float(config.scale), config.loss,
                    config.episodes, float(threshold))
    state = start_state(params, _optimizer(config.lr_encoder, config.lr_head))  # a copy: the step donates it
    key = jax.random.key(config.seed)

    val_tasks = [data.tasks[r] for r in val_rows]
    val_w = jnp.asarray(obs[val_rows], jnp.float32)
    val_z = jnp.asarray(np.where(obs[val_rows], Z[val_rows], 0.0), jnp.float32)

    def validate(params) -> float:
        if not val_rows:
            return float("nan")
        rows = _predict_rows(graphdef, params, rest, config, val_tasks, data.upstream)
        return float(_loss(rows, val_z, val_w, config.loss, threshold))

    best_val, best_step, best_params = validate(state.params), 0, jax.tree.map(jnp.copy, state.params)
    history = [dict(step=0, val_loss=best_val, train_loss=float("nan"))]
    losses, episodes = [], []
    for i in range(1, config.steps + 1):
        state, (loss, ep) = step(state, rest, key, arrays)
        losses.append(loss)
        episodes.append(ep)
        if i % config.eval_every and i != config.steps:
            continue
        val = validate(state.params)
        train_loss = float(jnp.mean(jnp.stack(losses[history[-1]["step"]:])))
        history.append(dict(step=i, val_loss=val, train_loss=train_loss))
        if echo is not None:
            echo(f"rep_dot seed {config.seed}: step {i}: train loss {train_loss:.5f}, val loss {val:.5f}")
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"rep_dot: the training loss became {train_loss} by step {i}; "
                                     "lower lr_encoder / lr_head")
        if not val_rows or val < best_val:
            best_val, best_step, best_params = val, i, jax.tree.map(jnp.copy, state.params)
    ep = np.asarray(jax.device_get(jnp.stack(episodes)), np.int64)
    ep[..., 1] -= offsets[ep[..., 0]]  # flat example index -> index within its task
    ep[..., 0] = np.asarray(fit_rows)[ep[..., 0]]  # fit index -> row of Z
    return Predictor(config, float(threshold), graphdef, rest, best_params, fit_rows, val_rows, best_step, history,
                     ep, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# the protocol


def example_macro_f1(scores_xn: np.ndarray, owner_x: np.ndarray, z_test_tn: np.ndarray, hidden_tn: np.ndarray, *,
                     threshold: float, pred_threshold: float) -> float:
    """The original paper's metric: F1 of "forgotten" computed per task example (its scores against the true
    row of its task, on that task's hidden entries), averaged over the examples (macro)."""
    hidden = hidden_tn[owner_x]
    truth = hidden & (np.where(hidden, z_test_tn[owner_x], -np.inf) > threshold)
    guess = hidden & (scores_xn > pred_threshold)
    tp = np.sum(truth & guess, axis=1)
    f1 = 2 * tp / np.maximum(truth.sum(axis=1) + guess.sum(axis=1), 1)
    return float(np.mean(f1))


def add_to_protocol(result: Any, model: nnx.Module, data: RepDotData, Z: Any, config: RepDotConfig = RepDotConfig(),
                    *, label: str = "rep_dot", echo: Callable[[str], None] | None = None) -> None:
    """Train one predictor per protocol seed (seed = the protocol seed) on ``result.train_rows``, predict the
    test rows, and add them to ``result`` (a ``completion.ProtocolResult``), scored on the same hidden
    entries as the completion methods. The k revealed entries are not used: the row comes from text.

    Adds ``example_macro_f1`` (the original paper's per-example macro F1). With ``loss="binary"`` the
    predictions are logits ("forgotten" above 0) and RMSE is NaN (not in the units of Z).
    """
    threshold = float(result.settings["threshold"])
    test_tasks = [data.tasks[i] for i in result.test_rows]
    pred_threshold = 0.0 if config.loss == "binary" else threshold
    t0 = time.perf_counter()
    rows, f1s, runs = [], [], []
    for s_i, seed in enumerate(result.seeds):
        p = train(model, data, Z, result.train_rows, dataclasses.replace(config, seed=seed), threshold=threshold,
                  echo=echo)
        seen = set(np.unique(p.episodes[..., 0]).tolist()) | set(p.val_rows)
        if seen & set(result.test_rows):  # by construction impossible; checked because the claim matters
            raise AssertionError(f"rep_dot trained on test rows {sorted(seen & set(result.test_rows))}")
        sc, owner = p.example_scores(test_tasks, data.upstream)
        rows.append(np.stack([sc[owner == t].mean(axis=0) for t in range(len(test_tasks))]))
        f1s.append(example_macro_f1(sc, owner, result.z_test, result.hidden[s_i], threshold=threshold,
                                    pred_threshold=pred_threshold))
        runs.append(dict(seed=seed, best_step=p.best_step, val_rows=p.val_rows, history=p.history,
                         seconds=p.seconds))
    extra = dict(example_macro_f1=f1s)
    if config.loss == "binary":
        extra["rmse"] = [float("nan")] * len(rows)
    result.add(label, np.stack(rows), seconds=time.perf_counter() - t0, pred_threshold=pred_threshold,
               extra_metrics=extra, options=dict(dataclasses.asdict(config), seed="the protocol seed", runs=runs))


# ------------------------------------------------------------------------------------------------
# a collect run's texts and model


@dataclasses.dataclass
class RunTexts:
    """What rep_dot needs from a collect run directory."""

    model: nnx.Module
    """The base model the run fine-tuned (a jaxforget Decoder)."""
    data: RepDotData
    """The run's upstream examples (columns) and each task's training examples (rows), tokenised as collect did."""
    task_names: list[str]
    example_ids: list[str]


def load_run(run: str | Path, config: RepDotConfig = RepDotConfig(), *, echo: Callable[[str], None] = print
             ) -> RunTexts:
    """The base model and the texts of a ``python -m jaxforget.collect`` run directory: its configuration
    (``meta.json``) is rebuilt and resolved as collect does (``collect.build_setup``: the same upstream
    sample, task splits and tokenisation; the built-in world and base model from the cache), and the
    upstream ids and task names are checked against the run's."""
    _, setup, meta = setup_from_run(run, echo)
    ids = list(meta["example_ids"])
    data = RepDotData.build(setup.upstream_tok, [setup.task_train[n] for n in setup.task_names],
                            max_upstream_len=config.max_upstream_len, max_task_len=config.max_task_len)
    return RunTexts(setup.model, data, list(setup.task_names), ids)
