"""Flax NNX causal LMs that match transformers: GPT-2, GPT-NeoX (Pythia), Llama, OLMo, OLMo-2.

    model, tokenizer = jaxforget.models.load("path/to/hf_dir", dtype=jnp.bfloat16, mesh=make_mesh())
    logits_btv = model(input_ids, attention_mask=mask)        # float32 (B, T, V)
    nll_b = mean_nll(model, input_ids, mask, loss_mask)      # float32 per example
    save_hf(model, "out_dir", tokenizer=tokenizer)           # transformers loads it to the same logits
"""

from jaxforget.models.config import ArchConfig, UnsupportedConfigError, from_hf_config, to_hf_config
from jaxforget.models.decode import Generation, greedy_generate
from jaxforget.models.decoder import Decoder, KVCache, forward, positions_from_mask, positions_from_segments
from jaxforget.models.hf import CheckpointError, load, read_arch, save_hf
from jaxforget.models.logprobs import (mean_nll, nll_sums, segment_nll_sums, target_logprobs, target_mask,
                                       token_logprobs)
from jaxforget.models.lora import (
    LoraConfig,
    LoRAParam,
    add_lora,
    load_adapter,
    lora_state,
    merge_lora,
    merged_weights,
    remove_lora,
    save_adapter,
    select_adapter,
    stack_adapters,
    unmerge_lora,
    vmap_adapters,
)
from jaxforget.models.sharding import DEFAULT_RULES, constrain, logical_to_spec, make_mesh, shard_model

__all__ = [
    "ArchConfig", "UnsupportedConfigError", "from_hf_config", "to_hf_config",
    "Generation", "greedy_generate",
    "Decoder", "KVCache", "forward", "positions_from_mask", "positions_from_segments",
    "CheckpointError", "load", "read_arch", "save_hf",
    "mean_nll", "nll_sums", "segment_nll_sums", "target_logprobs", "target_mask", "token_logprobs",
    "LoraConfig", "LoRAParam", "add_lora", "load_adapter", "lora_state", "merge_lora", "merged_weights",
    "remove_lora", "save_adapter", "select_adapter", "stack_adapters", "unmerge_lora", "vmap_adapters",
    "DEFAULT_RULES", "constrain", "logical_to_spec", "make_mesh", "shard_model",
]
