"""``python -m jaxforget.replay``: fine-tune with replay of the upstream examples predicted to be forgotten.

For held-out tasks of a collected run, fine-tune from the same base and seed once per strategy and
measure the forgetting of upstream examples that are never replayed:

    python -m jaxforget.replay                                    # the built-in default run (collected if missing)
    python -m jaxforget.replay runs/olmo1b --tasks squad_v1 quoref --strategies none random offline:mf online:mf
    python -m jaxforget.replay runs/default --ratio 0.125 --seeds 0 1 2

The run's upstream examples (the columns of Z) are split once, by ``--heldout-seed``, into a
held-out set (never replayed; forgetting is measured there) and a candidate pool. Replayed examples
are drawn from the pool without replacement by a selection rule (:mod:`jaxforget.selection`) applied
to a score per pool example. The score:

- ``random``: uniform;
- ``oracle``: the task's true row of Z (measured by the run: a full fine-tuning and a pass over the pool);
- ``offline:<method>``: the row predicted by matrix completion (``jaxforget.completion``, e.g. additive,
  knn_baseline, mf) from the other tasks' rows plus ``k`` measured entries of this task's row;
- ``online:<method>``: the first ``online_fraction`` of the steps replay at random; then the forgetting of
  ``k`` probe examples of the pool, drawn among those not replayed so far (a replayed example would
  measure the replay, not the task), is measured against the base model, the row completed from the
  other tasks' rows, and the rest replayed by the prediction. Costs ``k`` forward passes.
- ``none``: no replay (the run's own fine-tuning: with the run's seed it reproduces the run's row).

The rule, ``<strategy>@<rule>``: ``softmax`` (no suffix; the paper's: softmax(score / temperature),
sequential draws, as Gumbel-top-n), ``zsoftmax`` (the same on the scores standardised over the pool, so
the temperature does not depend on their scale) or ``stratified`` (the draws allocated over the upstream
domains in proportion to their pool sizes, the zsoftmax rule within each domain: random replay's domain
mix, the score choosing only which examples within a domain). The rule applies to every draw (online:
the random first phase and the predicted rest). The offline predictions of a method and seed are
computed once and shared by its rules; the rules of one strategy draw from the same random stream for
a (task, seed).

Mixing: the task's batches are exactly the run's (same seeded order, same steps); ``ratio`` replayed
examples per task example are added as extra rows, spread evenly over the micro-batches, trained with
the plain LM loss on all their tokens (the training length grows by ``ratio``, as the paper's). A
batch of B task examples gets R = ceil(B * ratio) extra rows (padding where no example falls), so
the train step compiles once per (B + R, bucket) shape and is reused for every task and strategy.

Outputs (``--out``, default ``RUN/replay``): ``results/<task>.s<seed>.<strategy>.npz`` (one per
fine-tuning, written atomically; a rerun skips them), and ``summary.json``, ``report.md`` and TensorBoard
events under ``tb/`` (:mod:`jaxforget.replay_report`: effects with 95% intervals, the pairs needed for
80% power, the per-domain tables).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import tyro
from tqdm import tqdm

from jaxforget.cli import run, to_jsonable
from jaxforget.collect import (CollectConfig, Engine, Setup, TaskSchedule, TrainLoop, build_engine, collect,
                               resolve_buckets, setup_from_run, task_seed)
from jaxforget.completion import Method, complete_rows, evaluate, split_rows
from jaxforget.data.batching import Batch, with_extra_rows
from jaxforget.replay_report import domain_counts, summarize, write_report
from jaxforget.selection import RULES, select
from jaxforget.store import RunDir, RunError, atomic_write_npz, read_npz

log = logging.getLogger("jaxforget.replay")

KINDS = ("none", "random", "oracle", "offline", "online")

ONLINE_PROBE = "unreplayed"
"""Recorded in online results: the probe is drawn from the pool examples not replayed yet. Online results
without it (an older version probed the whole pool) are recomputed."""


@dataclasses.dataclass(frozen=True)
class Strategy:
    """``none``, ``random``, ``oracle``, ``offline:<method>`` or ``online:<method>``, where <method> is a
    completion method as ``python -m jaxforget.predict`` takes it (``mf``, ``mf:rank=3``, ...), optionally
    followed by ``@<rule>``, a selection rule of :mod:`jaxforget.selection` (``softmax``, the default and
    the paper's, ``zsoftmax`` or ``stratified``): ``oracle@zsoftmax``, ``offline:mf@stratified``.

    ``none`` takes no rule (it replays nothing). ``random`` takes only ``@stratified``: random replay
    with the pool's domain mix imposed, the control for the other ``@stratified`` strategies. Every pool
    example has the same chance of replay as under ``random`` (up to the rounding of the allocation);
    only the per-domain counts are fixed at their proportional share instead of varying as a
    hypergeometric draw. (``random@zsoftmax`` would be ``random`` itself: it is refused.)"""

    kind: str
    method: str | None = None
    rule: str = "softmax"

    @classmethod
    def parse(cls, text: str) -> "Strategy":
        body, at, rule = text.strip().partition("@")
        if at and rule not in RULES:
            raise ValueError(f"--strategies: {text!r}: unknown selection rule {rule!r}; expected one of "
                             f"{', '.join(RULES)} (e.g. oracle@zsoftmax)")
        kind, _, method = body.partition(":")
        if kind not in KINDS:
            raise ValueError(f"--strategies: unknown strategy {text!r}; expected one of none, random, oracle, "
                             "offline:<method>, online:<method> (method e.g. additive, knn_baseline, mf), "
                             f"optionally followed by @<rule> ({', '.join(RULES)})")
        rule = rule or "softmax"
        if kind == "none" and at:
            raise ValueError(f"--strategies: {text!r}: none replays nothing, so it takes no selection rule")
        if kind == "random" and rule == "zsoftmax":
            raise ValueError(f"--strategies: {text!r}: random scores are all equal, so zsoftmax draws exactly "
                             "as random; random takes only @stratified")
        if kind in ("offline", "online"):
            if not method:
                raise ValueError(f"--strategies: {text!r} needs a completion method, e.g. {kind}:mf")
            m = Method.parse(method)  # unknown names and options fail here, before any work
            if m.link == "logit":
                raise ValueError(f"--strategies: {text!r}: {m.name} is for binary matrices; replay scores "
                                 "forgetting as NLL increase")
            return cls(kind, m.label, rule)
        if method:
            raise ValueError(f"--strategies: {kind!r} takes no method (got {text!r})")
        return cls(kind, None, rule)

    @property
    def label(self) -> str:
        """As parsed, the default rule left out: ``oracle``, ``offline:mf@stratified``."""
        base = self.kind if self.method is None else f"{self.kind}:{self.method}"
        return base if self.rule == "softmax" else f"{base}@{self.rule}"

    @property
    def file_label(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=@-]+", "_", self.label)


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """Fine-tune held-out tasks of a collected run with replay, once per strategy, and compare forgetting."""

    run: tyro.conf.Positional[Path] = Path("runs/default")
    """A collected run directory (python -m jaxforget.collect). The default, runs/default, is collected first
    (the built-in world, about 2 minutes) when it does not exist."""
    tasks: tuple[str, ...] = ()
    """Tasks to fine-tune with replay: their rows are used only by the oracle and for the k measured entries of
    offline prediction; the other tasks' rows train the completion. Default: a seeded --test-fraction of the
    run's tasks (the same split as python -m jaxforget.predict --split <fraction>)."""
    test_fraction: float = 0.25
    """Fraction of the run's tasks taken as replay tasks when --tasks is not given."""
    split_seed: int = 0
    """Seed of that task split."""
    strategies: tuple[str, ...] = ("none", "random", "oracle", "offline:additive", "offline:knn_baseline",
                                   "offline:mf", "online:knn_baseline")
    """none, random, oracle, offline:<method>, online:<method> (method: a completion method, e.g. additive,
    knn_baseline, mf, mf:rank=3), each optionally with @<rule>: @zsoftmax (the scores standardised, so the
    temperature is in standard deviations) or @stratified (the pool's domain mix kept; the score chooses
    within each domain); none takes no rule, random only @stratified. No rule: softmax, the paper's."""
    ratio: float = 1 / 32
    """Replayed upstream examples per task example (the paper: 1/32; 1/8 for instruction-tuned models)."""
    temperature: float = 0.1
    """Replay probability is softmax(score / temperature), drawn without replacement (with @zsoftmax and
    @stratified: of the standardised score)."""
    heldout_fraction: float = 0.5
    """Fraction of the run's upstream examples never replayed, on which forgetting is measured."""
    heldout_seed: int = 0
    """Seed of the held-out / candidate split of the upstream examples."""
    k: int = 30
    """Measured entries of the task's row for offline and online prediction."""
    online_fraction: float = 0.1
    """online: the fraction of steps trained with random replay before forgetting is measured and predicted."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (batch order, adapter init; the run's own seed reproduces its training), replay draws and
    revealed entries. Every strategy uses the same seeds: results are paired."""
    measure: Literal["all", "heldout"] = "all"
    """Which upstream examples are measured after each fine-tuning: all of the run's, or only the held-out ones
    and the replayed ones (the candidate pool's forgetting is then not reported; the evaluation costs the
    held-out fraction of a full pass)."""
    out: Path | None = None
    """Output directory. Default: RUN/replay."""
    quiet: bool = False
    """No progress bar and no INFO log lines (the results, warnings and errors still print)."""


# Fields that may differ between a run and its resumption.
_NOT_COMPARED = ("out", "quiet", "strategies", "tasks", "seeds")


def check_config(config: ReplayConfig) -> list[Strategy]:
    strategies = [Strategy.parse(s) for s in config.strategies]
    if not strategies:
        raise ValueError("--strategies: give at least one")
    labels = [s.label for s in strategies]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--strategies: listed twice: {labels}")
    if not 0 <= config.ratio <= 1:
        raise ValueError(f"--ratio must be in [0, 1] (replayed examples per task example), got {config.ratio}")
    if config.temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {config.temperature}")
    if not 0 < config.heldout_fraction < 1:
        raise ValueError(f"--heldout-fraction must be in (0, 1), got {config.heldout_fraction}")
    if not 0 < config.online_fraction < 1:
        raise ValueError(f"--online-fraction must be in (0, 1), got {config.online_fraction}")
    if config.k < 1:
        raise ValueError(f"--k must be >= 1, got {config.k}")
    if not config.seeds:
        raise ValueError("--seeds: give at least one")
    return strategies


# ------------------------------------------------------------------------------------------------
# choosing what to replay


def spread(n_items: int, n_slots: int) -> np.ndarray:
    """How many of n_items go to each of n_slots, evenly (item r goes to slot floor(r * n_slots / n_items))."""
    if n_items == 0:
        return np.zeros(n_slots, np.int64)
    return np.bincount((np.arange(n_items) * n_slots) // n_items, minlength=n_slots)


@dataclasses.dataclass(frozen=True)
class ColumnSplit:
    """The run's upstream examples (Z's columns): held out (measured, never replayed) or candidates."""

    heldout: np.ndarray
    candidates: np.ndarray

    @classmethod
    def make(cls, n: int, fraction: float, seed: int) -> "ColumnSplit":
        n_held = min(n - 1, max(1, round(fraction * n)))
        perm = np.random.default_rng([seed, 17]).permutation(n)
        return cls(np.sort(perm[:n_held]), np.sort(perm[n_held:]))


# ------------------------------------------------------------------------------------------------
# the experiment


@dataclasses.dataclass
class Context:
    """What every fine-tuning of the experiment shares, built once."""

    config: ReplayConfig
    collect_config: CollectConfig  # of the run
    setup: Setup
    engine: Engine  # K = 1
    Z: np.ndarray  # [M, N] the run's forgetting matrix
    nll_before: np.ndarray  # [N]
    columns: ColumnSplit
    task_rows: list[int]  # rows of Z fine-tuned here
    train_rows: list[int]  # rows that train the completion (the others, finite)

    def measured(self, replayed: np.ndarray) -> np.ndarray:
        """The upstream indices measured after a fine-tuning that replayed ``replayed``: all of them
        (--measure all), or the held-out and the replayed ones (--measure heldout)."""
        if self.config.measure == "all":
            return np.arange(self.Z.shape[1])
        return np.union1d(self.columns.heldout, replayed)

    def measure(self, params, columns: np.ndarray) -> np.ndarray:
        """[N] NLL after fine-tuning of the upstream examples ``columns`` (:meth:`measured`), NaN elsewhere."""
        if columns.size == self.Z.shape[1]:
            return self.engine.evaluate(params)[0]
        nll = np.full(self.Z.shape[1], np.nan, np.float32)
        nll[columns] = self.engine.evaluator([self.setup.upstream_tok[j] for j in columns])(params)[0]
        return nll

    @functools.cached_property
    def domains(self) -> np.ndarray:
        """[N] int: each upstream example's domain (its ``source``), as its rank among the sorted domains:
        the strata of @stratified."""
        return np.unique([ex.source for ex in self.setup.upstream], return_inverse=True)[1].astype(np.int64)


def load_context(config: ReplayConfig, echo=print) -> Context:
    cc, setup, _ = setup_from_run(config.run, echo)
    train, eval_ = resolve_buckets(setup, cc.train, cc.eval)  # the replayed rows need the run's real buckets
    cc = dataclasses.replace(cc, train=train, eval=eval_)
    run = RunDir(config.run)
    if not run.forgetting_path.exists():
        raise RunError(f"{run.forgetting_path}: the run is not complete (finish it, or merge its shards with "
                       f"python -m jaxforget.collect --merge {run.root})")
    with np.load(run.forgetting_path) as f:
        Z, task_names = f["Z"].astype(np.float32), [str(x) for x in f["task_names"]]
    too_long = max(len(t.ids) for t in setup.upstream_tok)
    if too_long > max(cc.train.buckets):
        raise ValueError(f"{run.meta_path}: upstream examples have up to {too_long} tokens, more than the run's "
                         f"largest train bucket {max(cc.train.buckets)}: they cannot be replayed")

    if config.tasks:
        unknown = [t for t in config.tasks if t not in task_names]
        if unknown:
            raise ValueError(f"--tasks: unknown task(s) {unknown}; the run has {task_names}")
        task_rows = [task_names.index(t) for t in config.tasks]
    else:
        task_rows = split_rows(len(task_names), config.test_fraction, config.split_seed)[1]
    failed = [task_names[i] for i in task_rows if not np.isfinite(Z[i]).any()]
    if failed:
        raise ValueError(f"--tasks: {failed} failed in the run (no measured row)")
    train_rows = [i for i in range(len(task_names)) if i not in task_rows and np.isfinite(Z[i]).any()]
    needs_train = any(Strategy.parse(s).kind in ("offline", "online") for s in config.strategies)
    if needs_train and not train_rows:
        raise ValueError("offline and online prediction need at least one measured task besides --tasks")

    engine = build_engine(setup, cc)
    nll_before = engine.evaluate(engine.base_params)[0]
    stored = run.read_base()["nll_before"]
    gap = float(np.nanmax(np.abs(nll_before - stored)))
    if gap > 1e-3:
        raise RunError(f"{run.base_path}: the base model's NLL now differs from the run's by up to {gap:.3g}: the "
                       "base model or data changed since the run, so its Z no longer describes this model")
    columns = ColumnSplit.make(Z.shape[1], config.heldout_fraction, config.heldout_seed)
    if config.k > columns.candidates.size:
        raise ValueError(f"--k {config.k}: only {columns.candidates.size} candidate examples")
    return Context(config, cc, setup, engine, Z, nll_before, columns, task_rows, train_rows)


def offline_scores(ctx: Context, strategy: Strategy, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{task row: (predicted scores over the candidates, revealed candidate positions)} for one seed:
    the protocol of jaxforget.predict on Z restricted to the candidate columns, measured entries kept."""
    Zc = ctx.Z[:, ctx.columns.candidates]
    rows = ctx.train_rows + ctx.task_rows
    res = evaluate(Zc[rows], test_rows=list(range(len(ctx.train_rows), len(rows))), methods=[strategy.method],
                   k=ctx.config.k, seeds=[seed])
    pred = res.predictions[strategy.method][0]
    out = {}
    for t, row in enumerate(ctx.task_rows):
        revealed = res.reveal[0, t]
        out[row] = (np.where(revealed, Zc[row], pred[t]), np.flatnonzero(revealed))
    return out


@dataclasses.dataclass
class Trace:
    """What one fine-tuning fed the model, for tests and audits: per step, the upstream indices replayed."""

    replayed: list[np.ndarray] = dataclasses.field(default_factory=list)
    arrays: list[tuple[np.ndarray, ...]] = dataclasses.field(default_factory=list)
    """With keep_arrays: per step, the stacked batch trained on (input_ids, attention_mask, loss_mask)."""
    keep_arrays: bool = False


def fine_tune(ctx: Context, row: int, seed: int, strategy: Strategy, *, offline: dict | None = None,
              trace: Trace | None = None, progress=None) -> dict[str, np.ndarray]:
    """Fine-tune task `row` with `strategy` (training seed `seed`) and measure every upstream example.
    Returns the result fields (see the module docstring)."""
    cfg, setup, engine = ctx.config, ctx.setup, ctx.engine
    t = ctx.collect_config.train
    name = setup.task_names[row]
    plan = engine.schedule(name, setup.task_train[name], task_seed(seed, row))  # the run's batches for seed
    n_steps, micro = plan.n_steps, list(plan.batches)
    n_task = sum(int((b.index >= 0).sum()) for b in micro)
    pool = ctx.columns.candidates
    rng = np.random.default_rng([seed, row, KINDS.index(strategy.kind), 7])
    n_replay = 0 if strategy.kind == "none" else min(pool.size, int(round(n_task * cfg.ratio)))
    if strategy.kind != "none" and n_replay < round(n_task * cfg.ratio):
        log.warning("task %s: %d replayed examples asked for, only %d candidates: all are replayed once",
                    name, round(n_task * cfg.ratio), pool.size)
    per_micro = spread(n_replay, len(micro))
    extra_rows = int(math.ceil(t.batch_size * cfg.ratio)) if strategy.kind != "none" else 0
    extra_rows = max(extra_rows, int(per_micro.max(initial=0)))
    switch = n_steps  # online: the step at which forgetting is measured and the rest is replayed by prediction
    extra_forward = 0
    revealed_cols = np.zeros(0, np.int64)

    scores = None
    if strategy.kind == "random":
        scores = np.zeros(pool.size)
    elif strategy.kind == "oracle":
        scores = ctx.Z[row, pool]
        extra_forward = pool.size
    elif strategy.kind == "offline":
        scores, revealed = offline[row]
        revealed_cols = pool[revealed]
        extra_forward = cfg.k
    elif strategy.kind == "online":
        switch = max(1, int(math.ceil(cfg.online_fraction * n_steps)))
        scores = np.zeros(pool.size)  # random until the switch (with @stratified: in the pool's domain mix)
    n_first = int(per_micro[: switch * t.grad_accum].sum()) if strategy.kind == "online" else n_replay
    order = np.zeros(0, np.int64) if scores is None else select(
        strategy.rule, scores, n_first, temperature=cfg.temperature, rng=rng, strata=ctx.domains[pool])
    chosen = list(rng.permutation(order))  # replayed in a random order, spread over the whole run
    used, step_replayed = 0, []

    def with_replay() -> Iterator[Batch]:
        """The task's micro-batches, each with its share of the replayed examples as extra rows. Drawn
        lazily, one step at a time, so that the online choice made after a step feeds the next."""
        nonlocal used
        for m, b in enumerate(micro):
            take = [pool[i] for i in chosen[used:used + per_micro[m]]]
            used += per_micro[m]
            step_replayed.extend(take)
            yield with_extra_rows(b, [setup.upstream_tok[j] for j in take], engine.pad_id,
                                  t.batch_size + extra_rows, t.buckets) if extra_rows else b

    state = engine.start([engine.initial_params(row, seed)])
    loop = TrainLoop(engine, [TaskSchedule(name, plan.seed, n_steps, with_replay())], state,
                     log_every=ctx.collect_config.log_every)
    t0 = time.perf_counter()
    for done, _ in loop:
        if trace is not None:
            trace.replayed.append(np.asarray(step_replayed, np.int64))
            if trace.keep_arrays:
                trace.arrays.append(loop.arrays)
        step_replayed.clear()
        if strategy.kind == "online" and done == switch < n_steps:
            rest, revealed_cols = _online_choice(ctx, loop.state, strategy, seed, rng, chosen, n_replay - len(chosen))
            chosen += rest
            extra_forward = revealed_cols.size
        if progress is not None:
            progress.update(1)
    replayed_all = np.asarray([pool[i] for i in chosen[:used]], np.int64)
    if np.intersect1d(replayed_all, ctx.columns.heldout).size:  # cannot happen: the pool excludes them
        raise AssertionError("a held-out example was replayed")
    measured = ctx.measured(replayed_all)
    nll_after = ctx.measure(loop.state.params, measured)
    z = nll_after - ctx.nll_before
    failed = bool(loop.failed[0]) or not np.isfinite(nll_after[measured]).all()
    return dict(
        task=np.asarray(name), row=np.asarray(row), seed=np.asarray(seed), strategy=np.asarray(strategy.label),
        status=np.asarray("failed" if failed else "ok"), z=z.astype(np.float32),
        heldout_forgetting=np.asarray(np.mean(z[ctx.columns.heldout])),
        candidate_forgetting=np.asarray(np.mean(z[ctx.columns.candidates]) if cfg.measure == "all" else np.nan),
        replayed_forgetting=np.asarray(np.mean(z[replayed_all]) if replayed_all.size else np.nan),
        replayed=replayed_all, revealed=np.asarray(revealed_cols, np.int64), steps=np.asarray(n_steps),
        task_examples=np.asarray(n_task), extra_forward=np.asarray(extra_forward),
        train_losses=np.asarray(loop.losses[0], np.float32), seconds=np.asarray(time.perf_counter() - t0),
        task_seed=np.asarray(plan.seed),
        **(dict(online_probe=np.asarray(ONLINE_PROBE)) if strategy.kind == "online" else {}))


def _online_choice(ctx: Context, state, strategy: Strategy, seed: int, rng: np.random.Generator,
                   chosen: list, n_rest: int) -> tuple[list, np.ndarray]:
    """Measure k probe examples of the pool under the current weights, complete the row from the other
    tasks' rows, and draw the rest of the replay from the pool examples not drawn yet, by the strategy's
    rule. The probe, too, comes from the examples not drawn yet (``chosen``: every example replayed so
    far): a replayed example's forgetting measures the replay, not the task. Returns the drawn pool
    positions (in replay order) and the upstream indices of the probe examples (at most k: fewer when
    fewer are left)."""
    pool = ctx.columns.candidates
    left = np.setdiff1d(np.arange(pool.size), np.asarray(chosen, np.int64))
    probe = left[np.sort(rng.choice(left.size, min(ctx.config.k, left.size), replace=False))]
    if probe.size == 0:  # the first phase replayed the whole pool
        return [], np.zeros(0, np.int64)
    nll = ctx.engine.evaluator([ctx.setup.upstream_tok[j] for j in pool[probe]])(state.params)[0]
    z_probe = np.full(pool.size, np.nan, np.float32)
    z_probe[probe] = nll - ctx.nll_before[pool[probe]]
    revealed = np.zeros(pool.size, bool)
    revealed[probe] = True
    pred = complete_rows(ctx.Z[np.ix_(ctx.train_rows, pool)], z_probe[None], revealed[None],
                         method=strategy.method, seeds=seed)[0]
    n_rest = min(n_rest, left.size)
    draw = select(strategy.rule, pred[left], n_rest, temperature=ctx.config.temperature, rng=rng,
                  strata=ctx.domains[pool[left]])
    return list(rng.permutation(left[draw])), pool[probe]


# ------------------------------------------------------------------------------------------------
# the command


def _load_result(path: Path) -> dict[str, Any]:
    fields = read_npz(path)
    return {k: (v.item() if v.ndim == 0 else v) for k, v in fields.items()}


def main(config: ReplayConfig, echo=print) -> dict[str, Any]:
    strategies = check_config(config)
    if not (config.run / "meta.json").exists():
        if config.run != Path("runs/default"):
            raise FileNotFoundError(f"{config.run}: not a run directory (no meta.json); "
                                    f"python -m jaxforget.collect --out {config.run} collects one")
        echo(f"no run at {config.run}: collecting the built-in default run first")
        if collect(CollectConfig(out=config.run, quiet=config.quiet), echo) != 0:
            raise RunError(f"{config.run}: the default collection had failed tasks; see its meta.json")
    ctx = load_context(config, echo)
    task_names = [ctx.setup.task_names[i] for i in ctx.task_rows]
    out = config.out or config.run / "replay"
    store = RunDir(out)
    compared = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_COMPARED}
    store.start(dict(config=to_jsonable(compared), run=str(config.run.absolute()),
                     heldout_ids=[ctx.setup.upstream[j].id for j in ctx.columns.heldout],
                     n_candidates=int(ctx.columns.candidates.size),
                     train_tasks=[ctx.setup.task_names[i] for i in ctx.train_rows],
                     versions=dict(jax=jax.__version__, backend=jax.default_backend())))
    store.update_meta(tasks=task_names, strategies=[s.label for s in strategies], seeds=list(config.seeds))
    echo(f"replay on {len(task_names)} tasks ({', '.join(task_names)}) x {len(config.seeds)} seeds x "
         f"{len(strategies)} strategies; {ctx.columns.heldout.size} held-out and {ctx.columns.candidates.size} "
         f"candidate upstream examples; ratio {config.ratio:g}, temperature {config.temperature:g}")

    results: list[dict[str, Any]] = []
    offline: dict[tuple[str, int], dict] = {}
    jobs = [(row, seed, s) for seed in config.seeds for row in ctx.task_rows for s in strategies]
    with tqdm(total=len(jobs), disable=config.quiet, desc="replay", unit="fine-tune") as progress:
        for row, seed, s in jobs:
            name = ctx.setup.task_names[row]
            path = out / "results" / f"{name}.s{seed}.{s.file_label}.npz"
            progress.set_postfix(task=name, seed=seed, strategy=s.label)
            old = _load_result(path) if path.exists() else None
            if old is not None and s.kind == "online" and old.get("online_probe") != ONLINE_PROBE:
                echo(f"{path}: from a version whose online probe could measure replayed examples; recomputing")
                old = None
            if old is not None:
                results.append(old)
                progress.update(1)
                continue
            if s.kind == "offline" and (s.method, seed) not in offline:
                offline[s.method, seed] = offline_scores(ctx, s, seed)
            fields = fine_tune(ctx, row, seed, s, offline=offline.get((s.method, seed)))
            atomic_write_npz(path, **fields)
            results.append({k: (v.item() if np.ndim(v) == 0 else v) for k, v in fields.items()})
            if fields["status"] != "ok":
                echo(f"{name} seed {seed} {s.label}: FAILED (non-finite loss or NLL)")
            progress.update(1)

    domains = [ex.source for ex in ctx.setup.upstream]
    summary = summarize(results, [s.label for s in strategies], task_names, list(config.seeds), domains=domains,
                        heldout=ctx.columns.heldout)
    header = (f"# Replay on {config.run}\n\n{len(task_names)} tasks x {len(config.seeds)} seeds "
              f"({', '.join(map(str, config.seeds))}); ratio {config.ratio:g}, temperature {config.temperature:g}, "
              f"k {config.k}; {ctx.columns.heldout.size} held-out / {ctx.columns.candidates.size} candidate examples.")
    report = write_report(out, summary, header=header, task_names=task_names, seeds=list(config.seeds),
                          config=to_jsonable(dataclasses.asdict(config)),
                          heldout_per_domain=domain_counts(domains, ctx.columns.heldout),
                          pool_per_domain=domain_counts(domains, ctx.columns.candidates))
    echo(report)
    echo(f"wrote {out / 'report.md'} and {out / 'summary.json'}")
    return summary


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    return run(ReplayConfig, main, argv, errors=(ValueError, FileNotFoundError, RunError))


if __name__ == "__main__":
    cli()
