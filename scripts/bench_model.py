"""Throughput of jaxforget vs transformers + torch on the same tiny Llama-style model and batch (CPU).

Measures, in one run, tokens/s of
  * per-example NLL evaluation (forward, float32 log-probs at the targets, per-example mean), and
  * a full fine-tuning train step (forward + backward + global-norm clipping + AdamW update),
for jaxforget (jitted pure functions over `nnx.split` state, buffers donated) and for transformers
(SDPA attention, its default and fastest on CPU; torch.inference_mode for evaluation), and prints
the ratios. Both sides do the same work: same weights, batch, loss (mean of per-example mean NLL),
clipping norm and AdamW hyperparameters.

On a shared machine timings are noisy, so the four measurements are interleaved round by round
(a busy spell slows all of them alike) and the median round of each is reported, with the ratio of
the medians and the spread of the per-round ratios.

    python scripts/bench_model.py [--batch 8] [--length 128] [--rounds 15] [--iters 5]
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers as T
import tyro
from flax import nnx

from jaxforget import models


@dataclasses.dataclass
class BenchConfig:
    batch: int = 8
    """Sequences per batch."""
    length: int = 128
    """Tokens per sequence."""
    iters: int = 5
    """Timed iterations per round (after warm-up)."""
    rounds: int = 15
    """Interleaved measurement rounds (jax eval, torch eval, jax train, torch train in each); the
    median round of each figure is reported."""
    hidden: int = 128
    """d_model of the Llama-style model."""
    layers: int = 4
    """Decoder blocks."""
    vocab: int = 512
    """Vocabulary size."""
    lr: float = 1e-4
    """AdamW learning rate (both frameworks)."""
    clip_norm: float = 1.0
    """Global gradient-norm clipping before the update (both frameworks, as jaxforget.train does)."""
    threads: int = 0
    """Threads of each framework: 0 = their defaults (every core), 1 = single-threaded (torch
    set_num_threads(1); XLA without its intra-op thread pool), the comparison least disturbed by
    other processes on a shared machine."""
    torch_attention: str = "sdpa"
    """transformers attention implementation: 'sdpa' (its default, the faster on CPU) or 'eager'."""
    seed: int = 0
    """Seed of the weights and the batch."""


def build_hf(cfg: BenchConfig, path: Path) -> torch.nn.Module:
    config = T.LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * cfg.hidden,
                           max_position_embeddings=max(256, cfg.length), pad_token_id=0, eos_token_id=1,
                           bos_token_id=None)
    torch.manual_seed(cfg.seed)
    model = T.LlamaForCausalLM(config)
    model.save_pretrained(path)
    return T.AutoModelForCausalLM.from_pretrained(path, attn_implementation=cfg.torch_attention, dtype=torch.float32)


def make_batch(cfg: BenchConfig):
    rng = np.random.default_rng(cfg.seed)
    ids = rng.integers(2, cfg.vocab, size=(cfg.batch, cfg.length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[: cfg.batch // 2, : cfg.length // 4] = 0  # left padding on half the rows
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    return ids, mask


def interleaved_rates(fns: dict, n_tokens: int, cfg: BenchConfig) -> dict[str, np.ndarray]:
    """tokens/s of each function in each of `rounds` rounds; within a round the functions run one
    after another, so that a busy spell on a shared machine slows all of them alike."""
    for fn in fns.values():
        fn()
        fn()  # warm-up (compilation, allocator)
    seconds = {name: [] for name in fns}
    for _ in range(cfg.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(cfg.iters):
                fn()
            seconds[name].append(time.perf_counter() - t0)
    return {name: n_tokens * cfg.iters / np.asarray(t) for name, t in seconds.items()}


# ---------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------

def torch_nll(model, ids, mask, pos):
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    tgt = (mask[:, 1:] * mask[:, :-1]).float()
    return -(logp * tgt).sum(1) / tgt.sum(1).clamp_min(1)


def torch_fns(cfg: BenchConfig, hf, ids_np, mask_np):
    ids, mask = torch.tensor(ids_np, dtype=torch.long), torch.tensor(mask_np, dtype=torch.long)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    hf.eval()
    with torch.inference_mode():
        nll = torch_nll(hf, ids, mask, pos).numpy()

    def evaluate():
        with torch.inference_mode():
            torch_nll(hf, ids, mask, pos)

    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def train():
        loss = torch_nll(hf, ids, mask, pos).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return evaluate, train, nll


# ---------------------------------------------------------------------------------------------
# jaxforget
# ---------------------------------------------------------------------------------------------

def jax_fns(cfg: BenchConfig, model, ids_np, mask_np):
    ids, mask = jnp.asarray(ids_np), jnp.asarray(mask_np)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def eval_nll(params, ids, mask):
        return models.mean_nll(nnx.merge(graphdef, params, rest), ids, mask)

    nll = np.asarray(eval_nll(params, ids, mask))

    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adamw(cfg.lr, weight_decay=0.0))
    # device_put commits every leaf (optax creates its step count uncommitted), else step compiles twice
    state = {"params": params, "opt": jax.device_put(tx.init(params), jax.devices()[0])}

    def evaluate():
        eval_nll(state["params"], ids, mask).block_until_ready()

    @partial_donate
    def step(params, opt_state, ids, mask):
        def loss_fn(p):
            return jnp.mean(models.mean_nll(nnx.merge(graphdef, p, rest), ids, mask))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def train():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], ids, mask)
        loss.block_until_ready()

    def check_compiled_once():
        assert step._cache_size() == 1, f"the train step was compiled {step._cache_size()} times"

    return evaluate, train, nll, check_compiled_once


def partial_donate(fn):
    return jax.jit(fn, donate_argnums=(0, 1))


def main(cfg: BenchConfig) -> dict:
    if cfg.threads not in (0, 1):
        raise ValueError(f"--threads {cfg.threads}: use 0 (each framework's default) or 1")
    if cfg.threads == 1:  # read when the CPU backend starts, i.e. before the first computation
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf(cfg, Path(tmp))
        model, _ = models.load(tmp)
    ids, mask = make_batch(cfg)
    n_params = model.arch.n_params()
    print(f"model: Llama-style, {n_params / 1e6:.2f}M parameters ({cfg.layers} layers, d_model {cfg.hidden}, "
          f"vocab {cfg.vocab}); batch {cfg.batch} x {cfg.length} tokens; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), jax {jax.__version__} on {jax.devices()[0].platform}")
    load0 = os.getloadavg()[0]
    j_eval_fn, j_train_fn, j_nll, check_compiled_once = jax_fns(cfg, model, ids, mask)
    t_eval_fn, t_train_fn, t_nll = torch_fns(cfg, hf, ids, mask)
    rates = interleaved_rates({"j_eval": j_eval_fn, "t_eval": t_eval_fn, "j_train": j_train_fn, "t_train": t_train_fn},
                              cfg.batch * cfg.length, cfg)
    check_compiled_once()
    med = {name: float(np.median(r)) for name, r in rates.items()}
    j_eval, t_eval, j_train, t_train = med["j_eval"], med["t_eval"], med["j_train"], med["t_train"]
    diff = float(np.abs(j_nll - t_nll).max())
    print(f"load average (1 min) before/after: {load0:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          f"(other processes slow torch's threads more than XLA's: see the per-round spread)")
    print(f"per-example NLL agreement (max abs diff): {diff:.2e}")
    print(f"median of {cfg.rounds} interleaved rounds x {cfg.iters} steps; torch attention: {cfg.torch_attention}")
    print(f"{'':14s}{'jaxforget':>14s}{'torch':>14s}{'ratio':>9s}   per-round ratio min / median / max")
    for label, j, t in (("eval tok/s", "j_eval", "t_eval"), ("train tok/s", "j_train", "t_train")):
        per_round = rates[j] / rates[t]
        print(f"{label:14s}{med[j]:14,.0f}{med[t]:14,.0f}{med[j] / med[t]:8.2f}x   "
              f"{per_round.min():.2f} / {np.median(per_round):.2f} / {per_round.max():.2f}")
    return {"eval": (j_eval, t_eval), "train": (j_train, t_train), "nll_diff": diff}


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
