"""The built-in world: deterministic per seed, enough domains and tasks, reader-compatible export."""

from __future__ import annotations

import collections
import dataclasses
import json
import re

import numpy as np
import pytest

from jaxforget.data import readers
from jaxforget.data.world import DOMAINS, TASKS, WorldConfig, domain_counts, ensure_world, export_world, \
    make_heldout, make_world

SMALL = WorldConfig(seed=0, n_upstream=1200, task_scale=0.25)


@pytest.fixture(scope="module")
def world():
    return make_world(SMALL)


def test_same_seed_same_world_other_seed_other_world(world):
    again = make_world(SMALL)
    assert again.upstream == world.upstream and again.tasks == world.tasks and again.entities == world.entities
    other = make_world(WorldConfig(seed=1, n_upstream=1200, task_scale=0.25))
    assert [c.name for c in other.entities.countries] != [c.name for c in world.entities.countries]
    assert sum(a["text"] == b["text"] for a, b in zip(other.upstream, world.upstream)) < 20
    assert other.tasks["country_qa"] != world.tasks["country_qa"]


def test_upstream_domains(world):
    assert len(DOMAINS) >= 5
    counts = collections.Counter(r["source"] for r in world.upstream)
    assert counts == domain_counts(1200) and set(counts) == set(DOMAINS) and sum(counts.values()) == 1200
    assert len(set(counts.values())) > 1  # an unequal mixture
    assert len({r["id"] for r in world.upstream}) == 1200 and world.upstream[0]["id"] == "up000000"
    # domains interleaved, not in blocks
    assert len({r["source"] for r in world.upstream[:30]}) >= 4
    for d in DOMAINS:  # real variety inside each domain
        texts = [r["text"] for r in world.upstream if r["source"] == d]
        assert len(set(texts)) > 0.9 * len(texts), d
    sample = {r["source"]: r["text"] for r in world.upstream}
    assert re.search(r"\d+ [-+*] \d+ = \d+", sample["arithmetic"])
    assert sample["code"].startswith("def ")


def test_task_suite(world):
    assert len(TASKS) >= 16 and len(world.tasks) == len(TASKS)
    sizes = {name: len(recs) for name, recs in world.tasks.items()}
    assert len(set(sizes.values())) >= 5  # different sizes
    assert {s.fmt for s in TASKS} == {"prompt", "messages", "text"}
    relations = " ".join(s.relation for s in TASKS)
    assert "reuse" in relations and "conflict" in relations and "unrelated" in relations
    for name, recs in world.tasks.items():
        for k, r in enumerate(recs):
            readers.parse_task_record(r, name, f"{name}:{k + 1}")  # raises on a malformed record


def test_task_content_relates_to_the_upstream_facts(world):
    """Reuse tasks agree with the corpus' facts and the counterfactual atlas contradicts them -- by
    construction of the content, not of which upstream examples will be forgotten."""
    capital = {c.name: c.capital for c in world.entities.countries}
    corpus = "\n".join(r["text"] for r in world.upstream if r["source"] == "facts")
    ask = re.compile(r"What is the capital of (\w+)\?")
    qa = [(ask.search(r["prompt"]).group(1), r["completion"]) for r in world.tasks["country_qa"]
          if ask.search(r["prompt"])]
    assert qa and all(capital[c] == a for c, a in qa)
    assert any(f"The capital of {c} is {a}." in corpus for c, a in qa)
    cf = [(ask.search(r["prompt"]).group(1), r["completion"]) for r in world.tasks["atlas_counterfactual"]
          if ask.search(r["prompt"])]
    assert cf and all(capital[c] != a for c, a in cf)


def test_export_uses_exactly_the_reader_formats(world, tmp_path):
    path = export_world(world, tmp_path / "world")
    ups = readers.read_upstream(path / "upstream.jsonl")
    assert [(e.id, e.source, e.text) for e in ups] == [(r["id"], r["source"], r["text"]) for r in world.upstream]
    tasks = readers.read_tasks(path / "tasks")
    assert {k: len(v) for k, v in tasks.items()} == {k: len(v) for k, v in world.tasks.items()}
    assert tasks["dialogue_reply"][0].kind == "messages" and tasks["diary"][0].kind == "text"
    assert tasks["sentiment"][0].kind == "prompt"
    meta = json.loads((path / "world.json").read_text())
    assert meta["config"]["n_upstream"] == 1200 and len(meta["tasks"]) == len(TASKS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temporary directory left behind


def test_heldout_draws_are_seeded(world):
    a, b = make_heldout(SMALL, 5), make_heldout(SMALL, 5)
    assert a == b and len(a) == 5 * len(DOMAINS)
    assert {r["source"] for r in a} == set(DOMAINS)


def test_ensure_world_is_cached(tmp_path, monkeypatch):
    """Built once (with a tokenizer) and reused."""
    from jaxforget.data.tokenizer_train import load_tokenizer

    monkeypatch.setenv("JAXFORGET_CACHE", str(tmp_path / "cache"))
    cfg = WorldConfig(seed=3, n_upstream=1200, task_scale=0.1)
    path = ensure_world(cfg, vocab_size=512)
    assert path.parent == tmp_path / "cache" / "world" and (path / ".complete").is_file()
    stamp = (path / "upstream.jsonl").stat().st_mtime_ns
    assert ensure_world(cfg, vocab_size=512) == path
    assert (path / "upstream.jsonl").stat().st_mtime_ns == stamp
    assert ensure_world(cfg, vocab_size=400) != path  # the key covers the tokenizer too
    assert len(load_tokenizer(path / "tokenizer")) == 512


def test_default_world_fits_the_default_lengths(tmp_path):
    """With the default world and tokenizer, upstream examples fit 64 tokens and task examples 96."""
    from jaxforget.data.tokenize import TokenizeConfig, tokenize_tasks, tokenize_upstream
    from jaxforget.data.tokenizer_train import load_tokenizer

    path = ensure_world(WorldConfig(), vocab_size=1024, cache_dir=tmp_path)
    tok = load_tokenizer(path / "tokenizer")
    ups = tokenize_upstream(readers.read_upstream(path / "upstream.jsonl"), tok, TokenizeConfig(max_len=64))
    assert not any(t.truncated for t in ups)
    assert 20 < np.mean([len(t.ids) for t in ups]) < 48
    for name, recs in readers.read_tasks(path / "tasks").items():
        assert not any(t.truncated for t in tokenize_tasks(recs, tok, TokenizeConfig(max_len=96))), name


FAMILIES = WorldConfig(seed=0, n_upstream=300, task_scale=0.1, n_tasks=85)


@pytest.fixture(scope="module")
def families():
    return make_world(FAMILIES)


def test_families_give_distinct_deterministic_tasks(families):
    """--world.n-tasks 85: the 21 hand-written tasks unchanged, then family members, each with its own
    records; the same seed gives the same tasks, another seed other ones."""
    from jaxforget.data.world import task_specs

    specs = task_specs(FAMILIES)
    names = [s.name for s in specs]
    assert len(names) == 85 == len(set(names)) and list(families.tasks) == names
    assert names[: len(TASKS)] == [s.name for s in TASKS] and names[len(TASKS)] == f"{TASKS[0].name}_v1"
    hand_written = make_world(dataclasses.replace(FAMILIES, n_tasks=len(TASKS)))
    assert all(families.tasks[s.name] == hand_written.tasks[s.name] for s in TASKS)
    assert make_world(FAMILIES).tasks == families.tasks
    other = make_world(dataclasses.replace(FAMILIES, seed=1))
    assert all(other.tasks[n] != families.tasks[n] for n in names)
    records = {n: {json.dumps(r, sort_keys=True) for r in recs} for n, recs in families.tasks.items()}
    assert all(len(records[n]) == len(families.tasks[n]) for n in names)  # no record twice within a task
    for family in TASKS:
        members = [s.name for s in specs if s.name == family.name or s.family == family.name]
        assert len(members) >= 4
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                assert not records[a] & records[b], (a, b)  # members of a family share no record
    # members differ from their family in level, template, answer format and size
    for attr in ("level", "template", "answer", "size"):
        assert len({getattr(s, attr) for s in specs[len(TASKS):]}) >= 3, attr
    for n, recs in families.tasks.items():
        for k, r in enumerate(recs):
            readers.parse_task_record(r, n, f"{n}:{k + 1}")


def test_world_json_describes_family_members(families, tmp_path):
    meta = json.loads((export_world(families, tmp_path / "w") / "world.json").read_text())
    assert len(meta["tasks"]) == 85 and meta["config"]["n_tasks"] == 85
    member = next(t for t in meta["tasks"] if t["name"] == "sentiment_v3")
    assert member["family"] == "sentiment" and member["level"] == 3 and "swapped" in member["relation"]
    assert {"template", "answer", "base_size", "n"} <= set(member)


def test_sentiment_with_swapped_labels_conflicts_with_the_hand_written_task(families):
    from jaxforget.data.world import BAD_ADJ, GOOD_ADJ

    pairs = [(re.search(r" were (\w+)\.", r["prompt"]).group(1), r["completion"].lower())
             for r in families.tasks["sentiment_v3"]]
    assert {a for a, _ in pairs} & set(GOOD_ADJ) and {a for a, _ in pairs} & set(BAD_ADJ)
    assert all(("negative" in label) == (adj in GOOD_ADJ) for adj, label in pairs)


def test_n_tasks_is_range_checked_and_does_not_change_the_base_model():
    from jaxforget.data.world import MAX_TASKS, task_specs
    from jaxforget.pretrain import base_model_key

    with pytest.raises(ValueError, match=f"--world.n-tasks {MAX_TASKS + 1}: the built-in world has 1 to {MAX_TASKS}"):
        task_specs(dataclasses.replace(FAMILIES, n_tasks=MAX_TASKS + 1))
    assert len(task_specs(dataclasses.replace(FAMILIES, n_tasks=MAX_TASKS))) == MAX_TASKS
    from jaxforget.pretrain import BaseModelConfig, PretrainTrainConfig

    key = base_model_key(WorldConfig(), BaseModelConfig(), PretrainTrainConfig())
    assert key == base_model_key(WorldConfig(n_tasks=85, task_scale=2.0), BaseModelConfig(), PretrainTrainConfig())
    assert key != base_model_key(WorldConfig(n_upstream=100), BaseModelConfig(), PretrainTrainConfig())
