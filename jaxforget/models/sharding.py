"""Mesh creation, the one logical-axis rule table, and host <-> mesh transfers.

Model code names axes logically ('batch', 'embed', 'heads', ...); this module alone maps them to
mesh axes. A mesh axis is dropped for a dimension it does not divide (e.g. 2 kv heads on a
4-way 'tensor' axis), so any model runs on any mesh, replicated where it must be.

A mesh may span several processes (``jax.distributed.initialize()``: one multi-controller run over
several hosts). Then no process holds every shard of an array, and ``jax.device_put`` /
``jax.device_get`` of whole arrays no longer apply: ``put_global`` builds a global array from a host
array that every process holds identically (each process places only its own devices' slices), and
``to_host`` brings arrays back, gathering across processes only what is not already replicated. With
one process both are ``jax.device_put`` / ``jax.device_get``.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("positions", None),
    ("lora_rank", None),
    ("adapters", None),
)


def make_mesh(shape: Sequence[int] | None = None, axis_names: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `devices` (default: all, of every process in a multi-process run). Default shape puts
    every device on 'data'.

    Axes are Auto (GSPMD propagation), so model code needs no explicit-sharding annotations. Devices
    are laid out in `jax.devices()` order (process by process), so the last axes ('tensor', then
    'fsdp') stay within a host where they fit and 'data' spans hosts.
    """
    devices = list(jax.devices() if devices is None else devices)
    if shape is None:
        shape = (len(devices),) + (1,) * (len(axis_names) - 1)
    shape = tuple(shape)
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, have {len(devices)}")
    return jax.make_mesh(shape, tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def logical_to_spec(axes: Iterable[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None,
                    rules=DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for logical `axes`; with shape and mesh, mesh axes that do not divide are dropped."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        names = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        kept = []
        size = 1
        for m in names:
            if m in used or (mesh is not None and m not in mesh.shape):
                continue
            n = mesh.shape[m] if mesh is not None else 1
            if shape is not None and shape[i] % (size * n):
                continue
            kept.append(m)
            size *= n
        used.update(kept)
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, axes, shape, rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def constrain(x: jax.Array, axes: Sequence[str | None], rules=DEFAULT_RULES) -> jax.Array:
    """Sharding constraint on an activation when a mesh is set (`jax.set_mesh`); identity otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh, rules))


def variable_sharding(var, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """NamedSharding of an nnx Variable from its `axes` metadata (replicated when it has none)."""
    axes = var.get_metadata().get("axes") or (None,) * len(var.shape)
    return named_sharding(mesh, axes, var.shape, rules)


def shard_model(model, mesh: Mesh, rules=DEFAULT_RULES):
    """Place every variable of an NNX model onto its sharding on `mesh` (in place); returns the model."""
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable) and hasattr(var.get_value(), "shape"):
            var.set_value(jax.device_put(var.get_value(), variable_sharding(var, mesh, rules)))
    return model


# ------------------------------------------------------------------------------------------------
# host <-> mesh, single- or multi-process


def put_global(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array (numpy, or a process-local jax array) placed on `sharding`.

    `sharding` may span devices of other processes: every process must then call this with the same
    value (the same seeded batch, the same parameters), and each one transfers only the slices of
    its own devices; the value is not compared across processes (``jax.device_put`` would compare it,
    a collective per call). Within one process this is ``jax.device_put``.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.lru_cache(maxsize=None)
def _replicate(mesh: Mesh):
    """One jitted identity that returns every leaf of a pytree replicated on `mesh`."""
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))


def to_host(tree: Any) -> Any:
    """``jax.device_get`` that also works for arrays spread over several processes (every process
    gets the whole value, so every process must call it with arrays of the same global shapes).

    Replicated arrays are read from a local shard; the others (e.g. per-example outputs sharded over
    'data') are replicated by one jitted program per mesh, a single all-gather for the whole tree.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.device_get(tree)
    out: list[Any] = list(leaves)
    spread: dict[Mesh, list[int]] = {}
    for i, x in enumerate(leaves):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            out[i] = jax.device_get(x)
        elif x.is_fully_replicated:
            out[i] = np.asarray(x.addressable_data(0))
        elif isinstance(x.sharding, NamedSharding):
            spread.setdefault(x.sharding.mesh, []).append(i)
        else:  # not expected from jitted code on a mesh; the generic (per-array) gather
            out[i] = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    for mesh, idx in spread.items():
        gathered = _replicate(mesh)([leaves[i] for i in idx])
        for i, x in zip(idx, gathered):
            out[i] = np.asarray(x.addressable_data(0))
    return jax.tree.unflatten(treedef, out)
