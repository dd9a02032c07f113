"""Tiny random Hugging Face models and a tokenizer, built offline with transformers + torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers as T

VOCAB = 256
SPECIALS = ["<pad>", "<eos>", "<unk>"]
PAD, EOS = 0, 1

# name -> (config class, model class, config kwargs): the real hyperparameters of each family.
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
               max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
CASES = {
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)),
    "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(
        _COMMON, rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu")),
    "gpt_neox_sequential": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(
        _COMMON, rotary_pct=0.5, use_parallel_residual=False, hidden_act="gelu", tie_word_embeddings=True)),
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, dict(_COMMON, num_key_value_heads=2)),
    "llama3_scaled": (T.LlamaConfig, T.LlamaForCausalLM, dict(
        _COMMON, num_key_value_heads=1, head_dim=32, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
    "olmo": (T.OlmoConfig, T.OlmoForCausalLM, dict(_COMMON, clip_qkv=0.5)),
    "olmo2": (T.Olmo2Config, T.Olmo2ForCausalLM, dict(_COMMON, num_key_value_heads=2)),
}


def make_tokenizer(vocab_size: int = VOCAB) -> T.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for i in range(vocab_size - len(SPECIALS)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build(case: str, seed: int = 0) -> torch.nn.Module:
    """A tiny HF model of `case` with every parameter random (norm scales near 1), in eval mode."""
    config_cls, model_cls, kwargs = CASES[case]
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = p.ndim == 1 and name.endswith("weight") and ("norm" in name or ".ln_" in name)
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if is_norm else 0.15 * torch.randn_like(p))
    return model


def save(case: str, path: Path, seed: int = 0, tokenizer: bool = True) -> torch.nn.Module:
    model = build(case, seed)
    model.save_pretrained(path)
    if tokenizer:
        make_tokenizer().save_pretrained(path)
    return model


def load_hf(path: Path) -> torch.nn.Module:
    return T.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()


def batch(B: int = 4, T_: int = 12, padding: str = "left", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids (no specials) and a mask with rows of different lengths, padded on `padding`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIALS), VOCAB, size=(B, T_)).astype(np.int32)
    lengths = np.linspace(T_, max(2, T_ // 3), B).astype(int)
    mask = np.zeros((B, T_), np.int32)
    for b, n in enumerate(lengths):
        if padding == "left":
            mask[b, T_ - n:] = 1
        else:
            mask[b, :n] = 1
    return np.where(mask == 1, ids, PAD).astype(np.int32), mask


def hf_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits, with positions following the mask as jaxforget does."""
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos, dtype=torch.long))
    return out.logits.float().numpy()


def hf_example_losses(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' mean token loss of each example on its own (unpadded)."""
    out = []
    with torch.no_grad():
        for row, m in zip(ids, mask):
            x = torch.tensor(row[m == 1][None], dtype=torch.long)
            out.append(float(model(input_ids=x, labels=x).loss))
    return np.array(out, np.float32)
