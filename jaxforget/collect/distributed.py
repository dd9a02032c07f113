"""Several processes in one run (``--distributed``): JAX's multi-controller runtime, and the few
collective decisions collect takes.

Every process runs the same program on the same seeded data; the mesh covers the devices of all of
them. Process 0 alone reads and writes the run directory (:func:`on_primary` runs a function there and
gives its result to every process, so that all take the same decisions); every process takes part in
the jitted steps and the orbax checkpoints. With one process every function here is a plain call.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxforget.collect.config import CollectConfig
from jaxforget.store import RunError


def init_distributed(config: CollectConfig) -> None:
    """``jax.distributed.initialize()`` for --distributed; call it before any other JAX call. A no-op
    without --distributed or when JAX's distributed runtime is already up."""
    if not config.distributed or jax.distributed.is_initialized():
        return
    # Cross-process collectives between CPU devices need an implementation (gloo is the default in
    # recent jax; older ones default to none). GPUs and TPUs ignore this setting.
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=config.coordinator, num_processes=config.num_processes,
                                   process_id=config.process_id)
    except ValueError as e:
        raise ValueError(f"--distributed: jax.distributed.initialize() failed ({e}). Outside a cluster environment "
                         "JAX detects (SLURM, Open MPI, Cloud TPU), give --coordinator host:port --num-processes N "
                         "--process-id i to every process.") from None


def is_primary() -> bool:
    """Process 0: the one that writes the run directory (always true in a single-process run)."""
    return jax.process_index() == 0


def broadcast_json(obj: Any) -> Any:
    """Process 0's JSON-able `obj` on every process (the others pass anything)."""
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    buf = np.zeros(n, np.uint8)
    buf[:data.size] = data
    return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())


def on_primary(fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` run by process 0 alone (it reads or writes the run directory or the cache); its JSON-able
    result on every process, so that all processes take the same decisions. An error of process 0 is
    raised on every process (the others as a RunError naming `what`), never left as a hang."""
    if jax.process_count() == 1:
        return fn()
    error, payload = None, None
    if jax.process_index() == 0:
        try:
            payload = dict(result=fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others have been told
            error, payload = e, dict(error=f"{type(e).__name__}: {e}")
    got = broadcast_json(payload)
    if error is not None:
        raise error
    if "error" in got:
        raise RunError(f"process 0 failed to {what}: {got['error']}")
    return got["result"]


def barrier(name: str) -> None:
    """Every process waits here for the others (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxforget.collect:{name}")


def silent(*_args, **_kwargs) -> None:
    """The echo of processes other than 0."""
