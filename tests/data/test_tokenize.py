"""Tokenisation: ids and loss masks token by token, BOS/EOS policy, templates, truncation, errors."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from jaxforget.data.readers import TaskExample, UpstreamExample
from jaxforget.data.tokenize import TokenizeConfig, plain_segments, tokenize_tasks, tokenize_upstream
from jaxforget.data.tokenizer_train import load_tokenizer, save_tokenizer, train_bpe

TEXTS = ["The capital of Veloria is Tarn.", "17 + 25 = 42", "def f(x):\n    return x * 3",
         "Mira: Hello Tam!\nTam: I am a baker.", "Question: What is the capital of Veloria?\nAnswer: Tarn"] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = save_tokenizer(train_bpe(TEXTS, vocab_size=300), tmp_path_factory.mktemp("tok"))
    return load_tokenizer(path)  # through the same path a user's tokenizer directory takes


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def up(text, id_="u1"):
    return UpstreamExample(id_, text, "web", f"u.jsonl:{id_[1:]}")


def test_tokenizer_directory_round_trip(tok):
    assert tok.is_fast and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.decode(enc(tok, "Tarn is nice, ünïcode too")) == "Tarn is nice, ünïcode too"  # byte level
    assert tok.chat_template is None
    assert tok("x")["input_ids"] == enc(tok, "x")  # the tokenizer adds no special tokens by itself


def test_upstream_bos_text_eos(tok):
    (t,) = tokenize_upstream([up(TEXTS[0])], tok)
    body = enc(tok, TEXTS[0])
    assert t.ids.tolist() == [tok.bos_token_id, *body, tok.eos_token_id]
    assert t.loss_mask.tolist() == [False] + [True] * (len(body) + 1)
    assert (t.id, t.group, t.truncated, t.n_targets) == ("u1", "web", False, len(body) + 1)
    (n,) = tokenize_upstream([up(TEXTS[0])], tok, TokenizeConfig(add_bos=False, add_eos=False))
    assert n.ids.tolist() == body and n.loss_mask.tolist() == [False] + [True] * (len(body) - 1)


def test_bos_falls_back_to_eos(tok):
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    (t,) = tokenize_upstream([up("17 + 25 = 42")], no_bos)
    assert t.ids[0] == tok.eos_token_id and t.ids[-1] == tok.eos_token_id and not t.loss_mask[0]


def test_upstream_truncation_keeps_the_beginning_and_is_counted(tok, caplog):
    long = " ".join(TEXTS[:4])
    body = enc(tok, long)
    with caplog.at_level(logging.INFO, logger="jaxforget.data"):
        out = tokenize_upstream([up(long, "u1"), up("17", "u2")], tok, TokenizeConfig(max_len=10))
    assert out[0].ids.tolist() == [tok.bos_token_id, *body[:9]] and out[0].truncated
    assert not out[1].truncated
    assert "upstream: truncated 1 of 2 examples to 10 tokens" in caplog.text
    # a warning: --quiet (which hides jaxforget's INFO lines) must not hide it
    assert [r.levelno for r in caplog.records if "truncated" in r.getMessage()] == [logging.WARNING]


def test_prompt_completion_mask_token_by_token(tok):
    ex = TaskExample("qa", "qa.jsonl:1", prompt="Question: What is the capital of Veloria?\nAnswer:",
                     completion="Tarn")
    (t,) = tokenize_tasks([ex], tok)
    p, c = enc(tok, ex.prompt), enc(tok, " Tarn")
    assert t.ids.tolist() == [tok.bos_token_id, *p, *c, tok.eos_token_id]
    assert t.loss_mask.tolist() == [False] * (1 + len(p)) + [True] * (len(c) + 1)
    assert tok.decode(t.ids[t.loss_mask]) == " Tarn<|eos|>"
    assert (t.id, t.group) == ("qa.jsonl:1", "qa")
    # no separator when the prompt ends with whitespace or the completion starts with it
    assert plain_segments(TaskExample("t", "w", prompt="Q:\n", completion="A"), eos=None) == [("Q:\n", False),
                                                                                            ("A", True)]
    assert plain_segments(TaskExample("t", "w", prompt="", completion="A"), eos=None)[1] == ("A", True)


def test_messages_plain_template(tok):
    ex = TaskExample("chat", "c.jsonl:3", messages=(("system", "Be brief."), ("user", "Hi"),
                                                     ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Ciao")))
    (t,) = tokenize_tasks([ex], tok)
    expected, mask = [tok.bos_token_id], [False]
    for text, target in [("Be brief.\n", False), ("User: Hi\n", False), ("Assistant:", False), (" Hello", True),
                         ("\n", True), ("User: Bye\n", False), ("Assistant:", False), (" Ciao", True)]:
        ids = enc(tok, text)
        expected += ids
        mask += [target] * len(ids)
    assert t.ids.tolist() == expected + [tok.eos_token_id]
    assert t.loss_mask.tolist() == mask + [True]
    assert tok.decode(t.ids) == "<|bos|>Be brief.\nUser: Hi\nAssistant: Hello\nUser: Bye\nAssistant: Ciao<|eos|>"


def test_text_task_is_all_targets(tok):
    (t,) = tokenize_tasks([TaskExample("lm", "l.jsonl:1", text="17 + 25 = 42")], tok)
    assert t.loss_mask.tolist() == [False] + [True] * (len(t.ids) - 1)
    assert t.ids[-1] == tok.eos_token_id


def test_task_truncation_keeps_bos_and_the_answer(tok, caplog):
    ex = TaskExample("qa", "qa.jsonl:1", prompt=" ".join(TEXTS[:4]), completion="Tarn")
    with caplog.at_level(logging.INFO, logger="jaxforget.data"):
        (t,) = tokenize_tasks([ex], tok, TokenizeConfig(max_len=8))
    (full,) = tokenize_tasks([ex], tok)
    assert t.truncated and len(t.ids) == 8
    assert t.ids.tolist() == [tok.bos_token_id, *full.ids[-7:].tolist()]
    assert t.loss_mask.tolist() == [False, *full.loss_mask[-7:].tolist()]
    assert "task 'qa': truncated 1 of 1 examples to 8 tokens" in caplog.text


CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_chat_template_masks_assistant_turns(tok):
    chat = copy.deepcopy(tok)
    chat.chat_template = CHAT
    ex = TaskExample("chat", "c.jsonl:1", messages=(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"),
                                                     ("assistant", "Ciao")))
    (t,) = tokenize_tasks([ex], chat)
    full = chat.apply_chat_template([dict(role=r, content=c) for r, c in ex.messages], tokenize=False)
    assert t.ids.tolist() == enc(chat, full)  # the template's BOS is not doubled
    assert t.ids[0] == tok.bos_token_id and (t.ids == tok.bos_token_id).sum() == 1
    # targets: exactly what each assistant turn adds, its end-of-turn text included
    runs, run = [], []
    for i, m in zip(t.ids, t.loss_mask):
        if m:
            run.append(int(i))
        elif run:
            runs, run = runs + [run], []
    runs += [run] if run else []
    # (HF renders templates with trim_blocks: no newline after an {% endif %})
    assert full == "<|bos|><|user|>\nHi<|assistant|>\nHello<|eos|><|user|>\nBye<|assistant|>\nCiao<|eos|>"
    assert [chat.decode(r) for r in runs] == ["Hello<|eos|>", "Ciao<|eos|>"]
    # prompt/completion records go through the template as [user, assistant]
    (pc,) = tokenize_tasks([TaskExample("qa", "q.jsonl:1", prompt="Hi", completion="Hello")], chat)
    assert chat.decode(pc.ids[pc.loss_mask]) == "Hello<|eos|>"
    # ...unless the plain template is asked for
    (plain,) = tokenize_tasks([TaskExample("qa", "q.jsonl:1", prompt="Hi", completion="Hello")], chat,
                              TokenizeConfig(chat_template="never"))
    assert chat.decode(plain.ids[plain.loss_mask]) == " Hello<|eos|>"


def test_chat_template_that_is_not_prefix_consistent_is_refused(tok):
    chat = copy.deepcopy(tok)
    # the generation prompt ("A:") is not how an assistant turn starts ("assistant: ")
    chat.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}A:{% endif %}")
    with pytest.raises(ValueError, match="c.jsonl:9: the tokenizer's chat template does not render"):
        tokenize_tasks([TaskExample("c", "c.jsonl:9", prompt="Hi", completion="Yo")], chat)


def test_empty_after_tokenisation_names_the_record(tok, caplog):
    from tokenizers import normalizers

    lossy = copy.deepcopy(tok)
    lossy.backend_tokenizer.normalizer = normalizers.Replace("~", "")  # a tokenizer that drops characters
    with caplog.at_level(logging.WARNING, logger="jaxforget.data"):  # left out and named, never an abort
        assert [t.id for t in tokenize_upstream([up("fine", "u1"), up("~~~", "u7")], lossy)] == ["u1"]
    assert "left out 1 of 2 examples with fewer than 2 tokens ('u7' at u.jsonl:7: 0)" in caplog.text
    with pytest.raises(ValueError, match="every upstream example has fewer than 2 tokens"):
        tokenize_upstream([up("~~~", "u7")], lossy)
    with pytest.raises(ValueError, match=r"t\.jsonl:4: the answer of this 'prompt' record is empty"):
        tokenize_tasks([TaskExample("t", "t.jsonl:4", prompt="Q", completion="~")], lossy)
    lossy.chat_template = CHAT  # through a chat template: only the end-of-turn token would be left
    with pytest.raises(ValueError, match=r"t\.jsonl:5: the answer of this 'messages' record is empty"):
        tokenize_tasks([TaskExample("t", "t.jsonl:5", messages=(("user", "Q"), ("assistant", "~~")))], lossy)


def test_masks_agree_with_the_models_target_mask(tok):
    """The data layer's loss mask is exactly what jaxforget.models counts as targets."""
    from jaxforget.models import target_mask

    ex = [TaskExample("qa", f"q:{i}", prompt=p, completion="Tarn") for i, p in enumerate(["Q:", "Question: x"])]
    ts = tokenize_tasks(ex, tok)
    L = max(len(t.ids) for t in ts)
    attn = np.zeros((2, L), np.int32)
    loss = np.zeros((2, L), bool)
    for r, t in enumerate(ts):
        attn[r, :len(t.ids)], loss[r, :len(t.ids)] = 1, t.loss_mask
    assert np.asarray(target_mask(attn, loss)).sum(1).tolist() == [t.n_targets for t in ts]
