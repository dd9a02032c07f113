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
- ``oracle``: the task's true row of Z (measured by the run: a full fine-tuning and a pass over the pool; on a
  budgeted run, the pool examples the run did not measure are measured here: :func:`oracle_row`);
- ``offline:<method>``: the row predicted by matrix completion (``jaxforget.completion``, e.g. additive,
  knn_baseline, mf) from the other tasks' rows plus ``k`` measured entries of this task's row — measured,
  like the oracle's row, after a full fine-tuning on the task (here: the run's own), so its ``k`` extra
  forward passes come on top of that fine-tuning (``--folds F`` cross-fits: every task a replay task,
  completed from the rows outside its fold);
- ``online:<method>``: the first ``online_fraction`` of the steps replay at random; then the forgetting of
  ``k`` probe examples of the pool, drawn among those not replayed so far (a replayed example would
  measure the replay, not the task), is measured against the base model, the row completed from the
  other tasks' rows, and the rest replayed by the prediction. Costs ``--probe-k`` (default ``k``) forward
  passes. Its result records the probe's mean forgetting at the switch and the same examples' at the end:
  a probe that sees little of the final forgetting yields a flat prediction and a nearly uniform draw
  (its ESS near 1), i.e. random replay by construction; the report says so.
- ``none``: no replay (the run's own fine-tuning: with the run's seed it reproduces the run's row).

The rule, ``<strategy>@<rule>``: ``softmax`` (no suffix; the paper's: softmax(score / temperature),
sequential draws, as Gumbel-top-n), ``zsoftmax`` (the same on the scores standardised over the pool, so
the temperature does not depend on their scale) or ``stratified`` (the draws allocated over the upstream
domains in proportion to their pool sizes, the zsoftmax rule within each domain: random replay's domain
mix, the score choosing only which examples within a domain). The rule applies to every draw (online:
the random first phase and the predicted rest). The offline predictions of a method and seed are
computed once and shared by its rules; the rules of one strategy draw from the same random stream for
a (task, seed).

Mixing: the task's batches are exactly the run's (same seeded order, same steps); the replayed
examples are added as extra rows, spread evenly (by tokens) over the micro-batches, trained with the
plain LM loss on their tokens (the training length grows by ``ratio``, as the paper's). How much is
replayed (``--budget``): by default the same number of loss tokens in every arm of a (task, seed) —
ratio x the task examples seen x the pool's mean target tokens — each arm taking its draw in order
until the budget is spent, the last example cut to fit (arms that prefer long examples would otherwise
replay more); or the same number of examples. A batch of B task examples gets R = ceil(B * ratio)
extra rows (more when an arm's examples are short), so the train step compiles once per
(B + R, bucket) shape and is reused. ``--replay-weight w`` adds the replay loss (w x its mean) to
the task's mean loss instead of averaging the two together.

Common random numbers: every arm of a (task, seed) draws from the same streams (:func:`streams`: the
Gumbel noise of the draw, the replay order, the online probe) and trains on the same batches, so arms
differ only in their scores. Every result records its draw's τ and effective sample size (ESS, as a
fraction of the pool), the replayed and task loss tokens, and its stream.

Outputs (``--out``, default ``RUN/replay``): ``results/<task>.s<seed>.<strategy>.npz`` (one per
fine-tuning, written atomically; a rerun skips them), ``summary.json``, ``report.md``, ``heldout_forgetting.png``
(per strategy the held-out forgetting of each task, the mean over tasks and its 95% interval), and
TensorBoard events under the run's ``RUN/tb/replay`` (``RUN/tb/replay_<name>`` for another ``--out``)
(:mod:`jaxforget.replay_report`: inference at the task level — one paired t-test per
contrast, Holm-adjusted, intervals, an equivalence test and the minimum detectable effect — and the
per-task and per-domain tables).

A budgeted run (``collect --eval.budget F``: Z NaN where not measured) is read as measured: no arm ever
scores or ranks by a completed entry (the run's ``Z_completed`` is never read). Offline and online fit
the completion on the measured entries of the training rows (NaN = not observed) and reveal only
measured entries (offline: ``k`` of the task's measured candidates, so each replay task needs more than
``k`` of them). The oracle ranks by the task's true row over the whole pool: where the run measured only
part of it, replay fine-tunes the task again exactly as the run did (its seed, its batches, no replay:
the ``none`` arm at the run's seed, whose result is reused when --measure all measured it) and measures
the pool, keeping the run's values where it has them (:func:`oracle_row`).
"""

from __future__ import annotations

import copy
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

from jaxforget.cli import Range, above, at_least, check_ranges, closing, run, to_jsonable
from jaxforget.collect import (CollectConfig, Engine, Setup, TaskSchedule, TrainLoop, build_engine, collect,
                               resolve_buckets, setup_from_run, task_seed)
from jaxforget.collect.engine import make_tx
from jaxforget.collect.setup import tasks_path
from jaxforget.completion import Method, complete_rows, evaluate, split_rows
from jaxforget.data.batching import Batch, with_extra_rows
from jaxforget.data.tokenize import Tokenized
from jaxforget.replay_report import FIGURE, domain_counts, summarize, write_report
from jaxforget.selection import RULES, Draw, draw
from jaxforget.store import RunDir, RunError, atomic_write_npz, read_json_object, read_npz
from jaxforget.train import make_train_step

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
    the paper's, ``zsoftmax`` or ``stratified``): ``oracle@zsoftmax``, ``offline:mf@stratified``, and/or
    ``ess=F``, the draw's sharpness as an effective sample size (a fraction F of the pool; τ is found per
    draw): ``oracle@ess=0.05``, ``offline:mf@stratified,ess=0.2``. With an ESS, softmax and zsoftmax
    draw alike (a τ for the scores is a τ for the standardised scores, rescaled).

    ``none`` takes no rule (it replays nothing). ``random`` takes only ``@stratified``: random replay
    with the pool's domain mix imposed, the control for the other ``@stratified`` strategies. Every pool
    example has the same chance of replay as under ``random`` (up to the rounding of the allocation);
    only the per-domain counts are fixed at their proportional share instead of varying as a
    hypergeometric draw. (``random@zsoftmax`` would be ``random`` itself: it is refused.)"""

    kind: str
    method: str | None = None
    rule: str = "softmax"
    ess: float | None = None
    """The draw's effective sample size as a fraction of the pool (``@ess=F``; τ chosen per draw), or None:
    --ess, else --temperature."""

    @classmethod
    def parse(cls, text: str) -> "Strategy":
        body, at, options = text.strip().partition("@")
        rule, ess = "", None
        for item in filter(None, options.split(",")) if at else ():
            if item.startswith("ess="):
                try:
                    ess = float(item[4:])
                except ValueError:
                    ess = math.nan
                if not 0 < ess <= 1:
                    raise ValueError(f"--strategies: {text!r}: ess must be a fraction of the pool in (0, 1], "
                                     f"got {item[4:]!r}")
            elif item in RULES and not rule:
                rule = item
            else:
                raise ValueError(f"--strategies: {text!r}: unknown selection rule {item!r}; expected one of "
                                 f"{', '.join(RULES)} and/or ess=<fraction> (e.g. oracle@zsoftmax, "
                                 "offline:mf@ess=0.05, offline:mf@stratified,ess=0.2)")
        if at and not options:
            raise ValueError(f"--strategies: {text!r}: nothing after @")
        kind, _, method = body.partition(":")
        if kind not in KINDS:
            raise ValueError(f"--strategies: unknown strategy {text!r}; expected one of none, random, oracle, "
                             "offline:<method>, online:<method> (method e.g. additive, knn_baseline, mf), "
                             f"optionally followed by @<rule> ({', '.join(RULES)})")
        rule = rule or "softmax"
        if kind == "none" and at:
            raise ValueError(f"--strategies: {text!r}: none replays nothing, so it takes no selection rule")
        if kind == "random" and (rule == "zsoftmax" or ess is not None):
            raise ValueError(f"--strategies: {text!r}: random scores are all equal, so zsoftmax and any ess draw "
                             "exactly as random; random takes only @stratified")
        if kind in ("offline", "online"):
            if not method:
                raise ValueError(f"--strategies: {text!r} needs a completion method, e.g. {kind}:mf")
            m = Method.parse(method)  # unknown names and options fail here, before any work
            if m.link == "logit":
                raise ValueError(f"--strategies: {text!r}: {m.name} is for binary matrices; replay scores "
                                 "forgetting as NLL increase")
            return cls(kind, m.label, rule, ess)
        if method:
            raise ValueError(f"--strategies: {kind!r} takes no method (got {text!r})")
        return cls(kind, None, rule, ess)

    @property
    def label(self) -> str:
        """As parsed, the default rule left out: ``oracle``, ``offline:mf@stratified``, ``oracle@ess=0.05``."""
        base = self.kind if self.method is None else f"{self.kind}:{self.method}"
        options = ([] if self.rule == "softmax" else [self.rule]) + ([] if self.ess is None else [f"ess={self.ess:g}"])
        return f"{base}@{','.join(options)}" if options else base

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
    @stratified: of the standardised score). Its sharpness depends on the scores' scale: the report shows the
    effective sample size (ESS) it gives on each draw."""
    ess: float | None = None
    """Instead of --temperature: per draw, the τ at which the draw's effective sample size (Σw)²/Σw² of its
    softmax weights is this fraction of the pool (0 < F <= 1): the same sharpness on rows of any scale. A
    strategy's own @ess=F takes precedence."""
    budget: Literal["tokens", "examples"] = "tokens"
    """What every arm of a (task, seed) replays the same amount of: loss tokens (ratio x the task examples seen
    x the pool's mean target tokens per example; each arm takes its draw in order until the budget is spent,
    the last example cut to fit), or examples (ratio x the task examples seen; arms that pick longer examples
    then replay more tokens)."""
    replay_weight: float | None = None
    """None: the paper's loss, the token-weighted mean over task and replay tokens together (replay tokens
    dilute the task's gradient). A weight w: loss = mean over the task's tokens + w x mean over the step's
    replay tokens, so the task keeps its weight and replay is added on top (a clean replay-vs-none contrast)."""
    heldout_fraction: float = 0.5
    """Fraction of the run's upstream examples never replayed, on which forgetting is measured."""
    heldout_seed: int = 0
    """Seed of the held-out / candidate split of the upstream examples."""
    k: int = 30
    """Measured entries of the task's row for offline and online prediction."""
    online_fraction: float = 0.1
    """online: the fraction of steps trained with random replay before forgetting is measured and predicted."""
    probe_k: int | None = None
    """online: the pool examples whose forgetting the probe measures (default: --k)."""
    folds: int = 0
    """Cross-fitting: 0 = off (the completion is trained on the run's tasks that are not replay tasks). F >= 2:
    the run's measured tasks are dealt into F seeded folds (--split-seed), and a replay task's offline and
    online predictions are trained on every row outside its fold, so every task of a run can be a replay task
    (without --tasks, all of them are)."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (batch order, adapter init; the run's own seed reproduces its training), replay draws and
    revealed entries. Every strategy uses the same seeds: results are paired."""
    measure: Literal["all", "heldout"] = "all"
    """Which upstream examples are measured after each fine-tuning: all of the run's, or only the held-out ones
    and the replayed ones (the candidate pool's forgetting is then not reported; the evaluation costs the
    held-out fraction of a full pass)."""
    cluster: Literal["task", "family"] = "task"
    """The unit of the report's inference: the task (its seeds averaged), or the task family (the built-in
    world's families; tasks of a family averaged)."""
    equivalence_margin: float = 0.03
    """The relative margin of the equivalence test (TOST): a strategy is "equivalent" to its reference when
    its forgetting is shown to lie within (1 ± margin) x the reference's."""
    out: Path | None = None
    """Output directory. Default: RUN/replay."""
    force: bool = False
    """Start afresh in an output directory that holds a replay made with other flags (its results are deleted);
    refused otherwise. The same flags resume it without --force."""
    quiet: bool = False
    """No progress bar and no INFO log lines (the results, warnings and errors still print)."""


# Fields that may differ between a run and its resumption.
_NOT_COMPARED = ("out", "quiet", "force", "strategies", "tasks", "seeds", "cluster", "equivalence_margin")


RANGES: dict[str, Range] = {
    # every int/float flag (tests/test_robustness.py checks that none is missing)
    **dict.fromkeys(("seeds", "split_seed", "heldout_seed"), at_least(0)),
    **dict.fromkeys(("k", "probe_k"), at_least(1)),
    **dict.fromkeys(("test_fraction", "heldout_fraction", "online_fraction", "equivalence_margin"),
                    Range(0, 1, True, True)),
    "ratio": Range(0, 1), "temperature": above(0), "ess": Range(0, 1, lo_open=True),
    "replay_weight": at_least(0), "folds": Range(lo=2, off=0),
}


def check_config(config: ReplayConfig) -> list[Strategy]:
    """Every flag checked before anything is read: the numeric ones by their ranges (:data:`RANGES`: NaN and
    inf refused, the flag named as typed), then the strategies and the lists."""
    check_ranges(config, RANGES)
    strategies = [Strategy.parse(s) for s in config.strategies]
    if not strategies:
        raise ValueError("--strategies: give at least one")
    labels = [s.label for s in strategies]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--strategies: listed twice: {labels}")
    if config.tasks and len(set(config.tasks)) != len(config.tasks):
        raise ValueError(f"--tasks: listed twice: {list(config.tasks)}")
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


def spread_tokens(lengths: np.ndarray, n_slots: int, capacity: int) -> tuple[list[list[int]], int]:
    """Items (in order) with ``lengths`` tokens each, spread over ``n_slots`` micro-batches so that each
    slot gets about the same number of tokens: item i goes to the slot where its first token falls
    (floor(start_i * n_slots / total)), or the next one with room, at most ``capacity`` items a slot
    (raised until every item fits). Returns ([slot -> item positions], the capacity used)."""
    n = len(lengths)
    if n == 0 or n_slots == 0:
        return [[] for _ in range(n_slots)], capacity
    capacity = max(capacity, -(-n // n_slots))
    total = max(int(np.sum(lengths)), 1)
    ideal = (np.concatenate([[0], np.cumsum(lengths)[:-1]]) * n_slots) // total
    while True:
        slots: list[list[int]] = [[] for _ in range(n_slots)]
        m = 0
        for i in range(n):
            m = max(m, int(ideal[i]))
            while m < n_slots and len(slots[m]) >= capacity:
                m += 1
            if m == n_slots:
                break
            slots[m].append(i)
        else:
            return slots, capacity
        capacity += 1


def cut_to_targets(example: Tokenized, keep: int) -> Tokenized:
    """``example`` cut after its first ``keep`` target tokens (0 < keep <= example.n_targets): a token
    budget's last replayed example keeps only what the budget has left."""
    if not 0 < keep <= example.n_targets:
        raise ValueError(f"cannot keep {keep} of {example.n_targets} target tokens")
    end = int(np.flatnonzero(example.loss_mask)[keep - 1]) + 1
    return dataclasses.replace(example, ids=example.ids[:end], loss_mask=example.loss_mask[:end],
                               truncated=example.truncated or end < len(example.ids))


def take_budget(order: np.ndarray, targets: np.ndarray, *, n: int, tokens: int | None) -> tuple[np.ndarray, int]:
    """The replayed prefix of ``order`` (candidate positions, first = first choice): the first ``n``
    (``tokens`` None), or as many as it takes for their ``targets`` (per candidate) to reach ``tokens``
    (the last is then cut: returned with the target tokens it keeps; 0 when nothing is cut)."""
    if tokens is None:
        return order[:n], 0
    if tokens <= 0:
        return order[:0], 0
    cum = np.cumsum(targets[order])
    last = int(np.searchsorted(cum, tokens))  # the first prefix that reaches the budget
    if last >= order.size:
        return order, 0
    before = int(cum[last - 1]) if last else 0
    keep = tokens - before
    return order[: last + 1], (keep if keep < targets[order[last]] else 0)


def choose(rule: str, scores: np.ndarray, targets: np.ndarray, n: int, *, budget: int | None, gumbel: np.ndarray,
           strata: np.ndarray | None = None, temperature: float | None = None, ess: float | None = None
           ) -> tuple[np.ndarray, int, Draw]:
    """A whole replay draw over a pool: ``rule`` (:mod:`jaxforget.selection`) on ``scores`` [P] with the
    common noise ``gumbel`` [P] and the sharpness (``temperature`` or ``ess``), then the budget: the first
    ``n`` examples (``budget`` None) or examples in draw order until their ``targets`` [P] reach ``budget``
    tokens; ``strata`` [P] for the stratified rule. Returns (chosen pool positions, the target tokens the last one keeps (0: whole), the draw).
    What replay draws for an offline, oracle or random arm, and forecast for its replay set."""
    d = draw(rule, scores, n, gumbel=gumbel, strata=strata, temperature=temperature, ess=ess)
    if budget is None:
        return d.indices, 0, d
    chosen, keep = take_budget(d.order, targets, n=0, tokens=budget)
    return chosen, keep, d


def token_budget(n: int, targets: np.ndarray) -> int:
    """The loss tokens of a replay of ``n`` examples under a budget in tokens: n x the pool's mean target
    tokens per example (what random replay of n examples spends on average)."""
    return int(round(n * float(np.mean(targets)))) if n and len(targets) else 0


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


STREAM = "crn-v1"
"""Recorded in every result: every arm of a (task, seed) draws from the same random streams
(:func:`streams`: the Gumbel noise of the draw, the replay order, the online probe; the batch order is the
run's). Results without it (an older version drew each kind from its own stream) are recomputed."""


def streams(seed: int, row: int, n_pool: int) -> dict[str, np.ndarray]:
    """The common random numbers of one (task row, seed), shared by every arm: ``gumbel`` [n_pool] (the
    draw's noise: random replay is its top-n), ``position`` [n_pool] (where a replayed example goes in the
    replay order: uniform keys) and ``probe`` [n_pool] (the online probe takes the unreplayed pool examples
    with the smallest keys)."""
    g = np.random.default_rng([seed, row, 7, 1])
    return dict(gumbel=g.gumbel(size=n_pool), position=g.random(n_pool), probe=g.random(n_pool))


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
    train_rows: list[int]  # rows that train the completion without --folds (the others, finite)
    folds: dict[int, int] = dataclasses.field(default_factory=dict)
    """--folds: task row -> its fold."""
    weighted_engine: Engine | None = None
    """--replay-weight: the engine whose train step weighs task and replay rows apart."""

    def train_rows_for(self, row: int) -> list[int]:
        """The rows that train the completion of task ``row``'s prediction: with --folds every row outside its
        fold with a measured candidate entry, else ``train_rows``."""
        if not self.folds:
            return self.train_rows
        return [i for i in range(self.Z.shape[0]) if self.folds.get(i, -1) != self.folds[row]
                and np.isfinite(self.Z[i, self.columns.candidates]).any()]

    def measured(self, replayed: np.ndarray, probe: np.ndarray | None = None) -> np.ndarray:
        """The upstream indices measured after a fine-tuning that replayed ``replayed``: all of them
        (--measure all), or the held-out, the replayed and the online probe's ones (--measure heldout)."""
        if self.config.measure == "all":
            return np.arange(self.Z.shape[1])
        return np.union1d(np.union1d(self.columns.heldout, replayed), probe if probe is not None else [])

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

    @functools.cached_property
    def targets(self) -> np.ndarray:
        """[N] int: each upstream example's target (loss) tokens when replayed."""
        return np.asarray([ex.n_targets for ex in self.setup.upstream_tok], np.int64)

    def sharpness(self, strategy: Strategy) -> dict[str, float]:
        """The draw's sharpness for :func:`jaxforget.selection.draw`: the strategy's @ess, --ess, or --temperature."""
        ess = strategy.ess if strategy.ess is not None else self.config.ess
        return dict(ess=ess) if ess is not None else dict(temperature=self.config.temperature)


def load_context(config: ReplayConfig, echo=print) -> Context:
    run = RunDir(config.run)
    run.read_run_meta()  # the run's files checked (one line naming a damaged one) before anything is built
    forgetting = run.read_forgetting()
    Z, task_names = forgetting["Z"].astype(np.float32), [str(x) for x in forgetting["task_names"]]
    base = run.read_base()
    if base is None:
        raise RunError(f"{run.base_path}: missing; the run's base-model NLL is needed (finish the run)")
    if base["nll_before"].shape != Z.shape[1:]:
        raise RunError(f"{run.root}: base.npz has {base['nll_before'].shape[0]} examples, forgetting.npz "
                       f"{Z.shape[1]}; reassemble with python -m jaxforget.collect --merge {run.root}")
    cc, setup, _ = setup_from_run(config.run, echo)
    train, eval_ = resolve_buckets(setup, cc.train, cc.eval)  # the replayed rows need the run's real buckets
    cc = dataclasses.replace(cc, train=train, eval=eval_)
    too_long = max(len(t.ids) for t in setup.upstream_tok)
    if too_long > max(train.buckets):
        raise ValueError(f"{run.meta_path}: upstream examples have up to {too_long} tokens, more than the run's "
                         f"largest train bucket {max(train.buckets)}: they cannot be replayed")

    task_rows, folds = replay_rows(config, task_names, Z)
    columns = ColumnSplit.make(Z.shape[1], config.heldout_fraction, config.heldout_seed)
    # a training row needs a measured candidate entry (a budgeted run's rows are partly NaN)
    train_rows = [i for i in range(len(task_names))
                  if i not in task_rows and np.isfinite(Z[i, columns.candidates]).any()]
    needs_train = any(Strategy.parse(s).kind in ("offline", "online") for s in config.strategies)
    if needs_train and not folds and not train_rows:
        raise ValueError("offline and online prediction need at least one measured task besides --tasks "
                         "(or --folds, to cross-fit)")

    engine = build_engine(setup, cc)
    nll_before = engine.evaluate(engine.base_params)[0]
    stored = base["nll_before"]
    gap = float(np.nanmax(np.abs(nll_before - stored)))
    if gap > 1e-3:
        raise RunError(f"{run.base_path}: the base model's NLL now differs from the run's by up to {gap:.3g}: the "
                       "base model or data changed since the run, so its Z no longer describes this model")
    if config.k > columns.candidates.size:
        raise ValueError(f"--k {config.k}: only {columns.candidates.size} candidate examples")
    check_revealable(config, task_names, Z, columns, task_rows, folds)
    weighted = None
    if config.replay_weight is not None:
        weighted = copy.copy(engine)  # the same engine, its train step weighing the task's rows and the replayed apart
        weighted.train_step = make_train_step(engine.split, engine.tx, schedule=make_tx(cc.train)[0].schedule(),
                                              task_rows=cc.train.batch_size, extra_weight=config.replay_weight)
    return Context(config, cc, setup, engine, Z, nll_before, columns, task_rows, train_rows, folds, weighted)


def check_revealable(config: ReplayConfig, task_names: list[str], Z: np.ndarray, columns: ColumnSplit,
                     task_rows: list[int], folds: dict[int, int]) -> None:
    """Offline prediction reveals --k measured candidate entries of each row it predicts (the replay tasks; with
    --folds every row of their folds) and needs more than k: a ValueError naming the rows with too few (on a
    budgeted run, the rows measure only part of the pool)."""
    if not any(Strategy.parse(s).kind == "offline" for s in config.strategies):
        return
    wanted = {folds[r] for r in task_rows} if folds else set()
    predicted = [i for i in folds if folds[i] in wanted] if folds else task_rows
    counts = {task_names[i]: int(np.isfinite(Z[i, columns.candidates]).sum()) for i in predicted}
    short = {name: n for name, n in counts.items() if n <= config.k}
    if short:
        budgeted = any(np.isnan(Z[i]).any() for i in predicted)
        raise ValueError(f"--k {config.k}: offline prediction reveals k measured candidate entries of a task's row and "
                         f"needs more than k; measured candidates per task: {short} (of {columns.candidates.size}"
                         f"{'; the run measured only part of each row' if budgeted else ''}); lower --k")


def replay_rows(config: ReplayConfig, task_names: list[str], Z: np.ndarray) -> tuple[list[int], dict[int, int]]:
    """The rows of Z fine-tuned with replay (--tasks; else with --folds every measured task; else the seeded
    --test-fraction split of python -m jaxforget.predict) and, with --folds, each one's fold: the rows in a
    seeded order (--split-seed) dealt round-robin into the folds."""
    measured = [i for i in range(len(task_names)) if np.isfinite(Z[i]).any()]
    if config.tasks:
        unknown = [t for t in config.tasks if t not in task_names]
        if unknown:
            raise ValueError(f"--tasks: unknown task(s) {unknown}; the run has {task_names}")
        rows = [task_names.index(t) for t in config.tasks]
    elif config.folds:
        rows = measured
    else:
        rows = split_rows(len(task_names), config.test_fraction, config.split_seed)[1]
    failed = [task_names[i] for i in rows if i not in measured]
    if failed:
        raise ValueError(f"--tasks: {failed} failed in the run (no measured row)")
    if not config.folds:
        return rows, {}
    if len(measured) < config.folds:
        raise ValueError(f"--folds {config.folds}: the run has only {len(measured)} measured tasks")
    # over every measured row of the run, whichever of them --tasks fine-tunes: a task's fold (and so its
    # prediction) does not depend on which other tasks a process takes
    order = np.random.default_rng([config.split_seed, 23]).permutation(len(measured))
    return rows, {measured[i]: f % config.folds for f, i in enumerate(order)}


def offline_scores(ctx: Context, strategy: Strategy, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{task row: (predicted scores over the candidates, revealed candidate positions)} for one seed:
    the protocol of jaxforget.predict on Z restricted to the candidate columns, measured entries kept;
    with --folds once per fold (its rows completed from the rows outside it)."""
    Zc = ctx.Z[:, ctx.columns.candidates]
    groups: dict[int, list[int]] = {}
    for row in (ctx.folds if ctx.folds else ctx.task_rows):  # with --folds every row of a fold, as one problem set
        groups.setdefault(ctx.folds.get(row, 0), []).append(row)
    wanted = set(ctx.task_rows)
    out = {}
    for test in groups.values():
        if not wanted & set(test):
            continue
        train = ctx.train_rows_for(test[0])
        rows = train + test
        res = evaluate(Zc[rows], test_rows=list(range(len(train), len(rows))), methods=[strategy.method],
                       k=ctx.config.k, seeds=[seed])
        pred = res.predictions[strategy.method][0]
        for t, row in enumerate(test):
            if row in wanted:
                revealed = res.reveal[0, t]
                out[row] = (np.where(revealed, Zc[row], pred[t]), np.flatnonzero(revealed))
    return out


ORACLE_GAP = 1e-3
"""Largest |replay's - the run's| forgetting on the pool examples both measured, beyond which :func:`oracle_row`
warns that its fine-tuning did not reproduce the run's (nondeterministic kernels, another device)."""


@dataclasses.dataclass(frozen=True)
class OracleRow:
    """What the oracle ranks the pool by for one task: its true forgetting."""

    z: np.ndarray
    """[N]: the run's row where the run measured it; on the pool examples it did not (a budgeted run) replay's own
    measurement; NaN on the other examples the run did not measure."""
    measured_here: int
    """Pool examples whose score is replay's measurement, the run having not measured them (0: it measured all)."""
    gap: float
    """Largest |replay's - the run's| over the pool examples both measured (NaN when replay measured none)."""


def oracle_row(ctx: Context, row: int, results: Path | None = None) -> OracleRow:
    """The oracle's row for task ``row``: the run's row when it measured every pool example. Otherwise (a budgeted
    run) the forgetting of the whole pool after the run's own fine-tuning of the task: the ``none`` arm's result at
    the run's training seed when ``results`` holds one that measured the pool (--measure all), else that
    fine-tuning done again here (:func:`reproduce`: the pool's forward passes, the oracle's documented cost). The
    run's values are kept where it has them; ``gap`` compares the two there (a warning above :data:`ORACLE_GAP`)."""
    pool, z_run = ctx.columns.candidates, ctx.Z[row]
    if np.isfinite(z_run[pool]).all():
        return OracleRow(z_run, 0, math.nan)
    name, seed = ctx.setup.task_names[row], ctx.collect_config.train.seed
    z = None
    path = None if results is None else results / f"{name}.s{seed}.{Strategy('none').file_label}.npz"
    if path is not None and path.exists():
        old = _load_result(path)
        if old["status"] == "ok" and np.isfinite(old["z"][pool]).all():
            z = np.asarray(old["z"], np.float32)
    if z is None:
        z = reproduce(ctx, row)
    both = pool[np.isfinite(z_run[pool])]
    gap = float(np.max(np.abs(z[both] - z_run[both]))) if both.size else math.nan
    if gap > ORACLE_GAP:
        log.warning("oracle: task %s fine-tuned again as the run did differs from the run's row by up to %.3g on "
                    "the pool examples the run measured: the reproduction is not exact (another device or "
                    "nondeterministic kernels?); its values fill the examples the run did not measure", name, gap)
    filled, missing = z_run.copy(), pool[~np.isfinite(z_run[pool])]
    filled[missing] = z[missing]
    return OracleRow(filled, int(missing.size), gap)


def reproduce(ctx: Context, row: int) -> np.ndarray:
    """[N] the forgetting of the candidate pool (NaN elsewhere) after task ``row`` is fine-tuned as the run
    fine-tuned it: its training seed, its batches, no replay (the ``none`` arm at the run's seed)."""
    engine, seed, name = ctx.engine, ctx.collect_config.train.seed, ctx.setup.task_names[row]
    plan = engine.schedule(name, ctx.setup.task_train[name], task_seed(seed, row))
    loop = TrainLoop(engine, [plan], engine.start([engine.initial_params(row, seed)]),
                     log_every=ctx.collect_config.log_every)
    for _ in loop:
        pass
    if loop.failed[0]:
        raise RunError(f"oracle: task {name} failed when fine-tuned again as the run did ({loop.failed[0]}), "
                       "so the pool examples the run did not measure cannot be measured")
    return ctx.measure(loop.state.params, ctx.columns.candidates) - ctx.nll_before


@dataclasses.dataclass
class Trace:
    """What one fine-tuning fed the model, for tests and audits: per step, the upstream indices replayed."""

    replayed: list[np.ndarray] = dataclasses.field(default_factory=list)
    arrays: list[tuple[np.ndarray, ...]] = dataclasses.field(default_factory=list)
    """With keep_arrays: per step, the stacked batch trained on (input_ids, attention_mask, loss_mask)."""
    keep_arrays: bool = False


@dataclasses.dataclass
class _Replay:
    """The replay of one fine-tuning as it is drawn: per micro-batch, the upstream examples it adds."""

    slots: list[list[int]]
    """Per micro-batch: upstream indices."""
    cut: dict[int, int] = dataclasses.field(default_factory=dict)
    """Upstream index -> the target tokens it keeps (the budget's last example, cut to fit)."""
    rows: int = 0
    """Extra rows per micro-batch (the batch shape: B + rows)."""
    draws: list[Draw] = dataclasses.field(default_factory=list)
    """The selection.Draw of each draw (online: the random first phase, then the predicted rest)."""

    def place(self, ctx: Context, chosen: np.ndarray, keep: int, position: np.ndarray, first: int, last: int
              ) -> None:
        """Put the upstream examples ``chosen`` (the last one cut to ``keep`` target tokens, 0: whole) into
        micro-batches [first, last), in the order of their common ``position`` keys, spread by tokens; the
        extra rows per micro-batch grow when they do not fit."""
        if keep:
            self.cut[int(chosen[-1])] = keep
        chosen = chosen[np.argsort(position, kind="stable")]
        if ctx.config.budget == "tokens":
            spots, self.rows = spread_tokens(np.asarray([self.tokens(ctx, j) for j in chosen]), last - first, self.rows)
        else:
            counts = spread(chosen.size, last - first)
            ends = np.cumsum(counts)
            spots = [list(range(e - c, e)) for c, e in zip(counts, ends)]
            self.rows = max(self.rows, int(counts.max(initial=0)))
        for m, items in enumerate(spots):
            self.slots[first + m] = [int(chosen[i]) for i in items]

    def tokens(self, ctx: Context, j: int) -> int:
        """The target tokens upstream example ``j`` is replayed with (fewer when the budget cut it)."""
        return self.cut.get(int(j), int(ctx.targets[j]))

    def examples(self, ctx: Context, m: int) -> list[Tokenized]:
        return [cut_to_targets(ctx.setup.upstream_tok[j], self.cut[j]) if j in self.cut else ctx.setup.upstream_tok[j]
                for j in self.slots[m]]


def fine_tune(ctx: Context, row: int, seed: int, strategy: Strategy, *, offline: dict | None = None,
              oracle: OracleRow | None = None, trace: Trace | None = None, progress=None) -> dict[str, np.ndarray]:
    """Fine-tune task `row` with `strategy` (training seed `seed`) and measure the upstream examples; the
    oracle ranks by `oracle` (default: :func:`oracle_row`). Returns the result fields (see the module docstring)."""
    cfg, setup = ctx.config, ctx.setup
    engine = ctx.weighted_engine if ctx.weighted_engine is not None and strategy.kind != "none" else ctx.engine
    t = ctx.collect_config.train
    name = setup.task_names[row]
    plan = engine.schedule(name, setup.task_train[name], task_seed(seed, row))  # the run's batches for seed
    n_steps, micro = plan.n_steps, list(plan.batches)
    n_task = sum(int((b.index >= 0).sum()) for b in micro)
    task_tokens = int(sum(b.loss_mask[b.index >= 0].sum() for b in micro))
    pool = ctx.columns.candidates
    crn = streams(seed, row, pool.size)
    n_replay = 0 if strategy.kind == "none" else min(pool.size, int(round(n_task * cfg.ratio)))
    if strategy.kind != "none" and n_replay < round(n_task * cfg.ratio):
        log.warning("task %s: %d replayed examples asked for, only %d candidates: all are replayed once",
                    name, round(n_task * cfg.ratio), pool.size)
    targets = ctx.targets[pool]
    budget = token_budget(n_replay, targets) if cfg.budget == "tokens" else None
    # at least ceil(B x ratio) extra rows per micro-batch (more when an arm's examples are short)
    replay = _Replay([[] for _ in micro], rows=int(math.ceil(t.batch_size * cfg.ratio)) if strategy.kind != "none" else 0)
    switch = n_steps  # online: the step at which forgetting is measured and the rest is replayed by prediction
    extra_forward = 0
    revealed_cols = probe_cols = np.zeros(0, np.int64)
    probe_z = math.nan

    scores = None
    if strategy.kind == "random":
        scores = np.zeros(pool.size)
    elif strategy.kind == "oracle":
        oracle = oracle if oracle is not None else oracle_row(ctx, row)
        scores = oracle.z[pool]
        extra_forward = pool.size
    elif strategy.kind == "offline":
        scores, revealed = offline[row]
        revealed_cols = pool[revealed]
        extra_forward = cfg.k
    elif strategy.kind == "online":
        switch = max(1, int(math.ceil(cfg.online_fraction * n_steps)))
        scores = np.zeros(pool.size)  # random until the switch (with @stratified: in the pool's domain mix)
    first_micro, phase_budget = len(micro), budget
    if strategy.kind == "online":  # the random first phase: its share of the examples, or of the tokens
        first_micro = switch * t.grad_accum
        phase_budget = None if budget is None else int(round(budget * first_micro / len(micro)))
    chosen = np.zeros(0, np.int64)  # pool positions drawn (online: in the first phase)
    if scores is not None:
        n_first = int(spread(n_replay, len(micro))[:first_micro].sum())
        chosen, keep, d = choose(strategy.rule, scores, targets, n_first, gumbel=crn["gumbel"],
                                 strata=ctx.domains[pool], budget=phase_budget, **ctx.sharpness(strategy))
        if strategy.kind == "online":
            keep = 0  # the first phase ends with the example that crosses its share, whole
        replay.draws.append(d)
        replay.place(ctx, pool[chosen], keep, crn["position"][chosen], 0, first_micro)
    step_replayed: list[int] = []

    def with_replay() -> Iterator[Batch]:
        """The task's micro-batches, each with its share of the replayed examples as extra rows. Drawn
        lazily, one step at a time, so that the online choice made after a step feeds the next."""
        for m, b in enumerate(micro):
            step_replayed.extend(replay.slots[m])
            yield with_extra_rows(b, replay.examples(ctx, m), engine.pad_id, t.batch_size + replay.rows,
                                  t.buckets) if replay.rows else b

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
            probe_cols, probe_z = _online_choice(ctx, loop.state, strategy, row, seed, crn, replay, chosen,
                                                 n_replay, budget, first_micro)
            revealed_cols = probe_cols
            extra_forward = probe_cols.size
        if progress is not None:
            progress.update(1)
    replayed_all = np.asarray([j for slot in replay.slots for j in slot], np.int64)
    if np.intersect1d(replayed_all, ctx.columns.heldout).size:  # cannot happen: the pool excludes them
        raise AssertionError("a held-out example was replayed")
    measured = ctx.measured(replayed_all, probe_cols)
    nll_after = ctx.measure(loop.state.params, measured)
    z = nll_after - ctx.nll_before
    failed = bool(loop.failed[0]) or not np.isfinite(nll_after[measured]).all()
    replayed_tokens = sum(replay.tokens(ctx, j) for j in replayed_all)
    draws = replay.draws
    return dict(
        task=np.asarray(name), row=np.asarray(row), seed=np.asarray(seed), strategy=np.asarray(strategy.label),
        status=np.asarray("failed" if failed else "ok"), z=z.astype(np.float32),
        heldout_forgetting=np.asarray(np.mean(z[ctx.columns.heldout])),
        candidate_forgetting=np.asarray(np.mean(z[ctx.columns.candidates]) if cfg.measure == "all" else np.nan),
        replayed_forgetting=np.asarray(np.mean(z[replayed_all]) if replayed_all.size else np.nan),
        replayed=replayed_all, revealed=np.asarray(revealed_cols, np.int64), steps=np.asarray(n_steps),
        task_examples=np.asarray(n_task), extra_forward=np.asarray(extra_forward),
        train_losses=np.asarray(loop.losses[0], np.float32), seconds=np.asarray(time.perf_counter() - t0),
        task_seed=np.asarray(plan.seed), stream=np.asarray(f"{STREAM}:{seed},{row}"),
        budget=np.asarray(cfg.budget), token_budget=np.asarray(-1 if budget is None else budget),
        replayed_tokens=np.asarray(replayed_tokens), task_tokens=np.asarray(task_tokens),
        replay_token_share=np.asarray(replayed_tokens / max(replayed_tokens + task_tokens, 1)),
        replay_weight=np.asarray(np.nan if cfg.replay_weight is None or strategy.kind == "none" else cfg.replay_weight),
        temperature=np.asarray(draws[-1].temperature if draws else np.nan),
        ess=np.asarray(draws[-1].ess if draws else np.nan),
        draw_temperatures=np.asarray([d.temperature for d in draws], np.float64),
        draw_ess=np.asarray([d.ess for d in draws], np.float64),
        cut_examples=np.asarray(len(replay.cut)), extra_rows=np.asarray(replay.rows),
        **(dict(online_probe=np.asarray(ONLINE_PROBE), probe=np.asarray(probe_cols, np.int64),
                probe_forgetting=np.asarray(probe_z),
                probe_final_forgetting=np.asarray(np.mean(z[probe_cols]) if probe_cols.size else np.nan),
                switch_step=np.asarray(switch)) if strategy.kind == "online" else {}),
        **(dict(oracle_measured_here=np.asarray(oracle.measured_here), oracle_gap=np.asarray(oracle.gap))
           if strategy.kind == "oracle" else {}))


def _online_choice(ctx: Context, state, strategy: Strategy, row: int, seed: int, crn: dict[str, np.ndarray],
                   replay: _Replay, drawn: np.ndarray, n_replay: int, budget: int | None,
                   first_micro: int) -> tuple[np.ndarray, float]:
    """Measure the probe (--probe-k pool examples not replayed so far: a replayed example's forgetting
    measures the replay, not the task) under the current weights, complete the row from the training
    rows, and draw the rest of the replay (micro-batches ``first_micro`` on) from the pool examples not
    ``drawn`` yet (pool positions), by the strategy's rule, with the common noise. Returns the probe's upstream indices and
    their mean forgetting at the switch."""
    pool = ctx.columns.candidates
    k = ctx.config.probe_k or ctx.config.k
    left = np.setdiff1d(np.arange(pool.size), drawn)
    probe = np.sort(left[np.argsort(crn["probe"][left], kind="stable")[:k]])
    if probe.size == 0:  # the first phase replayed the whole pool
        return np.zeros(0, np.int64), math.nan
    nll = ctx.engine.evaluator([ctx.setup.upstream_tok[j] for j in pool[probe]])(state.params)[0]
    z_probe = np.full(pool.size, np.nan, np.float32)
    z_probe[probe] = nll - ctx.nll_before[pool[probe]]
    revealed = np.zeros(pool.size, bool)
    revealed[probe] = True
    pred = complete_rows(ctx.Z[np.ix_(ctx.train_rows_for(row), pool)], z_probe[None], revealed[None],
                         method=strategy.method, seeds=seed)[0]
    targets = ctx.targets[pool[left]]
    n_rest = min(n_replay - drawn.size, left.size)
    spent = int(ctx.targets[pool[drawn]].sum())  # the first phase's examples are whole
    chosen, keep, d = choose(strategy.rule, pred[left], targets, max(n_rest, 0), gumbel=crn["gumbel"][left],
                             strata=ctx.domains[pool[left]], budget=None if budget is None else budget - spent,
                             **ctx.sharpness(strategy))
    replay.draws.append(d)
    replay.place(ctx, pool[left[chosen]], keep, crn["position"][left[chosen]], first_micro, len(replay.slots))
    return pool[probe], float(np.mean(z_probe[probe]))


# ------------------------------------------------------------------------------------------------
# the command


def families(ctx: Context) -> dict[str, str]:
    """{task: its family} from the built-in world's ``world.json`` (a hand-written task is its own family's
    first member); --cluster family needs it."""
    path = tasks_path(ctx.collect_config).parent / "world.json"
    if not path.is_file():
        raise ValueError(f"--cluster family: the run's tasks have no families ({path} does not exist: only the "
                         "built-in world records them); use --cluster task")
    tasks = read_json_object(path, "the built-in world's description").get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tasks):
        raise RunError(f"{path}: no list of tasks with names; delete the cached world to rebuild it")
    described = {t["name"]: t.get("family") or t["name"] for t in tasks}
    return {name: described.get(name, name) for name in ctx.setup.task_names}


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
    if config.force:
        forget_other_replay(store, to_jsonable(compared), echo)
    try:
        store.start(dict(config=to_jsonable(compared), run=str(config.run.absolute()),
                         heldout_ids=[ctx.setup.upstream[j].id for j in ctx.columns.heldout],
                         n_candidates=int(ctx.columns.candidates.size),
                         train_tasks=[ctx.setup.task_names[i] for i in ctx.train_rows],
                         versions=dict(jax=jax.__version__, backend=jax.default_backend())))
    except RunError as e:  # the same rule as analyze, predict and forecast: other flags need --force
        raise RunError(f"{e} Or add --force to start afresh (its results are deleted).") from None
    store.update_meta(tasks=task_names, strategies=[s.label for s in strategies], seeds=list(config.seeds))
    echo(f"replay on {len(task_names)} tasks ({', '.join(task_names)}) x {len(config.seeds)} seeds x "
         f"{len(strategies)} strategies; {ctx.columns.heldout.size} held-out and {ctx.columns.candidates.size} "
         f"candidate upstream examples; ratio {config.ratio:g}, temperature {config.temperature:g}")

    results: list[dict[str, Any]] = []
    offline: dict[tuple[str, int], dict] = {}
    oracles: dict[int, OracleRow] = {}
    jobs = [(row, seed, s) for seed in config.seeds for row in ctx.task_rows for s in strategies]
    with tqdm(total=len(jobs), disable=config.quiet, desc="replay", unit="fine-tune") as progress:
        for row, seed, s in jobs:
            name = ctx.setup.task_names[row]
            path = out / "results" / f"{name}.s{seed}.{s.file_label}.npz"
            progress.set_postfix(task=name, seed=seed, strategy=s.label)
            old = _load_result(path) if path.exists() else None
            if old is not None and not str(old.get("stream", "")).startswith(STREAM):
                echo(f"{path}: from a version whose arms drew from separate random streams; recomputing")
                old = None
            if old is not None:
                results.append(old)
                progress.update(1)
                continue
            if s.kind == "offline" and (s.method, seed) not in offline:
                offline[s.method, seed] = offline_scores(ctx, s, seed)
            if s.kind == "oracle" and row not in oracles:
                oracles[row] = oracle_row(ctx, row, out / "results")
            fields = fine_tune(ctx, row, seed, s, offline=offline.get((s.method, seed)), oracle=oracles.get(row))
            atomic_write_npz(path, **fields)
            results.append({k: (v.item() if np.ndim(v) == 0 else v) for k, v in fields.items()})
            if fields["status"] != "ok":
                echo(f"{name} seed {seed} {s.label}: FAILED (non-finite loss or NLL)")
            progress.update(1)

    domains = [ex.source for ex in ctx.setup.upstream]
    summary = summarize(results, [s.label for s in strategies], task_names, list(config.seeds), domains=domains,
                        heldout=ctx.columns.heldout, cluster=config.cluster, margin=config.equivalence_margin,
                        clusters=families(ctx) if config.cluster == "family" else None)
    sharp = f"ESS {config.ess:g} of the pool" if config.ess is not None else f"temperature {config.temperature:g}"
    header = (f"# Replay on {config.run}\n\n{len(task_names)} tasks x {len(config.seeds)} seeds "
              f"({', '.join(map(str, config.seeds))}); ratio {config.ratio:g}, {sharp} (unless a strategy's @ess), "
              f"k {config.k}; budget in {config.budget}"
              f"{'' if config.replay_weight is None else f', replay loss added with weight {config.replay_weight:g}'}"
              f"{f'; {config.folds} cross-fitted folds' if config.folds else ''}; common random numbers across arms; "
              f"{ctx.columns.heldout.size} held-out / {ctx.columns.candidates.size} candidate examples."
              f"{budget_note(ctx, results)}")
    tb = tb_dir(config.run, out)
    report = write_report(out, summary, header=header, task_names=task_names, seeds=list(config.seeds),
                          config=to_jsonable(dataclasses.asdict(config)),
                          heldout_per_domain=domain_counts(domains, ctx.columns.heldout),
                          pool_per_domain=domain_counts(domains, ctx.columns.candidates), tb_dir=tb)
    echo(report)
    echo(closing([out / "report.md", out / FIGURE, out / "summary.json",
                  f"{out / 'results'}/ ({len(jobs)} fine-tunings)", f"{tb}/ (TensorBoard: tensorboard --logdir "
                                                                      f"{config.run / 'tb'})"],
                 first=out / "report.md",
                 next_steps=[f"python -m jaxforget.forecast {config.run} --task <a new task>   (forecast a task the run "
                             "did not train)"]))
    return summary


def budget_note(ctx: Context, results: list[dict[str, Any]]) -> str:
    """The report header's sentence on a budgeted run (its rows partly NaN): what each arm reads, and the tasks
    whose oracle scores replay measured (from the ``results``); "" otherwise."""
    measured = np.isfinite(ctx.Z[[i for i in range(ctx.Z.shape[0]) if np.isfinite(ctx.Z[i]).any()]])
    if measured.all():
        return ""
    here = sorted({str(r["task"]) for r in results if r.get("oracle_measured_here", 0) > 0})
    return (f" Budgeted run: {measured.mean():.1%} of Z's entries measured; offline and online complete from the "
            "measured entries only and reveal only measured ones; the oracle ranks by the task's true row"
            + (f", the pool measured here after the run's own fine-tuning of {', '.join(here)}" if here else "")
            + " (the run's completed entries are never used).")


def forget_other_replay(store: RunDir, compared: dict[str, Any], echo) -> None:
    """--force: an output directory whose meta.json records other flags loses that record and its results
    (what :meth:`RunDir.start` would refuse), so that the replay starts afresh; the same flags keep them."""
    import shutil

    if not store.meta_path.exists():
        return
    try:
        recorded = store.read_meta().get("config")
    except RunError:
        recorded = None
    if recorded == compared:
        return
    echo(f"--force: {store.root} held a replay with other flags; its results are deleted")
    shutil.rmtree(store.root / "results", ignore_errors=True)
    store.meta_path.unlink()


def tb_dir(run: Path, out: Path) -> Path:
    """Where replay's TensorBoard events go: under the run's own tb/ (RUN/tb/replay, or RUN/tb/replay_<name>
    for an --out elsewhere), so that `tensorboard --logdir RUN/tb` shows collect, analyze and replay together."""
    return run / "tb" / ("replay" if Path(out) == Path(run) / "replay" else f"replay_{Path(out).name}")


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    return run(ReplayConfig, main, argv)


if __name__ == "__main__":
    cli()
