"""LoRA adapters: separate `LoRAParam` variables, merge/unmerge, adapter files, and adapters stacked
on a leading axis for vmapped training and evaluation over many tasks.

Train only the adapters with `nnx.Optimizer(model, tx, wrt=LoRAParam)` (or `nnx.split(model,
LoRAParam, ...)` + `jax.grad` of a pure function); base `nnx.Param`s are untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxforget.models.decoder import LORA_TARGETS, Decoder, n_in_axes, param_specs


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the named projections."""

    rank: int = 8
    """Rank r of each A (in, r) B (r, out) pair."""
    alpha: float = 16.0
    """Delta is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter input, active only when the forward pass gets a dropout_key."""
    targets: tuple[str, ...] = ("q", "v")
    """Projections to adapt: any of q, k, v, o, gate, up, down."""

    def __post_init__(self):
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(f"unknown LoRA targets {bad}; choose from {tuple(LORA_TARGETS)}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRAParam(nnx.Variable):
    """An adapter parameter; kept apart from `nnx.Param` so that it is trained and saved on its own."""


def _in_out(arch, weight: str) -> tuple[int, int, str | None, str | None]:
    """Flattened (in, out) sizes of a (L, out..., in...) weight and their logical axes (None if merged)."""
    shape, axes, _ = param_specs(arch)[weight]
    n_in = n_in_axes(weight)
    in_shape, out_shape = shape[-n_in:], shape[1:-n_in]
    in_axis = axes[-1] if n_in == 1 else None
    out_axis = axes[1] if len(out_shape) == 1 else None
    return int(np.prod(in_shape)), int(np.prod(out_shape)), in_axis, out_axis


class LoRA(nnx.Module):
    """A (…, L, in, r) and B (…, L, r, out) per target; `…` is the optional adapter axis."""

    def __init__(self, arch, config: LoraConfig, *, rngs: nnx.Rngs, n_adapters: int | None = None):
        self.config = config
        self.merged = False
        self.n_adapters = n_adapters
        lead = () if n_adapters is None else (n_adapters,)
        lead_axes = () if n_adapters is None else ("adapters",)
        names = []
        for target in config.targets:
            w = LORA_TARGETS[target]
            if w not in param_specs(arch):
                raise ValueError(f"LoRA target {target!r}: this {arch.family} model has no {w}")
            n_in, n_out, in_axis, out_axis = _in_out(arch, w)
            L = arch.n_layers
            # As PEFT: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0, so a fresh adapter leaves the model unchanged.
            bound = 1.0 / np.sqrt(n_in)
            a = jax.random.uniform(rngs.params(), lead + (L, n_in, config.rank), jnp.float32, -bound, bound)
            setattr(self, "a_" + w, LoRAParam(a, axes=lead_axes + ("layers", in_axis, "lora_rank")))
            setattr(self, "b_" + w, LoRAParam(jnp.zeros(lead + (L, config.rank, n_out)),
                                              axes=lead_axes + ("layers", "lora_rank", out_axis)))
            names += ["a_" + w, "b_" + w]
        self.names = tuple(names)

    def weights(self) -> dict[str, jax.Array]:
        return {n: getattr(self, n)[...] for n in self.names}


def add_lora(model: Decoder, config: LoraConfig, *, seed: int = 0, n_adapters: int | None = None) -> Decoder:
    """Attach fresh adapters to `model` (in place) and return it."""
    if model.lora is not None:
        raise ValueError("model already has LoRA adapters; remove them with remove_lora first")
    model.lora = LoRA(model.arch, config, rngs=nnx.Rngs(seed), n_adapters=n_adapters)
    return model


def remove_lora(model: Decoder) -> Decoder:
    model.lora = None
    return model


def lora_state(model: Decoder) -> nnx.State:
    """The adapter parameters only (what is trained and saved)."""
    return nnx.state(model, LoRAParam)


def _deltas(model: Decoder) -> dict[str, jax.Array]:
    lora = model.lora
    if lora is None:
        return {}
    if lora.n_adapters is not None:
        raise ValueError("cannot merge stacked adapters; select one with select_adapter first")
    out = {}
    for name in lora.names[::2]:
        w = name[2:]
        a, b = getattr(lora, "a_" + w)[...], getattr(lora, "b_" + w)[...]
        shape = getattr(model, w).shape  # (L, out..., in...)
        out[w] = (lora.config.scale * jnp.einsum("lir,lro->loi", a, b)).reshape(shape)
    return out


def merged_weights(model: Decoder) -> dict[str, jax.Array]:
    """Base weights with the (unmerged) adapter deltas folded in; the model is not modified."""
    weights = model.weights()
    if model.lora is not None and not model.lora.merged:
        for w, delta in _deltas(model).items():
            weights[w] = weights[w] + delta
    return weights


def merge_lora(model: Decoder) -> Decoder:
    """Fold adapters into the base weights (in place); the forward pass then skips them."""
    if model.lora is None or model.lora.merged:
        return model
    for w, delta in _deltas(model).items():
        base = getattr(model, w)[...]  # keeps the parameter dtype (bfloat16 parameters stay bfloat16)
        getattr(model, w)[...] = (base + delta).astype(base.dtype)
    model.lora.merged = True
    return model


def unmerge_lora(model: Decoder) -> Decoder:
    """Subtract merged adapters from the base weights again (in place)."""
    if model.lora is None or not model.lora.merged:
        return model
    for w, delta in _deltas(model).items():
        base = getattr(model, w)[...]
        getattr(model, w)[...] = (base - delta).astype(base.dtype)
    model.lora.merged = False
    return model


def stack_adapters(models_or_states: list) -> nnx.State:
    """Stack the adapter states of several single-adapter models on a new leading axis."""
    states = [lora_state(m) if isinstance(m, Decoder) else m for m in models_or_states]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def select_adapter(model: Decoder, index: int) -> Decoder:
    """A model holding adapter `index` of a stacked model (shares the base weights)."""
    graphdef, lora, rest = nnx.split(model, LoRAParam, ...)
    single = nnx.merge(graphdef, jax.tree.map(lambda x: x[index], lora), rest)
    single.lora.n_adapters = None
    return single


def vmap_adapters(fn: Callable[..., Any], model: Decoder, *, in_axes: Any = None) -> Callable[..., Any]:
    """`f(*args)` = fn(model_with_adapter_i, *args) for every adapter i of a stacked model, vmapped.

    `in_axes` applies to `args` (None: the same inputs for every adapter; 0: one slice per adapter).
    The result has a leading adapter axis. Works under jax.jit and jax.grad (w.r.t. the adapters
    via `nnx.split(model, LoRAParam, ...)` outside).
    """
    if model.lora is None or model.lora.n_adapters is None:
        raise ValueError("vmap_adapters needs a model with stacked adapters (add_lora(..., n_adapters=N))")
    graphdef, lora, rest = nnx.split(model, LoRAParam, ...)

    def one(lora_i, *args):
        m = nnx.merge(graphdef, lora_i, rest)
        return fn(m, *args)

    def mapped(*args):
        axes = (0,) + ((in_axes,) * len(args) if not isinstance(in_axes, tuple) else in_axes)
        return jax.vmap(one, in_axes=axes)(lora, *args)

    return mapped


def save_adapter(model: Decoder, path: str | os.PathLike) -> None:
    """Write adapter weights (`adapter.safetensors`) and `adapter_config.json` to directory `path`."""
    if model.lora is None:
        raise ValueError("model has no LoRA adapters to save")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {n: np.asarray(jax.device_get(w)) for n, w in model.lora.weights().items()}
    tmp = path / "adapter.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, path / "adapter.safetensors")
    meta = {**dataclasses.asdict(model.lora.config), "n_adapters": model.lora.n_adapters,
            "merged": model.lora.merged}
    (path / "adapter_config.json").write_text(json.dumps(meta, indent=2))


def load_adapter(model: Decoder, path: str | os.PathLike) -> Decoder:
    """Attach the adapters saved by `save_adapter` to `model` (in place)."""
    path = Path(path)
    meta = json.loads((path / "adapter_config.json").read_text())
    config = LoraConfig(rank=meta["rank"], alpha=meta["alpha"], dropout=meta["dropout"],
                        targets=tuple(meta["targets"]))
    remove_lora(model)
    add_lora(model, config, n_adapters=meta["n_adapters"])
    tensors = load_file(str(path / "adapter.safetensors"))
    for name in model.lora.names:
        var = getattr(model.lora, name)
        if name not in tensors or tensors[name].shape != var.shape:
            raise ValueError(f"{path / 'adapter.safetensors'}: tensor {name!r} missing or not of shape {var.shape}")
        var[...] = jnp.asarray(tensors[name])
    if meta.get("merged"):
        merge_lora(model)
    return model
