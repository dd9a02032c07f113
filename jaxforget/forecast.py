"""``python -m jaxforget.forecast``: what a new fine-tuning task will make the model forget, from k measurements.

For a task that is not in a collected run: fine-tune the run's base model on it with the run's
settings (the same engine, schedule and seed rule as collect), measure the NLL of ``k`` upstream
examples drawn at random (seeded) — after training, or with ``--online`` after the first
``--online-fraction`` of the steps — and complete the task's row of Z against the run's matrix by
fold-in (``jaxforget.completion.Completer``: one fit of the run's Z, no refit). Costs ``k`` forward
passes instead of N.

    python -m jaxforget.forecast runs/default --task my_task.jsonl
    python -m jaxforget.forecast runs/default --task dialogue_reply --measure-all --seeds 0 1 2
    python -m jaxforget.forecast runs/default --task dialogue_reply --measure-all --append   # Z grows by a row

``--task`` is a task file (JSONL, the task formats collect reads) or the name of a task of the run's
task source (``--data.tasks`` or the built-in world) that the run did not train. Outputs (``--out``,
default ``RUN/forecast/<task>/<variant>``, the variant ``offline``, ``online``, ``measured`` (``--measure-all``)
or ``online-measured``, so that no variant replaces another; the same flags again replace their own output,
other flags in the same directory are refused unless ``--force``):

- ``forecast.npz``: per method and seed the predicted row ``[N]`` (revealed entries hold the measured
  values), the revealed example indices, the trivial baselines' rows, and with ``--measure-all`` the
  measured row ``z``;
- ``top.jsonl`` and ``top.md``: the ``--top-n`` examples predicted to be most forgotten (first method,
  first seed), with their text;
- ``replay.jsonl`` (or ``--replay-out``): a replay set drawn as ``python -m jaxforget.replay`` draws one:
  ``--ratio`` examples per training example, without replacement, probability softmax(prediction / τ);
- ``summary.json`` and ``report.md``: forward passes spent (k per seed) against N; with
  ``--measure-all`` the forecast's RMSE, ROC-AUC (forgotten: z > ``--threshold``) and precision@n on
  the examples not measured, beside the trivial baselines, mean ± std over seeds; ``summary.json``
  records the flags (``flags``) that the rule above compares;
- ``forecast.png``: the predicted row sorted, the measured entries on it, and with ``--measure-all``
  predicted against measured (first method, first seed).

``--append`` (with ``--measure-all``) writes the measured row into the run as task M + 1: its row file,
``meta.json`` (task names and ``data.task_names``), ``forgetting.npz`` and ``tasks.jsonl``, as if collect
had been run with the task listed last from the start (same seed rule, same batches).

A budgeted run (``collect --eval.budget F``: Z NaN where not measured) is completed against its measured
entries only (NaN = not measured; its ``Z_completed`` is never read). ``--append`` keeps its
forgetting.npz valid (:func:`with_budget_keys`): the new row, measured whole, is ``measured`` everywhere,
held back nowhere (``holdout``), and its ``Z_completed`` row is its Z; the other rows' completed entries
stay as the run's last refit made them (``collect --merge`` refits them with the new row), and
meta.json's ``budget.measured_fraction`` / ``measured_entries`` count the new row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from jaxforget.cli import FINITE, Range, above, at_least, check_ranges, closing, config_from_dict, out_dir_error
from jaxforget.cli import run as run_cli
from jaxforget.collect import CollectConfig, TrainLoop, build_engine, setup_from_run, task_seed
from jaxforget.collect.config import task_field_map
from jaxforget.collect.loop import epoch_cap_note, wrecked
from jaxforget.collect.run import task_records
from jaxforget.collect.setup import task_train_examples, tasks_path
from jaxforget.completion import BASELINES, Completer, Method, all_metrics, baseline_predictions
from jaxforget.data import readers
from jaxforget.replay import STREAM, choose, streams, token_budget
from jaxforget.store import (RunDir, RunError, atomic_write_bytes, atomic_write_json, atomic_write_jsonl,
                             atomic_write_npz, check_output, output_settings)


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """Forecast a new task's row of Z from k measured entries (and optionally measure it all, or add it to the run)."""

    run: tyro.conf.Positional[Path]
    """A complete collect run directory (its forgetting.npz is the matrix the row is completed against)."""
    task: str
    """A task JSONL file, or the name of a task in the run's task source that the run did not train."""
    k: int = 30
    """Upstream examples measured (per seed), drawn uniformly at random without replacement."""
    methods: tuple[str, ...] = ("mf", "knn_baseline", "additive")
    """Completion methods (as python -m jaxforget.predict takes them); the first ranks top.jsonl and the replay set."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of the k-example draw and of the completion fits; each seed is one forecast."""
    online: bool = False
    """Measure the k examples after the first --online-fraction of the training steps instead of at the end."""
    online_fraction: float = 0.1
    """--online: the fraction of steps trained before the k examples are measured."""
    measure_all: bool = False
    """Also finish training and measure every upstream example: the forecast is scored against the true row."""
    append: bool = False
    """With --measure-all: add the measured row to the run (Z grows by one task; the run stays resumable)."""
    top_n: int = 100
    """Examples listed in top.jsonl / top.md, and n of precision@n."""
    threshold: float = 0.0
    """Forgotten means z > threshold (ROC-AUC labels)."""
    ratio: float = 1 / 32
    """Replay set size: this many upstream examples per task example seen over the fine-tuning's steps (the
    paper's 1/32), as python -m jaxforget.replay counts it."""
    temperature: float = 0.1
    """Replay set draw: probability softmax(prediction / temperature), without replacement."""
    ess: float | None = None
    """Instead of --temperature: the τ at which the draw's effective sample size is this fraction of the N
    upstream examples (as python -m jaxforget.replay --ess)."""
    budget: Literal["tokens", "examples"] = "tokens"
    """The replay set's size in loss tokens (ratio x examples seen x the mean target tokens of an upstream
    example; the last example cut to fit) or in examples, as python -m jaxforget.replay --budget."""
    replay_out: Path | None = None
    """Where to write the replay set (JSONL). Default: OUT/replay.jsonl."""
    out: Path | None = None
    """Output directory. Default: RUN/forecast/<task>/<variant>, the variant offline, online (--online), measured
    (--measure-all) or online-measured."""
    force: bool = False
    """Replace an output directory that holds a forecast made with other flags (refused otherwise)."""
    quiet: bool = False
    """No jaxforget INFO log lines."""

    @property
    def variant(self) -> str:
        """The default output directory's last part: what was measured, and when."""
        parts = (["online"] if self.online else []) + (["measured"] if self.measure_all else [])
        return "-".join(parts) or "offline"


RANGES: dict[str, Range] = {
    # every int/float flag (tests/test_robustness.py checks that none is missing)
    "k": at_least(1), "top_n": at_least(1), "seeds": at_least(0), "online_fraction": Range(0, 1, True, True),
    "ratio": Range(0, 1), "temperature": above(0), "ess": Range(0, 1, lo_open=True),
    "threshold": FINITE,
}


def check_config(config: ForecastConfig) -> list[Method]:
    """Every flag checked before anything is read, each error naming the flag as typed."""
    check_ranges(config, RANGES)
    for flag, path in (("--out", config.out), ("--replay-out", config.replay_out and config.replay_out.parent)):
        error = out_dir_error(path, flag) if path is not None else None
        if error:
            raise ValueError(error)
    methods = [Method.parse(m) for m in config.methods]
    if not methods:
        raise ValueError("--methods: give at least one completion method")
    if any(m.link == "logit" for m in methods):
        raise ValueError("--methods: logistic methods are for binary matrices; forecast completes NLL increases")
    if not config.seeds:
        raise ValueError("--seeds: give at least one")
    if config.append and not config.measure_all:
        raise ValueError("--append adds the measured row to the run: add --measure-all")
    return methods


def read_task(config: ForecastConfig, cc) -> tuple[str, list[readers.TaskExample], bool]:
    """(name, examples, from the run's own task source) of --task."""
    path = Path(config.task)
    if path.suffix == ".jsonl" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--task {config.task}: no such file")
        name = path.stem
        return name, readers.read_task_file(path, name, check_task_field=False, fields=task_field_map(cc.data)), False
    source = tasks_path(cc)
    tasks = readers.read_tasks(source, task_field_map(cc.data))
    if config.task not in tasks:
        raise ValueError(f"--task {config.task!r}: not a file, and not a task of the run's source {source} "
                         f"(its tasks: {sorted(tasks)})")
    return config.task, tasks[config.task], True


def probe_indices(n: int, k: int, seed: int) -> np.ndarray:
    """The k distinct upstream examples measured for `seed` (sorted)."""
    if k > n:
        raise ValueError(f"--k {k}: the run has only {n} upstream examples")
    return np.sort(np.random.default_rng([seed, 23]).choice(n, k, replace=False))


def main(config: ForecastConfig, echo=print) -> dict:
    methods = check_config(config)
    run = RunDir(config.run)
    run.read_run_meta()  # a run directory (before --append creates its lock file in it)
    # --append is one transaction: the run lock from before the fine-tuning to after the last write, so that no
    # collect and no other append can change the run in between (a second append at once is refused here)
    lock = run.lock_run() if config.append else None
    try:
        return _main(config, methods, run, echo)
    finally:
        if lock is not None:
            lock.release()


def _main(config: ForecastConfig, methods: list[Method], run: RunDir, echo) -> dict:
    # every file of the run read (and checked) first, then the task from the recorded configuration: a damaged
    # run or a wrong --task fails before the model is loaded
    state = run_state(run)
    recorded = run.read_run_meta()
    forgetting = run.read_forgetting()
    Z = forgetting["Z"].astype(np.float32)  # NaN = not measured; a budgeted run's Z_completed is never read
    base = run.read_base()
    if base is None:
        raise RunError(f"{run.base_path}: missing; the run's base-model NLL is needed (finish the run)")
    nll_before = base["nll_before"]
    if Z.shape != (len(recorded["task_names"]), len(recorded["example_ids"])) or nll_before.shape != Z.shape[1:]:
        raise RunError(f"{run.root}: forgetting.npz ({Z.shape}), base.npz ({nll_before.shape}) and meta.json "
                       f"({len(recorded['task_names'])} tasks x {len(recorded['example_ids'])} examples) disagree; "
                       f"reassemble with python -m jaxforget.collect --merge {run.root}")
    if config.append:
        M = len(recorded["task_names"])
        if run.row_path(M).exists():
            raise RunError(f"{run.row_path(M)}: a row beyond the run's {M} tasks (left by an interrupted append?); "
                           "move it away")
        for i in range(M):  # every row readable: a damaged run fails before the fine-tuning
            run.read_row(i)
    run_config = config_from_dict(CollectConfig, recorded["config"], f"{run.meta_path}: config")
    name, records, from_source = read_task(config, run_config)
    names = list(recorded["task_names"])
    if name in names:
        raise ValueError(f"--task {name!r} is already a task of the run (row {names.index(name)}); "
                         "forecast is for a task the run did not train")
    if config.append:  # checked on the recorded configuration: setup_from_run turns per-step and em off
        if not from_source:
            raise ValueError(f"--append: {config.task} is not in the run's task source {tasks_path(run_config)}; "
                             "put the file there (so that the run can be rebuilt and resumed from its configuration) "
                             "and give its name")
        if run_config.eval.eval_every or "em" in run_config.eval.metrics:
            raise ValueError("--append: the run measures per-step or exact-match forgetting, which forecast does not")
    out_dir = config.out or run.root / "forecast" / name / config.variant
    settings = output_settings(config, leave_out=SETTINGS_LEFT_OUT)
    check_output(out_dir / "summary.json", settings, force=config.force)  # before the fine-tuning, not after
    cc, setup, meta = setup_from_run(config.run, echo)
    M, N = Z.shape
    ok = np.isfinite(Z).any(axis=1)
    Z_run = Z[ok]
    probes = {s: probe_indices(N, config.k, s) for s in config.seeds}
    union = np.unique(np.concatenate(list(probes.values())))
    when = f"after {config.online_fraction:g} of the steps" if config.online else "after training"
    echo(f"forecast {name}: fine-tune the run's base with its settings ({cc.train.mode}), measure {config.k} of "
         f"{N} upstream examples per seed {when}; complete against the run's {int(ok.sum())} tasks by fold-in "
         f"({', '.join(m.label for m in methods)})")

    # fine-tune as collect would train this task as row M (the same seed rule: --append reproduces collect)
    engine = build_engine(setup, cc)
    examples = task_train_examples(records, setup.tokenizer, cc)
    plan = engine.schedule(name, examples, task_seed(cc.train.seed, M))
    switch = max(1, math.ceil(config.online_fraction * plan.n_steps)) if config.online else plan.n_steps
    note = epoch_cap_note({name: plan.n_steps}, cc.train.max_steps, cc.train.max_epochs)
    if note:
        echo(note.replace("raise --train.max-epochs", "collect with a higher --train.max-epochs"))
    loop = TrainLoop(engine, [plan], engine.start([engine.initial_params(M, cc.train.seed)]),
                     log_every=cc.log_every)
    probe_eval = engine.evaluator([setup.upstream_tok[j] for j in union])
    t0, z_union = time.perf_counter(), None
    for done, _ in loop:
        if done == switch:
            z_union = probe_eval(loop.state.params)[0] - nll_before[union]
            if not config.measure_all:
                break
    if loop.failed[0]:
        raise RunError(f"task {name}: {loop.failed[0]}")
    nll_after = engine.evaluate(loop.state.params)[0] if config.measure_all else None
    if nll_after is not None:  # as collect fails such a task (and --append must not add its row)
        reason = ("non-finite upstream NLL after fine-tuning" if not np.all(np.isfinite(nll_after))
                  else wrecked(loop.losses[0], nll_after, setup.model.arch.vocab_size))
        if reason:
            raise RunError(f"task {name}: {reason}")
    z_true = nll_after - nll_before if config.measure_all else None
    seconds = time.perf_counter() - t0

    # complete the row, once per method and seed; baselines on the same revealed entries
    rows, revealed_all = {}, {}
    for s in config.seeds:
        revealed = np.zeros(N, bool)
        revealed[probes[s]] = True
        z_row = np.full(N, np.nan, np.float32)
        z_row[union] = z_union
        z_row[~revealed] = np.nan
        revealed_all[s] = revealed
        for m in methods:
            pred = Completer(Z_run, method=m, seed=s).fold_in(np.nan_to_num(z_row)[None], revealed[None])[0]
            rows[m.label, s] = np.where(revealed, z_row, np.asarray(pred)).astype(np.float32)
        base = baseline_predictions(Z_run, np.isfinite(Z_run), np.nan_to_num(z_row)[None], revealed[None, None])
        for b, v in base.items():
            rows[b, s] = np.where(revealed, z_row, np.asarray(v)[0, 0]).astype(np.float32)

    scores = _score(rows, revealed_all, z_true, config) if z_true is not None else None
    summary = dict(flags=settings, task=name, run=str(run.root), k=config.k, n_upstream=N, seeds=list(config.seeds),
                   methods=[m.label for m in methods], online=config.online, steps=plan.n_steps,
                   measured_at_step=switch, forward_passes=dict(per_seed=config.k, all_seeds=int(union.size),
                                                                measure_all=N if config.measure_all else 0),
                   seconds=seconds, scores=scores)
    # the replay set counts the task examples seen over every step, as replay does (not one epoch)
    seen = sum(int((b.index >= 0).sum()) for b in engine.schedule(name, examples, plan.seed).batches)
    _write_outputs(out_dir, config, summary, rows, revealed_all, z_true, setup, nll_before, seen, M)
    if config.append:
        n_train = [len(setup.task_train[n]) for n in setup.task_names] + [len(examples)]
        # a budgeted run's rows record which entries they measured (this one: all) and held back (none)
        budgeted = dict(measured=np.ones(N, bool), holdout=np.zeros(N, bool)) if "measured" in forgetting else {}
        row = RunDir.row_arrays(name=name, nll_after=nll_after, train_losses=np.asarray(loop.losses[0], np.float32),
                                steps_run=np.asarray(plan.n_steps), train_tokens=np.asarray(loop.n_tokens[0]),
                                seconds=np.asarray(seconds), seed=np.asarray(plan.seed), **budgeted)
        append_row(run, row, n_train, state, em_base_correct_only=cc.eval.em_base_correct_only)
        echo(f"appended {name} to {run.root} as task {M} (Z is now {M + 1} x {N})")
    echo((out_dir / "report.md").read_text())
    echo(closing_lines(config, out_dir, name))
    return summary


SETTINGS_LEFT_OUT = ("out", "force", "quiet", "append")
"""Flags that do not change a forecast's files (--append changes the run, not the forecast)."""


def closing_lines(config: ForecastConfig, out: Path, name: str) -> str:
    """What forecast wrote (top.md first: the answer the user came for) and what to run next."""
    replay = config.replay_out or out / "replay.jsonl"
    wrote = [out / "top.md", out / "top.jsonl", replay, out / "forecast.png", out / "forecast.npz",
             out / "report.md", out / "summary.json"]
    task = config.task if Path(config.task).suffix == ".jsonl" or Path(config.task).is_file() else name
    base = f"python -m jaxforget.forecast {config.run} --task {task}"
    if not config.measure_all:
        steps = [f"{base} --measure-all   (measure the whole row: scores this forecast)"]
    elif not config.append:
        steps = [f"{base} --measure-all --append   (add the measured row to the run)"]
    else:
        steps = [f"python -m jaxforget.analyze {config.run}   (the run, now with {name})"]
    return closing(wrote, first=out / "top.md", next_steps=steps)


def _score(rows: dict, revealed: dict, z_true: np.ndarray, config: ForecastConfig) -> dict:
    """Per predictor: RMSE, ROC-AUC and precision@n on the entries not measured, mean and std over seeds."""
    labels = sorted({label for label, _ in rows}, key=lambda x: (x in BASELINES, x))
    out = {}
    for label in labels:
        per_seed = []
        for s in config.seeds:
            hidden = ~revealed[s]
            m = all_metrics(rows[label, s][None], z_true[None], hidden[None], threshold=config.threshold,
                            top_n=config.top_n)
            per_seed.append({k: float(v) for k, v in m.items() if k in ("rmse", "auc", f"precision@{config.top_n}")})
        out[label] = {k: dict(mean=float(np.mean([p[k] for p in per_seed])),
                              std=float(np.std([p[k] for p in per_seed]))) for k in per_seed[0]}
    return out


def _write_outputs(out: Path, config: ForecastConfig, summary: dict, rows: dict, revealed: dict, z_true, setup,
                   nll_before: np.ndarray, n_seen: int, row: int) -> None:
    first, s0 = summary["methods"][0], config.seeds[0]
    arrays = {f"pred/{label}/seed{s}": v for (label, s), v in rows.items()}
    arrays.update({f"revealed/seed{s}": np.flatnonzero(v) for s, v in revealed.items()})
    if z_true is not None:
        arrays["z"] = z_true.astype(np.float32)
    atomic_write_npz(out / "forecast.npz", example_ids=np.asarray([ex.id for ex in setup.upstream]), **arrays)
    pred = rows[first, s0]
    order = np.argsort(-pred, kind="stable")[: config.top_n]
    top = [dict(rank=r + 1, index=int(j), id=setup.upstream[j].id, source=setup.upstream[j].source,
                predicted=float(pred[j]), measured=bool(revealed[s0][j]), nll_before=float(nll_before[j]),
                text=setup.upstream[j].text) for r, j in enumerate(order)]
    atomic_write_jsonl(out / "top.jsonl", top)
    md = ["| rank | id | source | predicted z | text |", "|---|---|---|---|---|"]
    md += [f"| {t['rank']} | {t['id']} | {t['source']} | {t['predicted']:+.4f}"
           f"{' (measured)' if t['measured'] else ''} | "
           f"{' '.join(t['text'].split())[:80].replace('|', '/')} |" for t in top]
    (out / "top.md").write_text("\n".join(md) + "\n")
    # drawn as python -m jaxforget.replay draws an offline arm for row M (the pool: every upstream example)
    n_replay = min(len(pred), round(n_seen * config.ratio))
    targets = np.asarray([ex.n_targets for ex in setup.upstream_tok], np.int64)
    budget = token_budget(n_replay, targets) if config.budget == "tokens" else None
    sharp = dict(ess=config.ess) if config.ess is not None else dict(temperature=config.temperature)
    chosen, keep, d = choose("softmax", pred, targets, n_replay, budget=budget,
                             gumbel=streams(s0, row, len(pred))["gumbel"], **sharp)
    tokens = targets[chosen]
    if keep:  # the budget's last example, cut to fit
        tokens[-1] = keep
    atomic_write_jsonl(config.replay_out or out / "replay.jsonl", [
        dict(id=setup.upstream[j].id, source=setup.upstream[j].source, predicted=float(pred[j]),
             target_tokens=int(kept), cut=bool(keep and i == len(chosen) - 1), text=setup.upstream[j].text)
        for i, (j, kept) in enumerate(zip(chosen, tokens))])
    summary["replay_set"] = dict(
        n=int(len(chosen)), ratio=config.ratio, examples_seen=int(n_seen), budget=config.budget,
        token_budget=budget, tokens=int(tokens.sum()),
        temperature=d.temperature, ess=d.ess, stream=f"{STREAM}:{s0},{row}",
        path=str(config.replay_out or out / "replay.jsonl"))
    from jaxforget import viz

    what = ("after " + str(summary["measured_at_step"]) + " steps (online)") if summary["online"] else "after training"
    viz.save_png(viz.forecast_row(pred, revealed[s0], z_true, title=f"Forecast of {summary['task']}: {first}, "
                                  f"k {config.k} measured {what}, seed {s0}"), out / "forecast.png")
    atomic_write_json(out / "summary.json", summary)
    (out / "report.md").write_text(report_markdown(summary))


def report_markdown(summary: dict) -> str:
    fp = summary["forward_passes"]
    lines = [f"# Forecast of {summary['task']} on {summary['run']}", "",
             f"{summary['k']} of {summary['n_upstream']} upstream examples measured per seed "
             f"({'after step ' + str(summary['measured_at_step']) + ' of ' if summary['online'] else 'after '}"
             f"{summary['steps']} steps): {fp['per_seed']} forward passes instead of {summary['n_upstream']} "
             f"({fp['per_seed'] / summary['n_upstream']:.1%}); seeds {summary['seeds']}.",
             f"Replay set: {summary['replay_set']['n']} examples ({summary['replay_set']['tokens']} loss tokens; "
             f"τ {summary['replay_set']['temperature']:.3g}, ESS {summary['replay_set']['ess']:.1%} of the examples) "
             f"in {summary['replay_set']['path']}.", ""]
    scores = summary["scores"]
    if scores is None:
        lines.append("Not scored (add --measure-all to measure the whole row and score the forecast).")
        return "\n".join(lines) + "\n"
    keys = list(next(iter(scores.values())))
    lines += ["| predictor | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, m in scores.items():
        cells = [f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in keys]
        lines.append(f"| {label}{' (baseline)' if label in BASELINES else ''} | " + " | ".join(cells) + " |")
    lines += ["", "On the examples not measured; mean ± std over seeds. AUC: forgotten means z > threshold; a "
              "constant predictor scores 0.5 and precision@n at chance."]
    return "\n".join(lines) + "\n"


RUN_FILES = ("meta.json", "forgetting.npz", "base.npz", "tasks.jsonl")
"""The files of a run that --append reads and rewrites (base.npz only read)."""


def run_state(run: RunDir) -> dict[str, str | None]:
    """sha256 of each of :data:`RUN_FILES` (None: absent) and the row files present: what --append re-checks
    before it writes."""
    state = {}
    for name in RUN_FILES:
        path = run.root / name
        state[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    state["rows"] = ",".join(p.name for p in sorted(run.rows_dir.glob("task_*.npz"))) if run.rows_dir.is_dir() else ""
    return state


def append_row(run: RunDir, row: dict[str, np.ndarray], n_train: list[int], state: dict[str, str | None], *,
               em_base_correct_only: bool = True) -> None:
    """Add `row` (:meth:`RunDir.row_arrays`) to the run as task M, all or nothing: the run must still be as
    `state` (:func:`run_state`) found it; the assembly, tasks.jsonl and meta.json (task names and
    ``data.task_names``) are computed in memory first (every other row read and checked), then the row,
    forgetting.npz, tasks.jsonl and meta.json are written; a failure part way restores the files as they were
    and removes the row. A RunError (one line, naming the file) when the run changed or is damaged."""
    changed = [name for name, digest in run_state(run).items() if state.get(name) != digest]
    if changed:
        raise RunError(f"{run.root}: {', '.join(changed)} changed while forecast was fine-tuning (a process that "
                       "did not take the run lock?); nothing appended")
    meta = run.read_run_meta()
    names, name = list(meta["task_names"]), str(row["name"])
    M = len(names)
    config = dict(meta["config"])
    config["data"] = {**config.get("data", {}), "task_names": names + [name]}
    new_meta = {**meta, "task_names": names + [name], "config": config}
    out = run.assemble(names + [name], list(meta["example_ids"]), em_base_correct_only=em_base_correct_only,
                       rows={M: row}, write=False)
    out = with_budget_keys(run.read_forgetting(), out, run.forgetting_path)
    if isinstance(meta.get("budget"), dict) and "measured" in out:  # the achieved fraction, as collect records it
        ok = ~out["failed"]
        new_meta["budget"] = {**meta["budget"], "measured_entries": int(out["measured"].sum()),
                              "measured_fraction": float(out["measured"][ok].mean()) if ok.any() else 0.0}
    records = task_records(run, names + [name], n_train, rows={M: row})
    tasks_jsonl = run.root / "tasks.jsonl"
    before = {p: (p.read_bytes() if p.is_file() else None) for p in (run.forgetting_path, tasks_jsonl, run.meta_path)}
    try:
        with run.files_lock():
            atomic_write_npz(run.row_path(M), **row)
            atomic_write_npz(run.forgetting_path, **out)
            atomic_write_jsonl(tasks_jsonl, records)
            atomic_write_json(run.meta_path, new_meta)  # last: the run has M + 1 tasks once this is written
    except BaseException as e:
        for path, data in before.items():
            if data is None:
                path.unlink(missing_ok=True)
            elif not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)
        run.row_path(M).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RunError(f"{run.root}: could not append {name} ({e}); the run is as it was") from None
        raise


BUDGET_ROW_KEYS = ("measured", "holdout", "Z_completed")
"""forgetting.npz keys of a budgeted run (collect --eval.budget) with one row per task."""
BUDGET_RUN_KEYS = ("anchors",)
"""forgetting.npz keys of a budgeted run that do not depend on the tasks."""


def with_budget_keys(old: dict[str, np.ndarray], out: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """The assembly ``out`` of M + 1 rows (the last one appended, measured whole) completed with the keys of the
    run's forgetting.npz ``old`` (M rows) that the assembly does not rebuild: ``measured`` (the new row: every
    entry), ``holdout`` (none), ``Z_completed`` (the new row's Z; the other rows as the run's last refit left them)
    and ``anchors``. A key the assembly already has for M + 1 rows is kept. A RunError naming ``path`` when old holds
    a key not known here (nothing appended rather than a forgetting.npz that lacks it) or when its ``measured``
    mask is not where its Z is finite."""
    M, z_new = old["Z"].shape[0], out["Z"][-1]
    unknown = sorted(set(old) - set(out) - set(BUDGET_ROW_KEYS) - set(BUDGET_RUN_KEYS))
    if unknown:
        raise RunError(f"{path}: holds {', '.join(unknown)}, which forecast --append cannot extend by a row; "
                       "nothing appended")
    if "measured" in old and not np.array_equal(old["measured"], np.isfinite(out["Z"][:M])):
        raise RunError(f"{path}: its measured mask is not where the rows' Z is finite; reassemble it with "
                       f"python -m jaxforget.collect --merge {path.parent}")
    new_row = dict(measured=np.isfinite(z_new), holdout=np.zeros(z_new.shape, bool), Z_completed=z_new)
    extended = dict(out)
    for key in BUDGET_ROW_KEYS:
        if key in old and key not in out:
            extended[key] = np.concatenate([old[key], new_row[key][None].astype(old[key].dtype)])
    extended.update({key: old[key] for key in BUDGET_RUN_KEYS if key in old and key not in out})
    return extended


def cli(argv: list[str] | None = None) -> dict:
    return run_cli(ForecastConfig, main, argv)


if __name__ == "__main__":
    cli()
