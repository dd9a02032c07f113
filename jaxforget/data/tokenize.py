"""Rendering and tokenisation: token ids plus a per-token loss mask, with a stated BOS/EOS policy.

Conventions (the same as `jaxforget.models.target_mask`): `loss_mask[t]` is True when token t is a
target, i.e. its log-probability given tokens < t enters the loss / the NLL; `loss_mask[0]` is
always False (the first token has no prediction).

Upstream token accounting (`nll_tokens`, what the mean NLL of an upstream example averages over)
  - 'builtin' (the built-in world, which was pretrained this way): BOS + text + EOS per the policy
    below; every token after BOS is scored, the appended EOS included.
  - 'paper' (Jin & Ren; what vLLM prompt log-probs give): the ids of `tokenizer(text)`, exactly as
    the model's tokenizer produces them (its own special tokens, e.g. Llama's BOS, none for
    GPT-2/Pythia/OLMo), every token that has a predecessor scored (tokens 2..end), no EOS appended.

BOS/EOS policy
  - BOS: when `add_bos` (default), the sequence starts with the tokenizer's `bos_token_id`, or its
    `eos_token_id` when it has no BOS (GPT-2/Pythia/OLMo separate documents with EOS). So the first
    real token is predicted too. A chat template that already emits BOS is not given a second one.
  - EOS: when `add_eos` (default), raw text and plain-template answers end with `eos_token_id`, and
    it is a target (the model learns where a document / an answer ends). With a chat template, the
    template's own end-of-turn text closes each assistant turn and is part of the target.
  - Truncation to `max_len` tokens: upstream text keeps its beginning (`truncate="right"`); task
    examples keep their end, where the answer is (`truncate="left"`, as the paper's reference
    code), and keep BOS at position 0. Truncated examples are counted and logged.

Plain template (used when the tokenizer has no chat template, or with `chat_template="never"`);
every piece is tokenised on its own and the ids concatenated, so masks are exact at token level:
    prompt/completion   "{prompt}" + target " {completion}" + target EOS
                        (no space is inserted when the prompt is empty or ends with whitespace, or
                        the completion starts with whitespace)
    messages            system "{content}\\n"; user "User: {content}\\n";
                        assistant "Assistant:" + target " {content}" + target ("\\n" if more
                        messages follow, else EOS)
    text                target "{text}" + target EOS (language modelling on the whole text)
Chat template (`tokenizer.chat_template` set, `chat_template="auto"`, or another model's template given
as `template`, the paper's setup): prompt/completion becomes [user, assistant]; the targets are the
characters each assistant turn adds to the rendered conversation (rendering the conversation up to that
turn with and without `add_generation_prompt`), from its first non-blank character, mapped to tokens by
offsets (a token is a target if it overlaps them).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal, Sequence

import numpy as np

from jaxforget.data.readers import TaskExample, UpstreamExample

log = logging.getLogger("jaxforget.data")


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """How examples become token ids."""

    max_len: int = 96
    """Longest sequence in tokens (BOS and EOS included); longer examples are truncated."""
    add_bos: bool = True
    """Start every sequence with BOS (EOS when the tokenizer has no BOS)."""
    add_eos: bool = True
    """End raw text and plain-template answers with EOS, as a target."""
    chat_template: Literal["auto", "never"] = "auto"
    """'auto': use the tokenizer's chat template when it has one; 'never': always the plain template."""
    nll_tokens: Literal["builtin", "paper"] = "builtin"
    """Upstream token accounting (module docstring): 'builtin' follows add_bos / add_eos; 'paper' scores
    `tokenizer(text)`'s tokens 2..end and ignores add_bos / add_eos. Task examples are not affected."""
    min_tokens: int = 2
    """Upstream examples whose scored sequence (under nll_tokens, before truncation) has fewer tokens are
    left out and logged, not an error: real corpora hold one-token documents, and with a tokenizer that
    adds no BOS (Pythia, OLMo, GPT-2) such a document has no token to score."""
    template: str | None = None
    """A chat template (Jinja text, e.g. another model's: `load_chat_template`) to render tasks with instead
    of the tokenizer's own; the special tokens it names (eos_token, bos_token) are this tokenizer's."""


@dataclasses.dataclass(frozen=True)
class Tokenized:
    """One tokenised example."""

    ids: np.ndarray
    """(L,) int32 token ids, L <= max_len."""
    loss_mask: np.ndarray
    """(L,) bool; True where the token is a target (never at position 0)."""
    id: str
    """Upstream example id, or `file:line` of a task record."""
    group: str
    """Upstream source/domain, or task name."""
    truncated: bool
    """The example had more than max_len tokens before truncation."""

    @property
    def n_targets(self) -> int:
        return int(self.loss_mask.sum())


def bos_eos(tokenizer) -> tuple[int | None, int | None]:
    """(BOS id to prepend, EOS id to append) under the policy above."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return bos, eos


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def quiet_tokenizer(tokenizer) -> None:
    """Turn off transformers' "Token indices sequence length is longer than the specified maximum" warning
    for this tokenizer alone: jaxforget tokenises whole documents on purpose and truncates them itself.
    transformers prints it once per tokenizer, remembered under this key; other warnings are untouched."""
    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True


def decode(tokenizer, ids) -> str:
    """`tokenizer.decode(ids, skip_special_tokens=True)`. A BPE tokenizer whose config asks for
    clean_up_tokenization_spaces (Pythia's, OLMo's) gets False, which transformers applies anyway while
    warning that it does; the text is the same and the console stays quiet."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "BPE":
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return tokenizer.decode(ids, skip_special_tokens=True)


def load_chat_template(path) -> str:
    """The chat template of a model or tokenizer directory (`chat_template.jinja`, else `tokenizer_config.json`'s
    `chat_template`), of a tokenizer_config.json file, or a Jinja file's text; ValueError naming the path."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        if (path / "chat_template.jinja").is_file():
            return load_chat_template(path / "chat_template.jinja")
        if (path / "tokenizer_config.json").is_file():
            return load_chat_template(path / "tokenizer_config.json")
        raise ValueError(f"{path}: no chat_template.jinja and no tokenizer_config.json holding a chat template")
    if not path.is_file():
        raise ValueError(f"{path}: no such file or directory (--data.chat-template)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        try:
            value = json.loads(text).get("chat_template")
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a JSON object with a chat_template ({e})") from None
        if isinstance(value, list):  # the named-templates form: [{"name": "default", "template": ...}, ...]
            value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: no chat_template (a string, or a list with a 'default' entry)")
        return value
    if not text.strip():
        raise ValueError(f"{path}: the chat template file is empty")
    return text


def _finish(ids: list[int], mask: list[bool], *, bos: int | None, config: TokenizeConfig, truncate: str,
            id_: str, group: str, where: str) -> Tokenized:
    if config.add_bos and bos is not None and (not ids or ids[0] != bos):
        ids, mask = [bos] + ids, [False] + mask
    truncated = len(ids) > config.max_len
    if truncated:
        keep_bos = config.add_bos and bos is not None and ids[0] == bos
        if truncate == "right":
            ids, mask = ids[: config.max_len], mask[: config.max_len]
        elif keep_bos:
            ids, mask = [ids[0]] + ids[len(ids) - config.max_len + 1:], [False] + mask[len(mask) - config.max_len + 1:]
        else:
            ids, mask = ids[-config.max_len:], mask[-config.max_len:]
    mask_arr = np.asarray(mask, bool)
    mask_arr[:1] = False
    if not mask_arr.any():
        raise ValueError(f"{where}: no target token left after tokenisation and truncation to {config.max_len} "
                         "tokens (raise max_len)")
    return Tokenized(np.asarray(ids, np.int32), mask_arr, id_, group, truncated)


def _check_tokenizer(tokenizer, config: TokenizeConfig) -> None:
    if config.add_eos and tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token; set add_eos=False or give it one")
    if config.max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {config.max_len}")


def _log_truncated(out: Sequence[Tokenized], what: str, config: TokenizeConfig) -> None:
    n = sum(t.truncated for t in out)
    if n:
        log.warning("%s: truncated %d of %d examples to %d tokens", what, n, len(out), config.max_len)


def tokenize_upstream(examples: Sequence[UpstreamExample], tokenizer,
                      config: TokenizeConfig = TokenizeConfig()) -> list[Tokenized]:
    """Under `config.nll_tokens`: 'builtin' BOS + text + EOS, every token after BOS a target; 'paper'
    `tokenizer(text)`, every token after the first a target. Truncation keeps the beginning.
    Chat examples (`messages`, the instruct setup's Tulu sample): `_tokenize_upstream_chat`."""
    if any(ex.messages is not None for ex in examples):
        return _tokenize_upstream_chat(examples, tokenizer, config)
    if config.nll_tokens == "paper":
        return _tokenize_upstream_paper(examples, tokenizer, config)
    if config.nll_tokens != "builtin":
        raise ValueError(f"nll_tokens must be 'builtin' or 'paper', got {config.nll_tokens!r}")
    _check_tokenizer(tokenizer, config)
    quiet_tokenizer(tokenizer)
    bos, eos = bos_eos(tokenizer)
    out, short = [], []
    for ex in examples:
        ids = _encode(tokenizer, ex.text)
        n = len(ids) + bool(config.add_eos) + bool(config.add_bos and bos is not None and ids[:1] != [bos])
        if not ids or n < config.min_tokens:
            short.append((ex, n if ids else 0))
            continue
        if config.add_eos:
            ids = ids + [eos]
        out.append(_finish(ids, [True] * len(ids), bos=bos, config=config, truncate="right", id_=ex.id,
                           group=ex.source, where=ex.where))
    _log_short(short, len(examples), config)
    _log_truncated(out, "upstream", config)
    return out


def _log_short(short: list, total: int, config: TokenizeConfig) -> None:
    if short:
        log.warning("upstream: left out %d of %d examples with fewer than %d tokens (%s)", len(short), total,
                    config.min_tokens, ", ".join(f"{ex.id!r} at {ex.where}: {n}" for ex, n in short[:5])
                    + (", ..." if len(short) > 5 else ""))
    if short and len(short) == total:
        raise ValueError(f"every upstream example has fewer than {config.min_tokens} tokens (--data.min-tokens)")


def _tokenize_upstream_paper(examples: Sequence[UpstreamExample], tokenizer,
                             config: TokenizeConfig) -> list[Tokenized]:
    if config.max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {config.max_len}")
    quiet_tokenizer(tokenizer)
    out, short = [], []
    for ex in examples:
        ids = list(tokenizer(ex.text)["input_ids"])
        if len(ids) < max(2, config.min_tokens):  # fewer than 2: no token with a predecessor to score
            short.append((ex, len(ids)))
            continue
        truncated = len(ids) > config.max_len
        ids = ids[: config.max_len]
        mask = np.ones(len(ids), bool)
        mask[0] = False
        out.append(Tokenized(np.asarray(ids, np.int32), mask, ex.id, ex.source, truncated))
    _log_short(short, len(examples), config)
    _log_truncated(out, "upstream", config)
    return out


def _tokenize_upstream_chat(examples: Sequence[UpstreamExample], tokenizer,
                            config: TokenizeConfig) -> list[Tokenized]:
    """Chat upstream examples, as the paper scored its instruct model's held-out Tulu sample: the conversation
    rendered with the chat template (`config.template`, else the tokenizer's; else the plain template without
    EOS), the mean NLL over the answer's own tokens only: after the assistant marker, up to but excluding the
    closing end of turn. 'builtin' prepends BOS (as tasks); 'paper' keeps the rendered tokens as they are.
    Truncation keeps the end (the answer)."""
    if any(ex.messages is None for ex in examples):
        raise ValueError(f"{next(ex.where for ex in examples if ex.messages is None)}: a raw-text example among "
                         "chat examples; one upstream corpus is one or the other")
    quiet_tokenizer(tokenizer)
    template = config.template if config.template is not None else getattr(tokenizer, "chat_template", None)
    bos = bos_eos(tokenizer)[0] if config.nll_tokens == "builtin" else None
    out, short = [], []
    for ex in examples:
        msgs = [dict(role=r, content=c) for r, c in ex.messages]
        answer = ex.messages[-1][1]
        if template:
            before = _render(tokenizer, msgs[:-1], template, add_generation_prompt=True)
            full = _render(tokenizer, msgs, template)
            start = full.find(answer, len(before)) if full.startswith(before) else -1
            if start < 0:
                raise ValueError(f"{ex.where}: the chat template does not render the answer after the generation "
                                 "prompt as it is, so its tokens cannot be located")
        else:
            before = "".join(t for t, _ in plain_segments(TaskExample("", "", messages=ex.messages[:-1]), eos=None))
            full = before + "Assistant: " + answer
            start = len(full) - len(answer)
        lead = len(answer) - len(answer.lstrip())
        span = (start + lead, start + len(answer))
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = [s < span[1] and e > span[0] for s, e in enc["offset_mapping"]]
        if len(ids) < config.min_tokens or not any(mask[1:]):
            short.append((ex, len(ids)))
            continue
        out.append(_finish(ids, mask, bos=bos, config=dataclasses.replace(config, add_bos=bos is not None),
                           truncate="left", id_=ex.id, group=ex.source, where=ex.where))
    _log_short(short, len(examples), config)
    _log_truncated(out, "upstream", config)
    return out


def chunk_upstream(examples: Sequence[UpstreamExample], tokenizer, *, chunk_tokens: int, n: int | None,
                   seed: int) -> tuple[list[UpstreamExample], list[Tokenized]]:
    """The paper's RedPajama sample for MPT: every document tokenised with EOS appended, the tokens of all
    documents concatenated in order and cut into chunks of exactly `chunk_tokens` (the remainder dropped),
    then `n` chunks drawn without replacement (seeded; all for None), kept in stream order. Each chunk is
    one upstream example, every token after its first scored; its id is `<id of the document it starts
    in>@<token offset there>` (unique, and the same whatever chunks are drawn), its source that document's,
    its text the chunk decoded (for upstream.jsonl)."""
    if chunk_tokens < 2:
        raise ValueError(f"chunk_tokens must be >= 2, got {chunk_tokens}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token to end each document with")
    quiet_tokenizer(tokenizer)
    docs = [np.asarray(_encode(tokenizer, ex.text) + [eos], np.int32) for ex in examples]
    starts = np.cumsum([0] + [len(d) for d in docs])  # stream offset of each document
    stream = np.concatenate(docs) if docs else np.zeros(0, np.int32)
    total = len(stream) // chunk_tokens
    if total == 0 or (n is not None and n > total):
        raise ValueError(f"{len(examples)} documents give {total} chunks of {chunk_tokens} tokens; cannot sample "
                         f"{n}: lower --data.n-upstream or --data.chunk-tokens, or add documents")
    chosen = np.arange(total) if n is None or n == total else np.sort(
        np.random.default_rng([seed, 13]).choice(total, n, replace=False))
    upstream, toks = [], []
    mask = np.arange(chunk_tokens) >= 1
    for k in chosen:
        begin = int(k) * chunk_tokens
        d = int(np.searchsorted(starts, begin, side="right")) - 1
        ex = examples[d]
        ids = stream[begin:begin + chunk_tokens]
        ex_id = f"{ex.id}@{begin - int(starts[d])}"
        upstream.append(UpstreamExample(ex_id, decode(tokenizer, ids), ex.source, ex.where))
        toks.append(Tokenized(ids.copy(), mask.copy(), ex_id, ex.source, False))
    log.info("upstream: %d of %d chunks of %d tokens from %d documents", len(toks), total, chunk_tokens, len(examples))
    return upstream, toks


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------

def plain_segments(ex: TaskExample, *, eos: str | None) -> list[tuple[str, bool]]:
    """The plain template as (text, is_target) pieces; `eos` is a marker for the EOS token (None: none)."""
    tail = [(eos, True)] if eos is not None else []
    if ex.kind == "text":
        return [(ex.text, True)] + tail
    if ex.kind == "prompt":
        sep = "" if (not ex.prompt or ex.prompt[-1].isspace() or ex.completion[0].isspace()) else " "
        return [(ex.prompt, False), (sep + ex.completion, True)] + tail
    segs: list[tuple[str, bool]] = []
    for k, (role, content) in enumerate(ex.messages):
        last = k == len(ex.messages) - 1
        if role == "system":
            segs.append((content + "\n", False))
        elif role == "user":
            segs.append((f"User: {content}\n", False))
        else:
            segs += [("Assistant:", False), (" " + content, True)]
            segs += tail if last else [("\n", True)]
    return segs


_EOS_MARK = "\x00<eos>"  # stands for the EOS id in segment lists; never tokenised as text


def _plain_ids(ex: TaskExample, tokenizer, config: TokenizeConfig) -> tuple[list[int], list[bool]]:
    """(ids, mask) by the plain template."""
    ids: list[int] = []
    mask: list[bool] = []
    for text, target in plain_segments(ex, eos=_EOS_MARK if config.add_eos else None):
        piece = [tokenizer.eos_token_id] if text == _EOS_MARK else _encode(tokenizer, text)
        if ids and piece and text[:1].isspace() and tokenizer.convert_ids_to_tokens(piece[0]) == "\u2581":
            # a sentencepiece tokenizer (Llama-2) prepends its word marker '▁' to every piece it encodes:
            # " Paris" -> ['▁', '▁Paris']; the lone marker is not in the text (the next token carries the
            # space), so the conversation tokenised whole has no such token and none is trained on
            piece = piece[1:]
        ids += piece
        mask += [target] * len(piece)
    return ids, mask


def _as_messages(ex: TaskExample) -> list[dict[str, str]]:
    if ex.kind == "messages":
        return [dict(role=r, content=c) for r, c in ex.messages]
    return [dict(role="user", content=ex.prompt), dict(role="assistant", content=ex.completion)]


def _render(tokenizer, messages, template: str | None = None, **kw) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, **kw)


def _chat_ids(ex: TaskExample, tokenizer, template: str | None = None) -> tuple[list[int], list[bool]]:
    """(ids, mask) through the tokenizer's chat template (or `template`). The mask comes from the rendered
    string's character offsets: a token is a target when it overlaps an answer's characters, the span
    starting at the answer's first non-blank character, so a token made only of the blank a template puts
    before the answer (sentencepiece's lone '▁') is not trained on."""
    msgs = _as_messages(ex)
    full = _render(tokenizer, msgs, template)
    spans = []
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, msgs[:k], template, add_generation_prompt=True)
        upto = _render(tokenizer, msgs[: k + 1], template)
        if not (upto.startswith(before) and full.startswith(upto)):
            whose = "given" if template else "tokenizer's"
            raise ValueError(f"{ex.where}: the {whose} chat template does not render conversations as prefixes "
                             "of each other, so answer tokens cannot be located; use chat_template='never' (the "
                             "plain template) or another template")
        answer = upto[len(before):]
        blank = len(answer) - len(answer.lstrip()) if answer.strip() else 0  # an all-blank turn stays whole
        spans.append((len(before) + blank, len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [any(s < e2 and e > s2 for s2, e2 in spans) for s, e in enc["offset_mapping"]]
    return ids, mask


def tokenize_tasks(examples: Sequence[TaskExample], tokenizer,
                   config: TokenizeConfig = TokenizeConfig()) -> list[Tokenized]:
    """Task examples rendered (chat template or plain template), loss on the answer tokens only."""
    _check_tokenizer(tokenizer, config)
    quiet_tokenizer(tokenizer)
    bos, _ = bos_eos(tokenizer)
    use_chat = config.template is not None or (config.chat_template == "auto"
                                                and getattr(tokenizer, "chat_template", None))
    out = []
    for ex in examples:
        ids, mask = (_chat_ids(ex, tokenizer, config.template) if use_chat and ex.kind != "text"
                     else _plain_ids(ex, tokenizer, config))
        # "Empty" = the answer tokens decode to nothing but whitespace and special tokens (a separator
        # space, EOS or end-of-turn markers alone teach nothing about the task).
        answer = [i for i, m in zip(ids, mask) if m]
        if not decode(tokenizer, answer).strip():
            raise ValueError(f"{ex.where}: the answer of this {ex.kind!r} record is empty after tokenisation")
        out.append(_finish(ids, mask, bos=bos, config=config, truncate="left", id_=ex.where, group=ex.task,
                           where=ex.where))
    _log_truncated(out, f"task {examples[0].task!r}" if examples else "tasks", config)
    return out
