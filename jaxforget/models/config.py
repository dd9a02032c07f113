"""ArchConfig: one family-agnostic description of a decoder, and its exact translation to and
from Hugging Face `config.json` for GPT-2, GPT-NeoX (Pythia), Llama, OLMo and OLMo-2.

A config field that a converter does not handle is refused by name when its value differs from
the default, instead of silently producing a model that differs from transformers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import numpy as np

FAMILIES = ("gpt2", "gpt_neox", "llama", "olmo", "olmo2")

# HF `architectures` entry written by `to_hf_config` for each family.
HF_ARCHITECTURE = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "olmo": "OlmoForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
}

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "silu", "swish", "relu")

ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedConfigError(ValueError):
    """A Hugging Face config that jaxforget cannot reproduce exactly."""


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Architecture of a decoder-only LM; hashable so that it can be a static jit argument."""

    family: str
    """Checkpoint family, one of FAMILIES; decides the HF key map and config written by save_hf."""
    vocab_size: int
    """Rows of the token embedding (and columns of the output head)."""
    d_model: int
    """Width of the residual stream."""
    n_layers: int
    """Number of decoder blocks."""
    n_heads: int
    """Query heads."""
    n_kv_heads: int
    """Key/value heads (grouped-query attention when smaller than n_heads)."""
    head_dim: int
    """Width of one attention head."""
    d_ff: int
    """Hidden width of the MLP."""
    max_positions: int = 2048
    """Learned position table size (GPT-2) or HF max_position_embeddings (rotary models)."""
    position: str = "rope"
    """'rope' (rotate-half layout, as HF) or 'learned' (GPT-2)."""
    rotary_pct: float = 1.0
    """Fraction of each head that is rotated (Pythia: 0.25)."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    """HF rope parameters beyond theta and the partial factor, e.g. (('rope_type', 'llama3'), ...)."""
    norm: str = "rmsnorm"
    """'rmsnorm', 'layernorm' or 'layernorm_noparam' (OLMo)."""
    norm_eps: float = 1e-6
    """Epsilon of every norm in the model."""
    norm_placement: str = "pre"
    """'pre' (norm sublayer inputs) or 'post' (OLMo-2: norm sublayer outputs before the residual add)."""
    qk_norm: bool = False
    """OLMo-2: RMSNorm over the full projected q and k width before RoPE."""
    parallel_residual: bool = False
    """GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))."""
    mlp: str = "gated"
    """'gated' (down(act(gate x) * up x), Llama/OLMo) or 'plain' (down(act(up x)), GPT-2/NeoX)."""
    activation: str = "silu"
    """HF activation name, one of ACTIVATIONS."""
    qkv_bias: bool = False
    """Biases on the q, k, v projections."""
    out_bias: bool = False
    """Bias on the attention output projection."""
    mlp_bias: bool = False
    """Biases on the MLP projections."""
    tie_embeddings: bool = False
    """Output head shares the token embedding."""
    clip_qkv: float | None = None
    """OLMo: clamp q, k, v projections to [-clip_qkv, clip_qkv]."""
    attn_scale: float | None = None
    """Attention logit scale; None means head_dim ** -0.5."""
    bos_token_id: int | None = None
    """Carried to the exported config."""
    eos_token_id: int | tuple[int, ...] | None = None
    """Carried to the exported config; also the default stop tokens for decoding."""
    pad_token_id: int | None = None
    """Carried to the exported config."""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {FAMILIES}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        for name, allowed in (
            ("position", ("rope", "learned")),
            ("norm", ("rmsnorm", "layernorm", "layernorm_noparam")),
            ("norm_placement", ("pre", "post")),
            ("mlp", ("gated", "plain")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")

    @property
    def rotary_dim(self) -> int:
        """Rotated width of each head (HF: int(head_dim * partial_rotary_factor))."""
        return int(self.head_dim * self.rotary_pct)

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5 if self.attn_scale is None else self.attn_scale

    @property
    def stop_tokens(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    def n_params(self) -> int:
        """Parameter count (embeddings included), for throughput figures."""
        d, f, hd = self.d_model, self.d_ff, self.head_dim
        attn = d * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = d * f * (3 if self.mlp == "gated" else 2)
        head = 0 if self.tie_embeddings else d * self.vocab_size
        pos = self.max_positions * d if self.position == "learned" else 0
        return self.n_layers * (attn + mlp) + self.vocab_size * d + head + pos


def rope_inv_freq(arch: ArchConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies (rotary_dim // 2,) float32 and the cos/sin scale, as transformers computes them."""
    dim = arch.rotary_dim
    params = dict(arch.rope_scaling)
    rope_type = params.get("rope_type", "default")
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(arch.rope_theta) ** exponent)).astype(np.float32)
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return (inv_freq / np.float32(params["factor"])).astype(np.float32), 1.0
    if rope_type == "llama3":
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    raise UnsupportedConfigError(f"rope_type {rope_type!r} is not supported (supported: {ROPE_TYPES})")


# ---------------------------------------------------------------------------------------------
# HF config.json <-> ArchConfig
# ---------------------------------------------------------------------------------------------

# Fields that do not change the function the model computes (dropout is off in evaluation; training
# in jaxforget uses LoRA dropout only), or bookkeeping that transformers itself writes.
_IGNORED = frozenset(
    {
        "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
        "use_cache", "initializer_range", "return_dict", "output_hidden_states", "output_attentions",
        "torchscript", "id2label", "label2id", "problem_type", "tokenizer_class", "prefix",
        "task_specific_params", "finetuning_task", "chunk_size_feed_forward", "sep_token_id",
        "decoder_start_token_id", "is_encoder_decoder", "tie_encoder_decoder", "pruned_heads",
        "use_return_dict", "_attn_implementation", "attn_implementation", "auto_map",
        "attention_dropout", "hidden_dropout", "classifier_dropout", "resid_pdrop", "embd_pdrop",
        "attn_pdrop", "summary_type", "summary_use_proj", "summary_activation",
        "summary_proj_to_labels", "summary_first_dropout", "is_decoder", "num_labels",
        # Only affects mixed precision; jaxforget always computes attention logits and softmax in float32.
        "reorder_and_upcast_attn",
        # Removed from the modeling code in transformers 5 (tensor-parallel slicing of pretraining).
        "pretraining_tp",
    }
)


@functools.lru_cache(maxsize=None)
def _hf_default_config(model_type: str) -> Any:
    try:
        import transformers

        return transformers.AutoConfig.for_model(model_type)
    except Exception:  # noqa: BLE001 - no transformers or unknown model: nothing to compare against
        return None


def _hf_default(model_type: str, name: str) -> Any:
    """The default transformers gives a config field (used only for fields jaxforget does not handle)."""
    return getattr(_hf_default_config(model_type), name, _MISSING)


_MISSING = object()


class _Reader:
    """Reads HF config fields and remembers which ones were handled."""

    def __init__(self, cfg: Mapping[str, Any], source: str):
        self.cfg, self.source, self.used = dict(cfg), source, set()

    def get(self, name: str, default: Any = _MISSING) -> Any:
        self.used.add(name)
        value = self.cfg.get(name, default)
        if value is _MISSING:
            raise UnsupportedConfigError(f"{self.source}: required field {name!r} is missing")
        return value

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int = 1) -> Any:
        """An integer field (>= `minimum`); None stays None when it is the default."""
        value = self.get(name, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UnsupportedConfigError(f"{self.source}: field {name!r} must be an integer >= {minimum}, "
                                         f"got {value!r}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, positive: bool = True) -> Any:
        """A finite float field (> 0 with `positive`); None stays None when it is the default."""
        value = self.get(name, default)
        if value is None and default is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (positive and value <= 0)):
            raise UnsupportedConfigError(f"{self.source}: field {name!r} must be a finite number"
                                         f"{' > 0' if positive else ''}, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        """A true/false field; anything else (the string "false", 0, null) is refused, as transformers refuses it."""
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise UnsupportedConfigError(f"{self.source}: field {name!r} must be true or false, got {value!r} "
                                         f"({type(value).__name__})")
        return value

    def token_id(self, name: str) -> Any:
        """A token id (an integer >= 0), a list of them (eos), or null."""
        value = self.get(name, None)
        ids = value if isinstance(value, list) else [value]
        if value is not None and (not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids)):
            raise UnsupportedConfigError(f"{self.source}: field {name!r} must be a token id (an integer >= 0)"
                                         f"{', or a list of them' if name == 'eos_token_id' else ''}, or null; "
                                         f"got {value!r}")
        return value

    def require(self, name: str, allowed: tuple, default: Any) -> Any:
        value = self.get(name, default)
        # `0 in (False,)` holds in Python: compare types too, so no 0/1 passes for a boolean
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise UnsupportedConfigError(
                f"{self.source}: field {name!r}={value!r} is not supported by jaxforget (supported: {allowed})"
            )
        return value

    def refuse_unhandled(self, model_type: str) -> None:
        for name in sorted(set(self.cfg) & _IGNORED - {"model_type"}):
            # fields that do not change the model are still typed: transformers refuses "false" for a boolean
            value, default = self.cfg[name], _hf_default(model_type, name)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise UnsupportedConfigError(f"{self.source}: field {name!r} must be true or false, got {value!r} "
                                             f"({type(value).__name__})")
        for name in sorted(set(self.cfg) - self.used - _IGNORED):
            value, default = self.cfg[name], _hf_default(model_type, name)
            if default is _MISSING or value != default:
                shown = "unknown" if default is _MISSING else repr(default)
                raise UnsupportedConfigError(
                    f"{self.source}: field {name!r}={value!r} is not handled by the jaxforget {model_type} "
                    f"converter (transformers default: {shown}); refusing to build a model that could differ "
                    "from transformers"
                )


def _head_dim(r: _Reader, d: int, h: int) -> int:
    if d % h:
        raise UnsupportedConfigError(f"{r.source}: the hidden size {d} is not a multiple of the {h} attention heads")
    return d // h


def _type_key(params: Mapping[str, Any]) -> dict[str, Any]:
    """Rope parameters with the legacy key 'type' read as 'rope_type'."""
    return {("rope_type" if k == "type" else k): v for k, v in params.items()}


def _one_value(r: _Reader, what: str, sources: dict[str, Any]) -> Any:
    """The value several config fields give for one quantity (None: none gives it); fields that disagree are
    refused, since transformers' precedence between them differs across versions."""
    given = {name: v for name, v in sources.items() if v is not None}
    if len({repr(float(v)) if isinstance(v, (int, float)) else repr(v) for v in given.values()}) > 1:
        shown = ", ".join(f"{name}={v!r}" for name, v in given.items())
        raise UnsupportedConfigError(f"{r.source}: the {what} is given twice with different values ({shown}); "
                                     "keep one of them")
    return next(iter(given.values()), None)


def _rope(r: _Reader, default_pct: float) -> tuple[float, float, tuple[tuple[str, Any], ...]]:
    """(theta, partial factor, extra scaling parameters) from v5 `rope_parameters` or legacy fields."""
    # transformers 5 writes `rope_parameters`; older configs carry rope_scaling / rope_theta /
    # rotary_emb_base / rotary_pct / partial_rotary_factor. Read them all so none is refused as unhandled.
    legacy = {name: r.get(name, None) for name in ("rope_scaling", "rope_theta", "rotary_emb_base", "rotary_pct",
                                                   "partial_rotary_factor")}
    new, old = r.get("rope_parameters", None), legacy["rope_scaling"]
    for name, value in (("rope_parameters", new), ("rope_scaling", old)):
        if value is not None and not isinstance(value, dict):
            raise UnsupportedConfigError(f"{r.source}: field {name!r} must be an object, got {value!r}")
    if new and old:
        # transformers 5 merges a legacy rope_scaling into rope_parameters (the legacy values win): a scaling
        # type or factor that only rope_scaling carries would change the model. Refuse anything but agreement.
        new_t, old_t = _type_key(new), _type_key(old)
        differ = sorted(k for k in old_t if new_t.get(k, _MISSING) != old_t[k])
        if differ:
            raise UnsupportedConfigError(
                f"{r.source}: both rope_parameters={new!r} and a legacy rope_scaling={old!r}, which differ in "
                f"{differ}; transformers merges them and jaxforget would not reproduce the result exactly: keep "
                "one of the two (rope_parameters, with everything the scaling needs)")
    params = _type_key(new or old or {})
    theta = _one_value(r, "RoPE base", {"rope_parameters.rope_theta": params.pop("rope_theta", None),
                                        "rope_theta": legacy["rope_theta"],
                                        "rotary_emb_base": legacy["rotary_emb_base"]})
    theta = 10000.0 if theta is None else theta
    pct = _one_value(r, "rotary fraction", {"rope_parameters.partial_rotary_factor": params.pop("partial_rotary_factor",
                                                                                                  None),
                                            "rotary_pct": legacy["rotary_pct"],
                                            "partial_rotary_factor": legacy["partial_rotary_factor"]})
    pct = default_pct if pct is None else pct
    for name, value in (("RoPE base", theta), ("rotary fraction", pct)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UnsupportedConfigError(f"{r.source}: the {name} must be a finite number > 0, got {value!r}")
    rope_type = params.pop("rope_type", "default")
    needed = {
        "default": (),
        "linear": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    }
    if rope_type not in needed:
        raise UnsupportedConfigError(
            f"{r.source}: rope_type {rope_type!r} is not supported by jaxforget (supported: {ROPE_TYPES})"
        )
    for key in params:
        if key not in needed[rope_type]:
            raise UnsupportedConfigError(
                f"{r.source}: rope parameter {key!r}={params[key]!r} is not handled for rope_type {rope_type!r}"
            )
    for key in needed[rope_type]:
        if key not in params:
            raise UnsupportedConfigError(f"{r.source}: rope_type {rope_type!r} needs rope parameter {key!r}")
    extra = (("rope_type", rope_type),) + tuple(sorted(params.items())) if rope_type != "default" else ()
    return float(theta), float(pct), extra


def _token_ids(r: _Reader) -> dict:
    eos = r.token_id("eos_token_id")
    return dict(
        bos_token_id=r.token_id("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=r.token_id("pad_token_id"),
    )


def from_hf_config(cfg: Mapping[str, Any], *, source: str = "config.json") -> ArchConfig:
    """ArchConfig from a parsed HF config.json; raises UnsupportedConfigError naming the field."""
    model_type = cfg.get("model_type")
    r = _Reader(cfg, source)
    if model_type == "gpt2":
        d, h = r.integer("n_embd"), r.integer("n_head")
        r.require("add_cross_attention", (False,), False)
        r.require("scale_attn_by_inverse_layer_idx", (False,), False)
        r.integer("n_ctx", None)  # legacy duplicate of n_positions, unused by transformers
        arch = ArchConfig(
            family="gpt2", vocab_size=r.integer("vocab_size"), d_model=d, n_layers=r.integer("n_layer"),
            n_heads=h, n_kv_heads=h, head_dim=_head_dim(r, d, h), d_ff=r.integer("n_inner", None) or 4 * d,
            max_positions=r.integer("n_positions"), position="learned", norm="layernorm",
            norm_eps=r.number("layer_norm_epsilon", 1e-5), mlp="plain",
            activation=r.require("activation_function", ACTIVATIONS, "gelu_new"),
            qkv_bias=True, out_bias=True, mlp_bias=True,
            tie_embeddings=r.boolean("tie_word_embeddings", True),
            attn_scale=None if r.boolean("scale_attn_weights", True) else 1.0, **_token_ids(r),
        )
    elif model_type == "gpt_neox":
        d, h = r.integer("hidden_size"), r.integer("num_attention_heads")
        theta, pct, scaling = _rope(r, default_pct=0.25)
        bias = r.boolean("attention_bias", True)
        arch = ArchConfig(
            family="gpt_neox", vocab_size=r.integer("vocab_size"), d_model=d, n_layers=r.integer("num_hidden_layers"),
            n_heads=h, n_kv_heads=h, head_dim=_head_dim(r, d, h), d_ff=r.integer("intermediate_size"),
            max_positions=r.integer("max_position_embeddings", 2048), rotary_pct=pct, rope_theta=theta,
            rope_scaling=scaling, norm="layernorm", norm_eps=r.number("layer_norm_eps", 1e-5),
            parallel_residual=r.boolean("use_parallel_residual", True), mlp="plain",
            activation=r.require("hidden_act", ACTIVATIONS, "gelu"), qkv_bias=bias, out_bias=bias,
            mlp_bias=True, tie_embeddings=r.boolean("tie_word_embeddings", False), **_token_ids(r),
        )
    elif model_type in ("llama", "olmo", "olmo2"):
        d, h = r.integer("hidden_size"), r.integer("num_attention_heads")
        kv = r.integer("num_key_value_heads", None) or h
        theta, pct, scaling = _rope(r, default_pct=1.0)
        if pct != 1.0:
            raise UnsupportedConfigError(f"{source}: partial_rotary_factor={pct} is not supported for {model_type}")
        bias = r.boolean("attention_bias", False)
        common = dict(
            vocab_size=r.integer("vocab_size"), d_model=d, n_layers=r.integer("num_hidden_layers"), n_heads=h,
            n_kv_heads=kv, head_dim=r.integer("head_dim", None) or _head_dim(r, d, h),
            d_ff=r.integer("intermediate_size"),
            max_positions=r.integer("max_position_embeddings", 2048), rope_theta=theta, rope_scaling=scaling,
            mlp="gated", activation=r.require("hidden_act", ACTIVATIONS, "silu"), qkv_bias=bias, out_bias=bias,
            tie_embeddings=r.boolean("tie_word_embeddings", False), **_token_ids(r),
        )
        if model_type == "llama":
            arch = ArchConfig(
                family="llama", norm="rmsnorm", norm_eps=r.number("rms_norm_eps", 1e-6),
                mlp_bias=r.boolean("mlp_bias", False), **common,
            )
        elif model_type == "olmo":
            # OlmoLayerNorm has no parameters and a fixed eps of 1e-5.
            arch = ArchConfig(
                family="olmo", norm="layernorm_noparam", norm_eps=1e-5, clip_qkv=r.number("clip_qkv", None),
                **common
            )
        else:
            arch = ArchConfig(
                family="olmo2", norm="rmsnorm", norm_eps=r.number("rms_norm_eps", 1e-5), norm_placement="post",
                qk_norm=True, **common,
            )
    else:
        raise UnsupportedConfigError(
            f"{source}: model_type {model_type!r} is not supported by jaxforget.models "
            f"(supported: gpt2, gpt_neox, llama, olmo, olmo2)"
        )
    r.refuse_unhandled(model_type)
    return arch


def to_hf_config(arch: ArchConfig) -> dict[str, Any]:
    """HF config.json contents (transformers 5 field names) that reproduce `arch`."""
    tokens = dict(
        bos_token_id=arch.bos_token_id,
        eos_token_id=list(arch.eos_token_id) if isinstance(arch.eos_token_id, tuple) else arch.eos_token_id,
        pad_token_id=arch.pad_token_id,
    )
    head = {"architectures": [HF_ARCHITECTURE[arch.family]], "model_type": arch.family, "dtype": "float32"}
    rope = {"rope_theta": arch.rope_theta, "rope_type": "default", **dict(arch.rope_scaling)}
    if arch.family == "gpt2":
        if arch.n_kv_heads != arch.n_heads or arch.head_dim * arch.n_heads != arch.d_model:
            raise ValueError("gpt2 export needs n_kv_heads == n_heads and head_dim * n_heads == d_model")
        if arch.attn_scale not in (None, 1.0):
            raise ValueError(f"gpt2 export cannot express attn_scale={arch.attn_scale}")
        return {
            **head, "vocab_size": arch.vocab_size, "n_embd": arch.d_model, "n_layer": arch.n_layers,
            "n_head": arch.n_heads, "n_inner": arch.d_ff, "n_positions": arch.max_positions,
            "activation_function": arch.activation, "layer_norm_epsilon": arch.norm_eps,
            "tie_word_embeddings": arch.tie_embeddings, "scale_attn_weights": arch.attn_scale is None,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **tokens,
        }
    if arch.family == "gpt_neox":
        rope["partial_rotary_factor"] = arch.rotary_pct
        return {
            **head, "vocab_size": arch.vocab_size, "hidden_size": arch.d_model,
            "num_hidden_layers": arch.n_layers, "num_attention_heads": arch.n_heads,
            "intermediate_size": arch.d_ff, "hidden_act": arch.activation,
            "max_position_embeddings": arch.max_positions, "layer_norm_eps": arch.norm_eps,
            "use_parallel_residual": arch.parallel_residual, "attention_bias": arch.qkv_bias,
            "tie_word_embeddings": arch.tie_embeddings, "rope_parameters": rope, **tokens,
        }
    out = {
        **head, "vocab_size": arch.vocab_size, "hidden_size": arch.d_model, "num_hidden_layers": arch.n_layers,
        "num_attention_heads": arch.n_heads, "num_key_value_heads": arch.n_kv_heads,
        "intermediate_size": arch.d_ff, "hidden_act": arch.activation,
        "max_position_embeddings": arch.max_positions, "attention_bias": arch.qkv_bias,
        "tie_word_embeddings": arch.tie_embeddings, "rope_parameters": rope, **tokens,
    }
    if arch.family == "llama":
        out.update(rms_norm_eps=arch.norm_eps, mlp_bias=arch.mlp_bias, head_dim=arch.head_dim)
    elif arch.family == "olmo":
        out.update(clip_qkv=arch.clip_qkv)
    else:
        out.update(rms_norm_eps=arch.norm_eps)
    if arch.family != "llama" and arch.head_dim * arch.n_heads != arch.d_model:
        out["head_dim"] = arch.head_dim
    return out
