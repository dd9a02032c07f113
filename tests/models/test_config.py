"""Configs as published checkpoints ship them (older transformers field names) parse to the right ArchConfig."""

from __future__ import annotations

import pytest

from jaxforget import models
from jaxforget.models.config import rope_inv_freq

PYTHIA_160M = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 12, "num_hidden_layers": 12,
    "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.24.0", "use_cache": True, "use_parallel_residual": True, "vocab_size": 50304,
}
OLMO_1B_HF = {
    "architectures": ["OlmoForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": None,
    "clip_qkv": None, "eos_token_id": 50279, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 2048, "model_type": "olmo", "num_attention_heads": 16,
    "num_hidden_layers": 16, "num_key_value_heads": 16, "pad_token_id": 1, "rope_scaling": None,
    "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "float32",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 50304,
}
LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
}
OLMO2_7B = {
    "architectures": ["Olmo2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "eos_token_id": 100257,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
    "max_position_embeddings": 4096, "model_type": "olmo2", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "pad_token_id": 100277, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 500000, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.47.0.dev0", "use_cache": True, "vocab_size": 100352,
}
GPT2 = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "bos_token_id": 50256,
    "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
    "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257,
}


def test_pythia():
    a = models.from_hf_config(PYTHIA_160M)
    assert (a.family, a.rotary_dim, a.parallel_residual, a.tie_embeddings, a.norm) == \
        ("gpt_neox", 16, True, False, "layernorm")
    assert a.n_params() == pytest.approx(162e6, rel=0.01)


def test_olmo_1b():
    a = models.from_hf_config(OLMO_1B_HF)
    assert (a.norm, a.clip_qkv, a.tie_embeddings, a.norm_eps) == ("layernorm_noparam", None, True, 1e-5)


def test_llama_32_with_llama3_rope_scaling():
    a = models.from_hf_config(LLAMA_32_1B)
    assert (a.n_kv_heads, a.head_dim, a.rope_theta, a.eos_token_id) == (8, 64, 500000.0, (128001, 128008, 128009))
    assert dict(a.rope_scaling)["rope_type"] == "llama3"
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**LLAMA_32_1B))
    got, scale = rope_inv_freq(a)
    assert scale == 1.0
    torch.testing.assert_close(torch.tensor(got), ref.float(), rtol=1e-6, atol=0)


def test_olmo2_7b():
    a = models.from_hf_config(OLMO2_7B)
    assert (a.norm_placement, a.qk_norm, a.norm, a.rope_theta) == ("post", True, "rmsnorm", 500000.0)


def test_gpt2():
    a = models.from_hf_config(GPT2)
    assert (a.position, a.max_positions, a.d_ff, a.tie_embeddings, a.activation) == \
        ("learned", 1024, 3072, True, "gelu_new")


@pytest.mark.parametrize("cfg", [PYTHIA_160M, OLMO_1B_HF, LLAMA_32_1B, OLMO2_7B, GPT2])
def test_export_reparses_to_the_same_arch(cfg):
    a = models.from_hf_config(cfg)
    assert models.from_hf_config(models.to_hf_config(a)) == a
