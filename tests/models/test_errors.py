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


# ---------------------------------------------------------------------------------------------
# Field combinations the converter would not reproduce, mistyped fields, damaged files (issue 18)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [{"type": "linear", "factor": 4.0},
                                    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}])
def test_rope_parameters_with_a_differing_legacy_rope_scaling_is_refused(llama_dir, legacy):
    import transformers

    _edit_config(llama_dir, rope_scaling=legacy)
    # transformers merges the legacy scaling into rope_parameters: the model it builds is scaled
    scaled = transformers.AutoConfig.from_pretrained(llama_dir).rope_parameters
    assert scaled["rope_type"] == legacy.get("type", legacy.get("rope_type")) and scaled["factor"] == 4.0
    with pytest.raises(models.UnsupportedConfigError, match="both rope_parameters=.*legacy rope_scaling=.*differ in"):
        models.load(llama_dir)


def test_a_legacy_rope_scaling_that_agrees_with_rope_parameters_is_accepted(tmp_path):
    tiny_hf.save("llama3_scaled", tmp_path, tokenizer=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    _edit_config(tmp_path, rope_scaling={k: v for k, v in cfg["rope_parameters"].items() if k != "rope_theta"})
    assert dict(models.read_arch(tmp_path).rope_scaling)["factor"] == 8.0


def test_a_quantity_given_twice_with_different_values_is_refused(llama_dir):
    _edit_config(llama_dir, rope_theta=5000.0)  # rope_parameters says 10000
    with pytest.raises(models.UnsupportedConfigError, match=r"RoPE base is given twice.*rope_theta=5000.0"):
        models.read_arch(llama_dir)


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", "three", "must be an integer >= 1, got 'three'"),
    ("hidden_size", 0, "must be an integer >= 1, got 0"),
    ("num_attention_heads", True, "must be an integer >= 1, got True"),
    ("rms_norm_eps", "small", "must be a finite number > 0, got 'small'"),
    ("rope_parameters", [1, 2], "must be an object, got \\[1, 2\\]"),
])
def test_mistyped_config_fields_are_named(llama_dir, field, value, message):
    _edit_config(llama_dir, **{field: value})
    with pytest.raises(models.UnsupportedConfigError, match=f"config.json: field '{field}' {message}"):
        models.read_arch(llama_dir)


def _write_safetensors_header(path, header) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"\0" * 64)


@pytest.mark.parametrize("header, message", [
    ([1, 2, 3], "corrupt safetensors header \\(a JSON list"),
    ({"w": {"dtype": "F32", "shape": [4]}}, "tensor 'w' in the safetensors header needs dtype, shape and data_off"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, "span 8 bytes; a F32 tensor of shape .4,. needs 16"),
    ({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, "shape '4' is not a list of sizes"),
])
def test_damaged_safetensors_header_is_one_clear_error(llama_dir, header, message):
    _write_safetensors_header(llama_dir / "model.safetensors", header)
    with pytest.raises(models.CheckpointError, match=f"model.safetensors: .*{message}"):
        models.load(llama_dir)


def test_garbled_tokenizer_json_names_the_file(tmp_path):
    tiny_hf.save("llama", tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLevel", ')
    with pytest.raises(models.CheckpointError, match=r"tokenizer.json: not valid JSON"):
        models.load(tmp_path)
