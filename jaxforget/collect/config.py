"""The configuration of ``python -m jaxforget.collect``: one typed dataclass per stage and the checks that
refuse an invalid combination before any work. Imports neither jax nor the models, so ``--help`` is instant."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal

from jaxforget.cli import (Range, above, at_least, config_from_dict, flag_name, out_dir_error, range_errors,
                           to_jsonable)
from jaxforget.data.fields import FieldMap, field_map
from jaxforget.data.world import WorldConfig
from jaxforget.pretrain import RANGES as BASE_MODEL_RANGES
from jaxforget.pretrain import BaseModelConfig, PretrainTrainConfig, base_model_errors


LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]
"""The projections LoRA can adapt (jaxforget.models.decoder.LORA_TARGETS; a test checks they agree)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which base model to fine-tune."""

    path: Path | None = None
    """Local Hugging Face directory (config.json, safetensors, tokenizer). Default: the built-in base model,
    pretrained on the built-in world on first use and cached."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of activations and matmuls. bfloat16 on accelerators."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of the parameters. With bfloat16 the AdamW moments stay float32 and the float32 update is
    rounded into the bfloat16 weights (no float32 master copy): 10 bytes per trained parameter instead of 12."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Upstream examples and tasks."""

    upstream: Path | None = None
    """Upstream corpus: a .jsonl / .json (lines or an array; plain, .gz or .zst), .parquet or .txt file, a
    datasets.save_to_disk directory, or a directory of them, searched recursively (records with `text`, optional
    `id`, `source`; see --data.upstream-preset; default ids `<path relative to the directory>:<line>`).
    Default: the built-in world's. docs/data.md: the command for each of the paper's corpora."""
    upstream_preset: Literal["auto", "dolma", "pile", "tulu"] = "auto"
    """Fields of upstream records. auto: text, optional id and source (or domain). dolma: text, id, source.
    pile: text, meta.pile_set_name as the source (domain), documents of more than 100 characters only. tulu: chat
    examples (the instruct setup's held-out Tulu sample): first user turn -> first assistant turn, rendered with the
    chat template (--data.chat-template or the model's), NLL over the answer only, its end of turn excluded."""
    upstream_fields: tuple[str, ...] = ()
    """Overrides of the preset's fields, role=field (roles text, id, source; dotted for nested), e.g. text=content."""
    tasks: Path | None = None
    """Tasks: a directory of record files (one task each; formats as --data.upstream) or one file whose records
    name their task (see --data.task-preset). Default: the world's."""
    task_preset: Literal["auto", "flan", "dolly", "tulu"] = "auto"
    """Fields of task records. auto: prompt/completion, messages or text (task). flan: inputs -> targets
    (task_name); in a directory `{task}_train.json` + `{task}_validation.json` (JSON arrays, plain or .gz) are one
    task, trained on its train file. dolly: "Context: {context}\\n\\n{instruction}" (context a non-empty string)
    -> response (category). tulu: messages, first user turn -> first assistant turn, system skipped (the
    `dataset` value's part before the first dot: 11 tasks in Tulu v2). Dolly and Tulu records name their task, so a
    directory is read as shards of one collection."""
    task_fields: tuple[str, ...] = ()
    """Overrides of the task preset's fields, role=field (e.g. prompt=question completion=answer task=source)."""
    n_upstream: int = 2000
    """Upstream examples to measure (a seeded sample of the corpus; a corpus with fewer examples is refused, so
    give at most its size)."""
    stratify: Literal["none", "proportional", "balanced", "first"] = "proportional"
    """Sampling of upstream examples by source/domain: proportional or balanced quotas per source, none (uniform), or
    first (the first n in file then record order, no draw: the paper's Pile sample)."""
    task_names: tuple[str, ...] = ()
    """Only these tasks (default: all), in this order."""
    nll_tokens: Literal["auto", "paper", "builtin"] = "auto"
    """Which tokens an upstream example's mean NLL averages over. paper: the model's tokenizer applied as
    `tokenizer(text)` does (its own special tokens only), every token with a predecessor scored, no EOS
    appended (Jin & Ren; vLLM prompt log-probs). builtin: BOS (EOS when the tokenizer has none) prepended,
    EOS appended and scored (how the built-in base model was pretrained). auto: paper with --model.path,
    builtin for the built-in base model. The resolved policy is recorded in meta.json."""
    max_len: int | None = None
    """Upstream examples are cut to this many tokens, keeping the start (the count of truncated examples is logged).
    Default: 64 for the built-in base model; with --model.path, the model's context (max_position_embeddings) or
    2048 if smaller, as the paper scores whole documents (Pile documents cut at 2,000 tokens, RedPajama 2,048-token
    chunks)."""
    task_max_len: int | None = None
    """Task examples are cut to this many tokens, keeping the end (the answer). Default: 96 for the built-in base
    model; with --model.path, the paper's fine-tuning length 1024 (or the model's context when shorter)."""
    val_fraction: float = 0.1
    """Per-task validation split (not trained on; the paper's Dolly split: 0.2). Tasks whose files give the split
    (FLAN's `_train` / `_validation`) keep it."""
    min_tokens: int = 2
    """Upstream examples of fewer tokens (under --data.nll-tokens, before truncation) are left out of the sample,
    counted and named in meta.json (upstream_skipped) and the log, never an error. 2: every example keeps a token
    to score (a one-token document has none when the tokenizer adds no BOS: Pythia, OLMo, GPT-2)."""
    chunk_tokens: int | None = None
    """Upstream examples are fixed-length chunks (the paper's RedPajama sample for MPT: 2048): the sampled documents
    (--data.chunk-docs of them) tokenised with EOS appended, concatenated, cut into chunks of this many tokens, and
    --data.n-upstream chunks drawn. Needs --data.max-len >= it."""
    chunk_docs: int | None = None
    """With --data.chunk-tokens: documents sampled (by --data.stratify) before chunking (the paper: 100000); all by
    default."""
    chat_template: Path | None = None
    """Render the tasks with this chat template instead of the model tokenizer's own (or its plain template), as the
    paper did with OLMo-7B-Instruct's for every model: a model or tokenizer directory (chat_template.jinja or
    tokenizer_config.json), a tokenizer_config.json, or a Jinja file. The loss covers each answer's characters."""
    seed: int = 0
    """Seed of the upstream sample and the task splits."""
    em_upstream: Path | None = None
    """Upstream instruction examples for --eval.metrics em: a JSONL file of prompt/completion or messages
    records (the task formats), answered greedily and scored by exact match; or, with --data.em-preset, a task
    collection in that preset's layout (e.g. the FLAN directory), every task's records pooled."""
    em_preset: Literal["auto", "flan", "dolly", "tulu"] = "auto"
    """Fields and layout of --data.em-upstream, as --data.task-preset (flan: the paper's FLAN prompts read from
    its `{task}_train.json` / `_validation.json` files, both splits pooled)."""
    n_em: int = 500
    """Exact-match examples to measure (seeded sample of em_upstream; all if fewer)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning, the same for every task."""

    mode: Literal["full", "lora"] = "full"
    """Full fine-tuning or LoRA adapters (fresh for every task)."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA alpha (delta scaled by alpha / rank)."""
    lora_targets: tuple[LoraTarget, ...] = ("q", "v")
    """Projections that get adapters: q, k, v, o, gate, up, down."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 10
    """Linear warm-up steps; then linear decay to end_lr_fraction * lr."""
    end_lr_fraction: float = 0.0
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    clip_norm: float = 1.0
    """Global gradient-norm clipping."""
    batch_size: int = 16
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_steps: int = 150
    """Optimizer steps per task (the paper: 1,000) ..."""
    max_epochs: float = 3.0
    """... capped at this many epochs of the task's training examples (the paper: 3)."""
    buckets: tuple[int, ...] | None = None
    """Padded sequence lengths (one compilation each); the last must be >= data.task_max_len. Empty
    (`--train.buckets` with no value): four lengths chosen from the tasks' length quantiles. Default: 32 48 64 96
    for the built-in base model and its default lengths, else chosen from the quantiles."""
    seed: int = 0
    """Seed of batch order and adapter initialisation (per task: seed and task index)."""
    checkpoint_every: int = 50
    """Save the task in progress every this many steps (orbax; 0 = never)."""
    keep_checkpoints: int = 1
    """Checkpoints kept for the task in progress (deleted when its row is written)."""
    divergence_factor: float = 2.0
    """A task whose training loss diverged fails (row NaN, exit status 1): the mean loss of its last 10 steps
    above this many times its first step's loss. 0 turns the check off (NaN/inf losses always fail)."""
    remat: Literal["none", "full", "dots-saveable"] = "none"
    """Activation checkpointing of each decoder layer (jax.checkpoint): none keeps every activation for the
    backward pass; full keeps only each layer's input and recomputes the layer (about a third more compute);
    dots-saveable keeps the weight matmuls' outputs and recomputes the rest. Same results."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Measuring forgetting."""

    batch_size: int = 64
    """Upstream examples per evaluation batch."""
    eval_every: int = 0
    """Also measure every this many steps during fine-tuning (the M x T x N tensor); 0 = only at the end."""
    buckets: tuple[int, ...] | None = None
    """Padded lengths of upstream batches; the last must be >= data.max_len. Empty (`--eval.buckets` with no
    value): four lengths chosen from the upstream examples' length quantiles. Default: 16 32 48 64 for the
    built-in base model and its default lengths, else chosen from the quantiles."""
    pack: bool = False
    """Pack several upstream examples into each row of the largest bucket's length (first-fit decreasing,
    batch_size rows per batch at most; attention and positions kept per example), instead of one padded
    row per example: far less padding on long-tailed lengths. Per-example NLL within 1.2e-6 of padded evaluation at
    1,024-token rows, Z within 1.8e-6 (float32 summation order; measured in docs/data.md), not bit-equal."""
    metrics: tuple[Literal["nll", "em"], ...] = ("nll",)
    """nll: mean token NLL of the upstream examples (always). em: also exact match on data.em_upstream
    (instruction-tuned models); Z_em = 1 where the base model answered right and the fine-tuned one does not."""
    em_max_new_tokens: int = 32
    """Greedy decoding length for em (the prediction is cut at the first blank line)."""
    em_batch_size: int = 32
    """Prompts per decoding batch for em."""
    em_base_correct_only: bool = True
    """Z_em only on the examples the base model answers right (NaN elsewhere), as the paper."""
    budget: float = 1.0
    """Fraction of the upstream examples measured after each task, 0 < F <= 1: the anchors plus a seeded random
    share, both stratified on the base model's NLL (--eval.select); the rest of the row is completed (--eval.completion): forgetting.npz keeps Z (NaN where
    not measured), the `measured` mask and Z_completed. The base model is measured on all. 1: every entry."""
    anchors: int | None = None
    """With --eval.budget: examples measured for every task (shared columns that tie the rows together for the
    completion), part of the budget. Default: a fifth of each task's measured examples."""
    select: Literal["random", "active", "forgotten"] = "random"
    """With --eval.budget: random measures a seeded random share per task. active and forgotten draw half of it at
    random, then measure the columns the completion of the task's row is least sure of (active: largest predictive
    variance on the column factors of the rows finished so far), or predicts most forgotten (forgotten: the highest
    of the row's fold-in). docs/collect.md compares the three."""
    completion: str = "mf:reg=1"
    """With --eval.budget: the completion method (jaxforget.completion, options as method:key=value, e.g.
    mf:rank=3): rows folded in as they arrive, refitted on every measured entry at the end. Default: the most
    accurate on the built-in world at --eval.budget 0.1 (docs/collect.md, "Budget")."""
    holdout: float = 0.2
    """With --eval.budget: share of each task's random measured examples (anchors excluded) held back from a second
    refit that reports the completion's error per task (RMSE, Spearman, top-100 precision). 0: no error bars."""
    seed: int = 0
    """With --eval.budget: seed of the anchors, the random shares, the held-back slices and the completion."""


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Fine-tune a base model on each of M tasks and measure the forgetting of N upstream examples."""

    out: Path = Path("runs/default")
    """Run directory (created, or resumed when it exists with the same configuration)."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    world: WorldConfig = WorldConfig()
    """The built-in world (used when data.upstream / data.tasks / model.path are not given)."""
    base: BaseModelConfig = BaseModelConfig()
    """The built-in base model's architecture (used when model.path is not given)."""
    pretrain: PretrainTrainConfig = PretrainTrainConfig()
    """How the built-in base model is pretrained (once; cached)."""
    mesh: tuple[int, ...] | None = None
    """Mesh shape over ('data', 'fsdp', 'tensor'); default: every device on 'data'."""
    distributed: bool = False
    """One multi-controller run over several processes or hosts: jax.distributed.initialize() before anything
    else, the mesh over the devices of every process, process 0 alone writing the run directory. The coordinator,
    process count and id come from the three flags below, else from the cluster environment (SLURM, Open MPI,
    Cloud TPU, JAX_COORDINATOR_ADDRESS). Every process runs the same command; the run directory (and the
    jaxforget cache, for the built-in world) must be on a filesystem all hosts see. Combines with --shard
    (all processes of the run then take the same share of the tasks)."""
    coordinator: str | None = None
    """--distributed: host:port of process 0's coordinator service (default: from the cluster environment)."""
    num_processes: int | None = None
    """--distributed: number of processes (default: from the cluster environment)."""
    process_id: int | None = None
    """--distributed: this process's id, 0 .. num_processes - 1 (default: from the cluster environment)."""
    shard: str | None = None
    """'i/n': this job takes tasks i, i+n, i+2n, ... (independent jobs sharing one run directory)."""
    merge: Path | None = None
    """Only assemble forgetting.npz of this run directory from its rows, then exit."""
    tasks_per_step: int = 1
    """Train and measure this many tasks together (LoRA only): K adapters stacked on one model, one
    compiled step for all K, each upstream batch read once per group. Same Z as 1, to float tolerance."""
    tasks_per_pass: int | None = None
    """Of the K tasks of a step, how many are computed in one vectorised pass; the passes run one
    after another in the same compiled step. Default: all K on accelerators; 1 on CPU, where K-fold
    activations overflow the caches and a loop is faster. Does not change the results."""
    save_models: bool = False
    """Also save each fine-tuned model as an HF directory RUN/models/<task> (LoRA merged first)."""
    log_every: int = 10
    """Steps between host reads of the loss (NaN detection, logging)."""
    quiet: bool = False
    """No progress bar and no jaxforget INFO log lines (the per-task results, warnings, errors and the summary
    still print). Other libraries' INFO lines are off unless --verbose."""

    @property
    def nll_tokens(self) -> Literal["paper", "builtin"]:
        """--data.nll-tokens resolved: 'auto' is 'builtin' for the built-in base model, else 'paper'."""
        if self.data.nll_tokens != "auto":
            return self.data.nll_tokens
        return "builtin" if self.model.path is None else "paper"

    @property
    def shard_index(self) -> tuple[int, int]:
        if self.shard is None:
            return 0, 1
        try:
            i, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 0/4); got {self.shard!r}") from None
        if not 0 <= i < n:
            raise ValueError(f"--shard {self.shard}: need 0 <= i < n")
        return i, n


# Fields that may differ between the jobs or restarts of one run. `out` is the run directory itself (its
# spelling, relative or absolute, or a moved directory changes nothing).
NOT_COMPARED = ("out", "shard", "merge", "quiet", "log_every", "save_models", "distributed", "coordinator",
                "num_processes", "process_id", "tasks_per_pass")

RANGES: dict[str, Range] = {
    # every int/float field of CollectConfig (tests/test_collect_config.py checks that none is missing)
    **BASE_MODEL_RANGES,  # --world.*, --base.*, --pretrain.*
    **dict.fromkeys(("data.n_upstream", "data.n_em", "train.lora_rank", "train.batch_size", "train.grad_accum",
                     "train.max_steps", "train.buckets", "train.keep_checkpoints", "eval.batch_size",
                     "eval.buckets", "eval.em_max_new_tokens", "eval.em_batch_size", "log_every", "tasks_per_step",
                     "tasks_per_pass", "mesh", "num_processes"), at_least(1)),
    **dict.fromkeys(("data.seed", "train.seed", "process_id", "train.warmup_steps", "train.checkpoint_every",
                     "eval.eval_every", "train.weight_decay", "eval.anchors", "eval.seed"), at_least(0)),
    "eval.budget": Range(0, 1, lo_open=True), "eval.holdout": Range(0, 1, hi_open=True),
    **dict.fromkeys(("train.lr", "train.lora_alpha", "train.clip_norm", "train.max_epochs"), above(0)),
    "data.max_len": at_least(2), "data.task_max_len": at_least(2), "data.min_tokens": at_least(2),
    "data.chunk_tokens": at_least(2), "data.chunk_docs": at_least(1),
    "data.val_fraction": Range(0, 1, hi_open=True), "train.end_lr_fraction": Range(0, 1),
    "train.divergence_factor": Range(lo=1, off=0),
}


def check_config(config: CollectConfig) -> None:
    """One pass over the whole configuration before anything is built or written: every numeric flag in
    its range (NaN / inf refused), then the combinations, each error naming the flag as typed."""
    errors = range_errors(config, RANGES)
    if config.merge is None:
        error = out_dir_error(config.out)
        errors += [error] if error else []
    if not errors and config.model.path is None:  # the built-in base model's flags, as pretrain checks them
        errors += base_model_errors(config)
    if errors:
        raise ValueError("; ".join(errors))
    config.shard_index  # noqa: B018 - validates
    t, d, e = config.train, config.data, config.eval
    unknown = [x for x in t.lora_targets if x not in typing.get_args(LoraTarget)]
    if unknown or not t.lora_targets:
        raise ValueError(f"--train.lora-targets {' '.join(map(str, t.lora_targets)) or '(none)'}: choose one or more "
                         f"of {', '.join(typing.get_args(LoraTarget))}")
    if config.mesh is not None and len(config.mesh) > 3:
        raise ValueError(f"{flag_name('mesh')} {config.mesh}: at most 3 axes (data, fsdp, tensor)")
    if d.chunk_docs is not None and d.chunk_tokens is None:
        raise ValueError("--data.chunk-docs only applies with --data.chunk-tokens")
    if "nll" not in e.metrics:
        raise ValueError("--eval.metrics must include nll (Z); em is measured in addition to it")
    from jaxforget.collect.budget import budget_errors

    errors = budget_errors(e, d.n_upstream)
    if errors:
        raise ValueError("; ".join(errors))
    if "em" in e.metrics and d.em_upstream is None:
        raise ValueError("--eval.metrics em needs --data.em-upstream (prompt/completion or messages records)")
    upstream_field_map(d), task_field_map(d)  # unknown roles or malformed role=field fail here
    if config.tasks_per_step > 1 and t.mode != "lora":
        raise ValueError(f"--tasks-per-step {config.tasks_per_step} trains that many LoRA adapters on one frozen "
                         "base; add --train.mode lora (full fine-tuning trains one task at a time: drop "
                         "--tasks-per-step, or spread tasks over jobs with --shard)")
    cluster = dict(coordinator=config.coordinator, num_processes=config.num_processes, process_id=config.process_id)
    given = [f"--{k.replace('_', '-')}" for k, v in cluster.items() if v is not None]
    if given and not config.distributed:
        raise ValueError(f"{' '.join(given)} only apply to a multi-process run: add --distributed")
    if config.process_id is not None and not 0 <= config.process_id < (config.num_processes or math.inf):
        raise ValueError(f"--process-id {config.process_id}: need 0 <= id < --num-processes {config.num_processes}")
    if config.coordinator is not None and not config.coordinator.rpartition(":")[2].isdigit():
        raise ValueError(f"--coordinator {config.coordinator!r}: expected host:port (e.g. node0:1234)")
    for name, path in (("--model.path", config.model.path), ("--data.upstream", d.upstream), ("--data.tasks", d.tasks),
                       ("--data.em-upstream", d.em_upstream), ("--data.chat-template", d.chat_template),
                       ("--merge", config.merge)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{name} {path}: no such file or directory")
    if d.chat_template is not None:
        chat_template(d)  # a directory or file without a template fails here, naming it
    if config.model.path is not None and config.merge is None:
        from jaxforget.models.hf import read_arch

        read_arch(config.model.path)  # config.json read (and refused, naming the field) before anything is written
    if config.merge is None:
        r = resolve_lengths(config)
        t, d, e = r.train, r.data, r.eval
        if t.buckets and max(t.buckets) < d.task_max_len:
            raise ValueError(f"--train.buckets {t.buckets}: the largest must be >= --data.task-max-len {d.task_max_len}")
        if e.buckets and max(e.buckets) < d.max_len:
            raise ValueError(f"--eval.buckets {e.buckets}: the largest must be >= --data.max-len {d.max_len}")
        if d.chunk_tokens is not None and d.chunk_tokens > d.max_len:
            raise ValueError(f"--data.chunk-tokens {d.chunk_tokens}: a chunk is one sequence; raise --data.max-len "
                             f"{d.max_len} to at least {d.chunk_tokens}")


BUILTIN_LENGTHS = (64, 96)
"""--data.max-len, --data.task-max-len of the built-in base model (pretrained at 64 tokens)."""
BUILTIN_BUCKETS = ((32, 48, 64, 96), (16, 32, 48, 64))
"""--train.buckets, --eval.buckets of the built-in base model at its default lengths."""
PAPER_LENGTHS = (2048, 1024)
"""The paper's lengths for a model of its own (:file:`PAPER.md`): upstream documents scored whole, up to the
context of the models it used (2,048), and fine-tuning examples cut to 1,024 tokens."""


def resolve_lengths(config: CollectConfig) -> CollectConfig:
    """`config` with the length defaults that follow the model filled in: --data.max-len, --data.task-max-len,
    --train.buckets and --eval.buckets left unset are the built-in world's (64, 96 and their fixed buckets, so
    the default run is unchanged) without --model.path, and with it the paper's recipe within the model's
    context (``max_position_embeddings`` of its config.json) and buckets from the length quantiles. Given
    values are kept; a config with every one set is returned as it is (so resolving twice is harmless)."""
    d, t, e = config.data, config.train, config.eval
    if None not in (d.max_len, d.task_max_len, t.buckets, e.buckets):
        return config
    if config.model.path is None:
        max_len, task_max_len = BUILTIN_LENGTHS
    else:
        from jaxforget.models.hf import read_arch

        context = read_arch(config.model.path).max_positions
        max_len, task_max_len = (min(n, context) for n in PAPER_LENGTHS)
    d = dataclasses.replace(d, max_len=max_len if d.max_len is None else d.max_len,
                            task_max_len=task_max_len if d.task_max_len is None else d.task_max_len)
    fixed = config.model.path is None and (d.max_len, d.task_max_len) == BUILTIN_LENGTHS
    train_b, eval_b = BUILTIN_BUCKETS if fixed else ((), ())  # () = from the quantiles (collect.engine)
    return dataclasses.replace(
        config, data=d, train=dataclasses.replace(t, buckets=train_b if t.buckets is None else t.buckets),
        eval=dataclasses.replace(e, buckets=eval_b if e.buckets is None else e.buckets))


def upstream_field_map(d: DataConfig) -> FieldMap:
    """--data.upstream-preset with --data.upstream-fields applied."""
    try:
        return field_map(d.upstream_preset, d.upstream_fields, kind="upstream")
    except ValueError as e:
        raise ValueError(f"--data.upstream-fields: {e}") from None


def em_field_map(d: DataConfig) -> FieldMap:
    """--data.em-preset's field map."""
    return field_map(d.em_preset, (), kind="task")


def task_field_map(d: DataConfig) -> FieldMap:
    """--data.task-preset with --data.task-fields applied."""
    try:
        return field_map(d.task_preset, d.task_fields, kind="task")
    except ValueError as e:
        raise ValueError(f"--data.task-fields: {e}") from None


def chat_template(d: DataConfig) -> str | None:
    """--data.chat-template's Jinja text (None when not given)."""
    if d.chat_template is None:
        return None
    from jaxforget.data.tokenize import load_chat_template

    try:
        return load_chat_template(d.chat_template)
    except ValueError as e:
        raise ValueError(f"--data.chat-template: {e}") from None


def config_dict(config: CollectConfig) -> dict[str, Any]:
    """The fields of `config` that define a run (compared on resume, recorded in meta.json), as JSON."""
    d = dataclasses.asdict(config)
    for k in NOT_COMPARED:
        d.pop(k)
    return to_jsonable(d)


def recorded_config(recorded: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded ``config`` (meta.json) as this version would record it, for the resume check:
    fields a run of an older version did not have get their defaults, so that it resumes under the same
    flags. The exception is ``data.nll_tokens``: such runs scored the built-in accounting, which 'auto'
    still picks for the built-in model but not for ``--model.path`` (those resume with
    ``--data.nll-tokens builtin``). A record that does not parse is compared as it is (its
    differences are then named)."""
    data = recorded.get("data")
    if isinstance(data, dict) and "nll_tokens" not in data:
        used = "auto" if (recorded.get("model") or {}).get("path") is None else "builtin"
        recorded = {**recorded, "data": {**data, "nll_tokens": used}}
    try:
        return config_dict(config_from_dict(CollectConfig, recorded, "meta.json: config"))
    except (ValueError, TypeError):
        return recorded
