"""Throughput of the ``python -m jaxforget.collect`` engine on the built-in world's base model.

Measures, in one run:
  (a) full fine-tuning: train tokens/s (the jitted step, batches already on the host) and upstream
      evaluation tokens/s;
  (b) K tasks with LoRA, trained and measured together (``--tasks-per-step K``: one vmapped step,
      each upstream batch read once) vs the same K tasks one after another (``--tasks-per-step 1``),
      the same number of steps each, through the same `train_group` that collect runs; wall time
      and the ratio, plus the largest difference of their upstream NLLs (they must agree).

Each figure is the best of `--rounds` identical rounds after the first, so compilation is excluded
(the first round's time, compilation included, is printed too; on a shared machine the best round
is the one nothing else ran in). Tokens are real (non-padding) tokens. Runs unchanged on an
accelerator, where K tasks are vectorised in one pass; on a CPU the K slots run one after another
inside the step, and `--tasks-per-pass K` shows what vectorising costs there.

    python scripts/bench_collect.py [--steps 30] [--k 8] [--n-upstream 500] [--tasks-per-pass 8]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Literal

import jax
import numpy as np
import tyro
from tqdm import tqdm

from jaxforget.collect import (CollectConfig, DataConfig, EvalConfig, ModelConfig, TrainConfig, build_engine,
                               build_setup, stack_slots, train_group)
from jaxforget.data.batching import Batcher
from jaxforget.pretrain import ensure_base_model
from jaxforget.store import RunDir
from jaxforget.tracking import open_tracker


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    steps: int = 30
    """Optimizer steps per task (and timed full fine-tuning steps)."""
    k: int = 8
    """Tasks trained together (stacked LoRA) and, for comparison, one after another."""
    n_upstream: int = 500
    """Upstream examples measured after each task."""
    batch_size: int = 16
    """Training examples per step."""
    eval_batch_size: int = 64
    """Upstream examples per evaluation batch."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype (bfloat16 on accelerators)."""
    tasks_per_pass: int | None = None
    """collect's --tasks-per-pass for the stacked run (default: collect's, by backend)."""
    rounds: int = 3
    """Identical rounds per figure; the first compiles, the best of the others is reported."""


def collect_config(bench: BenchConfig, out: Path, *, mode: Literal["full", "lora"], k: int) -> CollectConfig:
    """collect's configuration for this benchmark: the built-in world and base model, `bench.steps`
    steps for every task (no epoch cap), no checkpoints."""
    return CollectConfig(
        out=out, model=ModelConfig(dtype=bench.dtype), data=DataConfig(n_upstream=bench.n_upstream),
        train=TrainConfig(mode=mode, max_steps=bench.steps, max_epochs=1e9, batch_size=bench.batch_size,
                          checkpoint_every=0),
        eval=EvalConfig(batch_size=bench.eval_batch_size), tasks_per_step=k,
        tasks_per_pass=bench.tasks_per_pass if k > 1 else None, quiet=True)


def bench_full(bench: BenchConfig, out: Path) -> dict[str, float]:
    """Train and eval tokens/s of full fine-tuning (best round after the first, the same batches)."""
    config = collect_config(bench, out, mode="full", k=1)
    setup = build_setup(config, echo=lambda *_: None)
    engine = build_engine(setup, config)
    batcher = Batcher(setup.task_train[setup.task_names[0]], batch_size=bench.batch_size,
                      buckets=config.train.buckets, seed=0, pad_id=setup.pad_id)
    batches = [stack_slots([[b]], batcher.pad_id) for b in batcher.batches(bench.steps)]
    active = np.ones(1, bool)
    train_tokens = sum(int(attn.sum()) for _, attn, _ in batches)
    state = engine.start([engine.base_params])
    times = []
    for _ in range(bench.rounds):  # round 1 compiles every bucket shape
        t0 = time.perf_counter()
        for arrays in batches:
            state, metrics = engine.step(state, arrays, active)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    eval_tokens = sum(len(tok.ids) for tok in setup.upstream_tok)
    eval_times = []
    for _ in range(bench.rounds):
        t0 = time.perf_counter()
        engine.evaluate(state.params)  # ends in a host transfer: synchronous
        eval_times.append(time.perf_counter() - t0)
    train_s, eval_s = min(times[1:]), min(eval_times[1:])
    return dict(train_tok_s=train_tokens / train_s, eval_tok_s=eval_tokens / eval_s, train_s=train_s,
                eval_s=eval_s, train_tokens=train_tokens, eval_tokens=eval_tokens)


def bench_lora(bench: BenchConfig, out: Path, k: int) -> dict[str, float | np.ndarray]:
    """The first bench.k tasks with LoRA through collect's train_group, `k` at a time, bench.rounds times."""
    config = collect_config(bench, out, mode="lora", k=k)
    setup = build_setup(config, echo=lambda *_: None)
    engine = build_engine(setup, config)
    tasks = list(range(min(bench.k, len(setup.task_names))))
    run = RunDir(out)
    times, nll, tokens = [], None, 0
    for _ in range(bench.rounds):  # round 1 compiles
        t0 = time.perf_counter()
        results = []
        for g in range(0, len(tasks), k):
            results += train_group(tasks[g:g + k], setup=setup, config=config, run=run, engine=engine,
                                   tracker=open_tracker("none"), progress=tqdm(disable=True))
        times.append(time.perf_counter() - t0)
        nll = np.stack([r["nll_after"] for r in results])
        tokens = sum(int(r["train_tokens"]) for r in results)
    return dict(first_s=times[0], s=min(times[1:]), nll_after=nll, train_tokens=tokens, n_tasks=len(tasks))


def main(bench: BenchConfig) -> None:
    if bench.rounds < 2:
        raise SystemExit("--rounds must be >= 2 (the first round compiles)")
    base_dir = ensure_base_model(echo=lambda *_: None)
    print(f"base model {base_dir}; backend {jax.default_backend()} ({jax.device_count()} device(s)); "
          f"{bench.steps} steps x batch {bench.batch_size}, {bench.n_upstream} upstream examples, {bench.dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        full = bench_full(bench, Path(tmp) / "full")
        seq = bench_lora(bench, Path(tmp) / "seq", k=1)
        stk = bench_lora(bench, Path(tmp) / "stk", k=bench.k)
    n = seq["n_tasks"]
    print("\n(a) full fine-tuning")
    print(f"  train  {full['train_tok_s']:>10,.0f} tokens/s   ({full['train_tokens']:,} tokens in {full['train_s']:.2f} s)")
    print(f"  eval   {full['eval_tok_s']:>10,.0f} tokens/s   ({full['eval_tokens']:,} tokens in {full['eval_s']:.2f} s)")
    print(f"\n(b) {n} tasks with LoRA, {bench.steps} steps each + upstream NLL after each")
    print(f"  {'':<30}{'wall s':>9}{'first round s':>15}{'train tokens/s':>16}")
    per_pass = bench.tasks_per_pass or (1 if jax.default_backend() == "cpu" else bench.k)
    for label, r in (("one after another (K=1)", seq), (f"together (K={bench.k}, {per_pass}/pass)", stk)):
        print(f"  {label:<30}{r['s']:>9.2f}{r['first_s']:>15.2f}{r['train_tokens'] / r['s']:>16,.0f}")
    print(f"  together / one after another: {seq['s'] / stk['s']:.2f}x faster "
          f"(first rounds, compilation included: {seq['first_s'] / stk['first_s']:.2f}x)")
    print(f"  max |NLL after, K={bench.k} - K=1|: {np.abs(stk['nll_after'] - seq['nll_after']).max():.2e}")


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
