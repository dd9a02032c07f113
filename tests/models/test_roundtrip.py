"""HF save -> jaxforget load -> save_hf -> transformers load gives the same logits."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget import models
from tests.models import tiny_hf

TOL = 1e-4


@pytest.mark.parametrize("case", sorted(tiny_hf.CASES))
def test_round_trip_through_transformers(case, tmp_path):
    hf = tiny_hf.save(case, tmp_path / "hf")
    model, tokenizer = models.load(tmp_path / "hf")
    models.save_hf(model, tmp_path / "out", tokenizer=tokenizer)
    hf2 = tiny_hf.load_hf(tmp_path / "out")
    assert type(hf2).__name__ == type(hf).__name__
    ids, mask = tiny_hf.batch(padding="left")
    ref = tiny_hf.hf_logits(hf, ids, mask)
    again = tiny_hf.hf_logits(hf2, ids, mask)
    real = mask.astype(bool)
    assert np.abs(again - ref)[real].max() <= TOL
    # and jaxforget reads its own export back to the same model
    model2, tok2 = models.load(tmp_path / "out")
    assert model2.arch == model.arch
    assert tok2("w1 w2")["input_ids"] == tokenizer("w1 w2")["input_ids"]
    got = np.asarray(model2(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(got - ref)[real].max() <= TOL


def test_sharded_export_and_import(tmp_path):
    hf = tiny_hf.save("llama", tmp_path / "hf", tokenizer=False)
    model, tokenizer = models.load(tmp_path / "hf")
    assert tokenizer is None  # no tokenizer files in the directory
    models.save_hf(model, tmp_path / "out", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / "out" / s).is_file() for s in shards)
    assert not list((tmp_path / "out").glob("*.tmp"))
    ids, mask = tiny_hf.batch(padding="right")
    ref = tiny_hf.hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    assert np.abs(tiny_hf.hf_logits(tiny_hf.load_hf(tmp_path / "out"), ids, mask) - ref)[real].max() <= TOL
    model2, _ = models.load(tmp_path / "out")
    got = np.asarray(model2(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(got - ref)[real].max() <= TOL


def test_bfloat16_checkpoint_loads_as_float32_params(tmp_path):
    import torch

    hf = tiny_hf.build("olmo2")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model, _ = models.load(tmp_path / "bf16")
    assert model.wq[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(model.embed[...]), hf.model.embed_tokens.weight.detach().float().numpy())
