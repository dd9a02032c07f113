"""Exact-match forgetting: normalisation, greedy answers against transformers, and collect's Z_em."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxforget.collect import DataConfig, EvalConfig, collect
from jaxforget.exact_match import exact_match, first_paragraph, normalize_answer
from jaxforget.store import RunDir
from tests.test_collect import TASKS, TRAIN_NO_CKPT, tiny


def test_normalisation_follows_the_paper():
    assert normalize_answer("  The Cat,  sat!") == "cat sat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert first_paragraph("Tarn.\n\nMore text") == "Tarn."
    assert first_paragraph("Tarn\n  \nx") == "Tarn"
    assert exact_match(" the Tarn.\n\nblah", "tarn") and not exact_match("Tarn city", "Tarn")


@pytest.fixture(scope="module")
def world_and_base(cache, tmp_path_factory):
    from jaxforget.data.world import ensure_world
    from jaxforget.pretrain import ensure_base_model

    config = tiny(tmp_path_factory.mktemp("em") / "run")
    world = ensure_world(config.world, vocab_size=config.base.vocab_size)
    base = ensure_base_model(config.world, config.base, config.pretrain, echo=lambda *_: None)
    return world, base


def test_greedy_answers_match_transformers_generate(world_and_base):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from jaxforget import models
    from jaxforget.data import readers
    from jaxforget.exact_match import build_em_set, make_em_eval

    world, base = world_and_base
    model, tokenizer = models.load(base)
    records = [readers.parse_task_record(obj, "qa", f"qa:{n}") for n, obj in
               readers.read_jsonl(world / "tasks" / "country_qa.jsonl")][:10]
    em = build_em_set(records, tokenizer, max_len=96)
    hf = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").eval()
    answers = []
    with torch.no_grad():
        for i, prompt in enumerate(em.prompts):
            out = hf.generate(torch.tensor(prompt[None], dtype=torch.long), max_new_tokens=12, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
            answers.append(text if i % 2 == 0 else text + " wrong")  # odd examples can never match
    em = dataclasses.replace(em, answers=answers)
    # batch 4 mixes prompt lengths, so rows are left-padded: the answers must not change
    correct = make_em_eval(em, tokenizer, batch_size=4, max_new_tokens=12, pad_id=tokenizer.eos_token_id)(model)
    assert correct.tolist() == [i % 2 == 0 for i in range(len(answers))]


def test_collect_writes_z_em(world_and_base, tmp_path):
    world, _ = world_and_base
    out = tmp_path / "em"
    config = dataclasses.replace(
        tiny(out), data=DataConfig(n_upstream=20, task_names=TASKS[:2], em_upstream=world / "tasks" / "person_qa.jsonl",
                                   n_em=16),
        eval=EvalConfig(batch_size=16, metrics=("nll", "em"), em_max_new_tokens=8, em_base_correct_only=False),
        train=TRAIN_NO_CKPT)
    assert collect(config, echo=lambda *_: None) == 0
    data = np.load(RunDir(out).forgetting_path)
    before, after = data["em_before"], data["em_after"]
    assert before.shape == (16,) and after.shape == (2, 16) and data["Z"].shape == (2, 20)
    np.testing.assert_array_equal(data["Z_em"], (before[None] & (after == 0)).astype(np.float32))
    assert len(RunDir(out).read_meta()["em_example_ids"]) == 16
    restricted = RunDir(out).assemble(list(TASKS[:2]), RunDir(out).read_meta()["example_ids"])
    assert np.isnan(restricted["Z_em"][:, ~before]).all()
    np.testing.assert_array_equal(restricted["Z_em"][:, before], data["Z_em"][:, before])


def test_em_needs_its_examples(tmp_path):
    config = dataclasses.replace(tiny(tmp_path / "x"), eval=EvalConfig(metrics=("nll", "em")))
    with pytest.raises(ValueError, match="--data.em-upstream"):
        collect(config, echo=lambda *_: None)
    config = dataclasses.replace(tiny(tmp_path / "x"), eval=EvalConfig(metrics=("em",)))
    with pytest.raises(ValueError, match="must include nll"):
        collect(config, echo=lambda *_: None)
