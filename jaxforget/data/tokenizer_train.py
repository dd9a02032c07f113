"""Train a byte-level BPE tokenizer (HF `tokenizers`) and save it as a transformers tokenizer directory.

The result loads with `transformers.AutoTokenizer.from_pretrained(path)` as a
`PreTrainedTokenizerFast` with `<|bos|>`, `<|eos|>` and `<|pad|>` special tokens and no chat template:
task records are rendered with the plain template of `jaxforget.data.tokenize` (documented there).
The tokenizer adds no special tokens by itself; BOS/EOS are added by `jaxforget.data.tokenize`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2


def train_bpe(texts: Iterable[str], *, vocab_size: int = 1024, min_frequency: int = 2):
    """A `PreTrainedTokenizerFast` trained on `texts` (byte-level BPE, so every string is encodable).

    Training is deterministic for the same texts in the same order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: a segment starting without a space encodes as written, so prompt and
    # answer segments tokenised separately concatenate to the ids of the concatenated text pieces.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)


def save_tokenizer(tokenizer, path: str | os.PathLike) -> Path:
    """`tokenizer.save_pretrained(path)`; returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(path: str | os.PathLike):
    """A fast HF tokenizer from a local directory; raises ValueError if only a slow one exists."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: tokenizer directory does not exist")
    tok = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: {type(tok).__name__} is not a fast tokenizer (needs tokenizer.json); "
                         "convert it with transformers first")
    return tok
