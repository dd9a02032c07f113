"""Fine-tuning one group of tasks: the step loop (:class:`TrainLoop`, reusable by any experiment), and
collect's use of it (:func:`train_group`): checkpoints, resume, failures, measurements."""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxforget import models
from jaxforget.collect import checkpoints
from jaxforget.collect.budget import Budget
from jaxforget.collect.config import CollectConfig, config_dict
from jaxforget.collect.distributed import is_primary
from jaxforget.collect.engine import Engine, TaskSchedule, stack_slots, task_seed
from jaxforget.collect.setup import Setup
from jaxforget.models.sharding import to_host
from jaxforget.store import RunDir, RunError
from jaxforget.train import TrainState

log = logging.getLogger("jaxforget.collect")


class TaskFailed(Exception):
    """Training diverged (a non-finite loss, or one that grew: :func:`diverged`); the row is recorded as
    failed with this reason."""


def diverged(losses: Sequence[float], factor: float, window: int = 10) -> str | None:
    """Why a task's training diverged, or None: the mean of its last `window` losses above `factor` times
    its first loss (``--train.divergence-factor``; 0 never fails a task). ``losses``: one per step."""
    if factor <= 0 or not len(losses):
        return None
    first, last = float(losses[0]), float(np.mean(losses[-window:]))
    if last > factor * first:
        n = min(window, len(losses))
        return (f"diverged: mean training loss of the last {n} steps {last:.4g} > {factor:g} x the first step's "
                f"{first:.4g} (--train.divergence-factor)")
    return None


def wrecked(losses: Sequence[float], nll_after: np.ndarray, vocab_size: int, window: int = 10) -> str | None:
    """Why a fine-tuned model is wrecked, or None: its mean upstream NLL is at or above ln V, the NLL of the
    uniform distribution over the V tokens (it predicts the upstream text no better than chance), or every
    one of its last `window` training losses is ln V (it collapsed to the uniform output). No tuning: ln V is
    the model's own chance level; "at" allows 0.1% of it, the rounding of a collapsed softmax, far below the
    distance of any trained model from chance. ``nll_after``: [N] nats/token."""
    uniform = math.log(vocab_size)
    near = 1e-3 * uniform
    mean_nll = float(np.mean(nll_after))
    if mean_nll >= uniform - near:
        return (f"wrecked: mean upstream NLL after fine-tuning {mean_nll:.4g} nats/token is at or above the uniform "
                f"distribution's ln V = {uniform:.4g} (V = {vocab_size}): the model predicts no better than chance")
    last = [float(x) for x in losses[-window:]]
    if last and all(abs(x - uniform) <= near for x in last):
        return (f"wrecked: the last {len(last)} training losses are ln V = {uniform:.4g} (V = {vocab_size}): the "
                "model collapsed to the uniform distribution")
    return None


class TrainLoop:
    """Fine-tunes the K slots of `engine` from `state`, slot k on ``schedules[k]`` (fewer schedules than
    K: the remaining slots are dummies, never active). Iterating runs it, one optimizer step per item:

        loop = TrainLoop(engine, schedules, engine.start(inits))
        for done, active in loop:        # done: steps finished; active: (K,) bool, the slots just trained
            ...                          # measure loop.state, checkpoint, report progress
        loop.losses, loop.failed, loop.n_tokens, loop.state

    Slots may need different numbers of steps: a slot is inactive once its task is done or failed,
    and keeps its parameters; the loop ends when no slot is active. Losses are read from the device
    every `log_every` steps (and by :meth:`flush`), which is when a non-finite loss fails its slot
    (``failed[k]`` holds the reason). ``first_step`` resumes: the batches of the earlier steps are
    drawn (the same seeded order) but not trained. ``on_loss(slot, count, loss, lr)`` sees each loss
    read. ``arrays`` is the last step's stacked batch (for audits).
    """

    def __init__(self, engine: Engine, schedules: Sequence[TaskSchedule], state: TrainState, *, first_step: int = 0,
                 losses: list[list[float]] | None = None, failed: list[str | None] | None = None,
                 log_every: int = 10, on_loss: Callable[[int, int, float, float], None] | None = None):
        self.engine, self.schedules, self.state = engine, list(schedules), state
        n_real = len(self.schedules)
        self.n_steps = [s.n_steps for s in self.schedules] + [0] * (engine.k - n_real)
        self.total = max(self.n_steps)
        self.first_step, self.log_every, self.on_loss = first_step, log_every, on_loss
        self.losses = losses if losses is not None else [[] for _ in range(n_real)]
        self.failed = failed if failed is not None else [None] * n_real
        self.n_tokens = [0] * n_real
        self.arrays: tuple[np.ndarray, ...] | None = None
        self._pending: list[tuple[Any, np.ndarray]] = []  # (device (loss, lr) (K,), host active (K,)) since a read

    def flush(self, step: int) -> None:
        """Read the losses of the steps since the last read; a non-finite one fails its slot."""
        n_real = len(self.schedules)
        for (loss, lr), active in zip(to_host([m for m, _ in self._pending]), [a for _, a in self._pending]):
            loss, lr = np.reshape(loss, -1), np.reshape(lr, -1)
            for k in np.flatnonzero(active[:n_real]):
                if self.failed[k]:
                    continue
                if not math.isfinite(loss[k]):
                    self.failed[k] = f"non-finite training loss ({loss[k]}) at or before step {step}"
                    continue
                self.losses[k].append(float(loss[k]))
                if self.on_loss is not None:
                    self.on_loss(int(k), len(self.losses[k]), float(loss[k]), float(lr[k]))
        self._pending.clear()

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        K, n_real, A = self.engine.k, len(self.schedules), self.engine.train.grad_accum
        for step in range(self.total):
            active = np.array([step < n and not f for n, f in zip(self.n_steps, self.failed + [None] * (K - n_real))])
            if not active.any():  # every task done or failed: the rest would train nothing
                break
            slots = [[next(self.schedules[k].batches) for _ in range(A)] if active[k] else None for k in range(n_real)]
            for k, slot in enumerate(slots):
                self.n_tokens[k] += sum(int(b.loss_mask.sum()) for b in slot or ())
            if step < self.first_step:  # trained before the restart: its batches are skipped (same seeded order)
                continue
            self.arrays = stack_slots(slots + [None] * (K - n_real), self.engine.pad_id)
            self.state, metrics = self.engine.step(self.state, self.arrays, active)
            self._pending.append(((metrics["loss"], metrics["lr"]), active))
            done = step + 1
            if done % self.log_every == 0 or done == self.total:
                self.flush(done)
            yield done, active
        self.flush(self.total)


# ------------------------------------------------------------------------------------------------
# collect's group of tasks: checkpoints, resume, measurements


def fault_point(where: str) -> None:
    """Fault injection for the resume tests: ``JAXFORGET_FAULT=kill@checkpoint:<task>:<step>`` sends this
    process SIGKILL right after that checkpoint is written, as a crash or pre-emption would."""
    if os.environ.get("JAXFORGET_FAULT") == f"kill@{where}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_model(model, path: Path, tokenizer) -> None:
    """The fine-tuned model as an HF directory (save_hf folds unmerged adapters into the weights).
    Every process calls it (save_hf gathers what is sharded across processes); process 0 writes."""
    primary = is_primary()
    tmp = path.with_name(path.name + ".tmp")
    if primary:
        shutil.rmtree(tmp, ignore_errors=True)
    models.save_hf(model, tmp, tokenizer=tokenizer)
    if primary:
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)


def run_schedule(engine: Engine, setup: Setup, index: int) -> TaskSchedule:
    """Task `index` of the run as collect trains it: its training split, in the order of its seed under
    --train.seed."""
    name = setup.task_names[index]
    return engine.schedule(name, setup.task_train[name], task_seed(engine.train.seed, index))


def epoch_cap_note(steps: dict[str, int], max_steps: int, max_epochs: float) -> str | None:
    """The line that says when --train.max-epochs cuts --train.max-steps (a small task's training set is seen
    at most max_epochs times), naming the tasks cut and their steps; None when no task is cut. `steps`: each
    task's real steps (:meth:`Engine.schedule`'s ``n_steps``)."""
    cut = {name: n for name, n in steps.items() if n < max_steps}
    if not cut:
        return None
    lo, hi = min(cut.values()), max(cut.values())
    names = ", ".join(list(cut)[:3]) + (f", ... ({len(cut) - 3} more)" if len(cut) > 3 else "")
    return (f"--train.max-epochs {max_epochs:g} cuts --train.max-steps {max_steps} to "
            f"{lo if lo == hi else f'{lo}-{hi}'} steps on {len(cut)} of {len(steps)} tasks ({names}): a task's "
            f"training set is seen at most {max_epochs:g} times{', as in the paper' if max_epochs == 3 else ''}; raise "
            "--train.max-epochs to train longer")


def train_group(indices: list[int], *, setup: Setup, config: CollectConfig, run: RunDir, engine: Engine,
                tracker, progress, em_eval: Callable[[Any], np.ndarray] | None = None, budget: Budget | None = None,
                choose: Callable[[list[int], list[np.ndarray], np.ndarray], list[np.ndarray]] | None = None
                ) -> list[dict[str, Any] | TaskFailed]:
    """Fine-tune tasks `indices` (at most K) together, each from its own start, and measure their
    upstream NLL. Returns, per task, its row fields or the TaskFailed that ended it.

    A task whose loss or NLL is non-finite fails alone: its slot stops training, the others go on.
    The group checkpoints as one unit in checkpoints/task_<first index> (fault point
    ``checkpoint:<first index>:<step>``). `progress` advances by one per task step, to the sum of the
    tasks' steps (steps trained before a resume, or lost to a failure, are added at the end).

    Row fields: nll_after [N], train_losses, steps_run, train_tokens, seconds (wall time of the whole
    group), eval_seconds (of the group's closing measurement), seed; nll_steps [T, N] and steps [T] with
    --eval.eval-every; with --save-models the fine-tuned model is written to RUN/models/<task>.

    With a `budget` (--eval.budget) each task measures its first round of columns (the union of the
    group's is evaluated, each task keeping its own), then, with two-round selection, the second round
    that ``choose(indices, first_rounds, nll)`` returns (nll: their first-round NLL, (K, N)); nll_after is
    NaN where not measured, and the row also holds ``measured`` and ``holdout`` (bool [N];
    :mod:`jaxforget.collect.budget`). Intermediate measurements (--eval.eval-every) cover the first round.
    """
    t, K, n_real = config.train, engine.k, len(indices)
    names = [setup.task_names[i] for i in indices]
    schedules = [run_schedule(engine, setup, i) for i in indices]
    inits = [engine.initial_params(i, t.seed) for i in indices]
    state = engine.start(inits + inits[:1] * (K - n_real))  # dummy slots: never active, never read
    losses: list[list[float]] = [[] for _ in indices]
    failed: list[str | None] = [None] * n_real
    nll_steps: list[list[np.ndarray]] = [[] for _ in indices]
    eval_steps: list[list[int]] = [[] for _ in indices]
    ckpt_dir = run.checkpoints_dir / f"task_{indices[0]:05d}"
    manager = checkpoints.manager(ckpt_dir, keep=t.keep_checkpoints) if t.checkpoint_every > 0 else None
    first = 0
    bound = checkpoints.binding(checkpoints.fingerprint(config_dict(config)), list(zip(indices, names)))
    if manager is not None:
        restored, extra = checkpoints.restore(manager, state, ckpt_dir, bound)
        if restored is not None:
            if list(extra["indices"]) != indices:
                raise RunError(f"{ckpt_dir}: a checkpoint of tasks {extra['indices']}, now grouped as {indices}. "
                               "Delete the directory to restart these tasks.")
            state, first = restored, int(extra["step"])
            losses, failed, eval_steps = extra["losses"], extra["failed"], extra["eval_steps"]
            nll_steps = [[np.asarray(x, np.float32) for x in xs] for xs in extra["nll_steps"]]
            log.info("task %s: resumed from the checkpoint at step %d", ", ".join(names), first)

    def on_loss(k: int, count: int, loss: float, lr: float) -> None:
        tracker.scalar(f"train_loss/{names[k]}", loss, count)
        tracker.scalar(f"lr/{names[k]}", lr, count)

    loop = TrainLoop(engine, schedules, state, first_step=first, losses=losses, failed=failed,
                     log_every=config.log_every, on_loss=on_loss)
    first = [budget.first_round(i) for i in indices] if budget is not None else None

    def measure(params, columns: list[np.ndarray] | None) -> np.ndarray:
        """(K, N) NLL: every example, or each slot's `columns` (NaN elsewhere) from one pass over their union."""
        if columns is None:
            return engine.evaluate(params)
        nll = engine.evaluate_columns(params, np.logical_or.reduce(columns))
        return np.stack([np.where(c, x, np.nan) for c, x in zip(columns, nll)] + list(nll[len(columns):]))

    t0 = time.perf_counter()
    counted = 0  # steps shown on `progress`: it ends at the group's planned steps, resumed or failed ones included
    for done, active in loop:
        due = [k for k in range(n_real) if active[k] and not failed[k] and done < schedules[k].n_steps]
        if config.eval.eval_every and done % config.eval.eval_every == 0 and due:
            nll = measure(loop.state.params, first)
            for k in due:
                nll_steps[k].append(nll[k])
                eval_steps[k].append(done)
        if manager is not None and done % t.checkpoint_every == 0 and done < loop.total:
            loop.flush(done)
            checkpoints.save(manager, done, loop.state, dict(
                indices=indices, losses=losses, failed=failed, eval_steps=eval_steps,
                nll_steps=[[x.tolist() for x in xs] for xs in nll_steps]), bound)
            fault_point(f"checkpoint:{indices[0]}:{done}")
        progress.update(int(active.sum()))
        counted += int(active.sum())
    progress.update(sum(s.n_steps for s in schedules) - counted)
    state = loop.state
    t_eval = time.perf_counter()
    nll_after = measured = None
    if not all(failed):
        nll_after = measure(state.params, first)
        measured = first
        if budget is not None and choose is not None:
            second = choose(indices, first, nll_after)
            if any(s.any() for s in second):
                more = measure(state.params, second)
                nll_after = np.where(np.isnan(nll_after), more, nll_after)
                measured = [f | s for f, s in zip(first, second)]
    eval_seconds = time.perf_counter() - t_eval
    results: list[dict[str, Any] | TaskFailed] = []
    for k, name in enumerate(names):
        if not failed[k]:
            failed[k] = diverged(losses[k], t.divergence_factor)
        seen = None if failed[k] else nll_after[k] if measured is None else nll_after[k][measured[k]]
        if not failed[k] and not np.all(np.isfinite(seen)):
            failed[k] = "non-finite upstream NLL after fine-tuning"
        if not failed[k]:
            failed[k] = wrecked(losses[k], seen, setup.model.arch.vocab_size)
        if failed[k]:
            results.append(TaskFailed(failed[k]))
            continue
        fields = dict(nll_after=nll_after[k], train_losses=np.asarray(losses[k], np.float32),
                      steps_run=np.asarray(schedules[k].n_steps), train_tokens=np.asarray(loop.n_tokens[k]),
                      seconds=np.asarray(time.perf_counter() - t0), eval_seconds=np.asarray(eval_seconds),
                      seed=np.asarray(schedules[k].seed))
        if measured is not None:
            fields.update(measured=measured[k], holdout=budget.held_back(indices[k], first[k]))
        if config.eval.eval_every:
            fields.update(nll_steps=np.stack(nll_steps[k] + [nll_after[k]]),
                          steps=np.asarray(eval_steps[k] + [schedules[k].n_steps]))
        if em_eval is not None:
            fields["em_after"] = em_eval(engine.model(state.params, k))
        if config.save_models:
            save_model(engine.model(state.params, k), run.root / "models" / name, setup.tokenizer)
        results.append(fields)
    if manager is not None:
        manager.close()
    return results
