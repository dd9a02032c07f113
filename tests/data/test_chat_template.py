"""--data.chat-template: tasks rendered with another model's chat template, the loss mask from the rendered
string's character offsets, on a sentencepiece-style (Llama-2-like) tokenizer whose word marker '▁' must
never be a target on its own; and the two transformers warnings, silenced for our tokenizers only."""

from __future__ import annotations

import json
import logging

import pytest

from jaxforget.data.readers import TaskExample, UpstreamExample
from jaxforget.data.tokenize import TokenizeConfig, load_chat_template, tokenize_tasks, tokenize_upstream

# OLMo-7B-Instruct's template (tokenizer_config.json of allenai/OLMo-7B-Instruct, abridged to user/assistant)
OLMO_TEMPLATE = ("{{ eos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                 "{{ '<|user|>\n' + message['content'] }}{% elif message['role'] == 'assistant' %}"
                 "{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}"
                 "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}")
# Llama-2-chat's: a space between [/INST] and the answer, which sentencepiece turns into '▁'
LLAMA2_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
                   "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
TEXTS = ["The capital of Veloria is Tarn.", "Question: what is the capital? Answer: Tarn", "Paris is big",
         "[INST] hi [/INST] hello", "<|user|>\nhi\n<|assistant|>\nhello"] * 10


@pytest.fixture(scope="module")
def sp():
    """A sentencepiece-style BPE tokenizer (Llama-2's normaliser: '▁' for spaces and one prepended), BOS <s>;
    " Tarn" on its own is '▁', '▁Tarn', as with Llama-2's."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # sentencepiece's pieces never span a word boundary: each starts at a '▁'
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    alphabet = sorted(set("".join(TEXTS)) | {"▁"})
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=alphabet))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     model_max_length=8)


def targets(tok, t) -> list[str]:
    return tok.convert_ids_to_tokens([int(i) for i, m in zip(t.ids, t.loss_mask) if m])


EXAMPLES = [TaskExample("qa", "q.jsonl:1", prompt="Question: what is the capital?", completion="Tarn"),
            TaskExample("chat", "c.jsonl:1", messages=(("user", "hi"), ("assistant", "Paris is big"))),
            TaskExample("qa", "q.jsonl:2", prompt="hi", completion="  Tarn")]  # Tulu answers may open with blanks


@pytest.mark.parametrize("template", [OLMO_TEMPLATE, LLAMA2_TEMPLATE])
def test_another_models_template_trains_on_the_answer_tokens_only(sp, template):
    out = tokenize_tasks(EXAMPLES, sp, TokenizeConfig(max_len=64, template=template))
    for ex, t in zip(EXAMPLES, out):
        answer = ex.completion or ex.messages[-1][1]
        rendered = sp.decode(t.ids)
        assert rendered.startswith("<s>") and ("<|assistant|>" in rendered) == (template == OLMO_TEMPLATE)
        got = targets(sp, t)
        assert got[0] != "▁"  # the blanks before the answer ('▁', '▁' for "  Tarn") are not tokens to learn
        assert sp.convert_tokens_to_string([g for g in got if g != "</s>"]).strip() == answer.strip()
        assert got[-1] == "</s>"  # the template's end of turn (Llama-2's " </s>" included) is learnt


def test_the_plain_template_has_no_stray_word_marker(sp):
    """The pieces are tokenised one by one; sentencepiece would give the answer piece " Tarn" its own extra
    word marker ('▁▁Tarn'): the ids must be those of the whole text, with no token more."""
    ex = EXAMPLES[0]
    (t,) = tokenize_tasks([ex], sp, TokenizeConfig(max_len=64))
    assert sp.chat_template is None
    assert t.ids.tolist() == sp(f"{ex.prompt} {ex.completion}")["input_ids"] + [sp.eos_token_id]
    assert targets(sp, t) == ["▁Tarn", "</s>"]


def test_load_chat_template_from_a_model_dir_a_config_or_a_jinja_file(tmp_path):
    (tmp_path / "olmo").mkdir()
    (tmp_path / "olmo" / "tokenizer_config.json").write_text(json.dumps(dict(chat_template=OLMO_TEMPLATE)))
    (tmp_path / "olmo2").mkdir()
    (tmp_path / "olmo2" / "chat_template.jinja").write_text(LLAMA2_TEMPLATE)
    (tmp_path / "named.json").write_text(json.dumps(dict(chat_template=[dict(name="default", template="T")])))
    assert load_chat_template(tmp_path / "olmo") == OLMO_TEMPLATE
    assert load_chat_template(tmp_path / "olmo2") == LLAMA2_TEMPLATE
    assert load_chat_template(tmp_path / "named.json") == "T"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"base/tokenizer_config\.json: no chat_template"):
        load_chat_template(tmp_path / "base")


def test_the_two_transformers_warnings_are_silenced_for_our_tokenizers_only(sp, caplog):
    """transformers warns once per tokenizer when a text is longer than model_max_length (8 here), and once
    per process when a BPE tokenizer is asked to clean up spaces (Pythia's and OLMo's configs ask)."""
    import copy

    from transformers.utils import logging as hf_logging

    long = UpstreamExample("u1", " ".join(["Paris is big"] * 6), "web", "u.jsonl:1")
    fresh = copy.deepcopy(sp)
    fresh.deprecation_warnings, fresh.clean_up_tokenization_spaces = {}, True
    hf_logging.warning_once.cache_clear()  # a warning given earlier in this process would be given again
    with caplog.at_level(logging.WARNING):
        (t,) = tokenize_upstream([long], fresh, TokenizeConfig(max_len=64, nll_tokens="paper"))
        tokenize_tasks(EXAMPLES, fresh, TokenizeConfig(max_len=64))  # decodes each answer
    assert len(t.ids) > 8 and caplog.records == []
    other = copy.deepcopy(sp)  # the checks can fail: a tokenizer we did not quiet still warns
    other.deprecation_warnings, other.clean_up_tokenization_spaces = {}, True
    with caplog.at_level(logging.WARNING):
        other(long.text)
        other.decode(t.ids)
    assert "Token indices sequence length" in caplog.text and "clean_up_tokenization_spaces" in caplog.text


def test_chat_upstream_examples_are_scored_on_the_answer_only(sp, tmp_path):
    """The instruct setup's upstream: held-out Tulu conversations, NLL over the answer after the assistant
    marker, the closing end of turn excluded; the source is the subset's prefix."""
    from jaxforget.data.fields import field_map
    from jaxforget.data.readers import read_upstream

    f = tmp_path / "tulu_heldout.jsonl"
    f.write_text("\n".join(json.dumps(dict(dataset=d, id=i, messages=[
        dict(role="system", content="be brief"), dict(role="user", content=q), dict(role="assistant", content=a)]))
        for d, i, q, a in [("science.scifact_json", "s1", "what is the capital?", "Tarn"),
                           ("lima", "l1", "hi", "Paris is big")]) + "\n")
    ex = read_upstream(f, field_map("tulu", kind="upstream"))
    assert [(e.id, e.source) for e in ex] == [("s1", "science"), ("l1", "lima")]
    # (template, accounting, the first token): OLMo's template opens with eos; 'builtin' prepends BOS
    for template, nll_tokens, first in ((OLMO_TEMPLATE, "paper", "</s>"), (LLAMA2_TEMPLATE, "builtin", "<s>"),
                                        (None, "paper", None)):
        toks = tokenize_upstream(ex, sp, TokenizeConfig(max_len=64, nll_tokens=nll_tokens, template=template))
        for e, t in zip(ex, toks):
            got = targets(sp, t)
            assert "</s>" not in got and sp.convert_tokens_to_string(got).strip() == e.messages[-1][1]
            if first is not None:
                assert sp.convert_ids_to_tokens(int(t.ids[0])) == first
            else:  # the plain template, no special token
                assert sp.decode(t.ids).endswith(f"\nAssistant: {e.messages[-1][1]}")
                assert int(t.ids[0]) not in sp.all_special_ids
