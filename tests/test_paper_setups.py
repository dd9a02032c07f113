"""Each of the paper's setups end to end, on a miniature of its real file layout filled with the built-in
world's texts and the built-in base model (an HF directory): the rows and columns of Z, and Z itself against
a padded, unpacked transformers + torch recomputation from the fine-tuned models the run saved. Also: a bad task file is
refused before the upstream corpus, the model or the run directory are touched."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from jaxforget.collect import collect
from jaxforget.collect.config import CollectConfig, DataConfig, EvalConfig, ModelConfig, TrainConfig
from jaxforget.store import RunDir
from tests.data.test_paper_layouts import (DOLLY_CATEGORIES, TULU_ROWS, dolly_layout, dolma_layout, flan_layout,
                                           pile_layout, tulu_layout, write_lines)

torch = pytest.importorskip("torch")
from tests.models import tiny_hf  # noqa: E402  (needs torch)

# OLMo-7B-Instruct's template shape (eos first, then user and assistant markers), rendered with the base
# model's own eos, as the paper rendered every model's tasks with an instruct model's template
TEMPLATE = ("{{ eos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
            "{% else %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclasses.dataclass
class Base:
    model: Path
    texts: list[str]
    """Upstream documents of more than 100 characters, in the language the model was trained on."""
    pairs: list[list[tuple[str, str]]]
    """(prompt, answer) lists of the built-in world's tasks."""


@pytest.fixture(scope="module")
def base(cache, tmp_path_factory) -> Base:
    """The built-in base model (a random HF model predicts no better than chance, which collect refuses as a
    wrecked fine-tune) and the built-in world's texts, to fill the paper's layouts with."""
    from test_collect import tiny

    from jaxforget.data.world import ensure_world
    from jaxforget.pretrain import ensure_base_model

    ref = tiny(tmp_path_factory.mktemp("unused"))
    model = ensure_base_model(ref.world, ref.base, ref.pretrain, echo=lambda *_: None)
    world = ensure_world(ref.world, vocab_size=ref.base.vocab_size)
    texts = [t for line in (world / "upstream.jsonl").read_text().splitlines()
             if len(t := json.loads(line)["text"]) > 100][:40]
    pairs = []
    for f in sorted((world / "tasks").glob("*.jsonl"))[:: 4][:11]:
        records = [json.loads(line) for line in f.read_text().splitlines()[:8]]
        pairs.append([(r["prompt"], r["completion"]) for r in records if "prompt" in r])
    (model.parent / "olmo_instruct").mkdir(exist_ok=True)
    (model.parent / "olmo_instruct" / "tokenizer_config.json").write_text(json.dumps(dict(chat_template=TEMPLATE)))
    return Base(model, texts, [p for p in pairs if p])


def config(out: Path, model: Path, n_upstream: int, **data) -> CollectConfig:
    return CollectConfig(out=out, model=ModelConfig(path=model), quiet=True, save_models=True,
                         data=DataConfig(max_len=64, task_max_len=48, n_upstream=n_upstream, **data),
                         train=TrainConfig(max_steps=3, batch_size=4, lr=3e-3, warmup_steps=1, buckets=(48,),
                                           checkpoint_every=0),
                         eval=EvalConfig(batch_size=8, buckets=(64,)))


def torch_nll(model_dir: Path, ids_list) -> np.ndarray:
    """Mean NLL of tokens 2..end of each example, one unpadded sequence at a time, float64 log-softmax."""
    model = tiny_hf.load_hf(model_dir)
    out = []
    with torch.no_grad():
        for ids in ids_list:
            x = torch.tensor([ids], dtype=torch.long)
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
            out.append(float(-logp.gather(-1, x[0, 1:, None]).mean()))
    return np.asarray(out)


def check_run(out: Path, model: Path, tasks: list[str], n_columns: int, upstream_ids=None) -> dict:
    """Rows, columns, and every row of Z against the reference (Z[i] = NLL(f_i) - NLL(f_0) per example)."""
    run = RunDir(out)
    meta = run.read_meta()
    data = np.load(run.forgetting_path)
    assert meta["task_names"] == tasks and data["Z"].shape == (len(tasks), n_columns)
    if upstream_ids is not None:
        assert meta["example_ids"] == upstream_ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    texts = [json.loads(line)["text"] for line in (out / "upstream.jsonl").read_text().splitlines()]
    ids = [tok(t)["input_ids"][:64] for t in texts]  # --data.nll-tokens paper: tokenizer(text), cut to max_len
    assert all(len(t) < 500 for t in texts)  # upstream.jsonl keeps 500 characters: these documents whole
    before = torch_nll(model, ids)
    np.testing.assert_allclose(data["nll_before"], before, atol=1e-5)
    for i, name in enumerate(tasks[:2]):  # two rows are enough to check the columns line up
        np.testing.assert_allclose(data["Z"][i], torch_nll(out / "models" / name, ids) - before, atol=2e-5)
    assert np.abs(data["Z"]).max() > 1e-3  # fine-tuning changed something
    return meta


def test_pile_with_flan_tasks_and_an_instruct_template(base, tmp_path):
    """Pile `.jsonl.zst` shards in two folders (same file name), > 100 characters only; FLAN `_train` /
    `_validation` JSON arrays (one gzipped), trained on their train file; the tasks rendered with another
    model's chat template; packed evaluation."""
    pile = pile_layout(tmp_path / "pile", texts=base.texts)
    flan = flan_layout(tmp_path / "flan", pairs=base.pairs)
    out = tmp_path / "run"
    cfg = config(out, base.model, 8, upstream=pile, upstream_preset="pile", tasks=flan, task_preset="flan",
                 chat_template=base.model.parent / "olmo_instruct")
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, pack=True))
    assert collect(cfg, echo=lambda *_: None) == 0
    ids = [f"{d}/00:{i}" for d in ("train", "val") for i in (2, 3, 5, 6)]
    check_run(out, base.model, ["anli_r1", "cosmos_qa"], 8, ids)
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert [t["n_train"] for t in tasks] == [6, 6]  # the _train file, not a draw over train + validation


@pytest.mark.slow  # 6-20 s (11 tasks trained); the 11 rows are checked fast in tests/data/test_paper_layouts.py
def test_tulu_tasks_on_dolma_shards_with_a_one_token_document(base, tmp_path):
    """Dolma `.json.gz` shards, one holding a one-token document: left out and named in meta.json, the run
    goes on; Tulu's 16 subsets give 11 rows (two checked against the reference)."""
    dolma = dolma_layout(tmp_path / "dolma", texts=base.texts)
    write_lines(dolma / "v1_6-sample" / "wiki-0000.json.gz", [dict(text="7", id="wiki-0", source="wiki")])
    out = tmp_path / "run"
    cfg = config(out, base.model, 13, upstream=dolma, upstream_preset="dolma",
                 tasks=tulu_layout(tmp_path / "tulu", pairs=base.pairs), task_preset="tulu", val_fraction=0.0)
    assert collect(cfg, echo=lambda *_: None) == 0
    meta = check_run(out, base.model, TULU_ROWS, 12)
    where = f"{dolma}/v1_6-sample/wiki-0000.json.gz:1"
    assert meta["upstream_skipped"] == [dict(id="wiki-0", where=where)]


@pytest.mark.slow  # 2-20 s (8 tasks trained); the rows and the split are checked fast in tests/data
def test_dolly_categories_with_the_papers_split(base, tmp_path):
    out = tmp_path / "run"
    cfg = config(out, base.model, 12, upstream=dolma_layout(tmp_path / "dolma", texts=base.texts),
                 upstream_preset="dolma", tasks=dolly_layout(tmp_path / "dolly", pairs=base.pairs),
                 task_preset="dolly", val_fraction=0.2)
    assert collect(cfg, echo=lambda *_: None) == 0
    meta = check_run(out, base.model, sorted(DOLLY_CATEGORIES), 12)
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert [t["n_train"] for t in tasks] == [4] * 8 and meta["upstream_skipped"] == []


@pytest.mark.slow  # 2-20 s; the chunking is checked fast in tests/data/test_paper_layouts.py
def test_redpajama_chunks_for_mpt(base, tmp_path):
    """RedPajama sample files, documents tokenised with EOS, cut into 32-token chunks, 6 chunks drawn; Z's
    columns against chunks cut by hand from the tokenizer's output."""
    from transformers import AutoTokenizer

    for k, source in enumerate(["arxiv", "book", "c4"]):
        write_lines(tmp_path / "redpajama" / f"{source}_sample.jsonl",
                    [dict(text=t, meta=dict(source=source)) for t in base.texts[4 * k:4 * k + 4]])
    out = tmp_path / "run"
    cfg = config(out, base.model, 6, upstream=tmp_path / "redpajama", tasks=flan_layout(tmp_path / "flan",
                 pairs=base.pairs), task_preset="flan", chunk_tokens=32, stratify="none")
    assert collect(cfg, echo=lambda *_: None) == 0
    tok = AutoTokenizer.from_pretrained(str(base.model))
    stream = [i for t in base.texts[:12] for i in tok(t)["input_ids"] + [tok.eos_token_id]]
    chunks = {}
    for j in range(len(stream) // 32):
        doc, offset = 0, 32 * j  # the document the chunk starts in, and where in it
        lengths = [len(tok(t)["input_ids"]) + 1 for t in base.texts[:12]]
        while offset >= lengths[doc]:
            offset, doc = offset - lengths[doc], doc + 1
        chunks[f"{['arxiv', 'book', 'c4'][doc // 4]}_sample:{doc % 4 + 1}@{offset}"] = stream[32 * j:32 * j + 32]
    meta = RunDir(out).read_meta()
    assert len(meta["example_ids"]) == 6 and set(meta["example_ids"]) <= set(chunks)
    data = np.load(RunDir(out).forgetting_path)
    ids = [chunks[i] for i in meta["example_ids"]]
    before = torch_nll(base.model, ids)
    np.testing.assert_allclose(data["nll_before"], before, atol=1e-5)
    np.testing.assert_allclose(data["Z"][0], torch_nll(out / "models" / "anli_r1", ids) - before, atol=2e-5)


def test_a_bad_task_file_is_refused_before_the_corpus_model_or_run_directory(base, tmp_path, monkeypatch):
    from jaxforget.collect import setup as setup_module

    flan = flan_layout(tmp_path / "flan")
    (flan / "boolq_train.json").write_text('[{"inputs": "q", "targets": "a"}, {"inputs": "q"}]')
    touched = []
    monkeypatch.setattr(setup_module.readers, "sample_upstream_files", lambda *a, **k: touched.append(a))
    monkeypatch.setattr(setup_module.models, "load", lambda *a, **k: touched.append(a))
    out = tmp_path / "run"
    cfg = config(out, base.model, 8, upstream=pile_layout(tmp_path / "pile"), upstream_preset="pile", tasks=flan,
                 task_preset="flan")
    with pytest.raises(ValueError, match=rf"{flan}/boolq_train\.json:item 2: missing field 'targets'"):
        collect(cfg, echo=lambda *_: None)
    assert touched == [] and not out.exists()
    em = write_lines(tmp_path / "em.jsonl", [dict(prompt="q", completion="a"), dict(prompt="q")])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tasks=flan_layout(tmp_path / "flan2"),
                                                            em_upstream=em),
                              eval=dataclasses.replace(cfg.eval, metrics=("nll", "em")))
    with pytest.raises(ValueError, match=rf"{em}:2: missing field 'completion'"):
        collect(cfg, echo=lambda *_: None)
    assert touched == [] and not out.exists()


def test_stack_runs_makes_the_papers_85_rows_from_three_runs(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from stack_runs import main

    ids = np.array(["a:1", "a:2", "b:1"])
    parts = {"flan": 66, "tulu": 11, "dolly": 8}
    for k, (name, m) in enumerate(parts.items()):
        np.savez(tmp_path / f"{name}.npz", Z=np.full((m, 3), k, np.float32), example_ids=ids,
                 task_names=np.array([f"{name}{i}" for i in range(m)]))
    out = tmp_path / "paper85.npz"
    assert main([str(tmp_path / f"{n}.npz") for n in parts] + ["--out", str(out)]) == 0
    got = np.load(out)
    assert got["Z"].shape == (85, 3) and got["task_names"][66] == "tulu0" and got["Z"][84, 0] == 2
    np.savez(tmp_path / "other.npz", Z=np.zeros((2, 3), np.float32), example_ids=ids[::-1], task_names=["x", "y"])
    assert main([str(tmp_path / "flan.npz"), str(tmp_path / "other.npz"), "--out", str(out)]) == 2
    assert "other.npz: its upstream examples differ from" in capsys.readouterr().err


def test_the_exact_match_prompts_read_from_the_flan_directory(tmp_path):
    from jaxforget.collect.setup import read_em_records

    flan = flan_layout(tmp_path / "flan")
    cfg = CollectConfig(data=DataConfig(em_upstream=flan, em_preset="flan"), eval=EvalConfig(metrics=("nll", "em")))
    records = read_em_records(cfg)
    assert len(records) == 16 and records[0].prompt == "w10 w0 question" and records[-1].completion == "w41"
    assert len({r.where for r in records}) == 16  # the exact-match ids: file and item, unique
