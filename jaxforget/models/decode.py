"""Greedy decoding with a KV cache: one jitted function per (batch, prompt length, max_new_tokens).

Prompts may be left- or right-padded: the cache has S = T + max_new_tokens columns, the prompt fills
columns [0, T) (padding masked out), generated token i is written at column T + i, and positions
follow the mask, so every row sees exactly its own tokens.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxforget.models.decoder import positions_from_mask


class Generation(NamedTuple):
    tokens: jax.Array
    """(B, max_new_tokens) int32 generated tokens; after a stop token (which is kept) filled with pad_id."""
    lengths: jax.Array
    """(B,) int32 number of generated tokens, the stop token included."""


def _last_logits(model, hidden_btd, mask_bt):
    last = jnp.max(jnp.where(mask_bt.astype(bool), jnp.arange(mask_bt.shape[1]), 0), axis=1)
    h = jnp.take_along_axis(hidden_btd, last[:, None, None], axis=1)  # (B, 1, D)
    return model.logits(h)[:, 0]


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _generate(graphdef, state, input_ids, attention_mask, stop_ids, pad_id, *, max_new_tokens: int):
    model = nnx.merge(graphdef, state)
    B, T = input_ids.shape
    S = T + max_new_tokens
    mask = attention_mask.astype(jnp.int32)
    key_mask = jnp.concatenate([mask, jnp.zeros((B, max_new_tokens), jnp.int32)], axis=1)
    cache = model.init_cache(B, S)
    hidden, cache = model.hidden_states(input_ids, mask, positions=positions_from_mask(mask), cache=cache,
                                        cache_index=0, key_mask=key_mask)
    first = jnp.argmax(_last_logits(model, hidden, mask), axis=-1).astype(jnp.int32)
    n_prompt = jnp.sum(mask, axis=1)
    is_stop = lambda t: jnp.any(t[:, None] == stop_ids[None, :], axis=1)  # noqa: E731
    tokens = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = is_stop(first)
    lengths = jnp.ones((B,), jnp.int32)

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tokens, cache, key_mask, done, lengths = carry
        prev = tokens[:, i - 1]
        key_mask = key_mask.at[:, T + i - 1].set(1)
        pos = (n_prompt + i - 1)[:, None]
        h, cache = model.hidden_states(prev[:, None], None, positions=pos, cache=cache, cache_index=T + i - 1,
                                       key_mask=key_mask)
        nxt = jnp.argmax(model.logits(h)[:, 0], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        tokens = tokens.at[:, i].set(nxt)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | is_stop(nxt)
        return i + 1, tokens, cache, key_mask, done, lengths

    carry = (jnp.int32(1), tokens, cache, key_mask, done, lengths)
    _, tokens, _, _, _, lengths = jax.lax.while_loop(cond, body, carry)
    return Generation(tokens, lengths)


def greedy_generate(model, input_ids, attention_mask=None, *, max_new_tokens: int,
                    stop_tokens: Sequence[int] | None = None, pad_id: int | None = None) -> Generation:
    """Greedy continuation of (B, T) prompts, stopping per row at any of `stop_tokens`.

    `stop_tokens` defaults to the config's eos ids; `pad_id` to the config's pad id (else 0).
    Compiles once per (B, T, max_new_tokens, number of stop tokens).
    """
    arch = model.arch
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    stops = tuple(arch.stop_tokens if stop_tokens is None else stop_tokens)
    stop_ids = jnp.asarray(stops if stops else (-1,), jnp.int32)
    if pad_id is None:
        pad_id = arch.pad_token_id if arch.pad_token_id is not None else 0
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, input_ids, jnp.asarray(attention_mask, jnp.int32), stop_ids,
                     jnp.int32(pad_id), max_new_tokens=max_new_tokens)
