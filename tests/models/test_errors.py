"""Bad checkpoints give clear errors naming the file, field or tensor."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxforget import models
from tests.models import tiny_hf


@pytest.fixture
def llama_dir(tmp_path):
    tiny_hf.save("llama", tmp_path, tokenizer=False)
    return tmp_path


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("field, value", [("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True)])
def test_handled_but_unsupported_gpt2_field_is_refused_by_name(tmp_path, field, value):
    tiny_hf.save("gpt2", tmp_path, tokenizer=False)
    _edit_config(tmp_path, **{field: value})
    with pytest.raises(models.UnsupportedConfigError, match=f"config.json.*{field}"):
        models.load(tmp_path)


def test_unknown_field_differing_from_default_is_refused_by_name(llama_dir):
    _edit_config(llama_dir, sliding_window=4096)
    with pytest.raises(models.UnsupportedConfigError, match="'sliding_window'=4096"):
        models.load(llama_dir)


def test_unknown_field_at_its_transformers_default_is_accepted(llama_dir):
    _edit_config(llama_dir, is_heterogeneous=False)  # a transformers field jaxforget does not list
    model, _ = models.load(llama_dir)
    assert model.arch.family == "llama"


def test_unsupported_rope_type_is_refused(llama_dir):
    _edit_config(llama_dir, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(models.UnsupportedConfigError, match="rope_type 'dynamic'"):
        models.load(llama_dir)


def test_unsupported_model_type_is_refused(llama_dir):
    _edit_config(llama_dir, model_type="mpt")
    with pytest.raises(models.UnsupportedConfigError, match="model_type 'mpt'"):
        models.load(llama_dir)


def test_missing_config(tmp_path):
    with pytest.raises(models.CheckpointError, match="config.json: not found"):
        models.load(tmp_path)


def test_missing_safetensors_file(llama_dir):
    os.remove(llama_dir / "model.safetensors")
    with pytest.raises(models.CheckpointError, match="no model.safetensors"):
        models.load(llama_dir)


def test_missing_shard_named_by_index(llama_dir):
    weight_map = {k: "model-00001-of-00002.safetensors" for k in load_file(llama_dir / "model.safetensors")}
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(models.CheckpointError, match="model-00001-of-00002.safetensors, which does not exist"):
        models.load(llama_dir)


def test_truncated_safetensors_file(llama_dir):
    f = llama_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(models.CheckpointError, match="model.safetensors: truncated"):
        models.load(llama_dir)


def test_shape_mismatch_names_tensor_and_shapes(llama_dir):
    _edit_config(llama_dir, intermediate_size=128)
    with pytest.raises(models.CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(96, 64\).*"
                                                     r"\(128, 64\)"):
        models.load(llama_dir)


def test_missing_tensor_is_named(llama_dir):
    tensors = load_file(llama_dir / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, llama_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(models.CheckpointError, match="'model.layers.1.self_attn.k_proj.weight' is missing"):
        models.load(llama_dir)


def test_unexpected_tensor_is_refused(llama_dir):
    tensors = load_file(llama_dir / "model.safetensors")
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(64, np.float32)
    save_file(tensors, llama_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(models.CheckpointError, match="q_norm.weight.*not used"):
        models.load(llama_dir)
