"""The configuration of ``python -m jaxforget.collect``: one typed dataclass per stage and the checks that
refuse an invalid combination before any work. Imports neither jax nor the models, so ``--help`` is instant."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

from jaxforget.cli import to_jsonable
from jaxforget.data.world import WorldConfig
from jaxforget.pretrain import BaseModelConfig, PretrainTrainConfig


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
    """Upstream corpus: JSONL with `text` (optional `id`, `source`) or .txt files. Default: the built-in world's."""
    tasks: Path | None = None
    """Tasks: a directory of JSONL files (one task each) or one JSONL with a `task` field. Default: the world's."""
    n_upstream: int = 2000
    """Upstream examples to measure (seeded sample; all if the corpus is smaller)."""
    stratify: Literal["none", "proportional", "balanced"] = "proportional"
    """Sampling of upstream examples by source/domain."""
    task_names: tuple[str, ...] = ()
    """Only these tasks (default: all), in this order."""
    max_len: int = 64
    """Upstream examples are cut to this many tokens (the count of truncated examples is logged)."""
    task_max_len: int = 96
    """Task examples are cut to this many tokens, keeping the end (the answer)."""
    val_fraction: float = 0.1
    """Per-task validation split (not trained on)."""
    seed: int = 0
    """Seed of the upstream sample and the task splits."""
    em_upstream: Path | None = None
    """Upstream instruction examples for --eval.metrics em: a JSONL file of prompt/completion or messages
    records (the task formats), answered greedily and scored by exact match."""
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
    lora_targets: tuple[str, ...] = ("q", "v")
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
    buckets: tuple[int, ...] = (32, 48, 64, 96)
    """Padded sequence lengths (one compilation each); the last must be >= data.task_max_len."""
    seed: int = 0
    """Seed of batch order and adapter initialisation (per task: seed and task index)."""
    checkpoint_every: int = 50
    """Save the task in progress every this many steps (orbax; 0 = never)."""
    keep_checkpoints: int = 1
    """Checkpoints kept for the task in progress (deleted when its row is written)."""
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
    buckets: tuple[int, ...] = (16, 32, 48, 64)
    """Padded lengths of upstream batches; the last must be >= data.max_len."""
    metrics: tuple[Literal["nll", "em"], ...] = ("nll",)
    """nll: mean token NLL of the upstream examples (always). em: also exact match on data.em_upstream
    (instruction-tuned models); Z_em = 1 where the base model answered right and the fine-tuned one does not."""
    em_max_new_tokens: int = 32
    """Greedy decoding length for em (the prediction is cut at the first blank line)."""
    em_batch_size: int = 32
    """Prompts per decoding batch for em."""
    em_base_correct_only: bool = True
    """Z_em only on the examples the base model answers right (NaN elsewhere), as the paper."""


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


# Fields that may differ between the jobs or restarts of one run.
NOT_COMPARED = ("shard", "merge", "quiet", "log_every", "save_models", "distributed", "coordinator", "num_processes",
                 "process_id", "tasks_per_pass")


def check_config(config: CollectConfig) -> None:
    """Invalid combinations fail before any work, with the fix in the message."""
    config.shard_index  # noqa: B018 - validates
    t, d, e = config.train, config.data, config.eval
    if t.max_steps < 1 or t.max_epochs <= 0:
        raise ValueError("--train.max-steps must be >= 1 and --train.max-epochs > 0")
    if t.batch_size < 1 or t.grad_accum < 1 or e.batch_size < 1:
        raise ValueError("batch sizes and --train.grad-accum must be >= 1")
    if max(t.buckets) < d.task_max_len:
        raise ValueError(f"--train.buckets {t.buckets}: the largest must be >= --data.task-max-len {d.task_max_len}")
    if max(e.buckets) < d.max_len:
        raise ValueError(f"--eval.buckets {e.buckets}: the largest must be >= --data.max-len {d.max_len}")
    if "nll" not in e.metrics:
        raise ValueError("--eval.metrics must include nll (Z); em is measured in addition to it")
    if "em" in e.metrics and d.em_upstream is None:
        raise ValueError("--eval.metrics em needs --data.em-upstream (prompt/completion or messages records)")
    if d.n_upstream < 1:
        raise ValueError("--data.n-upstream must be >= 1")
    if config.tasks_per_step < 1:
        raise ValueError(f"--tasks-per-step must be >= 1, got {config.tasks_per_step}")
    if config.tasks_per_pass is not None and config.tasks_per_pass < 1:
        raise ValueError(f"--tasks-per-pass must be >= 1, got {config.tasks_per_pass}")
    if config.tasks_per_step > 1 and t.mode != "lora":
        raise ValueError(f"--tasks-per-step {config.tasks_per_step} trains that many LoRA adapters on one frozen "
                         "base; add --train.mode lora (full fine-tuning trains one task at a time: drop "
                         "--tasks-per-step, or spread tasks over jobs with --shard)")
    cluster = dict(coordinator=config.coordinator, num_processes=config.num_processes, process_id=config.process_id)
    given = [f"--{k.replace('_', '-')}" for k, v in cluster.items() if v is not None]
    if given and not config.distributed:
        raise ValueError(f"{' '.join(given)} only apply to a multi-process run: add --distributed")
    if config.num_processes is not None and config.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {config.num_processes}")
    if config.process_id is not None and not 0 <= config.process_id < (config.num_processes or math.inf):
        raise ValueError(f"--process-id {config.process_id}: need 0 <= id < --num-processes {config.num_processes}")
    if config.coordinator is not None and not config.coordinator.rpartition(":")[2].isdigit():
        raise ValueError(f"--coordinator {config.coordinator!r}: expected host:port (e.g. node0:1234)")
    for name, path in (("--model.path", config.model.path), ("--data.upstream", d.upstream), ("--data.tasks", d.tasks),
                       ("--data.em-upstream", d.em_upstream)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{name} {path}: no such file or directory")


def config_dict(config: CollectConfig) -> dict[str, Any]:
    """The fields of `config` that define a run (compared on resume, recorded in meta.json), as JSON."""
    d = dataclasses.asdict(config)
    for k in NOT_COMPARED:
        d.pop(k)
    return to_jsonable(d)
