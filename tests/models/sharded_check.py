"""Run in a subprocess with 8 forced host devices: one model on a (data, fsdp, tensor) mesh vs 1 device.

Usage: python sharded_check.py HF_DIR  -> prints one JSON line of results.
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxforget import models  # noqa: E402


def main(path: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 256, size=(8, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::2, :4] = 0  # left padding on half the rows

    single, _ = models.load(path)
    ref = np.asarray(nnx.jit(lambda m, x, k: m(x, attention_mask=k))(single, ids, mask))
    ref_nll = np.asarray(nnx.jit(models.mean_nll)(single, ids, mask))

    mesh = models.make_mesh((2, 2, 2))
    sharded, _ = models.load(path, mesh=mesh)
    batch_sharding = jax.sharding.NamedSharding(mesh, models.logical_to_spec(("batch", "length"), ids.shape, mesh))
    x, k = jax.device_put(ids, batch_sharding), jax.device_put(mask, batch_sharding)
    with jax.set_mesh(mesh):
        got = nnx.jit(lambda m, x, k: m(x, attention_mask=k))(sharded, x, k)
        nll = nnx.jit(models.mean_nll)(sharded, x, k)
        gen = models.greedy_generate(sharded, x, k, max_new_tokens=4, stop_tokens=())
    gen_ref = models.greedy_generate(single, ids, mask, max_new_tokens=4, stop_tokens=())
    print(json.dumps({
        "n_devices": jax.device_count(),
        "logits_max_diff": float(np.abs(np.asarray(got) - ref)[mask.astype(bool)].max()),
        "nll_max_diff": float(np.abs(np.asarray(nll) - ref_nll).max()),
        "tokens_equal": bool(np.array_equal(np.asarray(gen.tokens), np.asarray(gen_ref.tokens))),
        "wq_spec": str(sharded.wq[...].sharding.spec),
        "embed_spec": str(sharded.embed[...].sharding.spec),
        "wq_shard_shape": list(sharded.wq[...].addressable_shards[0].data.shape),
        "logits_devices": len(got.sharding.device_set),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
