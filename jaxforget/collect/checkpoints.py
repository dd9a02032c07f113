"""The orbax checkpoints of the group of tasks in progress, verified on restore.

Each checkpoint holds the TrainState (``state``) and a JSON record (``extra``: step, task indices, the
losses so far, ...) with a ``digest`` of both: a checksum of every array's bits, computed on the
devices (:func:`state_checksums`: exact integer sums, so independent of sharding and reduction
order), hashed with the record's JSON. The record binds the checkpoint to its run (:func:`binding`: the
fingerprint of the run's configuration and the tasks' indices and names). :func:`restore` recomputes it and cross-checks the step the
record holds against the step orbax found; any difference (a flipped bit in an array, an edited
record, a file from another run) is a :class:`~jaxforget.store.RunError` naming the directory, never
a resume from a state that is not the one saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxforget.logs import drop_closed_loop_noise, held_stderr
from jaxforget.models.sharding import to_host
from jaxforget.store import RunError

_HINT = "Delete the directory to restart these tasks from the base model."


def manager(path: Path, *, keep: int) -> ocp.CheckpointManager:
    """Synchronous saves (a checkpoint is complete when `save` returns), the last `keep` kept."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(Path(path).absolute(), options=options)


def _bits_u32(x: jax.Array) -> jax.Array:
    """The bits of every element of `x` as uint32 (one word per element; 8-byte elements folded)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
        return w[..., 0] ^ (w[..., 1] * jnp.uint32(0x9E3779B1))
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """(2,) uint32: the sum of the element words and their sum weighted by 2 * (flat index) + 1, modulo
    2**32. The weights are odd, so any single flipped bit changes the second sum."""
    u = _bits_u32(x)
    index = jnp.zeros(u.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(u.ndim)):  # the flat index without a reshape (which could move sharded data)
        index = index + jax.lax.broadcasted_iota(jnp.uint32, u.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= u.shape[axis]
    weight = index * jnp.uint32(2) + jnp.uint32(1)
    return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * weight, dtype=jnp.uint32)])


@jax.jit
def state_checksums(tree: Any) -> jax.Array:
    """(leaves, 2) uint32 checksums of every array of `tree` (see :func:`_leaf_checksum`)."""
    leaves = jax.tree.leaves(tree)
    return jnp.stack([_leaf_checksum(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def digest(state: Any, record: dict[str, Any]) -> str:
    """sha256 of `state`'s arrays (paths, shapes, dtypes and :func:`state_checksums`) and of `record`
    (a JSON-able dict, its ``digest`` field left out)."""
    paths = [(jax.tree_util.keystr(p), tuple(x.shape), str(x.dtype))
             for p, x in jax.tree_util.tree_flatten_with_path(state)[0]]
    sums = np.asarray(to_host(state_checksums(state)), np.uint32)
    h = hashlib.sha256(json.dumps(paths).encode())
    h.update(sums.tobytes())
    h.update(json.dumps({k: v for k, v in record.items() if k != "digest"}, sort_keys=True).encode())
    return h.hexdigest()


def binding(config_fingerprint: str, tasks: list[tuple[int, str]]) -> dict[str, Any]:
    """What binds a checkpoint to its run: the fingerprint of the run's configuration (every flag that changes
    results) and the identity of the tasks it trains, as (index, name). Saved in the record, so the digest
    covers it; :func:`restore` refuses a checkpoint whose binding is not the one expected."""
    return dict(run=config_fingerprint, tasks=[[int(i), str(n)] for i, n in tasks])


def fingerprint(config_json: Any) -> str:
    """sha256 (16 hex digits) of a JSON-able configuration, key order aside."""
    return hashlib.sha256(json.dumps(config_json, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(mgr: ocp.CheckpointManager, step: int, state: Any, record: dict[str, Any],
         bound: dict[str, Any] | None = None) -> None:
    """Checkpoint `state` at `step` with `record` (JSON; ``step``, the `bound` :func:`binding` and ``digest``
    are added)."""
    record = dict(record, step=step, **({"binding": bound} if bound is not None else {}))
    record["digest"] = digest(state, record)
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(record)))


def restore(mgr: ocp.CheckpointManager, state: Any, path: Path, bound: dict[str, Any] | None = None
            ) -> tuple[Any, dict[str, Any]] | tuple[None, None]:
    """The latest checkpoint as (state laid out like `state`, record), verified; (None, None) when there
    is none. An unreadable or unverifiable checkpoint, or (with `bound`) one whose :func:`binding` is not
    `bound` (a checkpoint of another run or of other tasks, copied in), is a RunError naming `path`; orbax's
    own messages about it (tracebacks of its I/O threads) are held back unless --verbose."""
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    if not verbose:  # after a failed read, orbax's I/O threads still finishing print tracebacks, even later
        drop_closed_loop_noise()
    with held_stderr(release=verbose) as held:
        step = mgr.latest_step()
        if step is None:
            return None, None
        try:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
            restored = mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
            error = None
        except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
            error = f"{type(e).__name__}: {e}"
            error = error if len(error) <= 300 else error[:300] + " ..."
    if error is not None:
        more = "" if verbose or not held.text.strip() else " (--verbose shows orbax's messages)"
        raise RunError(f"{path}: checkpoint at step {step} is unreadable ({error}){more}. {_HINT}")
    record = restored["extra"]
    if not isinstance(record, dict) or "digest" not in record:
        raise RunError(f"{path}: checkpoint at step {step} has no digest, so it cannot be verified (written by an "
                       f"older jaxforget, or damaged). {_HINT}")
    if record.get("step") != step:
        raise RunError(f"{path}: checkpoint directory {step} records step {record.get('step')!r}; the checkpoint "
                       f"was edited or damaged. {_HINT}")
    if digest(restored["state"], record) != record["digest"]:
        raise RunError(f"{path}: checkpoint at step {step} does not match the digest saved with it (its arrays or its "
                       f"record changed since they were written: a damaged disk, or an edited file). {_HINT}")
    if bound is not None and record.get("binding") != bound:
        got = record.get("binding")
        if not isinstance(got, dict):
            raise RunError(f"{path}: checkpoint at step {step} is bound to no run (written by an older jaxforget), so "
                           f"it cannot be matched to this one. {_HINT}")
        what = ("of another run (configuration fingerprint " f"{got.get('run')!r}, this run's {bound['run']!r})"
                if got.get("run") != bound["run"] else f"of tasks {got.get('tasks')!r}, not {bound['tasks']!r}")
        raise RunError(f"{path}: checkpoint at step {step} is a checkpoint {what}; it was copied or left here from "
                       f"elsewhere and is not resumed. {_HINT}")
    return restored["state"], record
