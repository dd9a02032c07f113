"""The same model on an 8-device CPU mesh gives the same logits as on 1 device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from jax.sharding import PartitionSpec as P

from jaxforget import models
from tests.models import tiny_hf

ROOT = Path(__file__).resolve().parents[2]


def test_logical_rules_drop_axes_that_do_not_divide():
    import jax

    mesh = jax.sharding.AbstractMesh((2, 2, 4), ("data", "fsdp", "tensor"))
    assert models.logical_to_spec(("layers", "heads", "head_dim", "embed"), (2, 8, 16, 64), mesh) == \
        P(None, "tensor", None, "fsdp")
    # 2 kv heads cannot be split 4 ways: replicated instead of failing
    assert models.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 2, 16), mesh) == \
        P(None, "fsdp", None, None)
    assert models.logical_to_spec(("batch", "length"), (8, 5), mesh) == P(("data", "fsdp"), None)


def test_eight_device_mesh_matches_one_device(tmp_path):
    tiny_hf.save("llama", tmp_path, tokenizer=False)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("sharded_check.py")), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_devices"] == 8
    assert out["logits_max_diff"] <= 1e-5
    assert out["nll_max_diff"] <= 1e-5
    assert out["tokens_equal"]
    # parameters are really split: heads over 'tensor', embed over 'fsdp'
    assert out["wq_spec"] == str(P(None, "tensor", None, "fsdp"))
    assert out["wq_shard_shape"] == [2, 2, 16, 32]
    assert out["logits_devices"] == 8
