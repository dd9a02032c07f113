"""Per-token log-probabilities (float32) and per-example mean NLL with a loss mask.

Logits are never kept for the whole sequence: the head is applied chunk by chunk over the length
and each chunk keeps only logsumexp and the target logit (rematerialised under `jax.grad`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_logprobs(hidden_btd: jax.Array, head_vd: jax.Array, targets_bt: jax.Array, *,
                    chunk_size: int = 256) -> jax.Array:
    """log softmax(hidden @ head.T)[target] per position, float32 (B, T), computed `chunk_size` positions at a time."""
    B, T, D = hidden_btd.shape
    head = head_vd.astype(hidden_btd.dtype)

    def chunk(h_bcd, t_bc):
        logits = jnp.einsum("bcd,vd->bcv", h_bcd, head, preferred_element_type=jnp.float32)
        picked = jnp.take_along_axis(logits, t_bc[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    if T <= chunk_size:  # one chunk: the logits exist either way, so keep them for the backward pass
        return chunk(hidden_btd, targets_bt)
    chunk = jax.checkpoint(chunk)  # several: keep only one chunk's logits alive, recompute in the backward pass
    n = -(-T // chunk_size)
    pad = n * chunk_size - T
    h = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk_size, D).swapaxes(0, 1)
    t = jnp.pad(targets_bt, ((0, 0), (0, pad))).reshape(B, n, chunk_size).swapaxes(0, 1)
    out = jax.lax.map(lambda ht: chunk(*ht), (h, t))  # (n, B, C)
    return out.swapaxes(0, 1).reshape(B, n * chunk_size)[:, :T]


def target_mask(attention_mask_bt: jax.Array, loss_mask_bt: jax.Array | None = None, *,
                segment_ids_bt: jax.Array | None = None) -> jax.Array:
    """Which tokens t count as targets: t >= 1, t and t-1 both real, and loss_mask[t] set. (B, T) bool.

    Packed rows (`segment_ids_bt`, 0 = padding): also t and t-1 in the same segment, so the first
    token of an example is never predicted from the previous example's last one."""
    m = attention_mask_bt.astype(bool)
    valid = jnp.concatenate([jnp.zeros_like(m[:, :1]), m[:, 1:] & m[:, :-1]], axis=1)
    if segment_ids_bt is not None:
        s = segment_ids_bt
        valid = valid & jnp.concatenate([jnp.zeros_like(m[:, :1]), (s[:, 1:] == s[:, :-1]) & (s[:, 1:] > 0)], axis=1)
    if loss_mask_bt is not None:
        valid = valid & loss_mask_bt.astype(bool)
    return valid


def token_logprobs(model, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                   chunk_size: int = 256, dropout_key: jax.Array | None = None,
                   segment_ids: jax.Array | None = None) -> jax.Array:
    """(B, T) float32: entry t is log p(input_ids[t] | input_ids[:t]); entry 0 is 0.

    With `segment_ids` (packed rows, see Decoder) the context of t is its own segment only."""
    hidden, _ = model.hidden_states(input_ids, attention_mask, segment_ids=segment_ids, dropout_key=dropout_key)
    lp = target_logprobs(hidden[:, :-1], model.head_weight(), input_ids[:, 1:], chunk_size=chunk_size)
    return jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)


def nll_sums(model, input_ids, attention_mask=None, loss_mask=None, *, chunk_size: int = 256,
             dropout_key=None) -> tuple[jax.Array, jax.Array]:
    """(sum of target NLL (B,) float32, number of targets (B,) int32); targets as in `target_mask`."""
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    lp = token_logprobs(model, input_ids, attention_mask, chunk_size=chunk_size, dropout_key=dropout_key)
    mask = target_mask(attention_mask, loss_mask)
    return -jnp.sum(jnp.where(mask, lp, 0.0), axis=1), jnp.sum(mask, axis=1, dtype=jnp.int32)


def mean_nll(model, input_ids, attention_mask=None, loss_mask=None, *, chunk_size: int = 256,
             dropout_key=None) -> jax.Array:
    """Per-example mean NLL over target tokens (B,) float32; NaN for an example with no target."""
    total, count = nll_sums(model, input_ids, attention_mask, loss_mask, chunk_size=chunk_size,
                            dropout_key=dropout_key)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def segment_nll_sums(model, input_ids, segment_ids, loss_mask=None, *, n_segments: int,
                     chunk_size: int = 256) -> tuple[jax.Array, jax.Array]:
    """Packed rows: (sum of target NLL (B, n_segments) float32, number of targets (B, n_segments) int32).

    `segment_ids` (B, T): 0 on padding, k in 1..n_segments on the tokens of the row's k-th example
    (column k - 1 of the outputs). Each example is scored as `nll_sums` scores it alone in a row:
    attention stays within it, positions restart at 0, its first token is not a target.
    """
    attention_mask = (segment_ids > 0).astype(jnp.int32)
    lp = token_logprobs(model, input_ids, attention_mask, chunk_size=chunk_size, segment_ids=segment_ids)
    mask = target_mask(attention_mask, loss_mask, segment_ids_bt=segment_ids)
    # Each segment's sum is a reduction over the row, other segments' tokens exact zeros: the same kind of
    # summation as nll_sums over a padded row. A scatter-add would accumulate the tokens one after another
    # in float32, an error growing with the length (5e-6 nats/token per example at 1,024-token rows, twice
    # that in Z); the (B, T, S) one-hot is small (S is a few dozen segments).
    onehot = segment_ids[:, :, None] == jnp.arange(1, n_segments + 1)[None, None, :]
    total = -jnp.sum(jnp.where(onehot & mask[:, :, None], lp[:, :, None], 0.0), axis=1)
    count = jnp.sum(onehot & mask[:, :, None], axis=1, dtype=jnp.int32)
    return total, count
