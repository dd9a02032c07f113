"""Exact-match forgetting for instruction-tuned models (the paper's second metric).

Each upstream example is a prompt with a reference answer. The model answers greedily (KV-cache
decoding, :func:`jaxforget.models.greedy_generate`); the prediction is cut at the first blank line
and compared with the reference after normalisation (lowercase, punctuation removed, the articles
a/an/the dropped, whitespace collapsed). Forgetting of example j by task i is 1 when the base model
answered j right and the model fine-tuned on task i does not.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Sequence

import numpy as np

from jaxforget.data.batching import bucket_lengths
from jaxforget.data.tokenize import TokenizeConfig, decode, tokenize_tasks
from jaxforget.models import greedy_generate
from jaxforget.models.sharding import put_global, to_host

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_BLANK_LINE = re.compile(r"\n\s*\n")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation, drop a/an/the, collapse whitespace (SQuAD-style normalisation)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_paragraph(text: str) -> str:
    """The prediction up to the first blank line."""
    return _BLANK_LINE.split(text, maxsplit=1)[0]


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(first_paragraph(prediction)) == normalize_answer(reference)


@dataclasses.dataclass
class ExactMatchSet:
    """Prompts (token ids, BOS and template included, answer excluded) and reference answers."""

    ids: list[str]
    prompts: list[np.ndarray]
    answers: list[str]


def build_em_set(examples: Sequence, tokenizer, *, max_len: int, template: str | None = None) -> ExactMatchSet:
    """Tokenise ``prompt``/``completion`` or ``messages`` records (``jaxforget.data.readers.TaskExample``)
    exactly as fine-tuning renders them (`template`: another model's chat template, as --data.chat-template);
    the prompt is everything before the first answer token."""

    answers = []
    for ex in examples:
        if ex.kind == "text":
            raise ValueError(f"{ex.where}: exact match needs a prompt and an answer; this record has only 'text'")
        answers.append(ex.completion if ex.kind == "prompt" else
                       [c for role, c in ex.messages if role == "assistant"][-1])
    tokens = tokenize_tasks(examples, tokenizer, TokenizeConfig(max_len=max_len, template=template))
    prompts = [np.asarray(t.ids)[: int(np.argmax(np.asarray(t.loss_mask)))] for t in tokens]
    return ExactMatchSet([ex.where for ex in examples], prompts, answers)


def make_em_eval(em: ExactMatchSet, tokenizer, *, batch_size: int, max_new_tokens: int,
                 pad_id: int, sharding=None) -> Callable[[object], np.ndarray]:
    """``evaluate(model) -> bool [N]``: does the model answer each example exactly right?

    Prompts are left-padded to a few bucket lengths (one compilation per bucket); every batch is
    dispatched before one host transfer. `sharding`: where a (batch_size, T) prompt batch goes, e.g.
    split over the mesh's 'data' axis (None: left to jit, i.e. replicated). When the model's mesh spans
    several processes, every process must call `evaluate` (each gets the whole answer).
    """

    lengths = np.array([len(p) for p in em.prompts])
    buckets = np.asarray(bucket_lengths(int(lengths.max())))
    which = np.searchsorted(buckets, lengths)
    batches = []
    for b, T in enumerate(buckets):
        idx = np.flatnonzero(which == b)
        for start in range(0, idx.size, batch_size):
            rows = idx[start:start + batch_size]
            ids = np.full((batch_size, T), pad_id, np.int32)
            mask = np.zeros((batch_size, T), np.int32)
            for r, i in enumerate(rows):
                ids[r, T - lengths[i]:], mask[r, T - lengths[i]:] = em.prompts[i], 1
            mask[len(rows):, -1] = 1  # padding rows hold one token so that every row attends somewhere
            batches.append((rows, ids, mask))
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None

    def place(x):
        return x if sharding is None else put_global(x, sharding)

    def evaluate(model) -> np.ndarray:
        outs = [greedy_generate(model, place(ids), place(mask), max_new_tokens=max_new_tokens, stop_tokens=stop,
                                pad_id=pad_id)
                for _, ids, mask in batches]
        outs = to_host(outs)
        correct = np.zeros(len(em.prompts), bool)
        for (rows, _, _), gen in zip(batches, outs):
            for r, i in enumerate(rows):
                text = decode(tokenizer, gen.tokens[r, : gen.lengths[r]])
                correct[i] = exact_match(text, em.answers[i])
        return correct

    return evaluate
