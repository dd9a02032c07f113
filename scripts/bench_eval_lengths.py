"""Per-example NLL evaluation on long-tailed lengths: packed rows (--eval.pack) vs bucketed padding.

On a generated corpus (random token ids, log-normal lengths: median 300, clipped to [2, 2048]) and
one random Llama-style model, in one run:
  * real tokens / evaluated tokens (1 - padding fraction) of today's bucketed batches (`Batcher`,
    one padded row per example, geometric buckets up to --max-len) and of packed rows
    (`pack_examples`, first-fit decreasing into rows of --max-len), as `Engine.evaluator` builds them;
  * eval throughput in real tokens/s of the same jitted eval step (`train.make_eval_step`) over the
    whole corpus, each mode timed in interleaved rounds (median reported, compilation excluded);
  * the largest per-example NLL difference between the two (they must agree to 1e-5);
  * for training batches (counted, not timed): the padding fraction of task batches (log-normal,
    median 150, max 1024) bucketed as `Batcher` does vs packed, to judge whether packing would pay.

    python scripts/bench_eval_lengths.py [--n 256] [--batch 8] [--rounds 3]
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import optax
import tyro
from flax import nnx

from jaxforget import models
from jaxforget.data import Batcher, Tokenized, bucket_lengths, pack_examples, padding_fraction
from jaxforget.train import init_train_state, make_eval_step


@dataclasses.dataclass
class BenchConfig:
    n: int = 256
    """Upstream examples in the corpus."""
    median: int = 300
    """Median length (tokens) of the log-normal distribution."""
    sigma: float = 1.0
    """Log-normal sigma (long tail)."""
    max_len: int = 2048
    """Longest example; also the packed row length and the largest bucket."""
    n_buckets: int = 4
    """Bucket lengths for the padded mode: `bucket_lengths(max_len, n_buckets)` (geometric)."""
    batch: int = 8
    """Rows per batch (both modes; --eval.batch-size)."""
    rounds: int = 3
    """Timed passes over the corpus per mode (interleaved); the median is reported."""
    hidden: int = 128
    layers: int = 2
    vocab: int = 1024
    seed: int = 0


def corpus(n: int, median: int, sigma: float, max_len: int, vocab: int, seed: int) -> list[Tokenized]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 2, max_len).astype(int)
    return [Tokenized(rng.integers(1, vocab, size=k).astype(np.int32), np.arange(k) >= 1, str(i), "g", False)
            for i, k in enumerate(lengths)]


def main(c: BenchConfig) -> None:
    exs = corpus(c.n, c.median, c.sigma, c.max_len, c.vocab, c.seed)
    real = sum(len(e.ids) for e in exs)
    buckets = bucket_lengths(c.max_len, c.n_buckets)
    bucketed = list(Batcher(exs, batch_size=c.batch, buckets=buckets, shuffle=False).epoch(0))
    packed = pack_examples(exs, row_len=c.max_len, rows_per_batch=c.batch)
    R, S = packed[0].index.shape

    arch = models.ArchConfig(family="llama", vocab_size=c.vocab, d_model=c.hidden, n_layers=c.layers, n_heads=4,
                             n_kv_heads=4, head_dim=c.hidden // 4, d_ff=4 * c.hidden, max_positions=c.max_len)
    model = models.Decoder(arch, rngs=nnx.Rngs(c.seed))
    split, state = init_train_state(model, optax.sgd(0.0))
    step = make_eval_step(split)
    params = state.params

    def run_bucketed():
        outs = [step(params, b.input_ids, b.attention_mask, b.loss_mask) for b in bucketed]
        return jax.device_get(outs)

    def run_packed():
        outs = [step(params, b.input_ids, None, b.loss_mask, segment_ids=b.segment_ids, n_segments=S)
                for b in packed]
        return jax.device_get(outs)

    t0 = time.perf_counter()
    out_b, out_p = run_bucketed(), run_packed()  # compile every shape
    compile_s = time.perf_counter() - t0
    nll_b, nll_p = np.full(c.n, np.nan), np.full(c.n, np.nan)
    for b, (s, n) in zip(bucketed, out_b):
        keep = b.index >= 0
        nll_b[b.index[keep]] = (s / np.maximum(n, 1))[keep]
    for b, (s, n) in zip(packed, out_p):
        keep = b.index >= 0
        nll_p[b.index[keep]] = (s / np.maximum(n, 1))[keep]

    times = {"bucketed": [], "packed": []}
    for _ in range(c.rounds):
        for name, fn in (("bucketed", run_bucketed), ("packed", run_packed)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}

    print(f"corpus: {c.n} examples, log-normal median {c.median} sigma {c.sigma}, max {c.max_len}; "
          f"{real} real tokens (mean {real / c.n:.0f}, longest {max(len(e.ids) for e in exs)})")
    print(f"model: llama-style d_model {c.hidden}, {c.layers} layers, vocab {c.vocab}; backend "
          f"{jax.default_backend()}, {jax.device_count()} device(s); compile+first pass {compile_s:.1f} s")
    for name, batches, shape in (("bucketed", bucketed, f"buckets {buckets}, {c.batch} rows"),
                                 ("packed", packed, f"({R}, {c.max_len}) rows, <= {S} examples/row")):
        evaluated = sum(b.input_ids.size for b in batches)
        print(f"{name:9s} {len(batches):3d} batches [{shape}]: real/evaluated tokens {real}/{evaluated} = "
              f"{real / evaluated:.3f} (padding {100 * padding_fraction(batches):.1f}%), "
              f"{real / med[name]:,.0f} real tokens/s (median of {c.rounds} passes, {med[name]:.2f} s)")
    print(f"packed / bucketed: evaluated tokens {sum(b.input_ids.size for b in packed) / sum(b.input_ids.size for b in bucketed):.3f}x, "
          f"throughput {med['bucketed'] / med['packed']:.2f}x")
    print(f"max |NLL packed - NLL bucketed| over examples: {np.nanmax(np.abs(nll_p - nll_b)):.2e}")

    tasks = corpus(4 * c.n, 150, c.sigma, 1024, c.vocab, c.seed + 1)
    train = list(Batcher(tasks, batch_size=c.batch, buckets=bucket_lengths(1024, c.n_buckets), seed=0).epoch(0))
    train_packed = pack_examples(tasks, row_len=1024, rows_per_batch=c.batch)
    print(f"training batches (counted): task lengths median 150 max 1024, {len(tasks)} examples: padding "
          f"{100 * padding_fraction(train):.1f}% bucketed vs {100 * padding_fraction(train_packed):.1f}% packed")


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
