"""Data: readers for upstream corpora and tasks, tokenisation with loss masks, fixed-shape batches,
and the built-in world (a synthetic multi-domain corpus and task suite).

    corpus = read_upstream("dolma_sample.jsonl")                       # or a directory, or .txt files
    upstream = sample_upstream(corpus, 2000, seed=0, stratify="balanced")
    tasks = read_tasks("tasks/")                                       # one JSONL per task
    train, val = split_task(tasks["boolq"], val_fraction=0.1, seed=0)
    examples = tokenize_tasks(train, tokenizer, TokenizeConfig(max_len=96))
    for batch in Batcher(examples, batch_size=8, buckets=(32, 64, 96), seed=0).batches(300):
        ...                                                            # (8, T) arrays, T in the buckets

`world_dir = ensure_world(WorldConfig(seed=0))` builds (once, cached) the built-in world:
`upstream.jsonl`, `tasks/*.jsonl` in exactly the formats above, and a BPE `tokenizer/`.
"""

from jaxforget.data.batching import Batch, Batcher, assign_buckets, bucket_lengths, collate, num_train_steps, plan_epoch
from jaxforget.data.packing import PackedBatch, first_fit_decreasing, pack_examples, padding_fraction
from jaxforget.data.cache import build_once, cache_root, config_key
from jaxforget.data.readers import (
    TaskExample,
    UpstreamExample,
    parse_task_record,
    read_jsonl,
    read_tasks,
    read_upstream,
    sample_upstream,
    split_task,
)
from jaxforget.data.tokenize import (
    TokenizeConfig,
    Tokenized,
    bos_eos,
    chunk_upstream,
    load_chat_template,
    plain_segments,
    tokenize_tasks,
    tokenize_upstream,
)
from jaxforget.data.tokenizer_train import load_tokenizer, save_tokenizer, train_bpe
from jaxforget.data.world import (
    DOMAINS,
    TASKS,
    World,
    WorldConfig,
    ensure_world,
    export_world,
    make_heldout,
    make_world,
)

__all__ = [
    "Batch", "Batcher", "assign_buckets", "bucket_lengths", "collate", "num_train_steps", "plan_epoch",
    "PackedBatch", "first_fit_decreasing", "pack_examples", "padding_fraction",
    "build_once", "cache_root", "config_key",
    "TaskExample", "UpstreamExample", "parse_task_record", "read_jsonl", "read_tasks", "read_upstream",
    "sample_upstream", "split_task",
    "TokenizeConfig", "Tokenized", "bos_eos", "chunk_upstream", "load_chat_template", "plain_segments", "tokenize_tasks", "tokenize_upstream",
    "load_tokenizer", "save_tokenizer", "train_bpe",
    "DOMAINS", "TASKS", "World", "WorldConfig", "ensure_world", "export_world", "make_heldout", "make_world",
]
