"""Benchmark: ``collect --eval.budget F`` against measuring every entry, on the built-in world.

The world: ``--world.n-tasks 85 --data.n-upstream 10000`` by default (the paper's M; N a tenth of its
141,871 so that the whole benchmark fits about 45 minutes on 2 cores). Steps, every figure measured here:

1. The fully measured run (F = 1): ``collect`` into OUT/full (or ``--full RUN``, a finished run of the same
   world: its wall time is then the one recorded in its rows).
2. Evaluation seconds per task at every budget: the run's own engine measures the columns a task of each
   budget measures (``Engine.evaluate_columns``; the base model's weights, whose cost is a fine-tuned
   model's), three tasks each after a warm-up, against F = 1 timed in the same process.
3. One real budgeted run (``--real F``, random selection): its wall time and evaluation seconds per task, and
   its measured entries and Z_completed against the replay below (the same draws and fits).
4. Every budget x selection (random, active, forgotten) x seed replayed on the full run's Z by
   ``jaxforget.collect.budget.simulate`` (a measured entry is the full run's, as a real budgeted run
   measures it: tests/test_budget.py checks the replay against real runs): the R² table by rank estimated
   from the measured entries (``sampled_rank_r2``) against the full matrix's; per task the completion's
   RMSE, Spearman and top-100 precision against the fully measured row on the unmeasured entries, beside the
   trivial baseline (each row's measured mean); the held-back RMSE against that error; whether the analysis'
   top-10 tasks and top-100 examples (by mean forgetting, Z_completed against full Z) agree; and, at
   ``--real F``, whether predict's ranking of methods (additive, knn_baseline, mf; 3 seeds) is the full
   matrix's.
5. Whole-run wall time of every budget: measured for F = 1 and ``--real``; the others the full run's minus
   M x the evaluation seconds saved per task (step 2), stated as derived.

    python scripts/bench_budget.py [--out runs/bench_budget] [--full RUN] [--real 0.1] [--budget-seeds 0 1 2 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run_collect(out: Path, args: list[str]) -> float:
    """``python -m jaxforget.collect`` in a fresh process; returns its wall seconds."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxforget.collect", "--out", str(out), "--quiet", *args], check=True)
    return time.perf_counter() - t


def eval_seconds(world_args: list[str], budgets: list[float], n_tasks: int = 3) -> dict[float, float]:
    """Seconds to measure one task's columns at each budget, with the collect run's engine (step 2)."""
    from jaxforget.cli import parse
    from jaxforget.collect.budget import Budget
    from jaxforget.collect.config import CollectConfig, EvalConfig, resolve_lengths
    from jaxforget.collect.engine import build_engine
    from jaxforget.collect.setup import build_setup

    config = resolve_lengths(parse(CollectConfig, [*world_args, "--out", "/tmp/unused"], "bench")[0])
    setup = build_setup(config, echo=lambda *_: None)
    engine = build_engine(setup, config)
    N = len(setup.upstream_tok)
    out = {}
    for F in budgets:
        b = Budget.from_eval(dataclasses.replace(EvalConfig(), budget=F), N)
        cols = [np.ones(N, bool) if b is None else b.first_round(i) for i in range(n_tasks + 1)]
        engine.evaluate_columns(engine.base_params, cols[0])  # warm-up (compilation, caches)
        t = time.perf_counter()
        for c in cols[1:]:
            engine.evaluate_columns(engine.base_params, c)
        out[F] = (time.perf_counter() - t) / n_tasks
    return out


def row_metrics(Zc: np.ndarray, Z: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Per task on its unmeasured entries against the fully measured row: completion and baseline RMSE
    (medians), Spearman (median) and top-100 precision (mean, the row's top 100 of all N)."""
    from jaxforget.analysis import correlation
    from jaxforget.completion import precision_at_n

    rm, bm, sp = [], [], []
    for i in range(Z.shape[0]):
        u = ~measured[i]
        rm.append(np.sqrt(np.mean((Zc[i, u] - Z[i, u]) ** 2)))
        bm.append(np.sqrt(np.mean((Z[i, measured[i]].mean() - Z[i, u]) ** 2)))
        sp.append(correlation(Zc[i, u], Z[i, u]).spearman)
    return dict(rmse=float(np.median(rm)), baseline_rmse=float(np.median(bm)), spearman=float(np.median(sp)),
                precision_100=float(precision_at_n(Zc, Z, np.ones(Z.shape, bool), 100)),  # mean over rows
                pooled_rmse=float(np.sqrt(np.mean((Zc[~measured] - Z[~measured]) ** 2))))


def top_agreement(Zc: np.ndarray, Z: np.ndarray) -> dict[str, float]:
    """Overlap of the top-10 tasks and top-100 examples by mean forgetting (Z_completed against Z)."""
    t = lambda A, ax, n: set(np.argsort(-A.mean(axis=ax))[:n].tolist())  # noqa: E731
    return dict(top10_tasks=len(t(Zc, 1, 10) & t(Z, 1, 10)) / 10,
                top100_examples=len(t(Zc, 0, 100) & t(Z, 0, 100)) / 100)


def method_ranking(Z: np.ndarray) -> tuple[list[str], dict[str, float]]:
    """predict's methods ordered by RMSE under the paper's protocol (the last 19 tasks as test rows, 3 seeds)."""
    from jaxforget.completion import evaluate

    M = Z.shape[0]
    res = evaluate(Z, test_rows=list(range(M - 19, M)), methods=["additive", "knn_baseline", "mf"], seeds=[0, 1, 2])
    rmse = {m: float(np.mean(res.metrics[m]["rmse"])) for m in ("additive", "knn_baseline", "mf")}
    return sorted(rmse, key=rmse.get), rmse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_budget"))
    p.add_argument("--full", type=Path, default=None, help="a finished F = 1 run of the same world (skips step 1)")
    p.add_argument("--n-tasks", type=int, default=85)
    p.add_argument("--n-upstream", type=int, default=10000)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    p.add_argument("--real", type=float, default=0.1, help="the budget of the real budgeted run (0: none)")
    p.add_argument("--budget-seeds", type=int, nargs="+", default=[0, 1, 2], help="--eval.seed values replayed")
    a = p.parse_args()
    from jaxforget.collect.budget import Budget, simulate
    from jaxforget.collect.config import EvalConfig
    from jaxforget.completion import fit_table, sampled_rank_r2

    world = ["--world.n-tasks", str(a.n_tasks), "--data.n-upstream", str(a.n_upstream)]
    a.out.mkdir(parents=True, exist_ok=True)
    report: dict = dict(machine=platform.processor() or platform.machine(), world=world, budgets=a.budgets)
    full_dir = a.full or a.out / "full"
    if a.full is None:
        report["full_wall_s"] = run_collect(full_dir, world)
    full_npz = np.load(full_dir / "forgetting.npz")
    Z, nll_before = full_npz["Z"].astype(np.float32), full_npz["nll_before"]
    M, N = Z.shape
    rows = [np.load(p) for p in sorted((full_dir / "rows").glob("task_*.npz"))]
    report.setdefault("full_wall_s", None)
    report["full_task_s"] = float(sum(float(r["seconds"]) for r in rows))
    print(f"full run: {M} x {N}; {report['full_task_s']:.0f} s in its tasks", flush=True)

    secs = eval_seconds(world, [1.0, *a.budgets])
    report["eval_s_per_task"] = {str(F): s for F, s in secs.items()}
    print("eval s per task:", {F: round(s, 3) for F, s in secs.items()}, flush=True)

    full_r2 = fit_table(Z)
    ranks = [f"rank_{k}" for k in range(1, 6)]
    report["full_r2"] = {k: full_r2[k] for k in ranks}
    results = []
    for F in a.budgets:
        for select in ("random", "active", "forgotten"):
            for seed in a.budget_seeds:
                e = dataclasses.replace(EvalConfig(), budget=F, select=select, seed=seed)
                b = Budget.from_eval(e, N, nll_before)
                t = time.perf_counter()
                sim = simulate(Z, b)
                m = sim["measured"]
                est = sampled_rank_r2(np.where(m, Z, np.nan), b.random_entries(m))
                truth = row_metrics(sim["Z_completed"], Z, m)
                held = sim["scores"]["pooled"]
                r = dict(F=F, select=select, seed=seed, seconds=time.perf_counter() - t, r2=est,
                         r2_max_abs_diff=max(abs(est[k] - full_r2[k]) for k in ranks), **truth,
                         held_rmse=held["rmse"], held_over_truth=held["rmse"] / truth["pooled_rmse"],
                         **top_agreement(sim["Z_completed"], Z))
                results.append(r)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "r2"}),
                      flush=True)
    report["replays"] = results

    if a.real:
        out = a.out / f"budget_{a.real:g}"
        wall = run_collect(out, [*world, "--eval.budget", str(a.real)])
        got = np.load(out / "forgetting.npz")
        b = Budget.from_eval(dataclasses.replace(EvalConfig(), budget=a.real), N, nll_before)
        sim = simulate(Z, b)
        real_rows = [np.load(p) for p in sorted((out / "rows").glob("task_*.npz"))]
        report["real"] = dict(F=a.real, wall_s=wall, eval_s_per_task=float(np.mean([float(r["eval_seconds"])
                                                                                     for r in real_rows])),
                              masks_equal=bool(np.array_equal(got["measured"], sim["measured"])),
                              measured_max_abs_diff=float(np.abs(got["Z"][got["measured"]] - Z[got["measured"]]).max()),
                              completed_max_abs_diff=float(np.abs(got["Z_completed"] - sim["Z_completed"]).max()))
        print("real run:", report["real"], flush=True)
        rank_full, rmse_full = method_ranking(Z)
        rank_b, rmse_b = method_ranking(np.where(got["measured"], got["Z"], np.nan))
        report["predict_ranking"] = dict(full=rank_full, budget=rank_b, full_rmse=rmse_full, budget_rmse=rmse_b,
                                         same=rank_full == rank_b)
        print("predict ranking:", report["predict_ranking"], flush=True)
    if report["full_wall_s"] or report["full_task_s"]:
        base = report["full_wall_s"] or report["full_task_s"]
        report["wall_s_derived"] = {str(F): base - M * (secs[1.0] - secs[F]) for F in a.budgets}
    (a.out / "bench_budget.json").write_text(json.dumps(report, indent=1))
    (a.out / "bench_budget.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {a.out / 'bench_budget.json'}, {a.out / 'bench_budget.md'}")


COLUMNS = (("r2_max_abs_diff", "R² max abs Δ", 3), ("rmse", "RMSE", 3), ("baseline_rmse", "baseline RMSE", 3),
           ("spearman", "Spearman", 2), ("precision_100", "top-100 precision", 2),
           ("held_over_truth", "held-back / true RMSE", 2), ("top100_examples", "top-100 examples shared", 2),
           ("top10_tasks", "top-10 tasks shared", 1))


def markdown(results: list[dict]) -> str:
    """One row per (F, selection), each cell the seeds' values joined by " / "."""
    lines = ["| F | select | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        cells.setdefault((r["F"], r["select"]), []).append(r)
    for (F, select), rs in cells.items():
        lines.append(f"| {F:g} | {select} | " + " | ".join(" / ".join(f"{r[k]:.{d}f}" for r in rs)
                                                          for k, _, d in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
