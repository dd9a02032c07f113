"""The paper's corpora and task collections in miniature, in their native layouts (file names, nesting, JSON
arrays vs lines, .gz, .zst), read as the paper's code read them: rows (tasks), columns (upstream ids) and
the rendered examples. The Z of each setup against a padded, unpacked transformers reference is in
tests/test_paper_setups.py."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from jaxforget.data.fields import field_map
from jaxforget.data.readers import read_tasks, read_upstream, sample_upstream_files, split_task

# allenai/tulu-v2-sft-mixture's `dataset` values: 16 subsets, 11 sources once the six science.* are one
TULU_SUBSETS = ["flan_v2", "cot", "oasst1", "lima", "code_alpaca", "gpt4_alpaca", "open_orca", "sharegpt",
                "wizardlm", "hard_coded", "science.evidence_inference", "science.qasper_truncated_4000",
                "science.scifact_json", "science.scitldr_aic", "science.scierc_ner", "science.scierc_relation"]
TULU_ROWS = sorted({s.split(".")[0] for s in TULU_SUBSETS})
DOLLY_CATEGORIES = ["open_qa", "general_qa", "classification", "closed_qa", "brainstorming",
                    "information_extraction", "summarization", "creative_writing"]


def write_lines(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def write_array(path: Path, records) -> Path:
    """A JSON array, as FLAN's `{task}_train.json` (json.dump of a list), gzipped when the name says so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(records, indent=1).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _pair(pairs, k: int, i: int, default: tuple[str, str]) -> tuple[str, str]:
    """The i-th (prompt, answer) of row k: from `pairs` (a list of lists) when given, else `default`."""
    return pairs[k % len(pairs)][i % len(pairs[k % len(pairs)])] if pairs else default


def tulu_layout(root: Path, pairs=None) -> Path:
    """tulu_v2_data.jsonl: two records per subset, a system turn and a second exchange in some."""
    records = []
    for k, subset in enumerate(TULU_SUBSETS):
        for r in range(2):
            q, a = _pair(pairs, k, r, (f"w{k} w{r} ask", f"w{k} answer w{r}"))
            msgs = [dict(role="user", content=q), dict(role="assistant", content=a)]
            if r == 1:
                msgs = [dict(role="system", content="w9 be brief")] + msgs + [
                    dict(role="user", content="w8 again"), dict(role="assistant", content="w7 no")]
            records.append(dict(dataset=subset, id=f"{subset}_{r}", messages=msgs))
    return write_lines(root / "tulu_v2_data.jsonl", records)


def flan_layout(root: Path, tasks=("anli_r1", "cosmos_qa"), n_train=6, n_val=2, pairs=None) -> Path:
    """FLAN-2021 10templates: `{task}_train.json` / `{task}_validation.json`, JSON arrays; one task gzipped."""
    for t, task in enumerate(tasks):
        gz = ".gz" if t % 2 else ""
        train = [_pair(pairs, t, i, (f"w{10 + t} w{i} question", f"w{20 + i}")) for i in range(n_train)]
        val = [_pair(pairs, t, n_train + i, (f"w{10 + t} w{i} held", f"w{40 + i}")) for i in range(n_val)]
        write_array(root / f"{task}_train.json{gz}", [dict(inputs=q, targets=a) for q, a in train])
        write_array(root / f"{task}_validation.json{gz}", [dict(inputs=q, targets=a) for q, a in val])
    return root


def dolly_layout(root: Path, per_category=5, pairs=None) -> Path:
    """databricks-dolly-15k.jsonl: instruction, context, response, category."""
    records = []
    for c, cat in enumerate(DOLLY_CATEGORIES):
        for i in range(per_category):
            context = ["", "w5 w6 passage", "   "][i % 3]  # empty, a passage, whitespace only
            q, a = _pair(pairs, c, i, (f"w{c} w{i} do", f"w{30 + i} done"))
            records.append(dict(instruction=q, context=context, response=a, category=cat))
    return write_lines(root / "databricks-dolly-15k.jsonl", records)


def pile_layout(root: Path, n=6, texts=None) -> Path:
    """The Pile: `train/00.jsonl.zst`, `val/00.jsonl.zst` (two folders holding a file of the same name),
    records text + meta.pile_set_name; every third document 100 characters or fewer."""
    def docs(k):
        long = [texts[(k * n + i) % len(texts)] if texts else " ".join(f"w{(3 * i + j) % 200 + 3}" for j in range(30))
                for i in range(n)]
        return [dict(text=long[i] if i % 3 else f"w{i} short", meta=dict(pile_set_name=["Pile-CC", "ArXiv", "Github"][(i + k) % 3]))
                for i in range(n)]
    write_lines(root / "train" / "00.jsonl.zst", docs(0))
    write_lines(root / "val" / "00.jsonl.zst", docs(1))
    return root


def dolma_layout(root: Path, texts=None) -> Path:
    """Dolma v1.6 sample shards: `{source}-{k:04d}.json.gz`, JSON lines of text / id / source."""
    for s, source in enumerate(["books", "c4", "stack"]):
        write_lines(root / f"v1_6-sample/{source}-0000.json.gz",
                    [dict(text=texts[(4 * s + i) % len(texts)] if texts else f"w{s} w{i} " * 4, id=f"{source}-{i}",
                          source=source, added="2023") for i in range(4)])
    return root


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------

def test_tulu_groups_by_the_dataset_prefix_first_user_to_first_assistant(tmp_path):
    tasks = read_tasks(tulu_layout(tmp_path), field_map("tulu", kind="task"))
    assert sorted(tasks) == TULU_ROWS and len(tasks) == 11  # not the 16 subsets
    assert len(tasks["science"]) == 12 and len(tasks["lima"]) == 2
    second = tasks["lima"][1]  # system turn skipped, the second exchange dropped
    assert second.messages == (("user", "w3 w1 ask"), ("assistant", "w3 answer w1"))


def test_flan_array_files_are_one_task_per_stem_with_their_splits(tmp_path):
    tasks = read_tasks(flan_layout(tmp_path), field_map("flan", kind="task"))
    assert list(tasks) == ["anli_r1", "cosmos_qa"]  # _train and _validation are one task; .gz read alike
    train, val = split_task(tasks["cosmos_qa"], val_fraction=0.5, seed=3)  # the files' split, no draw
    assert [e.completion for e in train] == [f"w{20 + i}" for i in range(6)]
    assert [e.completion for e in val] == ["w40", "w41"]
    assert train[0].prompt == "w11 w0 question" and train[0].where.endswith("cosmos_qa_train.json.gz:item 1")


@pytest.mark.parametrize("files, message", [
    (["boolq_validation.json"], r"boolq_validation\.json: task 'boolq' has no boolq_train file to train on"),
    (["boolq_train.json", "boolq_train.json.gz"], r"task 'boolq' is also read from .*boolq_train\.json"),
    (["boolq.jsonl", "boolq_train.json"], r"task 'boolq' is also read from .*boolq\.jsonl"),
])
def test_flan_split_files_that_do_not_pair_are_refused(tmp_path, files, message):
    for f in files:
        (write_lines if f.endswith("jsonl") else write_array)(tmp_path / f, [dict(inputs="q", targets="a")])
    with pytest.raises(ValueError, match=message):
        read_tasks(tmp_path, field_map("flan", kind="task"))


def test_flan_malformed_array_names_file_and_line(tmp_path):
    f = tmp_path / "boolq_train.json"
    f.write_text('[\n {"inputs": "q", "targets": "a"},\n {"inputs": "q" "targets": "b"}\n]\n')
    with pytest.raises(ValueError, match=rf"{f}:3: malformed JSON \(Expecting ',' delimiter"):
        read_tasks(tmp_path, field_map("flan", kind="task"))
    write_array(f, [dict(inputs="q", targets="a"), ["not", "an", "object"]])
    with pytest.raises(ValueError, match=rf"{f}:item 2: expected a JSON object, got list"):
        read_tasks(tmp_path, field_map("flan", kind="task"))


def test_dolly_rows_by_category_whitespace_context_kept_and_an_80_20_split(tmp_path):
    tasks = read_tasks(dolly_layout(tmp_path), field_map("dolly", kind="task"))
    assert sorted(tasks) == sorted(DOLLY_CATEGORIES)
    prompts = [e.prompt for e in tasks["closed_qa"][:3]]
    assert prompts == ["w3 w0 do", "Context: w5 w6 passage\n\nw3 w1 do", "Context:    \n\nw3 w2 do"]
    train, val = split_task(tasks["closed_qa"], val_fraction=0.2, seed=0)
    assert (len(train), len(val)) == (4, 1)


# ---------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------

def test_pile_zst_long_documents_with_ids_from_the_relative_path(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="jaxforget.data"):
        ex = read_upstream(pile_layout(tmp_path), field_map("pile", kind="upstream"))
    # documents 1, 2, 4, 5 of each file have more than 100 characters; lines keep their numbers
    assert [e.id for e in ex] == [f"{d}/00:{i}" for d in ("train", "val") for i in (2, 3, 5, 6)]
    assert all(len(e.text) > 100 for e in ex) and ex[0].source == "ArXiv"
    assert "passed over 4 document(s) of fewer than 101 characters" in caplog.text


def test_dolma_json_gz_shards(tmp_path):
    ex = read_upstream(dolma_layout(tmp_path), field_map("dolma", kind="upstream"))
    assert [e.id for e in ex][:2] == ["books-0", "books-1"] and len(ex) == 12
    assert sorted({e.source for e in ex}) == ["books", "c4", "stack"]


def test_default_ids_are_stable_across_samples(tmp_path):
    fmap = field_map("pile", kind="upstream")
    every = {e.id: e.text for e in sample_upstream_files(pile_layout(tmp_path), None, seed=0, fields=fmap)}
    for n, seed in ((2, 0), (5, 1), (8, 2)):
        some = sample_upstream_files(tmp_path, n, seed=seed, stratify="none", fields=fmap)
        assert len(some) == n and all(every[e.id] == e.text for e in some)


def test_a_duplicate_id_anywhere_in_the_corpus_fails_whatever_the_sample(tmp_path):
    write_lines(tmp_path / "a.jsonl", [dict(text="one", id="x"), dict(text="two", id="y")])
    write_lines(tmp_path / "b.jsonl", [dict(text="three", id="x")])
    for n in (1, 3):  # even a sample of one, which holds no duplicate, names the corpus's
        with pytest.raises(ValueError, match=r"b\.jsonl:1: duplicate example id 'x' \(first at .*a\.jsonl:1\)"):
            sample_upstream_files(tmp_path, n, seed=0, stratify="none")


def test_the_papers_pile_sample_is_the_first_long_documents(tmp_path):
    fmap = field_map("pile", kind="upstream")
    got = sample_upstream_files(pile_layout(tmp_path), 5, seed=7, stratify="first", fields=fmap)
    assert [e.id for e in got] == ["train/00:2", "train/00:3", "train/00:5", "train/00:6", "val/00:2"]


def test_redpajama_chunks_documents_with_eos_then_samples_chunks(tmp_path):
    """RedPajama-1T sample files (`{source}_sample.jsonl`, text + meta) as the paper read them for MPT: each
    document tokenised with EOS appended, the stream cut into fixed chunks (remainder dropped), chunks drawn."""
    pytest.importorskip("torch")
    from jaxforget.data.tokenize import chunk_upstream
    from tests.models import tiny_hf

    write_lines(tmp_path / "arxiv_sample.jsonl", [dict(text="w3 w4 w5", meta={}), dict(text="w6", meta={})])
    write_lines(tmp_path / "c4_sample.jsonl", [dict(text="w7 w8 w9 w10 w11 w12", meta={})])
    docs = read_upstream(tmp_path)
    tok = tiny_hf.make_tokenizer()  # word-level: w<k> is id k + 3, EOS is 1
    every, toks = chunk_upstream(docs, tok, chunk_tokens=4, n=None, seed=0)
    stream = [6, 7, 8, 1, 9, 1, 10, 11, 12, 13, 14, 15, 1]  # 13 tokens: 3 chunks, one token dropped
    assert [t.ids.tolist() for t in toks] == [stream[0:4], stream[4:8], stream[8:12]]
    assert [e.id for e in every] == ["arxiv_sample:1@0", "arxiv_sample:2@0", "c4_sample:1@2"]
    assert [e.source for e in every] == ["arxiv_sample", "arxiv_sample", "c4_sample"]
    assert every[1].text == "w6 w7 w8" and all(t.loss_mask.tolist() == [False, True, True, True] for t in toks)
    some, _ = chunk_upstream(docs, tok, chunk_tokens=4, n=2, seed=5)
    assert len(some) == 2 and {e.id for e in some} < {e.id for e in every}  # the same ids whatever is drawn
    with pytest.raises(ValueError, match="3 documents give 3 chunks of 4 tokens; cannot sample 4"):
        chunk_upstream(docs, tok, chunk_tokens=4, n=4, seed=0)


def test_a_cut_zst_shard_is_an_error_not_a_shorter_corpus(tmp_path):
    """zstandard's own stream reader ends quietly where a cut download ends; a Pile shard cut short must fail."""
    f = write_lines(tmp_path / "00.jsonl.zst", [dict(text=f"document {i} " * 40) for i in range(200)])
    assert len(read_upstream(f)) == 200
    f.write_bytes(f.read_bytes()[:-9])
    with pytest.raises(ValueError, match=rf"{f}:\d+: truncated or corrupt zstd file after line \d+ \(the file ends "
                                         r"inside a frame\)"):
        read_upstream(f)


def test_tulu_parquet_shards_in_a_directory_are_one_collection(tmp_path):
    """The hub's layout of Tulu v2: `data/train-0000k-of-00003.parquet`, records naming their subset."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in tulu_layout(tmp_path / "jsonl").read_text().splitlines()]
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for k in range(3):
        pq.write_table(pa.Table.from_pylist(records[k::3]), tmp_path / "hub" / "data" / f"train-0000{k}-of-00003.parquet")
    tasks = read_tasks(tmp_path / "hub", field_map("tulu", kind="task"))
    assert sorted(tasks) == TULU_ROWS and sum(map(len, tasks.values())) == 32
    assert tasks["lima"][0].messages == (("user", "w3 w0 ask"), ("assistant", "w3 answer w0"))
