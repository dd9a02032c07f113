"""Readers: every accepted format, seeded sampling and splits, and each class of bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from jaxforget.data.readers import read_tasks, read_upstream, sample_upstream, split_task


def write_lines(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines),
                    encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Upstream
# ---------------------------------------------------------------------------------------------

def test_upstream_jsonl_ids_and_sources(tmp_path):
    f = write_lines(tmp_path / "dolma.jsonl", [
        {"text": "first doc", "id": "d1", "source": "web"},
        {"text": "second doc", "domain": "code"},
        "",
        {"text": "third doc", "id": 7},
    ])
    ex = read_upstream(f)
    assert [e.id for e in ex] == ["d1", "dolma:2", "7"]
    assert [e.source for e in ex] == ["web", "code", "dolma"]
    assert [e.text for e in ex] == ["first doc", "second doc", "third doc"]
    assert ex[2].where == f"{f}:4"


def test_upstream_plain_text_blocks_and_directories(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "b.txt").write_text("para one\nstill one\n\n\npara two\n", encoding="utf-8")
    write_lines(tmp_path / "corpus" / "a.jsonl", [{"text": "json doc"}])
    ex = read_upstream(tmp_path / "corpus")
    assert [(e.id, e.source, e.text) for e in ex] == [
        ("a:1", "a", "json doc"), ("b:1", "b", "para one\nstill one"), ("b:5", "b", "para two")]


def test_upstream_blank_lines_are_counted_in_the_log(tmp_path, caplog):
    f = write_lines(tmp_path / "u.jsonl", [{"text": "x"}, "", "  ", {"text": "y"}])
    with caplog.at_level(logging.INFO, logger="jaxforget.data"):
        assert len(read_upstream(f)) == 2
    assert "skipped 2 blank line(s)" in caplog.text


@pytest.mark.parametrize("lines, line, message", [
    ([{"text": "ok"}, '{"text": "broken'], 2, "malformed JSON"),
    ([{"text": "ok"}, {"txt": "no text"}], 2, "missing field 'text'"),
    ([{"text": 3}], 1, "field 'text' must be a string"),
    ([{"text": "ok"}, {"text": "   "}], 2, "field 'text' is empty"),
    ([[1, 2]], 1, "expected a JSON object"),
    ([{"text": "a", "id": "x"}, {"text": "b", "id": "x"}], 2, "duplicate example id 'x'"),
    ([{"text": "a", "id": [1]}], 1, "field 'id' must be a string or an integer"),
])
def test_upstream_bad_input_names_file_and_line(tmp_path, lines, line, message):
    f = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=message) as e:
        read_upstream(f)
    assert f"{f}:{line}:" in str(e.value)


def test_upstream_non_utf8_names_the_line(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"text": "fine"}\n{"text": "fine too"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{f}:3: not valid UTF-8"):
        read_upstream(f)


def test_upstream_empty_corpus_and_missing_path(tmp_path):
    f = write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="upstream corpus is empty"):
        read_upstream(f)
    with pytest.raises(ValueError, match="no such file"):
        read_upstream(tmp_path / "nope.jsonl")


def _corpus(sizes: dict[str, int]):
    from jaxforget.data.readers import UpstreamExample

    return [UpstreamExample(f"{s}{i}", f"text {s} {i}", s, f"f:{i}") for s, n in sizes.items() for i in range(n)]


def test_sample_upstream_is_seeded_and_keeps_corpus_order():
    corpus = _corpus({"a": 50, "b": 30, "c": 20})
    s0 = sample_upstream(corpus, 40, seed=0)
    assert [e.id for e in s0] == [e.id for e in sample_upstream(corpus, 40, seed=0)]
    assert [e.id for e in s0] != [e.id for e in sample_upstream(corpus, 40, seed=1)]
    pos = [corpus.index(e) for e in s0]
    assert pos == sorted(pos) and len(set(pos)) == 40
    assert sample_upstream(corpus, None, seed=0) == corpus
    with pytest.raises(ValueError, match="cannot sample 101 upstream examples from a corpus of 100"):
        sample_upstream(corpus, 101, seed=0)


def test_sample_upstream_stratified_counts():
    corpus = _corpus({"a": 50, "b": 30, "c": 20})
    prop = sample_upstream(corpus, 10, seed=3, stratify="proportional")
    assert {s: sum(e.source == s for e in prop) for s in "abc"} == {"a": 5, "b": 3, "c": 2}
    bal = sample_upstream(corpus, 66, seed=3, stratify="balanced")
    assert {s: sum(e.source == s for e in bal) for s in "abc"} == {"a": 23, "b": 23, "c": 20}
    assert len({e.id for e in bal}) == 66


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------

def test_tasks_directory_with_every_record_format(tmp_path):
    write_lines(tmp_path / "tasks" / "qa.jsonl", [{"prompt": "Q?", "completion": "A", "extra": 1}])
    write_lines(tmp_path / "tasks" / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}]}])
    write_lines(tmp_path / "tasks" / "lm.jsonl", [{"text": "plain text task"}, {"text": "second"}])
    tasks = read_tasks(tmp_path / "tasks")
    assert sorted(tasks) == ["chat", "lm", "qa"]
    assert (tasks["qa"][0].kind, tasks["qa"][0].prompt, tasks["qa"][0].completion) == ("prompt", "Q?", "A")
    assert tasks["chat"][0].messages == (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))
    assert [e.text for e in tasks["lm"]] == ["plain text task", "second"]
    assert tasks["lm"][1].where == f"{tmp_path / 'tasks' / 'lm.jsonl'}:2"


def test_tasks_single_file_with_task_field(tmp_path):
    f = write_lines(tmp_path / "all.jsonl", [
        {"task": "x", "prompt": "p1", "completion": "c1"}, {"task": "y", "text": "t"},
        {"task": "x", "prompt": "p2", "completion": "c2"}])
    tasks = read_tasks(f)
    assert {k: len(v) for k, v in tasks.items()} == {"x": 2, "y": 1}
    assert [e.completion for e in tasks["x"]] == ["c1", "c2"]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "no completion"}, "missing field 'completion'"),
    ({"question": "?"}, "missing field: a task record needs"),
    ({"prompt": "p", "completion": ""}, "field 'completion' is empty"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "has role 'robot'"),
    ({"messages": [{"role": "assistant"}]}, r"messages\[0\]: missing field 'content'"),
    ({"messages": "hello"}, "must be a non-empty list"),
    ({"task": "other", "text": "x"}, "differs from the file's task 'good'"),
])
def test_task_bad_records_name_file_and_line(tmp_path, record, message):
    f = write_lines(tmp_path / "tasks" / "good.jsonl", [{"text": "fine"}, record])
    with pytest.raises(ValueError, match=message) as e:
        read_tasks(tmp_path / "tasks")
    assert f"{f}:2:" in str(e.value)


def test_task_file_errors(tmp_path):
    write_lines(tmp_path / "tasks" / "a.jsonl", [{"text": "fine"}])
    empty = write_lines(tmp_path / "tasks" / "empty.jsonl", [""])
    with pytest.raises(ValueError, match=rf"{empty}: empty task"):
        read_tasks(tmp_path / "tasks")
    single = write_lines(tmp_path / "one.jsonl", [{"task": "a", "text": "x"}, {"text": "no task"}])
    with pytest.raises(ValueError, match=rf"{single}:2: missing field 'task'"):
        read_tasks(single)
    bad = tmp_path / "bin" / "t.jsonl"
    bad.parent.mkdir()
    bad.write_bytes(b'{"text": "ok"}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid UTF-8"):
        read_tasks(tmp_path / "bin")


def test_split_task_is_seeded_per_task_and_a_partition(tmp_path):
    write_lines(tmp_path / "t" / "alpha.jsonl", [{"text": f"a{i}"} for i in range(50)])
    write_lines(tmp_path / "t" / "beta.jsonl", [{"text": f"b{i}"} for i in range(7)])
    tasks = read_tasks(tmp_path / "t")
    train, val = split_task(tasks["alpha"], val_fraction=0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert sorted(e.text for e in train + val) == sorted(e.text for e in tasks["alpha"])
    assert [e.where for e in train] == sorted((e.where for e in train), key=lambda w: int(w.rsplit(":", 1)[1]))
    again = split_task(tasks["alpha"], val_fraction=0.2, seed=0)[1]
    assert [e.text for e in again] == [e.text for e in val]
    assert [e.text for e in split_task(tasks["alpha"], val_fraction=0.2, seed=1)[1]] != [e.text for e in val]
    # the same task under another name gets another split: the seed mixes in the task name
    renamed = [type(e)("gamma", e.where, text=e.text) for e in tasks["alpha"]]
    assert [e.text for e in split_task(renamed, val_fraction=0.2, seed=0)[1]] != [e.text for e in val]
    tr, va = split_task(tasks["beta"], val_fraction=0.01, seed=0)
    assert (len(tr), len(va)) == (6, 1)
    assert split_task(tasks["beta"], val_fraction=0.5, seed=0, max_val=2)[1].__len__() == 2


def test_a_utf8_byte_order_mark_opening_a_jsonl_file_is_accepted(tmp_path):
    upstream, tasks = tmp_path / "up.jsonl", tmp_path / "tasks" / "qa.jsonl"
    tasks.parent.mkdir()
    upstream.write_bytes('\ufeff{"text": "hello", "id": "a"}\n{"text": "world", "id": "b"}\n'.encode("utf-8"))
    tasks.write_bytes('\ufeff{"prompt": "Q?", "completion": "A"}\n'.encode("utf-8"))
    assert [ex.id for ex in read_upstream(upstream)] == ["a", "b"]
    assert read_tasks(tasks.parent)["qa"][0].completion == "A"
    # only at the start of a file: elsewhere it is a character of a malformed line
    upstream.write_bytes('{"text": "hello"}\n\ufeff{"text": "world"}\n'.encode("utf-8"))
    with pytest.raises(ValueError, match=f"{upstream}:2: malformed JSON"):
        read_upstream(upstream)
