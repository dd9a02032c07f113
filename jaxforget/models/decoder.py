"""The one NNX decoder behind every supported family.

Parameters are `nnx.Param`s (float32, or `param_dtype` bfloat16) tagged with logical axis names (metadata `axes`); per-layer
parameters are stacked on a leading 'layers' axis and the blocks run under `jax.lax.scan`, so a
32-layer model compiles like a 1-layer one (small models unroll the scan: faster on CPU). The numerics are pure functions over arrays; the module
only holds state. Shapes: B batch, T query length, S key length, D d_model, H heads, K kv heads,
G = H // K, E head_dim, F d_ff, V vocab, L layers.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxforget.models.config import ArchConfig, rope_inv_freq
from jaxforget.models.sharding import constrain


_NEG = float(np.finfo(np.float32).min)

# --train.remat: what a layer keeps for the backward pass. 'none': everything autodiff saves; 'full':
# only the layer's input (the layer is recomputed in the backward pass, about one more forward);
# 'dots-saveable': the outputs of the weight matmuls (no batch dimensions) are kept, the rest
# (norms, activations, attention scores) recomputed.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots-saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# LoRA target name -> the weight it adapts.
LORA_TARGETS = {
    "q": "wq",
    "k": "wk",
    "v": "wv",
    "o": "wo",
    "gate": "w_gate",
    "up": "w_up",
    "down": "w_down",
}


def param_specs(arch: ArchConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...], str]]:
    """name -> (shape, logical axes, init) for every parameter the architecture has."""
    D, H, K, E, F, V, L = (arch.d_model, arch.n_heads, arch.n_kv_heads, arch.head_dim, arch.d_ff,
                           arch.vocab_size, arch.n_layers)
    specs: dict[str, tuple[tuple[int, ...], tuple[str, ...], str]] = {
        "embed": ((V, D), ("vocab", "embed"), "normal"),
    }
    if arch.position == "learned":
        specs["pos_embed"] = ((arch.max_positions, D), ("positions", "embed"), "normal")
    if not arch.tie_embeddings:
        specs["lm_head"] = ((V, D), ("vocab", "embed"), "normal")
    has_scale = arch.norm != "layernorm_noparam"
    has_bias = arch.norm == "layernorm"
    if has_scale:
        specs["final_norm_scale"] = ((D,), ("embed",), "ones")
    if has_bias:
        specs["final_norm_bias"] = ((D,), ("embed",), "zeros")
    lay = "layers"
    if has_scale:
        specs["attn_norm_scale"] = ((L, D), (lay, "embed"), "ones")
        specs["mlp_norm_scale"] = ((L, D), (lay, "embed"), "ones")
    if has_bias:
        specs["attn_norm_bias"] = ((L, D), (lay, "embed"), "zeros")
        specs["mlp_norm_bias"] = ((L, D), (lay, "embed"), "zeros")
    specs["wq"] = ((L, H, E, D), (lay, "heads", "head_dim", "embed"), "normal")
    specs["wk"] = ((L, K, E, D), (lay, "kv_heads", "head_dim", "embed"), "normal")
    specs["wv"] = ((L, K, E, D), (lay, "kv_heads", "head_dim", "embed"), "normal")
    specs["wo"] = ((L, D, H, E), (lay, "embed", "heads", "head_dim"), "normal")
    if arch.qkv_bias:
        specs["bq"] = ((L, H, E), (lay, "heads", "head_dim"), "zeros")
        specs["bk"] = ((L, K, E), (lay, "kv_heads", "head_dim"), "zeros")
        specs["bv"] = ((L, K, E), (lay, "kv_heads", "head_dim"), "zeros")
    if arch.out_bias:
        specs["bo"] = ((L, D), (lay, "embed"), "zeros")
    if arch.qk_norm:
        specs["q_norm_scale"] = ((L, H, E), (lay, "heads", "head_dim"), "ones")
        specs["k_norm_scale"] = ((L, K, E), (lay, "kv_heads", "head_dim"), "ones")
    if arch.mlp == "gated":
        specs["w_gate"] = ((L, F, D), (lay, "mlp", "embed"), "normal")
    specs["w_up"] = ((L, F, D), (lay, "mlp", "embed"), "normal")
    specs["w_down"] = ((L, D, F), (lay, "embed", "mlp"), "normal")
    if arch.mlp_bias:
        if arch.mlp == "gated":
            specs["b_gate"] = ((L, F), (lay, "mlp"), "zeros")
        specs["b_up"] = ((L, F), (lay, "mlp"), "zeros")
        specs["b_down"] = ((L, D), (lay, "embed"), "zeros")
    return specs


def n_in_axes(name: str) -> int:
    """Weights are stored as torch/HF do, (L, out..., in...); the attention output projection has
    two input axes (heads, head_dim), every other weight one."""
    return 2 if name == "wo" else 1


def is_layer_param(name: str) -> bool:
    return name not in ("embed", "pos_embed", "lm_head", "final_norm_scale", "final_norm_bias")


class KVCache(NamedTuple):
    """Keys and values of every layer: (L, B, S, K, E) each, in the compute dtype."""

    k: jax.Array
    v: jax.Array


class Decoder(nnx.Module):
    """Causal LM: `logits_btv = model(input_ids_bt, attention_mask=mask_bt)` (float32 logits).

    Positions follow the attention mask (cumsum - 1), so left and right padding both work.
    Packed rows: `segment_ids` (B, T) int, 0 on padding and k >= 1 on the tokens of the row's k-th
    example; attention never crosses two segments and positions restart at 0 in each.
    """

    def __init__(self, arch: ArchConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs,
                 init_std: float = 0.02, scan_unroll: int | bool | None = None, param_dtype: Any = jnp.float32,
                 remat: str = "none"):
        """`scan_unroll` is lax.scan's unroll over layers; None: fully unrolled up to 8 layers (about
        10% faster training of small models on CPU), a rolled loop above (compile time).
        `param_dtype`: storage dtype of the parameters (float32 or bfloat16); `dtype` is the compute dtype.
        `remat`: activation checkpointing of each layer under `jax.grad`, one of REMAT_POLICIES."""
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {remat!r}")
        self.arch = arch
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        self.remat = remat
        self.scan_unroll = (arch.n_layers <= 8) if scan_unroll is None else scan_unroll
        self.param_names = tuple(param_specs(arch))
        for name, (shape, axes, init) in param_specs(arch).items():
            if init == "normal":
                value = init_std * jax.random.normal(rngs.params(), shape, jnp.float32)
            else:
                value = (jnp.ones if init == "ones" else jnp.zeros)(shape, jnp.float32)
            setattr(self, name, nnx.Param(value.astype(self.param_dtype), axes=axes))
        self.lora = nnx.data(None)

    # -- parameter views -------------------------------------------------------------------------

    def weights(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in self.param_names}

    def lora_weights(self) -> dict[str, jax.Array] | None:
        if self.lora is None or self.lora.merged:
            return None
        return self.lora.weights()

    # -- forward ---------------------------------------------------------------------------------

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """(B, T) int token ids, optional (B, T) {0,1} mask or segment ids -> (B, T, V) float32 logits."""
        hidden, _ = self.hidden_states(input_ids, attention_mask, positions=positions, segment_ids=segment_ids,
                                       dropout_key=dropout_key)
        return self.logits(hidden)

    def hidden_states(self, input_ids, attention_mask=None, *, positions=None, cache: KVCache | None = None,
                      cache_index: jax.Array | int = 0, key_mask: jax.Array | None = None,
                      segment_ids: jax.Array | None = None,
                      dropout_key: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states (B, T, D) in the compute dtype, and the updated cache.

        Without a cache, keys are the T inputs and `attention_mask` marks valid ones. With a cache
        of length S, the T inputs are written at columns [cache_index, cache_index + T) and
        `key_mask` (B, S) marks the valid cache columns (the inputs' columns included).
        `segment_ids` (B, T): packed rows (see the class); not with a cache.
        """
        return forward(self.weights(), self.lora_weights(), self.arch, self.dtype, input_ids, attention_mask,
                       positions=positions, cache=cache, cache_index=cache_index, key_mask=key_mask,
                       segment_ids=segment_ids,
                       dropout_key=dropout_key, lora_config=None if self.lora is None else self.lora.config,
                       unroll=self.scan_unroll, remat=self.remat)

    def head_weight(self) -> jax.Array:
        """Output projection (V, D), in the parameter dtype."""
        return self.embed[...] if self.arch.tie_embeddings else self.lm_head[...]

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        w = self.head_weight().astype(self.dtype)
        logits = jnp.einsum("btd,vd->btv", hidden_btd, w, preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    def init_cache(self, batch: int, length: int) -> KVCache:
        a = self.arch
        shape = (a.n_layers, batch, length, a.n_kv_heads, a.head_dim)
        return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))


# ---------------------------------------------------------------------------------------------
# Pure numerics
# ---------------------------------------------------------------------------------------------


def positions_from_mask(mask_bt: jax.Array) -> jax.Array:
    """Position of each token = number of valid tokens before it (0 at padding before the first)."""
    return jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def positions_from_segments(segment_ids_bt: jax.Array) -> jax.Array:
    """Position of each token within its segment (a run of equal ids): 0 at each segment's first token."""
    T = segment_ids_bt.shape[-1]
    cols = jnp.arange(T, dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segment_ids_bt[:, :1], bool),
                              segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=-1)
    return cols - jax.lax.cummax(jnp.where(starts, cols, 0), axis=segment_ids_bt.ndim - 1)


def _norm(x, scale, bias, arch: ArchConfig):
    xf = x.astype(jnp.float32)
    if arch.norm == "rmsnorm":
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + arch.norm_eps)
    else:
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + arch.norm_eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def _act(x, name: str):
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return jax.nn.gelu(x, approximate=True)
    if name in ("silu", "swish"):
        return jax.nn.silu(x)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unknown activation {name!r}")


def _computed_once(x: jax.Array) -> jax.Array:
    """`x`, kept as one buffer on XLA:CPU (unchanged elsewhere).

    XLA fuses cheap-looking elementwise producers into every consumer and recomputes them there:
    the rotary cos/sin tables (B, T, E) would be re-evaluated per layer, per head, in the forward
    and the backward pass (16 fusions for 4 layers, about 6% of a small model's CPU train step).
    A dot is never fused into its consumers (and an optimization barrier is dropped before fusion
    on CPU), so a product with the exact identity (HIGHEST precision; B*T*E^2 flops) pins the table.
    """
    if not _on_cpu():
        return x
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    return jnp.einsum("...e,ef->...f", x, eye, precision=jax.lax.Precision.HIGHEST)


def _rope(x_btne, cos_bte, sin_bte, rotary_dim: int):
    """Rotate-half RoPE on the first rotary_dim features of each head (HF layout)."""
    if rotary_dim == 0:
        return x_btne
    rot, rest = x_btne[..., :rotary_dim], x_btne[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    cos, sin = cos_bte[:, :, None, :], sin_bte[:, :, None, :]
    out = (rot.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x_btne.dtype)
    return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


def _dropout(x, rate: float, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _proj(x, w, name: str, lora: dict | None, lora_config, key, dtype):
    """x contracted with w's input axes (its last), plus the LoRA delta for `name` when adapted."""
    if name == "wo":  # input is (B, T, H, E)
        y = jnp.einsum("bthe,dhe->btd", x, w.astype(dtype))
    else:
        y = jnp.einsum("btd,...d->bt...", x, w.astype(dtype))
    return _add_lora(y, x, w, name, lora, lora_config, key, dtype)


def _add_lora(y, x, w, name: str, lora: dict | None, lora_config, key, dtype):
    """y + scale * dropout(x) @ A @ B when `name` is adapted (y unchanged otherwise)."""
    if lora is None or ("a_" + name) not in lora:
        return y
    return y + _lora_delta(x, w, name, lora, lora_config, key, dtype)


def _lora_delta(x, w, name: str, lora: dict | None, lora_config, key, dtype):
    """scale * dropout(x) @ A @ B for an adapted weight `name`, shaped like x @ w."""
    n_in = n_in_axes(name)
    a, b = lora["a_" + name], lora["b_" + name]  # (in, r), (r, out)
    xf = x.reshape(*x.shape[:2], int(np.prod(w.shape[-n_in:])))
    xf = _dropout(xf, lora_config.dropout, key)
    delta = (xf @ a.astype(dtype)) @ b.astype(dtype)
    return (lora_config.scale * delta).astype(dtype).reshape(*x.shape[:2], *w.shape[:-n_in])


def _on_cpu() -> bool:
    """XLA:CPU-specific layouts and fusion fences below apply only there; other backends' dot
    emitters take transposed operands natively and have the arithmetic to spare."""
    return jax.default_backend() == "cpu"


def _unsharded() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or mesh.size == 1


def _projs(x, p, names, lora, lora_config, keys, dtype):
    """Several projections of the same x. Without a mesh they run as one matmul over the
    concatenated weights: fewer, larger dots (and one transpose of x in the backward pass) train
    about 10% faster on CPU. On a mesh the weights' sharded output axes would not concatenate
    cleanly, so each runs alone."""
    if not _unsharded() or len(names) == 1:
        return [_proj(x, p[n], n, lora, lora_config, k, dtype) for n, k in zip(names, keys)]
    ws = [p[n] for n in names]
    flat = jnp.concatenate([w.reshape(-1, w.shape[-1]) for w in ws], axis=0).astype(dtype)
    y = jnp.einsum("btd,od->bto", x, flat)
    parts = jnp.split(y, np.cumsum([int(np.prod(w.shape[:-1])) for w in ws])[:-1], axis=-1)
    return [_add_lora(part.reshape(*x.shape[:2], *w.shape[:-1]), x, w, n, lora, lora_config, k, dtype)
            for part, n, w, k in zip(parts, names, ws, keys)]


def attention_bias(key_mask_bs: jax.Array, q_cols_t: jax.Array) -> jax.Array:
    """(B, T, S) float32: 0 where query t may attend key s (valid key, s <= its column), else the
    float32 minimum. Built once per forward pass and shared by every layer and head."""
    S = key_mask_bs.shape[-1]
    allowed = key_mask_bs[:, None, :].astype(bool) & (jnp.arange(S)[None, None, :] <= q_cols_t[None, :, None])
    return jnp.where(allowed, 0.0, _NEG).astype(jnp.float32)


ATTENTION_IMPLS = ("auto", "native", "xla", "cudnn")


def attention_impl(dtype, head_dim: int, T: int, S: int) -> str:
    """Which attention `_masked_attention` runs: JAXFORGET_ATTENTION (auto | native | xla | cudnn) or
    'auto': cuDNN's fused (flash) attention via jax.nn.dot_product_attention on a GPU where it
    applies (bfloat16/float16, head_dim a multiple of 8 up to 128, even lengths, no KV cache), the
    native path otherwise. 'xla' is jax.nn.dot_product_attention's XLA implementation (tests)."""
    impl = os.environ.get("JAXFORGET_ATTENTION", "auto")
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"JAXFORGET_ATTENTION={impl!r}: expected one of {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    cudnn_ok = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                and head_dim % 8 == 0 and head_dim <= 128 and T == S and T % 2 == 0)
    return "cudnn" if cudnn_ok else "native"


def _dpa_attention(q_bthe, k_bske, v_bske, bias_bts, scale: float, dtype, implementation: str):
    """The same attention through jax.nn.dot_product_attention (grouped kv heads natively); the
    (B, T, S) bias becomes its boolean mask, so a fully masked (padding) query row gets uniform
    weights as in the native path."""
    mask = (bias_bts == 0.0)[:, None]  # (B, 1, T, S)
    out = jax.nn.dot_product_attention(q_bthe.astype(dtype), k_bske.astype(dtype), v_bske.astype(dtype),
                                       mask=mask, scale=scale, implementation=implementation)
    return out.astype(dtype)


def _masked_attention(q_bthe, k_bske, v_bske, bias_bts, scale: float, dtype):
    """Dispatch (see `attention_impl`) to jax.nn.dot_product_attention or the native path below;
    a cuDNN refusal at trace time (shape, dtype, version) falls back to the native path."""
    impl = attention_impl(dtype, q_bthe.shape[-1], q_bthe.shape[1], k_bske.shape[1])
    if impl != "native":
        try:
            return _dpa_attention(q_bthe, k_bske, v_bske, bias_bts, scale, dtype, impl)
        except (NotImplementedError, ValueError, RuntimeError):
            if impl == "xla" or os.environ.get("JAXFORGET_ATTENTION") == "cudnn":
                raise
    return _native_attention(q_bthe, k_bske, v_bske, bias_bts, scale, dtype)


def _native_attention(q_bthe, k_bske, v_bske, bias_bts, scale: float, dtype):
    """Causal (by column) attention over valid keys with grouped kv heads; float32 logits and softmax.

    Heads-major layout: the G query heads that share a kv head are stacked along the query axis,
    so both products are plain batched matmuls over (B, K) with no copies of k or v. The mask is
    an additive bias (fuses into the score product and softmax) and the scale is folded into q,
    so nothing of size T x S is written besides the probabilities. A fully masked query row
    (padding) gets uniform weights instead of NaN, and no gradient into its scores.
    """
    B, T, H, E = q_bthe.shape
    S, K = k_bske.shape[1], k_bske.shape[2]
    G = H // K
    q = (q_bthe * jnp.asarray(scale, q_bthe.dtype)).reshape(B, T, K, G, E).transpose(0, 2, 3, 1, 4)
    k, v = k_bske.transpose(0, 2, 1, 3).astype(dtype), v_bske.transpose(0, 2, 1, 3).astype(dtype)
    row_valid = jnp.any(bias_bts == 0.0, axis=-1).astype(dtype)[:, None, None, :, None]  # (B, 1, 1, T, 1)
    out = _attention_core(q.astype(dtype), k, v, bias_bts[:, None, None], row_valid, _on_cpu())
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, E)


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_core(q_bkgte, k_bkse, v_bkse, bias_b11ts, row_valid_b11t1, transpose_small: bool):
    """softmax(q k^T + bias) v over heads-major operands, (B, K, G, T, E).

    A custom VJP so that the backward pass keeps only the probabilities (not the masked scores,
    the mask or the broadcast normaliser that autodiff of softmax would save) and computes
    dS = P * (dP - rowsum(dO * O)) in one pass (the flash-attention identity).
    `transpose_small`: see `_attention_core_bwd`.
    """
    return _attention_core_fwd(q_bkgte, k_bkse, v_bkse, bias_b11ts, row_valid_b11t1, transpose_small)[0]


def _attention_core_fwd(q, k, v, bias, row_valid, transpose_small):
    B, K, G, T, E = q.shape
    S = k.shape[2]
    scores = jnp.einsum("bkme,bkse->bkms", q.reshape(B, K, G * T, E), k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores.reshape(B, K, G, T, S) + bias, axis=-1).astype(v.dtype).reshape(B, K, G * T, S)
    out = jnp.einsum("bkms,bkse->bkme", probs, v).reshape(B, K, G, T, E)
    return out, (q, k, v, row_valid, probs, out)


def _attention_core_bwd(transpose_small, res, dout):
    """dQ = dS K, dK = dS^T Q, dV = P^T dO with dS = P * (dP - rowsum(dO * O)), dP = dO V^T.

    A fully masked query row must pass no gradient to its scores (the forward's uniform weights
    there are a constant): its dO is zeroed for the dS path only (dP and the row sum), while dV
    still receives it through P^T dO as in autodiff of the plain expression.

    `transpose_small` (XLA:CPU): the fast dot path there (YNNPACK) takes only untransposed
    operands, so dS^T Q and P^T dO would fall back to a generic dot 3-4x slower. Computing
    (Q^T dS)^T and (dO^T P)^T instead transposes only the small (T x E) operands; the
    optimization barrier keeps XLA from folding those transposes back into the dots.
    """
    q, k, v, row_valid, probs, out = res
    B, K, G, T, E = q.shape
    S = k.shape[2]
    M = G * T
    do = dout.reshape(B, K, M, E)
    do_rows = (dout * row_valid).reshape(B, K, M, E)
    dp = jnp.einsum("bkme,bkse->bkms", do_rows, v, preferred_element_type=jnp.float32)
    delta = jnp.sum(do_rows.astype(jnp.float32) * out.reshape(B, K, M, E).astype(jnp.float32), -1, keepdims=True)
    ds = (probs.astype(jnp.float32) * (dp - delta)).astype(q.dtype)
    q_m = q.reshape(B, K, M, E)
    dq = jnp.einsum("bkms,bkse->bkme", ds, k).reshape(q.shape)
    if transpose_small:
        do_t, q_t = jax.lax.optimization_barrier((do.swapaxes(-1, -2), q_m.swapaxes(-1, -2)))
        dv = jnp.einsum("bkem,bkms->bkes", do_t, probs).swapaxes(-1, -2)
        dk = jnp.einsum("bkem,bkms->bkes", q_t, ds).swapaxes(-1, -2)
    else:
        dv = jnp.einsum("bkms,bkme->bkse", probs, do)
        dk = jnp.einsum("bkms,bkme->bkse", ds, q_m)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None, None


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def _attention(x, p, lora, lora_config, keys, arch: ArchConfig, dtype, cos, sin, bias_bts, cache_kv, cache_index):
    B, T, _ = x.shape
    q, k, v = _projs(x, p, ("wq", "wk", "wv"), lora, lora_config, keys[:3], dtype)
    if arch.qkv_bias:
        q, k, v = q + p["bq"].astype(dtype), k + p["bk"].astype(dtype), v + p["bv"].astype(dtype)
    if arch.clip_qkv is not None:
        c = arch.clip_qkv
        q, k, v = jnp.clip(q, -c, c), jnp.clip(k, -c, c), jnp.clip(v, -c, c)
    if arch.qk_norm:  # OLMo-2 normalises over the full projected width, not per head
        q = _norm(q.reshape(B, T, -1), p["q_norm_scale"].reshape(-1), None, arch).reshape(q.shape)
        k = _norm(k.reshape(B, T, -1), p["k_norm_scale"].reshape(-1), None, arch).reshape(k.shape)
    if arch.position == "rope":
        q, k = _rope(q, cos, sin, arch.rotary_dim), _rope(k, cos, sin, arch.rotary_dim)
    if cache_kv is not None:
        ck, cv = cache_kv
        k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
        v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
        new_kv = (k, v)
    else:
        new_kv = None
    out = _masked_attention(q, k, v, bias_bts, arch.scale, dtype)
    y = _proj(out, p["wo"], "wo", lora, lora_config, keys[3], dtype)
    if arch.out_bias:
        y = y + p["bo"].astype(dtype)
    return y, new_kv


@jax.custom_vjp
def _silu_gate(gate, up):
    """silu(gate) * up, the gated MLP's hidden activation (Llama, OLMo).

    A custom VJP so that the forward pass is one elementwise pass writing only the product:
    autodiff would keep sigmoid(gate) and silu(gate) for the backward pass, splitting it into three.
    """
    return jax.nn.silu(gate) * up


def _silu_gate_fwd(gate, up):
    return _silu_gate(gate, up), (gate, up)


def _silu_gate_bwd(res, dh):
    gate, up = res
    g, u, d = gate.astype(jnp.float32), up.astype(jnp.float32), dh.astype(jnp.float32)
    # sigmoid via tanh: the same expression as the forward's would be merged with it (CSE) and
    # kept alive as a separate buffer, which is what this VJP exists to avoid
    sig = 0.5 + 0.5 * jnp.tanh(0.5 * g)
    d_gate = d * u * sig * (1.0 + g * (1.0 - sig))
    return d_gate.astype(gate.dtype), (d * g * sig).astype(up.dtype)


_silu_gate.defvjp(_silu_gate_fwd, _silu_gate_bwd)


def _mlp(x, p, lora, lora_config, keys, arch: ArchConfig, dtype):
    if arch.mlp == "gated":
        gate, up = _projs(x, p, ("w_gate", "w_up"), lora, lora_config, keys[4:6], dtype)
    else:
        up = _proj(x, p["w_up"], "w_up", lora, lora_config, keys[5], dtype)
    if arch.mlp_bias:
        up = up + p["b_up"].astype(dtype)
    if arch.mlp == "gated":
        if arch.mlp_bias:
            gate = gate + p["b_gate"].astype(dtype)
        h = _silu_gate(gate, up) if arch.activation in ("silu", "swish") else _act(gate, arch.activation) * up
    else:
        h = _act(up, arch.activation)
    h = constrain(h, ("batch", "length", "mlp"))
    y = _proj(h, p["w_down"], "w_down", lora, lora_config, keys[6], dtype)
    if arch.mlp_bias:
        y = y + p["b_down"].astype(dtype)
    return y


def _block(x, p, lora, lora_config, key, arch: ArchConfig, dtype, cos, sin, bias, cache_kv, cache_index):
    keys = (None,) * 7 if key is None else tuple(jax.random.split(key, 7))
    n1 = lambda h: _norm(h, p.get("attn_norm_scale"), p.get("attn_norm_bias"), arch)  # noqa: E731
    n2 = lambda h: _norm(h, p.get("mlp_norm_scale"), p.get("mlp_norm_bias"), arch)  # noqa: E731
    attn = lambda h: _attention(h, p, lora, lora_config, keys, arch, dtype, cos, sin, bias,  # noqa: E731
                                cache_kv, cache_index)
    mlp = lambda h: _mlp(h, p, lora, lora_config, keys, arch, dtype)  # noqa: E731
    if arch.norm_placement == "post":
        a, new_kv = attn(x)
        x = x + n1(a)
        x = x + n2(mlp(x))
    elif arch.parallel_residual:
        a, new_kv = attn(n1(x))
        x = x + a + mlp(n2(x))
    else:
        a, new_kv = attn(n1(x))
        x = x + a
        x = x + mlp(n2(x))
    return constrain(x, ("batch", "length", "embed")), new_kv


@partial(jax.jit, static_argnames=("arch", "dtype", "lora_config", "unroll", "remat"))
def forward(weights: dict[str, jax.Array], lora: dict[str, jax.Array] | None, arch: ArchConfig, dtype,
            input_ids, attention_mask=None, *, positions=None, cache: KVCache | None = None,
            cache_index=0, key_mask=None, segment_ids=None, dropout_key=None, lora_config=None, unroll=1,
            remat="none"):
    """Pure forward pass to final-norm hidden states (B, T, D); see Decoder.hidden_states.

    Jitted (compiled once per shape and static configuration) so that eager calls are fast too;
    inside an outer jit it is inlined.
    """
    B, T = input_ids.shape
    if segment_ids is not None:
        if cache is not None:
            raise ValueError("segment_ids (packed rows) are for scoring, not for decoding with a cache")
        attention_mask = (segment_ids > 0).astype(jnp.int32) if attention_mask is None else attention_mask
        positions = positions_from_segments(segment_ids) if positions is None else positions
    if attention_mask is None:
        attention_mask = jnp.ones((B, T), jnp.int32)
    if positions is None:
        positions = positions_from_mask(attention_mask)
    if cache is None:
        key_mask, q_cols = attention_mask, jnp.arange(T)
    else:
        if key_mask is None:
            raise ValueError("decoding with a cache needs key_mask (B, S)")
        q_cols = cache_index + jnp.arange(T)
    x = weights["embed"].astype(dtype)[input_ids]
    if arch.position == "learned":
        x = x + weights["pos_embed"].astype(dtype)[positions]
        cos = sin = None
    else:
        inv_freq, attn_factor = rope_inv_freq(arch)
        freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = _computed_once(jnp.cos(emb) * attn_factor), _computed_once(jnp.sin(emb) * attn_factor)
    bias = attention_bias(key_mask, q_cols)
    if segment_ids is not None:  # packed rows: a query sees only the keys of its own segment
        bias = jnp.where(segment_ids[:, :, None] == segment_ids[:, None, :], bias, _NEG)
    x = constrain(x, ("batch", "length", "embed"))
    layer_w = {k: v for k, v in weights.items() if is_layer_param(k)}
    layer_keys = None if dropout_key is None else jax.random.split(dropout_key, arch.n_layers)

    def body(h, xs):
        p, lp, key, kv = xs
        h, new_kv = _block(h, p, lp, lora_config, key, arch, dtype, cos, sin, bias, kv, cache_index)
        return h, new_kv

    if REMAT_POLICIES[remat] is not None:
        # Remat needs the rolled loop: unrolled, XLA merges the recomputation back into the forward
        # pass and nothing is saved (measured on CPU). The loop boundary also makes prevent_cse
        # unnecessary (False is faster).
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
        unroll = 1
    kv_xs = None if cache is None else (cache.k, cache.v)
    x, new_kv = jax.lax.scan(body, x, (layer_w, lora, layer_keys, kv_xs), unroll=unroll)
    x = _norm(x, weights.get("final_norm_scale"), weights.get("final_norm_bias"), arch)
    return x, (None if cache is None else KVCache(*new_kv))
