"""Packed vs padded evaluation at long rows: the largest |per-example NLL difference| and the largest
|Z difference| (two models: a base and a perturbed copy), on a tiny random HF Llama with 1,024-token rows.

    python scripts/packing_precision.py [--row 1024] [--n 48] [--seed 0]

Needs torch + transformers (to build the random HF model offline). Prints one line per quantity."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxforget import models  # noqa: E402
from jaxforget.data import Tokenized, pack_examples  # noqa: E402
from tests.models import tiny_hf  # noqa: E402


def padded(model, exs, row):
    out = []
    for i in range(0, len(exs), 8):
        part = exs[i:i + 8]
        ids = np.zeros((len(part), row), np.int32)
        attn, loss = np.zeros_like(ids), np.zeros((len(part), row), bool)
        for r, e in enumerate(part):
            ids[r, :len(e.ids)], attn[r, :len(e.ids)], loss[r, :len(e.ids)] = e.ids, 1, e.loss_mask
        out.append(np.asarray(models.mean_nll(model, jnp.asarray(ids), jnp.asarray(attn), jnp.asarray(loss))))
    return np.concatenate(out)


def packed(model, exs, row):
    total, count = np.zeros(len(exs)), np.zeros(len(exs))
    for b in pack_examples(exs, row_len=row, rows_per_batch=4):
        s, c = models.segment_nll_sums(model, jnp.asarray(b.input_ids), jnp.asarray(b.segment_ids),
                                       jnp.asarray(b.loss_mask), n_segments=b.index.shape[1])
        keep = b.index >= 0
        total[b.index[keep]], count[b.index[keep]] = np.asarray(s)[keep], np.asarray(c)[keep]
    return total / count


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--row", type=int, default=1024)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    lengths = np.clip(rng.lognormal(np.log(a.row / 4), 1.0, a.n).astype(int), 2, a.row)
    lengths[:4] = a.row  # some full rows, as documents truncated to max_len are
    exs = [Tokenized(rng.integers(3, tiny_hf.VOCAB, n).astype(np.int32), np.arange(n) >= 1, str(i), "g", False)
           for i, n in enumerate(lengths)]
    kw = dict(tiny_hf.CASES["llama"][2], max_position_embeddings=a.row)
    tiny_hf.CASES["llama_long"] = (tiny_hf.CASES["llama"][0], tiny_hf.CASES["llama"][1], kw)
    with tempfile.TemporaryDirectory() as d:
        nll = {}
        for seed in (0, 1):  # the base model and a "fine-tuned" one (another random draw)
            path = Path(d) / str(seed)
            tiny_hf.save("llama_long", path, seed=seed, tokenizer=False)
            model = models.load(path, tokenizer=False)[0]
            nll[seed] = padded(model, exs, a.row), packed(model, exs, a.row)
    (p0, k0), (p1, k1) = nll[0], nll[1]
    print(f"device {jax.devices()[0].device_kind}; {a.n} examples, lengths {lengths.min()}..{lengths.max()}, "
          f"rows of {a.row}; mean NLL {p0.mean():.3f}")
    print(f"max |packed - padded| per-example NLL: {np.abs(k0 - p0).max():.2e}")
    print(f"max |Z packed - Z padded|: {np.abs((k1 - k0) - (p1 - p0)).max():.2e}")


if __name__ == "__main__":
    main()
