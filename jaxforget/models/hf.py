"""Hugging Face checkpoints: `load` (local directory -> model, tokenizer) and `save_hf`.

The key map is one declarative table per family: HF key (with `{i}` for the layer) -> jaxforget
parameter(s) and the layout transform. The model is built abstractly (`nnx.eval_shape`) and each
tensor is read from a memory-mapped safetensors file and placed straight onto its sharding, one
parameter at a time, so the host never holds a second copy of the whole model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxforget.models.config import ArchConfig, from_hf_config, to_hf_config
from jaxforget.models.decoder import Decoder, is_layer_param, n_in_axes, param_specs
from jaxforget.models.lora import merged_weights
from jaxforget.models.sharding import DEFAULT_RULES, named_sharding, to_host

log = logging.getLogger("jaxforget.models.hf")


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be read as the config describes."""


# ---------------------------------------------------------------------------------------------
# safetensors, read by hand: memory-mapped, any dtype (bfloat16 included), truncation detected.
# ---------------------------------------------------------------------------------------------

def _np_dtypes() -> dict[str, Any]:
    return {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _check_entry(path: Path, name: str, info: Any) -> None:
    """One tensor's header entry: dtype, shape, and data_offsets [begin, end] spanning exactly its bytes."""
    where = f"{path}: tensor {name!r} in the safetensors header"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        got = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise CheckpointError(f"{where} needs dtype, shape and data_offsets; got {got}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    dtype = _np_dtypes().get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is not None and offsets[1] - offsets[0] != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        need = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise CheckpointError(f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes; a "
                              f"{info['dtype']} tensor of shape {tuple(shape)} needs {need}")


class SafetensorsFile:
    """Lazy, memory-mapped view of one .safetensors file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: safetensors file does not exist")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise CheckpointError(f"{self.path}: truncated safetensors file (header of {n} bytes, file of {size})")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise CheckpointError(f"{self.path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                                  "expected an object of tensors)")
        header.pop("__metadata__", None)
        for name, info in header.items():
            _check_entry(self.path, name, info)
        self.header, self.data_start = header, 8 + n
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        if self.data_start + end > size:
            raise CheckpointError(
                f"{self.path}: truncated safetensors file: its header describes {self.data_start + end} bytes, "
                f"the file has {size}"
            )
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def keys(self):
        return self.header.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        dtypes = _np_dtypes()
        if info["dtype"] not in dtypes:
            raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        b, e = info["data_offsets"]
        raw = self._mm[self.data_start + b:self.data_start + e]
        return raw.view(dtypes[info["dtype"]]).reshape(info["shape"])


def open_checkpoint(path: Path) -> dict[str, SafetensorsFile]:
    """HF tensor name -> the file holding it, from model.safetensors or a sharded index."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError(f"weight_map is a {type(weight_map).__name__}")
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        files: dict[str, SafetensorsFile] = {}
        for fname in sorted(set(weight_map.values())):
            if not (path / fname).is_file():
                raise CheckpointError(f"{index}: refers to {fname}, which does not exist in {path}")
            files[fname] = SafetensorsFile(path / fname)
        out = {}
        for key, fname in weight_map.items():
            if key not in files[fname].header:
                raise CheckpointError(f"{index}: maps {key!r} to {fname}, which does not contain it")
            out[key] = files[fname]
        return out
    if single.exists():
        f = SafetensorsFile(single)
        return {k: f for k in f.keys()}
    others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    hint = f" (found {others}: convert them to safetensors first)" if others else ""
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")


# ---------------------------------------------------------------------------------------------
# Key map tables
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor <-> one or more jaxforget parameters (per layer when `hf` contains `{i}`)."""

    hf: tuple[str, ...]
    """HF key and accepted aliases; the first is written by save_hf."""
    ours: tuple[str, ...]
    to_ours: Callable[[np.ndarray, ArchConfig], tuple[np.ndarray, ...]]
    to_hf: Callable[[tuple[np.ndarray, ...], ArchConfig], np.ndarray]
    hf_shape: Callable[[ArchConfig], tuple[int, ...]]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf[0]


def _shape(arch: ArchConfig, name: str) -> tuple[int, ...]:
    shape = param_specs(arch)[name][0]
    return shape[1:] if is_layer_param(name) else shape


def _out_in(arch: ArchConfig, name: str) -> tuple[int, int]:
    """Flattened (out, in) sizes of a weight stored (out..., in...)."""
    s = _shape(arch, name)
    n_in = n_in_axes(name)
    return int(np.prod(s[:-n_in])), int(np.prod(s[-n_in:]))


def linear(hf, name, *aliases) -> Entry:
    """torch nn.Linear weight (out, in) <-> ours (out..., in...): the same memory order."""
    return Entry((hf, *aliases), (name,),
                 lambda w, a: (w.reshape(_shape(a, name)),),
                 lambda xs, a: xs[0].reshape(_out_in(a, name)),
                 lambda a: _out_in(a, name))


def conv1d(hf, name) -> Entry:
    """GPT-2 Conv1D weight (in, out) <-> ours (out..., in...)."""
    return Entry((hf,), (name,), lambda w, a: (w.T.reshape(_shape(a, name)),),
                 lambda xs, a: xs[0].reshape(_out_in(a, name)).T, lambda a: _out_in(a, name)[::-1])


def _vec(hf, name) -> Entry:
    """Norm scales, biases: flat in HF, (H, E) or (D,) here."""
    return Entry((hf,), (name,), lambda w, a: (w.reshape(_shape(a, name)),),
                 lambda xs, a: xs[0].reshape(-1), lambda a: (int(np.prod(_shape(a, name))),))


def _table(hf, name) -> Entry:
    """Embedding tables (rows, D) as they are."""
    return Entry((hf,), (name,), lambda w, a: (w,), lambda xs, a: xs[0], lambda a: _shape(a, name))


def _gpt2_qkv_weight() -> Entry:
    # c_attn is a Conv1D (D, 3D): columns are [q | k | v], each (H, E) head-major.
    def to_ours(w, a):
        return tuple(part.T.reshape(a.n_heads, a.head_dim, a.d_model) for part in np.split(w, 3, axis=1))
    return Entry(("transformer.h.{i}.attn.c_attn.weight",), ("wq", "wk", "wv"), to_ours,
                 lambda xs, a: np.concatenate([x.reshape(-1, a.d_model).T for x in xs], axis=1),
                 lambda a: (a.d_model, 3 * a.d_model))


def _gpt2_qkv_bias() -> Entry:
    return Entry(("transformer.h.{i}.attn.c_attn.bias",), ("bq", "bk", "bv"),
                 lambda w, a: tuple(p.reshape(a.n_heads, a.head_dim) for p in np.split(w, 3)),
                 lambda xs, a: np.concatenate([x.reshape(-1) for x in xs]), lambda a: (3 * a.d_model,))


def _neox_qkv_weight() -> Entry:
    # query_key_value is nn.Linear (3D, D) whose output rows are interleaved per head: [h][q,k,v][E].
    def to_ours(w, a):
        w = w.reshape(a.n_heads, 3, a.head_dim, a.d_model)
        return tuple(w[:, j] for j in range(3))

    def to_hf(xs, a):
        return np.stack(xs, axis=1).reshape(3 * a.d_model, a.d_model)
    return Entry(("gpt_neox.layers.{i}.attention.query_key_value.weight",), ("wq", "wk", "wv"), to_ours, to_hf,
                 lambda a: (3 * a.d_model, a.d_model))


def _neox_qkv_bias() -> Entry:
    def to_ours(w, a):
        w = w.reshape(a.n_heads, 3, a.head_dim)
        return tuple(w[:, j] for j in range(3))
    return Entry(("gpt_neox.layers.{i}.attention.query_key_value.bias",), ("bq", "bk", "bv"), to_ours,
                 lambda xs, a: np.stack(xs, axis=1).reshape(-1), lambda a: (3 * a.d_model,))


def key_map(arch: ArchConfig) -> list[Entry]:
    """The declarative HF <-> jaxforget table for `arch` (only entries the architecture has)."""
    specs = param_specs(arch)
    f = arch.family
    if f == "gpt2":
        p = "transformer.h.{i}."
        entries = [
            _table("transformer.wte.weight", "embed"), _table("transformer.wpe.weight", "pos_embed"),
            _vec("transformer.ln_f.weight", "final_norm_scale"), _vec("transformer.ln_f.bias", "final_norm_bias"),
            _vec(p + "ln_1.weight", "attn_norm_scale"), _vec(p + "ln_1.bias", "attn_norm_bias"),
            _vec(p + "ln_2.weight", "mlp_norm_scale"), _vec(p + "ln_2.bias", "mlp_norm_bias"),
            _gpt2_qkv_weight(), _gpt2_qkv_bias(),
            conv1d(p + "attn.c_proj.weight", "wo"), _vec(p + "attn.c_proj.bias", "bo"),
            conv1d(p + "mlp.c_fc.weight", "w_up"), _vec(p + "mlp.c_fc.bias", "b_up"),
            conv1d(p + "mlp.c_proj.weight", "w_down"), _vec(p + "mlp.c_proj.bias", "b_down"),
            linear("lm_head.weight", "lm_head"),
        ]
    elif f == "gpt_neox":
        p = "gpt_neox.layers.{i}."
        entries = [
            _table("gpt_neox.embed_in.weight", "embed"),
            linear("embed_out.weight", "lm_head", "lm_head.weight"),
            _vec("gpt_neox.final_layer_norm.weight", "final_norm_scale"),
            _vec("gpt_neox.final_layer_norm.bias", "final_norm_bias"),
            _vec(p + "input_layernorm.weight", "attn_norm_scale"), _vec(p + "input_layernorm.bias", "attn_norm_bias"),
            _vec(p + "post_attention_layernorm.weight", "mlp_norm_scale"),
            _vec(p + "post_attention_layernorm.bias", "mlp_norm_bias"),
            _neox_qkv_weight(), _neox_qkv_bias(),
            linear(p + "attention.dense.weight", "wo"), _vec(p + "attention.dense.bias", "bo"),
            linear(p + "mlp.dense_h_to_4h.weight", "w_up"), _vec(p + "mlp.dense_h_to_4h.bias", "b_up"),
            linear(p + "mlp.dense_4h_to_h.weight", "w_down"), _vec(p + "mlp.dense_4h_to_h.bias", "b_down"),
        ]
    else:  # llama, olmo, olmo2 share the HF layout
        p = "model.layers.{i}."
        norm1, norm2 = (("post_attention_layernorm", "post_feedforward_layernorm") if f == "olmo2"
                        else ("input_layernorm", "post_attention_layernorm"))
        entries = [
            _table("model.embed_tokens.weight", "embed"), linear("lm_head.weight", "lm_head"),
            _vec("model.norm.weight", "final_norm_scale"),
            _vec(p + norm1 + ".weight", "attn_norm_scale"), _vec(p + norm2 + ".weight", "mlp_norm_scale"),
            _vec(p + "self_attn.q_norm.weight", "q_norm_scale"), _vec(p + "self_attn.k_norm.weight", "k_norm_scale"),
        ]
        for proj, w, b in (("q_proj", "wq", "bq"), ("k_proj", "wk", "bk"), ("v_proj", "wv", "bv"),
                           ("o_proj", "wo", "bo")):
            entries += [linear(p + "self_attn." + proj + ".weight", w), _vec(p + "self_attn." + proj + ".bias", b)]
        for proj, w, b in (("gate_proj", "w_gate", "b_gate"), ("up_proj", "w_up", "b_up"),
                           ("down_proj", "w_down", "b_down")):
            entries += [linear(p + "mlp." + proj + ".weight", w), _vec(p + "mlp." + proj + ".bias", b)]
    return [e for e in entries if all(n in specs for n in e.ours)]


# Buffers some checkpoints carry that are not parameters.
_IGNORED_KEYS = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------

def read_arch(path: str | os.PathLike) -> ArchConfig:
    """ArchConfig from `path/config.json` (errors name the file and field)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: not found (is {path} a Hugging Face model directory?)")
    from jaxforget.store import read_json_object

    try:
        cfg = read_json_object(cfg_path, "a Hugging Face config.json (a JSON object)")
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    return from_hf_config(cfg, source=str(cfg_path))


# The output head's and the embedding's tensor names, by family (the head's aliases as key_map reads them).
_HEAD_KEYS = {"gpt2": ("lm_head.weight",), "gpt_neox": ("embed_out.weight", "lm_head.weight")}
_EMBED_KEYS = {"gpt2": "transformer.wte.weight", "gpt_neox": "gpt_neox.embed_in.weight"}


def untied_if_distinct(arch: ArchConfig, tensors: dict[str, SafetensorsFile], *, source: str) -> ArchConfig:
    """`arch` untied when config.json says ``tie_word_embeddings: true`` but the checkpoint holds an output
    head whose values differ from the embedding: transformers (5.x) then keeps the two apart ("both are
    present in the checkpoints with different values, so we will NOT tie them"), and so does jaxforget, so
    that the logits are the same. A head equal to the embedding stays tied (the same function)."""
    if not arch.tie_embeddings:
        return arch
    embed_key = _EMBED_KEYS.get(arch.family, "model.embed_tokens.weight")
    head_key = next((k for k in _HEAD_KEYS.get(arch.family, ("lm_head.weight",)) if k in tensors), None)
    if head_key is None or embed_key not in tensors:
        return arch
    head, embed = tensors[head_key].get(head_key), tensors[embed_key].get(embed_key)
    if head.shape == embed.shape and np.array_equal(head, embed):
        return arch
    log.warning("%s: config.json ties the output head to the embedding, but the checkpoint's %s differs from %s: "
                "loaded untied, as transformers loads it (set tie_word_embeddings to false to silence this)",
                source, head_key, embed_key)
    return dataclasses.replace(arch, tie_embeddings=False)


def _load_tokenizer(path: Path):
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    present = [n for n in names if (path / n).exists()]
    if not present:
        return None
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"):  # JSON files: name the broken one
        if name in present:
            try:
                json.loads((path / name).read_text(encoding="utf-8"))
            except (ValueError, OSError) as e:
                raise CheckpointError(f"{path / name}: not valid JSON ({e}); the tokenizer cannot be loaded") from None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers/transformers raise many types for damaged files
        raise CheckpointError(f"{path}: the tokenizer ({', '.join(present)}) cannot be loaded "
                              f"({type(e).__name__}: {e})") from None


def load(path: str | os.PathLike, *, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
         rules=DEFAULT_RULES, tokenizer: bool = True, scan_unroll: int | bool | None = None,
         param_dtype: Any = jnp.float32, remat: str = "none"):
    """(model, tokenizer) from a local HF directory (config.json, safetensors, tokenizer files).

    Parameters are `param_dtype` (float32 default, or bfloat16) on `mesh` (sharded by the logical-axis `rules`) or on the default
    device; `dtype` is the compute dtype (bfloat16 on accelerators). The tokenizer is
    `transformers.AutoTokenizer.from_pretrained(path)` when tokenizer files exist, else None.
    """
    path = Path(path)
    arch = read_arch(path)
    tensors = open_checkpoint(path)
    arch = untied_if_distinct(arch, tensors, source=str(path))
    model = nnx.eval_shape(lambda: Decoder(arch, dtype=dtype, rngs=nnx.Rngs(0), scan_unroll=scan_unroll,
                                           param_dtype=param_dtype, remat=remat))
    load_weights(model, tensors, mesh=mesh, rules=rules, source=str(path))
    return model, (_load_tokenizer(path) if tokenizer else None)


def load_weights(model: Decoder, tensors: dict[str, SafetensorsFile], *, mesh=None, rules=DEFAULT_RULES,
                 source: str = "checkpoint") -> None:
    """Fill an (abstract) model from HF tensors, each placed straight onto its sharding.

    Each process reads (from the memory-mapped file) only the slices of its own devices, so a mesh
    spanning several processes (``jax.distributed``) loads without any process holding the whole
    model; without a mesh, parameters go to this process's first device.
    """
    arch = model.arch
    entries = key_map(arch)
    used: set[str] = set()
    loaded: set[str] = set()
    device = jax.local_devices()[0]
    for entry in entries:
        layers = range(arch.n_layers) if entry.per_layer else [None]
        per_param: list[list[np.ndarray]] = [[] for _ in entry.ours]
        for i in layers:
            keys = [k.format(i=i) for k in entry.hf]
            key = next((k for k in keys if k in tensors), None)
            if key is None:
                raise CheckpointError(f"{source}: tensor {keys[0]!r} is missing from the checkpoint "
                                      f"(needed by the {arch.family} config)")
            used.add(key)
            expected = tuple(entry.hf_shape(arch))
            got = tensors[key].shape(key)
            if got != expected:
                raise CheckpointError(f"{tensors[key].path}: tensor {key!r} has shape {got}, config.json implies "
                                      f"{expected}")
            for lst, part in zip(per_param, entry.to_ours(tensors[key].get(key), arch)):
                lst.append(part)
        for name, parts in zip(entry.ours, per_param):
            var = getattr(model, name)
            shape = var.shape
            sharding = (named_sharding(mesh, var.get_metadata().get("axes"), shape, rules) if mesh is not None
                        else jax.sharding.SingleDeviceSharding(device))

            def read(index, parts=parts, stacked=entry.per_layer, dtype=np.dtype(var.dtype)):
                # Always a copy: a CPU jax array may alias host memory, and this one is a file mapping.
                # Converted via float32 (the checkpoint may be float16 or bfloat16).
                if not stacked:
                    return np.array(parts[0][index], dtype=np.float32, copy=True).astype(dtype)
                rows = range(len(parts))[index[0]]
                return np.stack([np.asarray(parts[r][index[1:]], dtype=np.float32) for r in rows]).astype(dtype)

            var.set_value(jax.make_array_from_callback(shape, sharding, read))
            loaded.add(name)
    unfilled = sorted(set(model.param_names) - loaded)
    if unfilled:  # a gap in the key map table, not in the checkpoint
        raise AssertionError(f"no {arch.family} key map entry fills parameters {unfilled}")
    if arch.tie_embeddings:
        used.update(k for k in tensors if k in ("lm_head.weight", "embed_out.weight"))
    extra = sorted(k for k in tensors if k not in used and not _IGNORED_KEYS.search(k))
    if extra:
        raise CheckpointError(f"{source}: tensors {extra[:5]}{'...' if len(extra) > 5 else ''} are not used by the "
                              f"jaxforget {arch.family} converter; refusing to drop weights silently")


# ---------------------------------------------------------------------------------------------
# save_hf
# ---------------------------------------------------------------------------------------------

def save_hf(model: Decoder, path: str | os.PathLike, *, tokenizer=None, max_shard_bytes: int = 4 << 30) -> None:
    """Write config.json + safetensors (sharded with an index above `max_shard_bytes`) that
    `transformers.AutoModelForCausalLM.from_pretrained(path)` loads to the same logits.

    Unmerged LoRA adapters are merged into the written weights (the model is not modified).
    Files are written under temporary names and renamed when complete. In a multi-process run
    (``jax.distributed``) every process must call it (parameters sharded across processes are
    gathered); process 0 alone writes.
    """
    arch = model.arch
    path = Path(path)
    write = jax.process_index() == 0
    if write:
        path.mkdir(parents=True, exist_ok=True)
    weights = merged_weights(model)
    plan: list[tuple[str, Entry, int | None, int]] = []
    for entry in key_map(arch):
        nbytes = 4 * int(np.prod(entry.hf_shape(arch)))
        for i in (range(arch.n_layers) if entry.per_layer else [None]):
            plan.append((entry.hf[0].format(i=i), entry, i, nbytes))
    shards: list[list[tuple[str, Entry, int | None]]] = [[]]
    size = 0
    for key, entry, i, nbytes in plan:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, entry, i))
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    host: dict[str, np.ndarray] = {}
    written = []
    for fname, shard in zip(names, shards):
        tensors = {}
        for key, entry, i in shard:
            if set(host) != set(entry.ours):  # host copies of one entry's parameters at a time
                host = {n: np.asarray(to_host(weights[n]), dtype=np.float32) for n in entry.ours}
            parts = tuple(host[n] if i is None else host[n][i] for n in entry.ours)
            tensors[key] = np.ascontiguousarray(entry.to_hf(parts, arch), dtype=np.float32)
        if not write:
            continue
        tmp = path / (fname + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        written.append((tmp, path / fname))
    if not write:
        return
    for tmp, final in written:
        os.replace(tmp, final)
    if len(shards) > 1:
        weight_map = {key: fname for fname, shard in zip(names, shards) for key, _, _ in shard}
        total = sum(nbytes for *_, nbytes in plan)
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(to_hf_config(arch), indent=2))
    os.replace(tmp, path / "config.json")
