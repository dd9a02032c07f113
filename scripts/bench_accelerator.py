"""Accelerator benchmark of the paper's workload, random weights at OLMo-1B's published shape:

  * the full fine-tuning train step (bf16 compute): tokens/s and MFU against the device's peak,
  * per-example NLL evaluation of 1,024-token documents: tokens/s (and MFU),
  * K = 8 LoRA adapters trained together (one stacked step) vs one after another: the speed-up
    (256-token sequences and full remat by default, so that 8 slots' activations fit beside the base).

The same command runs unchanged on a GPU or TPU and (with --tiny: a small model and short
sequences, for CI) on a CPU. Model FLOPs follow the PaLM convention (jaxforget.plan.model_flops);
the peak is the device kind's bf16 dense figure (jaxforget.plan.PEAK_TFLOPS) or --peak-tflops.

    python scripts/bench_accelerator.py                 # on the accelerator
    python scripts/bench_accelerator.py --tiny          # smoke test anywhere
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

# the OLMo-1B step plans at ~60 GiB (python -m jaxforget.plan): above JAX's default 75% preallocation of 80 GB
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from flax import nnx  # noqa: E402

from jaxforget import models  # noqa: E402
from jaxforget.plan import PEAK_TFLOPS, model_flops  # noqa: E402
from jaxforget.train import (  # noqa: E402
    OptimConfig, init_train_state, make_eval_step, make_optimizer, make_stacked_train_step, make_train_step,
    stacked_start_state, start_state)

# allenai/OLMo-1B-hf
OLMO_1B = models.ArchConfig(family="olmo", vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16,
                            head_dim=128, d_ff=8192, norm="layernorm_noparam", norm_eps=1e-5, tie_embeddings=True,
                            max_positions=2048)
TINY = dataclasses.replace(OLMO_1B, vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                           d_ff=128)


@dataclasses.dataclass
class BenchConfig:
    tiny: bool = False
    """A 2-layer model and 64-token sequences (a CPU smoke test); default: OLMo-1B at 1,024 tokens."""
    batch: int = 8
    """Sequences per train step (the paper: 8)."""
    length: int | None = None
    """Tokens per sequence (default 1,024; 64 with --tiny)."""
    eval_batch: int = 32
    """Documents per evaluation batch."""
    k: int = 8
    """LoRA adapters trained together in the stacked comparison."""
    lora_batch: int = 8
    """Sequences per adapter per LoRA step."""
    lora_length: int = 256
    """Tokens per LoRA sequence (K x batch x length tokens per stacked step; instruction-task lengths)."""
    lora_remat: str = "full"
    """--train.remat of both LoRA steps: the K stacked slots' activations must fit beside the frozen base."""
    dtype: str = "bfloat16"
    """Compute dtype."""
    param_dtype: str = "float32"
    """Parameter dtype of the full fine-tuning step."""
    remat: str = "none"
    """--train.remat of the full fine-tuning step."""
    iters: int = 10
    """Timed steps per measurement (after two warm-up steps)."""
    peak_tflops: float | None = None
    """Peak bf16 TFLOP/s of one device (default: from the device kind; none on a CPU: MFU not printed)."""


def timed(fn, iters: int) -> float:
    """Seconds per call: two warm-up calls (compilation), then `iters` calls, blocked on the last result."""
    out = fn()
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    jax.block_until_ready(out)
    del out
    return (time.perf_counter() - t0) / iters


def batch(rng, B: int, T: int, vocab: int):
    ids = jnp.asarray(rng.integers(2, vocab, (B, T)), jnp.int32)
    mask = jnp.ones((B, T), jnp.int32)
    return ids, mask, mask.astype(bool)


def main(cfg: BenchConfig) -> dict:
    arch = TINY if cfg.tiny else OLMO_1B
    T = cfg.length or (64 if cfg.tiny else 1024)
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    rng = np.random.default_rng(0)
    dev = jax.devices()[0]
    peak = cfg.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k.lower() in dev.device_kind.lower()), None)
    tx = make_optimizer(OptimConfig(lr=1e-5, warmup_steps=0, total_steps=1000))
    out: dict = dict(device=dev.device_kind, backend=jax.default_backend(), model="tiny" if cfg.tiny else "OLMo-1B",
                     length=T, peak_tflops=peak)

    # full fine-tuning
    model = models.Decoder(arch, dtype=dtype, param_dtype=pdtype, rngs=nnx.Rngs(0), remat=cfg.remat)
    split, base = init_train_state(model, tx)
    step = make_train_step(split, tx)
    holder = [start_state(base.params, tx)]
    b = batch(rng, cfg.batch, T, arch.vocab_size)

    def train():
        holder[0], m = step(holder[0], *b)
        return m["loss"]

    s = timed(train, cfg.iters)
    out["train_tokens_per_s"] = cfg.batch * T / s
    out["train_mfu"] = model_flops(arch, cfg.batch * T, T, "full") / s / (peak * 1e12) if peak else None
    stats = dev.memory_stats() or {}  # GPU/TPU: compare with `python -m jaxforget.plan`'s peak (none on CPU)
    out["train_peak_bytes"] = stats.get("peak_bytes_in_use")
    del holder

    # per-example NLL evaluation
    evaluate = make_eval_step(split)
    e = batch(rng, cfg.eval_batch, T, arch.vocab_size)
    s = timed(lambda: evaluate(base.params, *e), cfg.iters)
    out["eval_tokens_per_s"] = cfg.eval_batch * T / s
    out["eval_mfu"] = model_flops(arch, cfg.eval_batch * T, T, "eval") / s / (peak * 1e12) if peak else None
    del split, base, step, evaluate

    # K stacked LoRA adapters vs K sequential single-adapter steps
    lora = models.LoraConfig(rank=8, alpha=16.0, targets=("q", "v"))
    LT = min(cfg.lora_length, T)
    single = models.Decoder(arch, dtype=dtype, rngs=nnx.Rngs(0), remat=cfg.lora_remat)
    models.add_lora(single, lora, seed=0)
    split1, base1 = init_train_state(single, tx, wrt=models.LoRAParam)
    step1 = make_train_step(split1, tx)
    st1 = [start_state(base1.params, tx)]
    lb = batch(rng, cfg.lora_batch, LT, arch.vocab_size)

    def sequential():
        for _ in range(cfg.k):
            st1[0], m = step1(st1[0], *lb)
        return m["loss"]

    s_seq = timed(sequential, max(1, cfg.iters // 2))
    del split1, base1, step1, st1, single
    stacked = models.Decoder(arch, dtype=dtype, rngs=nnx.Rngs(0), remat=cfg.lora_remat)
    models.add_lora(stacked, lora, seed=0, n_adapters=cfg.k)
    splitk, basek = init_train_state(stacked, tx, wrt=models.LoRAParam)
    per_pass = 1 if jax.default_backend() == "cpu" else cfg.k
    stepk = make_stacked_train_step(splitk, tx, per_pass=per_pass)
    stk = [stacked_start_state(basek.params, tx)]
    kb = tuple(jnp.broadcast_to(x, (cfg.k,) + x.shape) for x in lb)
    active = jnp.ones((cfg.k,), bool)

    def together():
        stk[0], m = stepk(stk[0], *kb, active)
        return m["loss"]

    s_stk = timed(together, max(1, cfg.iters // 2))
    out["lora_sequential_tokens_per_s"] = cfg.k * cfg.lora_batch * LT / s_seq
    out["lora_stacked_tokens_per_s"] = cfg.k * cfg.lora_batch * LT / s_stk
    out["lora_stacked_speedup"] = s_seq / s_stk
    out["lora_per_pass"] = per_pass

    pct = lambda x: "n/a (no peak for this device; --peak-tflops)" if x is None else f"{x:.1%}"  # noqa: E731
    print(f"{out['model']} on {out['device']} ({out['backend']}), {T}-token sequences, {cfg.dtype} compute:")
    print(f"  full fine-tuning step (batch {cfg.batch}):  {out['train_tokens_per_s']:,.0f} tokens/s, "
          f"MFU {pct(out['train_mfu'])}")
    if out["train_peak_bytes"]:
        print(f"  device memory peak after the train step: {out['train_peak_bytes'] / 2**30:.2f} GiB")
    print(f"  per-example NLL eval (batch {cfg.eval_batch}):  {out['eval_tokens_per_s']:,.0f} tokens/s, "
          f"MFU {pct(out['eval_mfu'])}")
    print(f"  LoRA, K={cfg.k} adapters x batch {cfg.lora_batch} x {LT} tokens: stacked {out['lora_stacked_tokens_per_s']:,.0f} "
          f"tokens/s vs sequential {out['lora_sequential_tokens_per_s']:,.0f}: {out['lora_stacked_speedup']:.2f}x")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
