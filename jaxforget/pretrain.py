"""``python -m jaxforget.pretrain``: train the built-in world's base model and save it in HF format.

The result is a Hugging Face model directory (config.json, model.safetensors, tokenizer files,
pretrain.json with the losses) that `jaxforget.models.load` and
`transformers.AutoModelForCausalLM.from_pretrained` both read, so the default `collect` run loads
its base model through the same path as a real checkpoint.

    python -m jaxforget.pretrain                         # build (or reuse) the cached default base model
    python -m jaxforget.pretrain --out base/ --pretrain.epochs 1 --base.n-layers 2
    python -m jaxforget.pretrain --world.seed 1          # another world, another base model

`ensure_base_model` is what `collect` calls: the model is built on first use and cached under
`<cache>/base/<key>` (see `jaxforget.data.cache`), keyed by the world, model and training configs.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from jaxforget.cli import Range, above, at_least, out_dir_error, range_errors
from jaxforget.data.world import DOMAINS, WorldConfig, task_specs
from jaxforget.data.world_tasks import MAX_TASKS


PRETRAIN_VERSION = 2
"""Bump when training changes in a way that should invalidate cached base models. 2: the decoder's
custom-VJP attention changed float rounding, so a fresh build differs from a version-1 one."""


@dataclasses.dataclass(frozen=True)
class BaseModelConfig:
    """Architecture of the built-in base model."""

    family: Literal["llama", "gpt2", "gpt_neox", "olmo", "olmo2"] = "llama"
    """ArchConfig family; the HF directory is written in that family's format."""
    d_model: int = 96
    """Residual width."""
    n_layers: int = 3
    """Decoder blocks."""
    n_heads: int = 4
    """Attention heads (head_dim = d_model / n_heads)."""
    d_ff: int = 256
    """MLP hidden width."""
    vocab_size: int = 1024
    """Size of the byte-level BPE vocabulary trained on the world."""
    max_len: int = 64
    """Longest upstream example in tokens (BOS/EOS included); longer ones are truncated."""
    max_positions: int = 256
    """Position capacity written to the config (fine-tuning sequences may be longer than max_len)."""

    def arch(self, tokenizer):
        """The ArchConfig of this model for `tokenizer`, normalised through the HF config round trip."""
        from jaxforget.models import ArchConfig, from_hf_config, to_hf_config

        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        common = dict(family=self.family, vocab_size=len(tokenizer), d_model=self.d_model, n_layers=self.n_layers,
                      n_heads=self.n_heads, n_kv_heads=self.n_heads, head_dim=self.d_model // self.n_heads,
                      d_ff=self.d_ff, max_positions=self.max_positions, **ids)
        per_family = {
            "llama": dict(norm_eps=1e-5),
            "olmo": dict(norm="layernorm_noparam", norm_eps=1e-5),
            "olmo2": dict(norm_eps=1e-5, norm_placement="post", qk_norm=True),
            "gpt2": dict(position="learned", norm="layernorm", norm_eps=1e-5, mlp="plain", activation="gelu_new",
                         qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True),
            "gpt_neox": dict(rotary_pct=0.25, norm="layernorm", norm_eps=1e-5, parallel_residual=True, mlp="plain",
                             activation="gelu", qkv_bias=True, out_bias=True, mlp_bias=True),
        }
        arch = ArchConfig(**common, **per_family[self.family])
        return from_hf_config(to_hf_config(arch), source=f"{self.family} base model config")


@dataclasses.dataclass(frozen=True)
class PretrainTrainConfig:
    """How the base model is trained on the upstream corpus."""

    epochs: float = 2.0
    """Passes over the upstream corpus."""
    batch_size: int = 32
    """Examples per step."""
    lr: float = 3e-3
    """Peak learning rate (AdamW, linear warm-up then linear decay to 10%)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    buckets: tuple[int, ...] = (24, 32, 40, 48, 64)
    """Padded lengths (one compilation each); the last must be >= model.max_len."""
    seed: int = 0
    """Initialisation and data-order seed."""
    eval_per_domain: int = 200
    """Corpus examples and fresh held-out draws per domain for the final per-domain loss."""
    log_every: int = 100
    """Print the running training loss every this many steps (0: never)."""


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Train the built-in world's base model and save it as a Hugging Face directory."""

    world: WorldConfig = WorldConfig()
    """The synthetic world (corpus, tasks) the model is trained on."""
    base: BaseModelConfig = BaseModelConfig()
    """Architecture (the same --base.* flags as collect's)."""
    pretrain: PretrainTrainConfig = PretrainTrainConfig()
    """Training (the same --pretrain.* flags as collect's)."""
    out: Path | None = None
    """Output directory. Default: the cache entry `collect` uses (reused when it already exists)."""
    force: bool = False
    """Retrain even if the output directory already holds a finished model."""


RANGES: dict[str, Range] = {
    # every int/float field of PretrainConfig's world, base and pretrain (collect's --world/--base/--pretrain too)
    **dict.fromkeys(("world.n_people", "world.n_upstream", "base.d_model", "base.n_layers", "base.n_heads",
                     "base.d_ff", "base.vocab_size", "base.max_positions", "pretrain.batch_size", "pretrain.buckets",
                     "pretrain.eval_per_domain"), at_least(1)),
    **dict.fromkeys(("world.seed", "pretrain.seed", "pretrain.warmup_steps", "pretrain.log_every",
                     "pretrain.weight_decay"), at_least(0)),
    **dict.fromkeys(("world.task_scale", "pretrain.epochs", "pretrain.lr"), above(0)),
    "world.n_countries": at_least(2), "base.max_len": at_least(2),
    "world.n_tasks": Range(1, MAX_TASKS),  # as its help says: refused with the other flags, not at the world's build
}


def base_model_errors(config) -> list[str]:
    """What is wrong with the --world / --base / --pretrain flags of `config` (a PretrainConfig or a
    CollectConfig), each error naming the flag as typed; [] when they are usable."""
    errors = range_errors(config, RANGES)
    b = config.base
    if not errors and b.d_model % b.n_heads:
        errors.append(f"--base.d-model {b.d_model} must be a multiple of --base.n-heads {b.n_heads}")
    if not errors:
        try:
            task_specs(config.world)  # --world.n-tasks within the families' size
        except ValueError as e:
            errors.append(str(e))
    if not errors and max(config.pretrain.buckets) < b.max_len:
        errors.append(f"--pretrain.buckets {config.pretrain.buckets}: the largest must be >= --base.max-len "
                      f"{b.max_len}")
    return errors


# ---------------------------------------------------------------------------------------------
# Library
# ---------------------------------------------------------------------------------------------

def base_model_key(world: WorldConfig, model: BaseModelConfig, train: PretrainTrainConfig) -> str:
    from jaxforget.data.cache import config_key
    from jaxforget.data.world import WORLD_VERSION

    # Only the corpus fields of the world: its tasks (--world.n-tasks, --world.task-scale) do not change the model.
    return config_key(world.corpus(), model, train, dict(world_version=WORLD_VERSION, pretrain_version=PRETRAIN_VERSION))


def default_base_dir(world: WorldConfig, model: BaseModelConfig, train: PretrainTrainConfig,
                     cache_dir: Path | None = None) -> Path:
    from jaxforget.data.cache import cache_root

    return (Path(cache_dir) if cache_dir is not None else cache_root()) / "base" / base_model_key(world, model, train)


def _group_nll(eval_fn, params, examples, *, batch_size: int, buckets, pad_id: int) -> dict[str, float]:
    """Mean over examples of the per-example mean target NLL (nats/token), per group and 'all'."""
    from jaxforget.data.batching import Batcher

    nll = np.full(len(examples), np.nan)
    for b in Batcher(examples, batch_size=batch_size, buckets=buckets, shuffle=False, pad_id=pad_id).epoch(0):
        sums, counts = eval_fn(params, b.input_ids, b.attention_mask, b.loss_mask)
        real = b.index >= 0
        nll[b.index[real]] = np.asarray(sums)[real] / np.maximum(np.asarray(counts)[real], 1)
    groups = np.array([e.group for e in examples])
    out = {g: float(nll[groups == g].mean()) for g in DOMAINS if (groups == g).any()}
    out["all"] = float(nll.mean())
    return out


def pretrain(world: WorldConfig, model_config: BaseModelConfig, train: PretrainTrainConfig, out: Path, *,
             world_dir: Path | None = None, cache_dir: Path | None = None,
             echo: Callable[[str], None] = print) -> dict:
    """Train the base model on the world's upstream corpus and write the HF directory `out`.

    Returns the report also written to `out/pretrain.json`: losses (nats/token), per-domain mean NLL
    on corpus examples and on fresh held-out draws, timings.
    """
    import jax
    from flax import nnx

    from jaxforget.data.batching import Batcher
    from jaxforget.data.readers import UpstreamExample, read_upstream, sample_upstream
    from jaxforget.data.tokenize import TokenizeConfig, tokenize_upstream
    from jaxforget.data.tokenizer_train import load_tokenizer
    from jaxforget.data.world import ensure_world, make_heldout
    from jaxforget.models import Decoder, save_hf
    from jaxforget.train import (OptimConfig, init_train_state, make_eval_step, make_optimizer, make_train_step,
                                 merge_model)

    t0 = time.perf_counter()
    if train.buckets[-1] < model_config.max_len:
        raise ValueError(f"the largest bucket ({train.buckets[-1]}) must be >= model.max_len ({model_config.max_len})")
    world_dir = world_dir or ensure_world(world, vocab_size=model_config.vocab_size, cache_dir=cache_dir)
    tokenizer = load_tokenizer(world_dir / "tokenizer")
    tok_config = TokenizeConfig(max_len=model_config.max_len)
    corpus = read_upstream(world_dir / "upstream.jsonl")
    examples = tokenize_upstream(corpus, tokenizer, tok_config)
    n_trunc = sum(e.truncated for e in examples)
    n_tokens = int(sum(len(e.ids) for e in examples))
    t_data = time.perf_counter() - t0

    arch = model_config.arch(tokenizer)
    model = Decoder(arch, rngs=nnx.Rngs(train.seed))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batcher = Batcher(examples, batch_size=train.batch_size, buckets=train.buckets, seed=train.seed, pad_id=pad_id)
    n_steps = max(1, int(round(train.epochs * batcher.steps_per_epoch)))
    optim = OptimConfig(lr=train.lr, warmup_steps=min(train.warmup_steps, n_steps // 2), total_steps=n_steps,
                        end_lr_fraction=0.1, weight_decay=train.weight_decay, b2=0.98, clip_norm=1.0)
    tx = make_optimizer(optim)
    split, state = init_train_state(model, tx)
    step = make_train_step(split, tx)
    echo(f"pretrain: {len(examples)} upstream examples ({n_tokens} tokens, {n_trunc} truncated to "
         f"{model_config.max_len}), {arch.family} {arch.n_params() / 1e6:.2f}M params, {n_steps} steps of "
         f"{train.batch_size} ({train.epochs:g} epochs), shapes {list(batcher.shapes)}")

    t1 = time.perf_counter()
    step_losses, padded_tokens = [], 0
    for batch in batcher.batches(n_steps):
        state, metrics = step(state, batch.input_ids, batch.attention_mask, batch.loss_mask)
        step_losses.append(metrics["loss"])  # stays on device; fetched only when printed
        padded_tokens += batch.input_ids.size
        if train.log_every and (batch.step + 1) % train.log_every == 0:
            recent = np.mean(jax.device_get(step_losses[-train.log_every:]))
            echo(f"  step {batch.step + 1:5d}/{n_steps}  loss {recent:.4f}  ({time.perf_counter() - t1:.0f}s)")
    losses = np.asarray(jax.device_get(step_losses), np.float64)
    tail = min(100, max(1, len(losses) // 10))  # "final loss" = mean over the last 10% of steps (<= 100)
    train_s = time.perf_counter() - t1

    eval_fn = make_eval_step(split)
    sample = sample_upstream(corpus, min(len(corpus), train.eval_per_domain * len(DOMAINS)), seed=train.seed,
                             stratify="balanced")
    corpus_nll = _group_nll(eval_fn, state.params, tokenize_upstream(sample, tokenizer, tok_config),
                            batch_size=64, buckets=train.buckets, pad_id=pad_id)
    heldout = [UpstreamExample(r["id"], r["text"], r["source"], f"heldout:{r['id']}")
               for r in make_heldout(world, train.eval_per_domain)]
    heldout_nll = _group_nll(eval_fn, state.params, tokenize_upstream(heldout, tokenizer, tok_config),
                             batch_size=64, buckets=train.buckets, pad_id=pad_id)

    model = merge_model(split, state)
    out = Path(out)
    save_hf(model, out, tokenizer=tokenizer)
    report = dict(
        world=dataclasses.asdict(world), model=dataclasses.asdict(model_config), train=dataclasses.asdict(train),
        world_dir=str(world_dir), n_params=arch.n_params(), n_examples=len(examples), n_tokens=n_tokens,
        n_truncated=n_trunc, steps=n_steps, steps_per_epoch=batcher.steps_per_epoch,
        first_loss=float(losses[0]), final_loss=float(losses[-tail:].mean()),
        loss_curve=[[min(k + 100, len(losses)), float(losses[k:k + 100].mean())] for k in range(0, len(losses), 100)],
        corpus_nll=corpus_nll, heldout_nll=heldout_nll, data_s=round(t_data, 2), train_s=round(train_s, 2),
        total_s=round(time.perf_counter() - t0, 2), padded_tokens_per_s=round(padded_tokens / max(train_s, 1e-9)),
        versions=dict(python=platform.python_version(), jax=jax.__version__, backend=jax.default_backend()),
    )
    (out / "pretrain.json").write_text(json.dumps(report, indent=2) + "\n")
    echo(f"pretrain: final training loss {report['final_loss']:.4f} (mean of the last {tail} steps; first step "
         f"{report['first_loss']:.4f}); "
         f"{train_s:.0f}s training, {report['total_s']:.0f}s total")
    echo("  mean NLL per domain (nats/token)   " + "  ".join(f"{d:>10s}" for d in [*DOMAINS, "all"]))
    for name, nll in (("corpus examples", corpus_nll), ("held-out draws", heldout_nll)):
        echo(f"  {name:33s}  " + "  ".join(f"{nll[d]:10.3f}" for d in [*DOMAINS, "all"]))
    return report


def ensure_base_model(world: WorldConfig = WorldConfig(), model: BaseModelConfig = BaseModelConfig(),
                      train: PretrainTrainConfig = PretrainTrainConfig(), *, cache_dir: Path | None = None,
                      echo: Callable[[str], None] = print) -> Path:
    """The cached base model directory for these configs; trained (once) if missing."""
    from jaxforget.data.cache import build_once, is_complete

    path = default_base_dir(world, model, train, cache_dir)
    if is_complete(path):
        echo(f"pretrain: reusing the base model in {path}")
        return path
    echo(f"pretrain: building the base model in {path} (first use of this world/model config)")
    return build_once(path, lambda tmp: pretrain(world, model, train, tmp, cache_dir=cache_dir, echo=echo))


def main(config: PretrainConfig) -> Path:
    """Build the base model into --out (or the cache) and print its losses."""
    from jaxforget.data.cache import build_once, is_complete

    errors = base_model_errors(config) + ([e] if config.out is not None and (e := out_dir_error(config.out)) else [])
    if errors:
        raise ValueError("; ".join(errors))
    if config.out is None and not config.force:
        return ensure_base_model(config.world, config.base, config.pretrain)
    path = config.out or default_base_dir(config.world, config.base, config.pretrain)
    if is_complete(path) and not config.force:
        print(f"pretrain: {path} already holds a finished model (use --force to retrain)")
        return path
    if config.force and path.exists():
        import shutil

        shutil.rmtree(path)
    return build_once(path, lambda tmp: pretrain(config.world, config.base, config.pretrain, tmp))


def cli(argv: list[str] | None = None) -> Path:
    from jaxforget.cli import run

    return run(PretrainConfig, main, argv)


if __name__ == "__main__":
    cli()
