"""A collect run from start to finish: open (or resume) the run directory, measure the base model, train
the tasks of this shard group by group (:func:`jaxforget.collect.loop.train_group`), record each row,
and assemble Z with its summary when every task is done (:func:`merge` does only that)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import shutil
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from matplotlib import colormaps
from tqdm import tqdm

import jaxforget
from jaxforget.cli import config_from_dict
from jaxforget.collect.budget import Budget, RowCompleter, complete, holdout_scores, strata_order
from jaxforget.collect.config import (CollectConfig, EvalConfig, check_config, config_dict, recorded_config,
                                      resolve_lengths)
from jaxforget.collect.distributed import barrier, init_distributed, is_primary, on_primary, silent
from jaxforget.collect.engine import batch_sharding, build_engine
from jaxforget.collect.loop import TaskFailed, epoch_cap_note, run_schedule, train_group
from jaxforget.collect.setup import Setup, build_setup, read_em_records, read_run_tasks
from jaxforget.completion import fit_table, sampled_rank_r2
from jaxforget.exact_match import make_em_eval
from jaxforget.models.sharding import to_host
from jaxforget.cli import closing
from jaxforget.store import RunDir, RunError, atomic_write_bytes, atomic_write_jsonl, atomic_write_npz
from jaxforget.tracking import open_tracker

log = logging.getLogger("jaxforget.collect")


def versions() -> dict[str, str]:
    """The versions a run was made with (recorded in meta.json)."""
    return dict(jaxforget=jaxforget.__version__, python=platform.python_version(), jax=jax.__version__,
                flax=flax.__version__, optax=optax.__version__, numpy=np.__version__, backend=jax.default_backend())


RANKED = 8
"""Tasks (examples) needed before the summary lists the most and least forgetting ones: with fewer, the two
lists are the same few names reversed."""


def summarize(out: dict[str, np.ndarray], task_names: list[str], example_ids: list[str],
              budget: dict[str, Any] | None = None) -> str:
    """collect's closing summary, a small aligned table: the shape and moments of Z, the centred R² of the
    simple models (:func:`jaxforget.completion.fit_table`, labelled as analyze labels them), and, with at least
    :data:`RANKED` tasks (examples), the most and least forgetting ones (failed rows excluded). A budgeted run
    (`budget`: meta.json's record) also says how much was measured and the completion's held-back error; its
    moments, fits and rankings use the measured entries only (examples never measured are not ranked)."""
    from jaxforget.analysis import r2_label

    Z = out["Z"]
    ok = ~out["failed"]
    Zok = Z[ok]
    rows: list[tuple[str, str]] = [("Z", f"{Z.shape[0]} tasks x {Z.shape[1]} upstream examples"
                                         + (f" ({int((~ok).sum())} tasks failed)" if (~ok).any() else ""))]
    if Zok.size == 0:
        return _table(rows)
    finite = Zok[np.isfinite(Zok)]
    if budget is not None:
        rows += budget_lines(out, budget)
    rows.append(("mean Z" + (" (measured)" if budget else ""),
                 f"{finite.mean():+.4f} (std {finite.std():.4f}); {np.mean(finite > 0):.1%} of the entries > 0 "
                 "(forgotten)"))
    if "Z_em" in out:
        em = out["Z_em"][ok]
        rows.append(("exact match", f"base right on {out['em_before'].mean():.1%} of {out['em_before'].size} examples; "
                                    f"forgotten (Z_em = 1) on "
                                    f"{np.nanmean(em) if np.isfinite(em).any() else float('nan'):.1%} of those measured"))
    if Zok.shape[0] >= 2 and budget is not None:
        rows.append(("R² (centred)", "estimated for the whole matrix from the measured entries (sampled_rank_r2)"))
        rows += [(f"  {r2_label(k)}", f"{v:.3f}") for k, v in budget["r2_estimated"].items()]
    elif Zok.shape[0] >= 2:
        ranks = tuple(range(1, min(5, *Zok.shape) + 1))
        table = fit_table(Zok, ranks=ranks)
        if abs(table["multiplicative"] - table["rank_1"]) < 5e-4:  # the same fit on a fully measured Z: one row
            table.pop("rank_1")
        exact = min(Zok.shape)
        rows.append(("R² (centred)", "1 - Σ(Z - fit)² / Σ(Z - mean Z)²"))
        rows += [(f"  {r2_label(k)}", f"{v:.3f}" + ("  (exact: rank = number of tasks)" if k == f"rank_{exact}"
                                                      and exact == Zok.shape[0] else ""))
                 for k, v in table.items()]
    names_ok = [n for n, f in zip(task_names, ok) if f]
    seen = np.isfinite(Zok)
    for what, means, names in (("tasks", _mean(Zok, seen, 1), names_ok),
                               ("examples", _mean(Zok, seen, 0), example_ids)):
        if len(names) < RANKED:
            continue
        order = [i for i in np.argsort(-means, kind="stable") if np.isfinite(means[i])]
        verb = "forgetting" if what == "tasks" else "forgotten"
        rows.append((f"most {verb} {what}", _ranked(order[:3], means, names)))
        rows.append((f"least {verb} {what}", _ranked(order[::-1][:3], means, names)))
    if any(label.startswith("most") for label, _ in rows):
        rows.append(("", "(mean Z: + forgotten, - improved)"))
    return _table(rows)


def _mean(Z: np.ndarray, seen: np.ndarray, axis: int) -> np.ndarray:
    """Means of the measured entries along `axis`; NaN where none is measured (no warning)."""
    n = seen.sum(axis)
    return np.where(n > 0, np.where(seen, Z, 0.0).sum(axis) / np.maximum(n, 1), np.nan)


def budget_lines(out: dict[str, np.ndarray], budget: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary's lines of a budgeted run: what was measured, and the completion's held-back error."""
    lines = [("measured", f"{budget['measured_fraction']:.1%} of the entries (--eval.budget {budget['fraction']:g}: "
                          f"{budget['per_task']} examples per task, {budget['anchors']} of them anchors shared by every "
                          f"task; {budget['select']} selection); the rest completed by {budget['method']} "
                          "(Z_completed)")]
    pooled = (budget.get("holdback") or {}).get("pooled")
    if pooled:
        top = next(iter(budget["holdback"]["per_task"].values()))["top"]
        lines.append(("completion error", f"on {pooled['n']} measured entries held back from a refit: RMSE "
                                          f"{pooled['rmse']:.4f}, Spearman {pooled['spearman_median']:.3f} (median over "
                                          f"tasks), top-{top} precision {pooled['precision_mean']:.2f} (mean)"))
    return lines


def _ranked(order, means: np.ndarray, names: list[str]) -> str:
    return "   ".join(f"{names[i]} {means[i]:+.3f}" for i in order)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def write_summary(run: RunDir, text: str) -> Path:
    """RUN/summary.md: the closing summary kept beside Z (the console scrolls away); a budgeted run's also has
    the completion's held-back error per task."""
    path = run.root / "summary.md"
    per_task = ((run.read_meta().get("budget") or {}).get("holdback") or {}).get("per_task") or {}
    table = ""
    if per_task:
        top = next(iter(per_task.values()))["top"]
        table = ("\n## The completion's error per task, on its held-back measured entries\n\n"
                 f"| task | held back | RMSE | Spearman | top-{top} precision (entries) |\n|---|---|---|---|---|\n"
                 + "".join(f"| {name} | {s['n']} | {s['rmse']:.4f} | {s['spearman']:.3f} | {s['precision']:.2f} "
                           f"({s['n_top_held']}) |\n" for name, s in per_task.items()))
    atomic_write_bytes(path, f"# {run.root}\n\n```\n{text}\n```\n{table}\nNext: `python -m jaxforget.analyze "
                             f"{run.root}` (R² table, heatmaps, patterns).\n".encode())
    return path


def finished_lines(run: RunDir, out: dict[str, np.ndarray], task_names: list[str], example_ids: list[str]) -> str:
    """The summary table, then what collect wrote, the file to open first and the next command."""
    text = summarize(out, task_names, example_ids, run.read_meta().get("budget"))
    summary = write_summary(run, text)
    wrote = [run.forgetting_path, *(p for p in (run.root / "tasks.jsonl", run.root / "upstream.jsonl") if p.exists()),
             summary, f"{run.tb_dir}/ (TensorBoard: tensorboard --logdir {run.tb_dir})"]
    return text + "\n\n" + closing(wrote, first=summary, next_steps=[f"python -m jaxforget.analyze {run.root}"])


def heatmap_image(Z: np.ndarray) -> np.ndarray:
    """Z with rows and columns sorted by their means, blue-white-red, as an [H, W, 3] uint8 image."""
    Zs = np.nan_to_num(Z, nan=0.0)
    Zs = Zs[np.argsort(-Zs.mean(axis=1))][:, np.argsort(-Zs.mean(axis=0))]
    lim = max(float(np.quantile(np.abs(Zs), 0.99)), 1e-6)
    rgba = colormaps["bwr"]((np.clip(Zs, -lim, lim) + lim) / (2 * lim))
    rgb = (rgba[..., :3] * 255).astype(np.uint8)
    return np.repeat(rgb, max(1, 200 // max(1, Z.shape[0])), axis=0)  # rows tall enough to see


def merge(path: Path, echo=print) -> dict[str, np.ndarray]:
    """Assemble forgetting.npz of a run directory from its rows (every task must be finished)."""
    run = RunDir(path)
    meta = run.read_run_meta()
    recorded = recorded_config(meta["config"]).get("eval", {})
    e = config_from_dict(EvalConfig, recorded, "meta.json: config.eval") if isinstance(recorded, dict) else EvalConfig()
    out = assemble(run, meta["task_names"], meta["example_ids"], e)
    echo(finished_lines(run, out, meta["task_names"], meta["example_ids"]))
    return out


def assemble(run: RunDir, task_names: list[str], example_ids: list[str], e: EvalConfig) -> dict[str, np.ndarray]:
    """forgetting.npz from the rows (:meth:`RunDir.assemble`); with --eval.budget also ``Z_completed`` (the refit on
    every measured entry), ``anchors`` and, in meta.json's ``budget``, the settings and the held-back error bars
    (:func:`jaxforget.collect.budget.complete`)."""
    out = run.assemble(task_names, example_ids, em_base_correct_only=e.em_base_correct_only, write=False)
    budget = Budget.from_eval(e, len(example_ids), out["nll_before"])
    if budget is not None:
        Z_completed, scores = complete(out["Z"], out["measured"], out["holdout"], out["failed"], budget)
        out.update(Z_completed=Z_completed, anchors=budget.anchor_columns())
        ok = ~out["failed"]
        uniform = budget.random_entries(out["measured"])[ok]
        ranks = range(1, min(5, int(ok.sum()), len(example_ids)) + 1)
        estimated = sampled_rank_r2(out["Z"][ok], uniform, ranks) if ok.sum() >= 2 else {}
        record = dict(budget.record(), measured_fraction=float(out["measured"][ok].mean()) if ok.any() else 0.0,
                      r2_estimated=estimated,
                      measured_entries=int(out["measured"].sum()), holdback=dict(
                          pooled=scores["pooled"],
                          per_task={n: s for n, s in zip(task_names, scores["per_task"]) if s is not None}))
        run.update_meta(budget=record)
        with open_tracker("tensorboard", run.tb_dir / "budget") as tb:  # per task, x = task index
            for i, sc in enumerate(scores["per_task"]):
                for k in ("rmse", "spearman", "precision"):
                    if sc is not None and np.isfinite(sc[k]):
                        tb.scalar(f"budget/holdout_{k}", sc[k], i)
    atomic_write_npz(run.forgetting_path, **out)
    return out


def collect(config: CollectConfig, echo=print) -> int:
    """Run (or resume) the collection; returns the process exit code (1 when a task failed).

    The whole configuration is checked first; then the run directory is locked (exclusively, or shared
    with the other jobs of a --shard run, each of which also locks the tasks it trains), and nothing is
    built before. With --distributed every process of the run calls this; process 0 alone locks and
    writes the run directory and echoes, and all return the same code."""
    if config.merge is not None:
        check_config(config)
        merge(config.merge, echo)
        return 0
    check_config(config)
    config = resolve_lengths(config)  # the length defaults that follow the model, recorded as such in meta.json
    # every task file read and checked before anything else is touched: the upstream corpus (hours on Dolma),
    # the model and the run directory and its lock (the built-in world's tasks are read in build_setup)
    tasks = read_run_tasks(config) if config.data.tasks is not None else None
    read_em_records(config)  # the exact-match file too (read again, small, in build_setup)
    init_distributed(config)  # before any other JAX call
    if not is_primary():
        echo = silent
    run = RunDir(config.out)
    with contextlib.ExitStack() as locks:  # released on return or error; a killed process loses them with it

        def lock_run() -> None:
            locks.callback(run.lock_run(shard=config.shard is not None).release)

        on_primary(lock_run, f"lock the run directory {run.root}")
        return _collect(config, run, locks, echo, tasks)


def _collect(config: CollectConfig, run: RunDir, locks: contextlib.ExitStack, echo, tasks=None) -> int:
    primary = is_primary()
    setup = build_setup(config, echo, tasks)
    task_names = setup.task_names
    example_ids = [ex.id for ex in setup.upstream]
    engine = build_engine(setup, config)  # before meta.json: a LoRA target the model lacks writes nothing
    meta = dict(config=config_dict(config), nll_tokens=config.nll_tokens, out=str(run.root.resolve()),
                model_dir=str(setup.model_dir.resolve()), task_names=task_names,
                em_example_ids=setup.em_set.ids if setup.em_set is not None else None,
                example_ids=example_ids, upstream_skipped=setup.upstream_skipped,
                seeds=dict(data=config.data.seed, train=config.train.seed, world=config.world.seed),
                versions=versions(), status="running")

    def open_run() -> dict[str, Any]:
        resumed = run.start(meta, ignore=("out",), normalize=recorded_config)  # `out`: recorded by earlier versions
        finished = run.finished()
        for i in finished:  # a damaged row is named now, before anything is trained or logged, not at the assembly
            run.read_row(i)
        return dict(resumed=resumed, has_base=run.read_base() is not None, finished=finished)

    # Process 0 reads (and creates) the run directory; every process acts on what it found.
    found = on_primary(open_run, f"open the run directory {run.root}")
    resumed, finished = found["resumed"], set(found["finished"])
    echo(f"{'resuming' if resumed else 'starting'} {run.root}: {len(task_names)} tasks x {len(example_ids)} "
         f"upstream examples; model {setup.model_dir}")

    em_eval = None
    if setup.em_set is not None:
        em_eval = make_em_eval(setup.em_set, setup.tokenizer, batch_size=config.eval.em_batch_size,
                               max_new_tokens=config.eval.em_max_new_tokens, pad_id=setup.pad_id,
                               sharding=batch_sharding(setup.mesh, config.eval.em_batch_size))
    nll_before = None  # process 0's: the others never need it
    if not found["has_base"]:
        echo("measuring the base model's NLL on the upstream examples")
        nll_before = engine.evaluate(engine.base_params)[0]  # adapters start at B = 0: each is the base model
        check_base_nll(nll_before, example_ids, setup)
        extra = {}
        if em_eval is not None:
            extra["em_before"] = em_eval(engine.model(engine.base_params, 0))
            echo(f"base model exact match: {extra['em_before'].mean():.1%} of {extra['em_before'].size} examples")
        if primary and run.write_base(nll_before, **extra):
            atomic_write_jsonl(run.root / "upstream.jsonl", [
                dict(id=ex.id, source=ex.source, n_tokens=len(tok.ids), nll_before=float(nll), text=ex.text[:500])
                for ex, tok, nll in zip(setup.upstream, setup.upstream_tok, nll_before)])
    if primary:
        nll_before = run.read_base()["nll_before"]  # another job's, when it wrote base.npz first

    shard_i, shard_n = config.shard_index
    mine = [i for i in range(len(task_names)) if i % shard_n == shard_i]
    todo = [i for i in mine if i not in finished]
    echo(f"shard {shard_i}/{shard_n}: {len(mine)} tasks, {len(mine) - len(todo)} already done")
    tracker = open_tracker("tensorboard", run.tb_dir) if primary else open_tracker("none")
    if not resumed:
        tracker.hparams(_flat(config_dict(config)), {"tasks": float(len(task_names))})
    budget = None
    if config.eval.budget < 1:  # its draws are stratified on the base NLL, which process 0 holds
        order = on_primary(lambda: list(strata_order(nll_before)), "order the upstream examples by the base NLL")
        budget = dataclasses.replace(Budget.from_eval(config.eval, len(example_ids)), strata=tuple(order))
    completer = RowCompleter(budget) if budget is not None and primary else None
    if completer is not None:
        completer.update(ok_rows([run.read_row(j) for j in run.finished()], nll_before))  # a resumed run's rows
    choose = None
    if budget is not None and budget.select != "random":

        def choose(indices: list[int], first: list[np.ndarray], nll: np.ndarray) -> list[np.ndarray]:
            picked = on_primary(lambda: [np.flatnonzero(budget.second_round(i, f, completer, z - nll_before)).tolist()
                                         for i, f, z in zip(indices, first, nll)],
                                "choose the second-round columns")
            masks = [np.zeros(len(example_ids), bool) for _ in picked]
            for m, cols in zip(masks, picked):
                m[cols] = True
            return masks

    failed = []
    K = config.tasks_per_step
    # the bar counts each task's real steps (--train.max-steps capped by --train.max-epochs)
    steps = {i: run_schedule(engine, setup, i).n_steps for i in todo}
    note = epoch_cap_note({task_names[i]: n for i, n in steps.items()}, config.train.max_steps,
                          config.train.max_epochs)
    if note:  # the user asked for more steps than the run will take: say so before the hours start
        echo(note)
    pending, claimed = list(todo), {}  # process 0: tasks not yet taken; task locks held
    locks.callback(lambda: [lock.release() for lock in claimed.values()])

    def claim() -> dict[str, list[int]]:
        """Process 0: the next (at most K) tasks of `pending` that no other process is training and no row
        holds yet, each locked (RUN/locks/task_<i>.lock) until its row is written."""
        group, passed = [], []
        while pending and len(group) < K:
            i = pending.pop(0)
            lock = run.lock_task(i)
            if lock is not None and run.row_path(i).exists():  # finished by another job since we looked
                lock.release()
                lock = None
            if lock is None:
                passed.append(i)
                continue
            claimed[i] = lock
            group.append(i)
        return dict(group=group, passed=passed)

    with tracker, tqdm(total=sum(steps.values()), disable=config.quiet or not primary, desc="collect",
                       unit="step") as progress:

        def say(line: str) -> None:  # a line above the progress bar, not through it
            with tqdm.external_write_mode():
                echo(line)

        while True:
            got = on_primary(claim, "claim the next tasks")
            for i in got["passed"]:
                say(f"task {i + 1}/{len(task_names)} {task_names[i]}: done or in progress in another process; "
                    "left to it")
                progress.total -= steps[i]
            group = got["group"]
            if not group:  # nothing pending any more
                break
            progress.set_postfix(task=", ".join(task_names[i] for i in group))
            results = train_group(group, setup=setup, config=config, run=run, engine=engine, tracker=tracker,
                                  em_eval=em_eval, progress=progress, budget=budget, choose=choose)
            failed += [task_names[i] for i, fields in zip(group, results) if isinstance(fields, TaskFailed)]
            if config.train.checkpoint_every > 0:
                barrier(f"closed checkpoints of group {group[0]}")  # before process 0 removes them
            if primary:
                _record_group(group, results, run=run, task_names=task_names, nll_before=nll_before,
                              tracker=tracker, echo=say, completer=completer)
                for i in group:  # its row is written: anyone locking it later finds the row and passes
                    claimed.pop(i).release(unlink=True)
    if primary:
        missing = sorted(set(range(len(task_names))) - set(run.finished()))
        if missing:
            echo(f"{len(missing)} tasks still to do in other shards or processes")
            echo(closing([f"{run.rows_dir}/ ({len(task_names) - len(missing)} of {len(task_names)} rows)"],
                         next_steps=[f"python -m jaxforget.collect --merge {run.root}   (once every shard is done)"]))
        else:
            out = assemble(run, task_names, example_ids, config.eval)
            write_tasks_jsonl(run, task_names, [len(setup.task_train[n]) for n in task_names])
            all_failed = [str(run.read_row(j)["name"]) for j in range(len(task_names))
                          if str(run.read_row(j)["status"]) == "failed"]
            run.update_meta(status="complete" if not all_failed else "complete_with_failures",
                            failed_tasks=all_failed)
            echo(finished_lines(run, out, task_names, example_ids))
        run.update_meta(compilations=engine.compilations())
    return 1 if failed else 0


def check_base_nll(nll_before: np.ndarray, example_ids: list[str], setup: Setup) -> None:
    """Before any task is trained: a base model whose NLL is NaN/inf on every upstream example is an error
    (naming its non-finite weights); on some examples, a warning (their columns of Z are NaN)."""
    bad = ~np.isfinite(nll_before)
    if not bad.any():
        return
    shown = ", ".join(example_ids[j] for j in np.flatnonzero(bad)[:5])
    if not bad.all():
        log.warning("the base model's NLL is NaN/inf on %d of %d upstream examples (%s%s): their columns of Z will "
                    "be NaN", int(bad.sum()), bad.size, shown, ", ..." if bad.sum() > 5 else "")
        return
    finite = jax.tree_util.tree_flatten_with_path(
        jax.tree.map(lambda x: jnp.isfinite(x).all(), nnx.state(setup.model, nnx.Param)))[0]
    weights = [_param_name(p) for p, ok in zip((p for p, _ in finite), to_host([v for _, v in finite])) if not ok]
    why = (f"{len(weights)} weight arrays hold NaN/inf ({', '.join(weights[:4])}{', ...' if len(weights) > 4 else ''})"
           if weights else "the weights are finite, so the activations overflow")
    raise RunError(f"{setup.model_dir}: the base model's NLL is NaN/inf on all {bad.size} upstream examples: {why}. "
                   "No task was trained.")


def ok_rows(rows: list[dict[str, Any]], nll_before: np.ndarray) -> np.ndarray:
    """[M', N] Z of the `rows` (RunDir.read_row) that did not fail, NaN where not measured."""
    z = [r["nll_after"] - nll_before for r in rows if str(r["status"]) == "ok"]
    return np.stack(z) if z else np.zeros((0, nll_before.size), np.float32)


def _fold_in(fields: dict[str, Any], z: np.ndarray, completer: RowCompleter, tracker, index: int) -> str:
    """--eval.budget: the row folded into the fit of the rows finished before it (``z_fold``, the measured entries
    kept) and scored on its held-back entries (``fold_*``; TensorBoard ``budget/``); returns the log line's part."""
    measured, held = fields["measured"], fields["holdout"]
    pred = completer.fold_in(z, measured & ~held)
    scores = holdout_scores(pred, z, held)
    fields.update(z_fold=np.where(measured, z, pred), fold_rows=np.asarray(completer.n_rows),
                  **{f"fold_{k}": np.asarray(v) for k, v in scores.items()})
    for k in ("rmse", "spearman", "precision"):
        if np.isfinite(scores[k]):
            tracker.scalar(f"budget/fold_in_{k}", scores[k], index)
    text = f"; measured {int(measured.sum())} of {z.size}"
    if scores["n"]:
        text += (f", fold-in on {completer.n_rows} rows: RMSE {scores['rmse']:.4f}, Spearman {scores['spearman']:.3f} "
                 f"on {scores['n']} held back")
    return text


def _record_group(group: list[int], results: list, *, run: RunDir, task_names: list[str], nll_before: np.ndarray,
                  tracker, echo, completer: RowCompleter | None = None) -> None:
    """Process 0, after a group of tasks: their rows (--eval.budget: folded in, :func:`_fold_in`), TensorBoard
    summaries, the checkpoint removed."""
    for i, fields in zip(group, results):
        name = task_names[i]
        if isinstance(fields, TaskFailed):
            echo(f"task {i + 1}/{len(task_names)} {name}: FAILED ({fields})")
            run.write_row(i, name=name, nll_after=np.full(len(nll_before), np.nan), status="failed",
                          reason=str(fields))
            continue
        z = fields["nll_after"] - nll_before
        budget_text = _fold_in(fields, z, completer, tracker, i) if completer is not None else ""
        run.write_row(i, name=name, **fields)
        losses = fields["train_losses"]
        echo(f"task {i + 1}/{len(task_names)} {name}: {int(fields['steps_run'])} steps, train loss "
             f"{losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}, mean forgetting {np.nanmean(z):+.4f}{budget_text}")
        tracker.scalar("upstream_nll/mean_after", float(np.nanmean(fields["nll_after"])), i)
        tracker.scalar("forgetting/mean", float(np.nanmean(z)), i)
        tracker.histogram(f"forgetting/{name}", z[np.isfinite(z)], i)
    shutil.rmtree(run.checkpoints_dir / f"task_{group[0]:05d}", ignore_errors=True)
    done_rows = sorted(run.finished())
    read = [run.read_row(j) for j in done_rows]
    rows = np.stack([r["z_fold"] if "z_fold" in r else r["nll_after"] - nll_before for r in read])
    tracker.image("forgetting/Z_sorted", heatmap_image(rows), len(done_rows))
    if completer is not None:
        completer.update(ok_rows(read, nll_before))
    tracker.flush()


def _param_name(path) -> str:
    """``layers.wq`` from a key path of nnx.state (its ``.value`` leaf left out)."""
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return ".".join(keys[:-1] if keys and keys[-1] == "value" else keys)


def write_tasks_jsonl(run: RunDir, task_names: list[str], n_train: list[int]) -> None:
    """tasks.jsonl from the run's rows: per task its status, training examples (`n_train`, in task order),
    tokens, steps, first and final training loss and wall time."""
    atomic_write_jsonl(run.root / "tasks.jsonl", task_records(run, task_names, n_train))


def task_records(run: RunDir, task_names: list[str], n_train: list[int],
                 rows: dict[int, dict[str, np.ndarray]] | None = None) -> list[dict[str, Any]]:
    """The records of tasks.jsonl (:func:`write_tasks_jsonl`); `rows`: rows not (yet) on disk, by index."""
    records = []
    for j, name in enumerate(task_names):
        row = (rows or {}).get(j) or run.read_row(j)
        losses = row.get("train_losses", np.zeros(0))
        records.append(dict(
            name=name, status=str(row["status"]), reason=str(row["reason"]), n_train=n_train[j],
            n_train_tokens=int(row["train_tokens"]) if "train_tokens" in row else None,
            steps=int(row["steps_run"]) if "steps_run" in row else None,
            train_loss_before=float(losses[0]) if losses.size else None,
            train_loss_after=float(np.mean(losses[-10:])) if losses.size else None,
            seconds=float(row["seconds"]) if "seconds" in row else None))
    return records


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
