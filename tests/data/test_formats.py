"""Native formats (.jsonl, .jsonl.gz / .json.gz, Parquet, save_to_disk directories), presets and field
mapping, streamed stratified sampling, and bad input naming file and record. Fixtures are built in tmp dirs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from jaxforget.data.fields import field_map
from jaxforget.data.readers import (read_task_file, read_tasks, read_upstream, sample_upstream, sample_upstream_files)

DOLMA = [dict(text=f"doc {i} " * (i + 1), id=f"d{i}", source=["web", "books", "code"][i % 3], added="2023")
         for i in range(12)]
PILE = [dict(text=f"pile {i} " + "x" * 100, meta=dict(pile_set_name=["ArXiv", "Github"][i % 2])) for i in range(6)]  # > 100 chars
FLAN = [dict(inputs=f"q{i}?", targets=f"a{i}", task_name=["anli", "boolq"][i % 2]) for i in range(6)]
DOLLY = [dict(instruction="Name a colour.", context="", response="Blue.", category="open_qa"),
         dict(instruction="Who wins?", context="Ana beat Bo.", response="Ana.", category="closed_qa")]
TULU = [dict(dataset="oasst", id="t0", messages=[dict(role="system", content="Be brief."),
                                                 dict(role="user", content="Hi"),
                                                 dict(role="assistant", content="Hello!"),
                                                 dict(role="user", content="More"),
                                                 dict(role="assistant", content="No.")])]


def write_jsonl(path: Path, records) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def write_parquet(path: Path, records) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=4)
    return path


def write_save_to_disk(path: Path, records) -> Path:
    """The layout datasets.Dataset.save_to_disk writes (state.json + Arrow stream files), made with pyarrow."""
    pa = pytest.importorskip("pyarrow")
    path.mkdir(parents=True)
    table = pa.Table.from_pylist(records)
    names = []
    for k, part in enumerate((table.slice(0, len(records) // 2), table.slice(len(records) // 2))):
        names.append(f"data-{k:05d}-of-00002.arrow")
        with pa.OSFile(str(path / names[-1]), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(part, max_chunksize=3)
    (path / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (path / "dataset_info.json").write_text("{}")
    return path


WRITERS = {"jsonl": lambda p, r: write_jsonl(p.with_suffix(".jsonl"), r),
           "jsonl.gz": lambda p, r: write_jsonl(p.with_suffix(".jsonl.gz"), r),
           "json.gz": lambda p, r: write_jsonl(p.with_suffix(".json.gz"), r),
           "parquet": lambda p, r: write_parquet(p.with_suffix(".parquet"), r),
           "save_to_disk": write_save_to_disk}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_dolma_records_read_the_same_from_every_format(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / "dolma", DOLMA)
    got = read_upstream(path, field_map("dolma", kind="upstream"))
    assert [(e.id, e.text, e.source) for e in got] == [(r["id"], r["text"], r["source"]) for r in DOLMA]
    assert got[5].where.endswith(":6") or got[5].where.endswith(":row 6")  # the record, 1-based


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet", "save_to_disk"])
def test_pile_preset_takes_the_domain_from_meta(tmp_path, fmt):
    got = read_upstream(WRITERS[fmt](tmp_path / "pile", PILE), field_map("pile", kind="upstream"))
    assert [e.source for e in got] == ["ArXiv", "Github"] * 3
    assert [e.text for e in got] == [r["text"] for r in PILE] and got[0].id == "pile:1"


def test_field_overrides_rename_and_become_required(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [dict(content="a b", doc_id=7, meta=dict(lang="en"))])
    got = read_upstream(f, field_map("auto", ["text=content", "id=doc_id", "source=meta.lang"], kind="upstream"))
    assert (got[0].id, got[0].text, got[0].source) == ("7", "a b", "en")
    g = write_jsonl(tmp_path / "d.jsonl", [dict(content="a", doc_id=1), dict(content="b")])
    with pytest.raises(ValueError, match=r"d\.jsonl:2: missing field 'doc_id' \(id under the 'auto' field mapping\)"):
        read_upstream(g, field_map("auto", ["text=content", "id=doc_id"], kind="upstream"))


@pytest.mark.parametrize("fmt", ["json.gz", "parquet", "save_to_disk"])
def test_task_presets_flan_dolly_tulu(tmp_path, fmt):
    flan = read_tasks(WRITERS[fmt](tmp_path / "flan", FLAN), field_map("flan", kind="task"))
    assert sorted(flan) == ["anli", "boolq"] and len(flan["anli"]) == 3
    assert (flan["boolq"][0].prompt, flan["boolq"][0].completion) == ("q1?", "a1")
    dolly = read_tasks(WRITERS[fmt](tmp_path / "dolly", DOLLY), field_map("dolly", kind="task"))
    assert dolly["open_qa"][0].prompt == "Name a colour." and dolly["open_qa"][0].completion == "Blue."
    assert dolly["closed_qa"][0].prompt == "Context: Ana beat Bo.\n\nWho wins?"
    tulu = read_tasks(WRITERS[fmt](tmp_path / "tulu", TULU), field_map("tulu", kind="task"))
    assert tulu["oasst"][0].messages == (("user", "Hi"), ("assistant", "Hello!"))


def test_a_directory_of_files_in_mixed_formats_is_one_task_per_file(tmp_path):
    write_jsonl(tmp_path / "t" / "a.jsonl.gz", FLAN[:2]) if (tmp_path / "t").mkdir() is None else None
    write_parquet(tmp_path / "t" / "b.parquet", FLAN[2:])
    write_save_to_disk(tmp_path / "t" / "c", FLAN)
    tasks = read_tasks(tmp_path / "t", field_map("flan", kind="task"))
    assert {k: len(v) for k, v in tasks.items()} == {"a": 2, "b": 4, "c": 6}


def test_datasetdict_directory_reads_its_splits_in_order(tmp_path):
    root = tmp_path / "dd"
    write_save_to_disk(root / "train", DOLMA[:6])
    write_save_to_disk(root / "validation", DOLMA[6:])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    assert [e.id for e in read_upstream(root, field_map("dolma", kind="upstream"))] == [r["id"] for r in DOLMA]


# --- bad input ---------------------------------------------------------------------------------

def test_unknown_preset_or_role_is_refused_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task preset 'alpaca'; known: \['auto', 'dolly', 'flan', 'tulu'\]"):
        field_map("alpaca", kind="task")
    with pytest.raises(ValueError, match=r"unknown role 'answer' for preset 'flan'; its roles: \['completion', "):
        field_map("flan", ["answer=output"], kind="task")
    with pytest.raises(ValueError, match="expected role=field"):
        field_map("dolma", ["text"], kind="upstream")


def test_a_record_missing_the_mapped_field_names_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "flan.jsonl", [FLAN[0], dict(inputs="x")])
    with pytest.raises(ValueError, match=r"flan\.jsonl:2: missing field 'targets' \(completion under the 'flan'"):
        read_task_file(f, "t", fields=field_map("flan", kind="task"))


def test_a_truncated_gzip_names_the_file_and_the_line_it_broke_at(tmp_path):
    f = write_jsonl(tmp_path / "big.jsonl.gz", [dict(text="word " * 50, id=i) for i in range(400)])
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"big\.jsonl\.gz:\d+: truncated or corrupt gzip file after line \d+"):
        read_upstream(f)


def test_parquet_without_the_column_fails_before_reading_rows(tmp_path):
    f = write_parquet(tmp_path / "p.parquet", [dict(body="x", id="a")])
    with pytest.raises(ValueError, match=r"p\.parquet: no column 'text' .*the file has \['body', 'id'\]"):
        read_upstream(f, field_map("dolma", kind="upstream"))


def test_a_mistyped_parquet_value_names_the_row(tmp_path):
    f = write_parquet(tmp_path / "p.parquet", [dict(text="x", id="a", source="s"), dict(text="", id="b", source="s")])
    with pytest.raises(ValueError, match=r"p\.parquet:row 2: field 'text' is empty"):
        read_upstream(f, field_map("dolma", kind="upstream"))


def test_tulu_without_an_answer_turn_is_refused(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [dict(dataset="x", messages=[dict(role="user", content="hi")])])
    with pytest.raises(ValueError, match=r"t\.jsonl:1: no user turn followed by an assistant turn"):
        read_tasks(f, field_map("tulu", kind="task"))


# --- large corpora -------------------------------------------------------------------------------

@pytest.mark.parametrize("stratify", ["none", "proportional", "balanced"])
def test_streamed_sample_equals_the_in_memory_sample(tmp_path, stratify):
    rng = np.random.default_rng(0)
    recs = [dict(text=f"t{i}", id=f"x{i}", source=f"s{rng.integers(0, 5) ** 2}") for i in range(3000)]
    f = write_jsonl(tmp_path / "c.jsonl.gz", recs)
    streamed = sample_upstream_files(f, 200, seed=3, stratify=stratify)
    assert streamed == sample_upstream(read_upstream(f), 200, seed=3, stratify=stratify)
    assert len({e.id for e in streamed}) == 200
    assert streamed != sample_upstream_files(f, 200, seed=4, stratify=stratify)


def test_streamed_sample_holds_no_more_than_the_sample(tmp_path):
    """A 20k-line corpus sampled to 100: peak traced Python memory far below what its records would take."""
    import tracemalloc

    f = tmp_path / "big.jsonl"
    with open(f, "w") as out:
        for i in range(20_000):
            out.write(f'{{"text": "document number {i} with some words", "id": "d{i}", "source": "s{i % 7}"}}\n')
    tracemalloc.start()
    got = sample_upstream_files(f, 100, seed=0, stratify="proportional")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(got) == 100 and [int(e.id[1:]) for e in got] == sorted(int(e.id[1:]) for e in got)
    held = read_upstream(f)
    assert peak < 1e6  # holding the corpus would take > 8 MB (20k examples of ~400 bytes)
    assert len(held) == 20_000


def test_collect_refuses_a_bad_field_mapping_at_start():
    from jaxforget.collect.config import CollectConfig, DataConfig, check_config

    with pytest.raises(ValueError, match=r"--data.task-fields: .*unknown role 'answer' for preset 'flan'"):
        check_config(CollectConfig(data=DataConfig(task_preset="flan", task_fields=("answer=output",))))
