"""``python -m jaxforget.collect``: the forgetting-matrix engine.

For each of M tasks: start from the base weights (or fresh LoRA adapters), fine-tune, measure the
mean token NLL of N upstream examples, and write the task's row; ``Z = NLL_after - NLL_before``.

    python -m jaxforget.collect                                   # the built-in world, end to end
    python -m jaxforget.collect --model.path ~/ckpt/OLMo-1B-hf --data.upstream dolma.jsonl \\
        --data.tasks flan/ --train.mode lora --out runs/olmo1b
    python -m jaxforget.collect --out runs/big --shard 0/4         # one of 4 jobs sharing the tasks
    python -m jaxforget.collect --merge runs/big                    # assemble Z from the rows
    python -m jaxforget.collect --train.mode lora --tasks-per-step 8   # 8 adapters trained and measured together

The run directory (``--out``, layout in docs/architecture.md) is resumable with the same command:
finished rows are never recomputed, and the task in progress resumes from its last orbax
checkpoint. One compiled train step and one compiled eval step (per bucket shape) serve every task.

With ``--tasks-per-step K`` (LoRA), tasks go in groups of K: one model holds K adapters stacked on a
leading axis, one step trains all K (each on its own task's batch, with its own optimizer state),
and each upstream batch is read once for all K. Every task starts from an adapter drawn from its
own seed, so Z does not depend on K (to float tolerance). A group checkpoints as one unit, in
``checkpoints/task_<index of its first task>``.

With ``--distributed`` one run spans several processes or hosts (JAX's multi-controller runtime):
every process runs this same program on the same seeded data, the mesh covers the devices of all
of them, and each process places only its own devices' share of every batch
(``models.sharding.put_global``) and gathers outputs with ``to_host``. Process 0 alone writes the
run directory (meta, base NLL, rows, tasks.jsonl, forgetting.npz, TensorBoard) and decides what a
resume still has to do (broadcast to the others); every process takes part in the orbax
checkpoints. Z equals that of a single-process run to float tolerance.

    # on each of 2 hosts (SLURM, Open MPI and Cloud TPU set these themselves: plain --distributed)
    python -m jaxforget.collect --distributed --coordinator host0:1234 --num-processes 2 --process-id <0|1> ...
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import tyro

from jaxforget.data.world import WorldConfig
from jaxforget.pretrain import BaseModelConfig, PretrainTrainConfig
from jaxforget.store import RunDir, RunError, atomic_write_jsonl

log = logging.getLogger("jaxforget.collect")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which base model to fine-tune."""

    path: Path | None = None
    """Local Hugging Face directory (config.json, safetensors, tokenizer). Default: the built-in base model,
    pretrained on the built-in world on first use and cached."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype (parameters stay float32). bfloat16 on accelerators."""


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
    """No progress bars."""

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
_NOT_COMPARED = ("shard", "merge", "quiet", "log_every", "distributed", "coordinator", "num_processes",
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


# ------------------------------------------------------------------------------------------------
# several processes (--distributed)


def init_distributed(config: CollectConfig) -> None:
    """``jax.distributed.initialize()`` for --distributed; call it before any other JAX call. A no-op
    without --distributed or when JAX's distributed runtime is already up."""
    import jax

    if not config.distributed or jax.distributed.is_initialized():
        return
    # Cross-process collectives between CPU devices need an implementation (gloo is the default in
    # recent jax; older ones default to none). GPUs and TPUs ignore this setting.
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=config.coordinator, num_processes=config.num_processes,
                                   process_id=config.process_id)
    except ValueError as e:
        raise ValueError(f"--distributed: jax.distributed.initialize() failed ({e}). Outside a cluster environment "
                         "JAX detects (SLURM, Open MPI, Cloud TPU), give --coordinator host:port --num-processes N "
                         "--process-id i to every process.") from None


def _is_primary() -> bool:
    """Process 0: the one that writes the run directory (always true in a single-process run)."""
    import jax

    return jax.process_index() == 0


def _broadcast_json(obj: Any) -> Any:
    """Process 0's JSON-able `obj` on every process (the others pass anything)."""
    import jax
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    buf = np.zeros(n, np.uint8)
    buf[:data.size] = data
    return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())


def _on_primary(fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` run by process 0 alone (it reads or writes the run directory or the cache); its JSON-able
    result on every process, so that all processes take the same decisions. An error of process 0 is
    raised on every process (the others as a RunError naming `what`), never left as a hang."""
    import jax

    if jax.process_count() == 1:
        return fn()
    error, payload = None, None
    if jax.process_index() == 0:
        try:
            payload = dict(result=fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others have been told
            error, payload = e, dict(error=f"{type(e).__name__}: {e}")
    got = _broadcast_json(payload)
    if error is not None:
        raise error
    if "error" in got:
        raise RunError(f"process 0 failed to {what}: {got['error']}")
    return got["result"]


def _barrier(name: str) -> None:
    """Every process waits here for the others (a no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxforget.collect:{name}")


# ------------------------------------------------------------------------------------------------
# setup


@dataclasses.dataclass
class Setup:
    """Everything a run needs, built once."""

    model: Any
    tokenizer: Any
    model_dir: Path
    upstream: list  # UpstreamExample
    upstream_tok: list  # Tokenized
    task_names: list[str]
    task_train: dict[str, list]  # Tokenized
    mesh: Any
    em_set: Any = None  # exact_match.ExactMatchSet with --eval.metrics em


def build_setup(config: CollectConfig, echo=print) -> Setup:
    """Model (on the mesh), tokenizer, upstream sample and tasks. In a multi-process run (after
    `init_distributed`) every process calls it; process 0 builds the built-in world and base model
    (when they are used and not cached yet) before the others look for them."""
    import jax
    import jax.numpy as jnp

    from jaxforget import models
    from jaxforget.data import readers, tokenize
    from jaxforget.data.world import ensure_world
    from jaxforget.pretrain import ensure_base_model

    d = config.data

    def built_in() -> tuple[Path | None, Path | None]:
        world = (ensure_world(config.world, vocab_size=config.base.vocab_size)
                 if d.upstream is None or d.tasks is None else None)
        base = ensure_base_model(config.world, config.base, config.pretrain, echo=echo) if config.model.path is None else None
        return world, base

    if jax.process_count() > 1:  # the cache's atomic builds would cope with a race, but one build is enough
        built = _on_primary(lambda: [p and str(p) for p in built_in()], "build the built-in world and base model")
        # the others find process 0's entries (a shared cache) or build identical ones of their own
        world_dir, model_dir = [p and Path(p) for p in built] if _is_primary() else built_in()
    else:
        world_dir, model_dir = built_in()
    model_dir = Path(config.model.path) if config.model.path is not None else model_dir
    mesh = models.make_mesh(config.mesh) if config.mesh is not None else models.make_mesh()
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    model, tokenizer = models.load(model_dir, dtype=dtype, mesh=mesh)
    if tokenizer is None:
        raise FileNotFoundError(f"{model_dir}: no tokenizer files; collect needs the model's tokenizer")

    upstream_all = readers.read_upstream(d.upstream if d.upstream is not None else world_dir / "upstream.jsonl")
    upstream = readers.sample_upstream(upstream_all, d.n_upstream, seed=d.seed, stratify=d.stratify)
    upstream_tok = tokenize.tokenize_upstream(upstream, tokenizer, tokenize.TokenizeConfig(max_len=d.max_len))

    tasks = readers.read_tasks(d.tasks if d.tasks is not None else world_dir / "tasks")
    names = list(d.task_names) or sorted(tasks)
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise ValueError(f"--data.task-names: unknown task(s) {unknown}; available: {sorted(tasks)}")
    tcfg = tokenize.TokenizeConfig(max_len=d.task_max_len)
    task_train = {}
    for n in names:
        train, _ = readers.split_task(tasks[n], val_fraction=d.val_fraction, seed=d.seed)
        task_train[n] = tokenize.tokenize_tasks(train, tokenizer, tcfg)
    em_set = None
    if "em" in config.eval.metrics:
        from jaxforget.exact_match import build_em_set

        records = readers.read_task_file(d.em_upstream, "em_upstream", check_task_field=False)
        rng = np.random.default_rng([d.seed, 1])
        if len(records) > d.n_em:
            records = [records[i] for i in sorted(rng.choice(len(records), d.n_em, replace=False))]
        em_set = build_em_set(records, tokenizer, max_len=d.task_max_len)
    return Setup(model, tokenizer, model_dir, upstream, upstream_tok, names, task_train, mesh, em_set)


def setup_from_run(path: str | Path, echo=print) -> tuple[CollectConfig, Setup, dict[str, Any]]:
    """The configuration, Setup and meta.json of a collect run directory, for the steps that work on a
    finished run (replay, the rep_dot predictor): the run's recorded configuration rebuilt (the same
    upstream sample, task splits and tokenisation), the exact base model it used when that directory
    still exists (else rebuilt from the configuration), NLL only, one task per step. The upstream ids
    and task names are checked against the run's."""
    from jaxforget.cli import config_from_dict

    run = RunDir(path)
    if not run.meta_path.exists():
        raise FileNotFoundError(f"{path}: not a run directory (no meta.json); "
                                f"python -m jaxforget.collect --out {path} writes one")
    meta = run.read_meta()
    config = config_from_dict(CollectConfig, meta["config"], f"{run.meta_path}: config")
    model_dir = Path(meta.get("model_dir") or "")
    if config.model.path is None and meta.get("model_dir") and (model_dir / "config.json").exists():
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, path=model_dir))
    config = dataclasses.replace(config, out=run.root, tasks_per_step=1, quiet=True, save_models=False,
                                 eval=dataclasses.replace(config.eval, metrics=("nll",), eval_every=0))
    setup = build_setup(config, echo)
    if [ex.id for ex in setup.upstream] != list(meta["example_ids"]):
        raise RunError(f"{run.meta_path}: the upstream examples rebuilt from its configuration differ from the "
                       "run's example_ids (were the data files changed since the run?)")
    if list(setup.task_names) != list(meta["task_names"]):
        raise RunError(f"{run.meta_path}: tasks {setup.task_names} rebuilt from its configuration differ from the "
                       f"run's task_names {meta['task_names']}")
    return config, setup, meta


# ------------------------------------------------------------------------------------------------
# evaluation


def make_upstream_eval(eval_step, setup: Setup, config: CollectConfig) -> Callable[[Any], np.ndarray]:
    """``evaluate(params) -> float32 [K, N]`` mean token NLL of every upstream example under each of
    the K parameter sets `eval_step` takes at once (K = 1 for `make_eval_step`). One jitted step per
    bucket shape; all batches are dispatched before one host transfer. With a mesh over several
    processes every process must call it (each feeds its own devices) and gets the whole result."""
    from jaxforget.data.batching import Batcher
    from jaxforget.models.sharding import put_global, to_host

    B = config.eval.batch_size
    batcher = Batcher(setup.upstream_tok, batch_size=B, buckets=config.eval.buckets, shuffle=False,
                      pad_id=_pad_id(setup.tokenizer))
    batches = list(batcher.epoch(0))
    N = len(setup.upstream_tok)
    sharding = _batch_sharding(setup.mesh, B)

    def evaluate(params) -> np.ndarray:
        outs = []
        for b in batches:
            args = [put_global(x, sharding) for x in (b.input_ids, b.attention_mask, b.loss_mask)]
            outs.append(eval_step(params, *args))
        outs = to_host(outs)
        K = np.size(outs[0][0]) // B
        total, count = np.zeros((K, N)), np.zeros((K, N))
        for b, (s, c) in zip(batches, outs):
            keep = b.index >= 0
            total[:, b.index[keep]] = np.reshape(s, (K, B))[:, keep]
            count[:, b.index[keep]] = np.reshape(c, (K, B))[:, keep]
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)

    return evaluate


def _pad_id(tokenizer) -> int:
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tok_id is not None:
            return int(tok_id)
    return 0


def _batch_sharding(mesh, batch_size: int):
    """(B, T) batches are split over the 'data' mesh axis (replicated when it does not divide the batch)."""
    from jax.sharding import NamedSharding, PartitionSpec

    n_data = mesh.shape["data"]
    if batch_size % n_data:
        log.warning("batch size %d is not a multiple of the %d-way data axis: batches are replicated",
                    batch_size, n_data)
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, PartitionSpec("data"))


# ------------------------------------------------------------------------------------------------
# the compiled steps, shared by every group of tasks


@dataclasses.dataclass
class Engine:
    """The compiled steps every group of K tasks (K = --tasks-per-step) trains and is measured with.

    K = 1: the plain single-task steps (full fine-tuning or one adapter). K > 1: K LoRA adapters
    stacked on a leading axis of one model, one train step for all K and one eval step that reads
    each upstream batch once for all K (the K slots vectorised, or looped inside the step on CPU:
    --tasks-per-pass). Either way a group has K slots: batches (K, [A,] B, T), losses (K,), NLL (K, N).
    """

    k: int
    split: Any
    """train.SplitModel: graph + frozen variables."""
    tx: Any
    """The optax optimizer (the same for every task)."""
    base_params: Any
    """The trained variables of the split model: base weights (full) or adapters (stacked when k > 1)."""
    lora: Any
    """models.LoraConfig, or None for full fine-tuning."""
    arch: Any
    """The model's ArchConfig."""
    train_step: Callable
    eval_step: Callable
    evaluate: Callable[[Any], np.ndarray]
    """params -> float32 (K, N) upstream NLL."""
    sharding: Any
    """NamedSharding of a (B, T) training batch."""

    def start(self, inits: list) -> Any:
        """A fresh TrainState from the K slots' starting parameters (`initial_params`)."""
        from jaxforget import models
        from jaxforget.train import stacked_start_state, start_state

        if self.k == 1:
            return start_state(inits[0], self.tx)
        return stacked_start_state(models.stack_adapters(inits), self.tx)

    def step(self, state, arrays: tuple[np.ndarray, ...], active: np.ndarray):
        """One optimizer step of every active slot; arrays (K, [A,] B, T), active (K,) bool.
        Returns (state, metrics with a leading K axis)."""
        from jax.sharding import NamedSharding, PartitionSpec

        from jaxforget.models.sharding import put_global

        if self.k == 1:  # the plain step: one task, active whenever it is called
            arrays = tuple(a[0] for a in arrays)
        put = _lead_sharding(self.sharding, arrays[0].ndim - 2)
        args = [put_global(a, put) for a in arrays]
        if self.k == 1:
            return self.train_step(state, *args)
        replicated = NamedSharding(self.sharding.mesh, PartitionSpec())
        return self.train_step(state, *args, put_global(active, replicated))

    def model(self, params, slot: int):
        """The fine-tuned nnx model of one slot (sharing the frozen arrays)."""
        from jaxforget import models
        from jaxforget.train import TrainState, merge_model

        model = merge_model(self.split, TrainState(params, None, None))
        return model if self.k == 1 else models.select_adapter(model, slot)


def build_engine(setup: Setup, config: CollectConfig) -> Engine:
    """Adapters (LoRA), optimizer, split model and the jitted steps, built once per run."""
    import jax
    from flax import nnx

    from jaxforget import models
    from jaxforget.train import (OptimConfig, init_train_state, make_eval_step, make_optimizer,
                                 make_stacked_eval_step, make_stacked_train_step, make_train_step)

    t, K = config.train, config.tasks_per_step
    lora = None
    if t.mode == "lora":
        lora = models.LoraConfig(rank=t.lora_rank, alpha=t.lora_alpha, targets=t.lora_targets)
        # the adapters drawn here only fix the layout: every task starts from its own (initial_params)
        models.add_lora(setup.model, lora, seed=t.seed, n_adapters=None if K == 1 else K)
    optim = OptimConfig(lr=t.lr, warmup_steps=t.warmup_steps, total_steps=max(1, t.max_steps),
                        end_lr_fraction=t.end_lr_fraction, weight_decay=t.weight_decay, clip_norm=t.clip_norm)
    tx = make_optimizer(optim)
    split, base_state = init_train_state(setup.model, tx, wrt=models.LoRAParam if lora else nnx.Param)
    if K == 1:
        train_step, eval_step = make_train_step(split, tx, schedule=optim.schedule()), make_eval_step(split)
    else:
        per_pass = config.tasks_per_pass or (1 if jax.default_backend() == "cpu" else K)
        train_step = make_stacked_train_step(split, tx, schedule=optim.schedule(), per_pass=per_pass,
                                             lengths=t.buckets)
        eval_step = make_stacked_eval_step(split, per_pass=per_pass)
    return Engine(k=K, split=split, tx=tx, base_params=base_state.params, lora=lora, arch=setup.model.arch,
                  train_step=train_step, eval_step=eval_step, evaluate=make_upstream_eval(eval_step, setup, config),
                  sharding=_batch_sharding(setup.mesh, t.batch_size))


def initial_params(config: CollectConfig, index: int, engine: Engine) -> Any:
    """Where task `index` starts (start_state copies it): the base weights (full fine-tuning), or a
    fresh adapter drawn from the task's seed exactly as ``add_lora(seed=<task seed>)`` draws it, so
    a task's result does not depend on --tasks-per-step or on which tasks share its group. Laid out
    as one slot of `engine.base_params`."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxforget.models.lora import LoRA, LoRAParam
    from jaxforget.models.sharding import put_global

    if engine.lora is None:
        return engine.base_params
    fresh = nnx.state(LoRA(engine.arch, engine.lora, rngs=nnx.Rngs(_task_seed(config, index))), LoRAParam)
    # Same leaves in the same (name-sorted) order as the model's adapters; the tree structure (and
    # its metadata) is the model's, so every group's state matches the compiled signature.
    base = jax.tree.leaves(engine.base_params)[0].sharding  # adapters are replicated (see train._on_mesh)
    put = NamedSharding(base.mesh, PartitionSpec()) if isinstance(base, NamedSharding) else base
    leaves = [put_global(x, put) for x in jax.tree.leaves(fresh)]
    return jax.tree.unflatten(jax.tree.structure(engine.base_params), leaves)


# ------------------------------------------------------------------------------------------------
# one group of tasks


class TaskFailed(Exception):
    """Training diverged (non-finite loss); the row is recorded as failed with this reason."""


def _task_seed(config: CollectConfig, index: int) -> int:
    return int(np.random.SeedSequence([config.train.seed, index]).generate_state(1)[0] % (2**31 - 1))


def _checkpoint_manager(path: Path, config: CollectConfig):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, config.train.keep_checkpoints),
                                           enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(path.absolute(), options=options)


def _restore(manager, state, path: Path):
    """Latest checkpoint of the group in progress, or None. An unreadable one is an error, never a
    silent restart."""
    import jax
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None, None
    try:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged files
        raise RunError(f"{path}: checkpoint at step {step} is unreadable ({type(e).__name__}: {e}). "
                       "Delete the directory to restart this task from the base model.") from None
    return restored["state"], restored["extra"]


def _stack_slots(slots: list[list[Any] | None], pad_id: int, batch_size: int,
                 grad_accum: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask, loss_mask (K, A, B, T) of K slots' A micro-batches each (A = 1:
    (K, B, T)); None: an inactive slot, all padding.

    T is the longest bucket among them: right padding leaves a causal model's NLL unchanged, and the
    shapes stay the bucket lengths (one compilation each).
    """
    T = max(b.input_ids.shape[1] for slot in slots if slot for b in slot)
    shape = (len(slots), grad_accum, batch_size, T)
    ids, attn, loss = np.full(shape, pad_id, np.int32), np.zeros(shape, np.int32), np.zeros(shape, bool)
    for k, slot in enumerate(slots):
        for a, b in enumerate(slot or ()):
            n = b.input_ids.shape[1]
            ids[k, a, :, :n], attn[k, a, :, :n], loss[k, a, :, :n] = b.input_ids, b.attention_mask, b.loss_mask
    if grad_accum == 1:
        return ids[:, 0], attn[:, 0], loss[:, 0]
    return ids, attn, loss


def train_group(indices: list[int], *, setup: Setup, config: CollectConfig, run: RunDir, engine: Engine,
                tracker, progress, em_eval: Callable[[Any], np.ndarray] | None = None
                ) -> list[dict[str, Any] | TaskFailed]:
    """Fine-tune tasks `indices` (at most K) together, each from its own start, and measure their
    upstream NLL. Returns, per task, its row fields or the TaskFailed that ended it.

    A task whose loss or NLL is non-finite fails alone: its slot stops training, the others go on.
    Tasks may need different numbers of steps (epoch caps): a slot is inactive once its task is
    done (or failed, or a dummy filling the last group) and keeps its parameters. The group
    checkpoints as one unit in checkpoints/task_<first index> (fault point
    ``checkpoint:<first index>:<step>``). Row fields: nll_after [N], train_losses, steps_run,
    train_tokens, seconds (wall time of the whole group), seed; nll_steps [T, N] and steps [T] with
    --eval.eval-every; with --save-models the fine-tuned model is written to RUN/models/<task>.
    """
    import orbax.checkpoint as ocp

    from jaxforget.data.batching import Batcher, num_train_steps
    from jaxforget.models.sharding import to_host

    t, K, n_real = config.train, engine.k, len(indices)
    names = [setup.task_names[i] for i in indices]
    seeds = [_task_seed(config, i) for i in indices]
    pad_id = _pad_id(setup.tokenizer)
    batchers = [Batcher(setup.task_train[n], batch_size=t.batch_size, buckets=t.buckets, seed=s, pad_id=pad_id)
                for n, s in zip(names, seeds)]
    n_steps = [num_train_steps(-(-b.steps_per_epoch // t.grad_accum), max_steps=t.max_steps,
                               max_epochs=t.max_epochs) for b in batchers] + [0] * (K - n_real)
    inits = [initial_params(config, i, engine) for i in indices]
    state = engine.start(inits + inits[:1] * (K - n_real))  # dummy slots: never active, never read
    losses: list[list[float]] = [[] for _ in indices]
    failed: list[str | None] = [None] * n_real
    nll_steps: list[list[np.ndarray]] = [[] for _ in indices]
    eval_steps: list[list[int]] = [[] for _ in indices]
    ckpt_dir = run.checkpoints_dir / f"task_{indices[0]:05d}"
    manager = _checkpoint_manager(ckpt_dir, config) if t.checkpoint_every > 0 else None
    first = 0
    if manager is not None:
        restored, extra = _restore(manager, state, ckpt_dir)
        if restored is not None:
            if list(extra["indices"]) != indices:
                raise RunError(f"{ckpt_dir}: a checkpoint of tasks {extra['indices']}, now grouped as {indices}. "
                               "Delete the directory to restart these tasks.")
            state, first = restored, int(extra["step"])
            losses, failed, eval_steps = extra["losses"], extra["failed"], extra["eval_steps"]
            nll_steps = [[np.asarray(x, np.float32) for x in xs] for xs in extra["nll_steps"]]
            log.info("task %s: resumed from the checkpoint at step %d", ", ".join(names), first)

    micro = [b.batches(n * t.grad_accum) for b, n in zip(batchers, n_steps)]
    total = max(n_steps)
    n_tokens = [0] * n_real
    pending: list[tuple[Any, np.ndarray]] = []  # (device (loss, lr) (K,), host active (K,)) since the last read
    t0 = time.perf_counter()

    def flush(step: int):
        for (loss, lr), active in zip(to_host([m for m, _ in pending]), [a for _, a in pending]):
            loss, lr = np.reshape(loss, -1), np.reshape(lr, -1)
            for k in np.flatnonzero(active[:n_real]):
                if failed[k]:
                    continue
                if not math.isfinite(loss[k]):
                    failed[k] = f"non-finite training loss ({loss[k]}) at or before step {step}"
                    continue
                losses[k].append(float(loss[k]))
                tracker.scalar(f"train_loss/{names[k]}", float(loss[k]), len(losses[k]))
                tracker.scalar(f"lr/{names[k]}", float(lr[k]), len(losses[k]))
        pending.clear()

    for step in range(total):
        active = np.array([step < n and not f for n, f in zip(n_steps, failed + [None] * (K - n_real))])
        if not active.any():  # every task done or failed: the rest would train nothing
            break
        slots = [[next(micro[k]) for _ in range(t.grad_accum)] if active[k] else None for k in range(n_real)]
        for k, slot in enumerate(slots):
            n_tokens[k] += sum(int(b.loss_mask.sum()) for b in slot or ())
        if step < first:  # already trained before the restart: its batches are skipped (same seeded order)
            continue
        arrays = _stack_slots(slots + [None] * (K - n_real), pad_id, t.batch_size, t.grad_accum)
        state, metrics = engine.step(state, arrays, active)
        pending.append(((metrics["loss"], metrics["lr"]), active))
        done = step + 1
        if done % config.log_every == 0 or done == total:
            flush(done)
        due = [k for k in range(n_real) if active[k] and not failed[k] and done < n_steps[k]]
        if config.eval.eval_every and done % config.eval.eval_every == 0 and due:
            nll = engine.evaluate(state.params)
            for k in due:
                nll_steps[k].append(nll[k])
                eval_steps[k].append(done)
        if manager is not None and done % t.checkpoint_every == 0 and done < total:
            flush(done)
            manager.save(done, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                extra=ocp.args.JsonSave(dict(step=done, indices=indices, losses=losses, failed=failed,
                                             eval_steps=eval_steps,
                                             nll_steps=[[x.tolist() for x in xs] for xs in nll_steps]))))
            _fault_point(f"checkpoint:{indices[0]}:{done}")
        progress.update(int(active.sum()))
    flush(total)
    nll_after = engine.evaluate(state.params) if not all(failed) else None
    results: list[dict[str, Any] | TaskFailed] = []
    for k, name in enumerate(names):
        if not failed[k] and not np.all(np.isfinite(nll_after[k])):
            failed[k] = "non-finite upstream NLL after fine-tuning"
        if failed[k]:
            results.append(TaskFailed(failed[k]))
            continue
        fields = dict(nll_after=nll_after[k], train_losses=np.asarray(losses[k], np.float32),
                      steps_run=np.asarray(n_steps[k]), train_tokens=np.asarray(n_tokens[k]),
                      seconds=np.asarray(time.perf_counter() - t0), seed=np.asarray(seeds[k]))
        if config.eval.eval_every:
            fields.update(nll_steps=np.stack(nll_steps[k] + [nll_after[k]]),
                          steps=np.asarray(eval_steps[k] + [n_steps[k]]))
        if em_eval is not None:
            fields["em_after"] = em_eval(engine.model(state.params, k))
        if config.save_models:
            _save_model(engine.model(state.params, k), run.root / "models" / name, setup.tokenizer)
        results.append(fields)
    if manager is not None:
        manager.close()
    return results


def _fault_point(where: str) -> None:
    """Fault injection for the resume tests: ``JAXFORGET_FAULT=kill@checkpoint:<task>:<step>`` sends this
    process SIGKILL right after that checkpoint is written, as a crash or pre-emption would."""
    import os
    import signal

    if os.environ.get("JAXFORGET_FAULT") == f"kill@{where}":
        os.kill(os.getpid(), signal.SIGKILL)


def _lead_sharding(sharding, n_lead: int):
    """`sharding` of (B, T) batches for arrays with `n_lead` more leading axes (slots, micro-batches)."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(sharding.mesh, PartitionSpec(*(None,) * n_lead, *sharding.spec))


# ------------------------------------------------------------------------------------------------
# the run


def _versions() -> dict[str, str]:
    import flax
    import jax
    import optax

    import jaxforget

    return dict(jaxforget=jaxforget.__version__, python=platform.python_version(), jax=jax.__version__,
                flax=flax.__version__, optax=optax.__version__, numpy=np.__version__, backend=jax.default_backend())


def _config_dict(config: CollectConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    for k in _NOT_COMPARED:
        d.pop(k)
    return _jsonable(d)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def summarize(out: dict[str, np.ndarray], task_names: list[str], example_ids: list[str]) -> str:
    """Shape, mean, std, fraction positive, extremes and the R^2 fit table of Z (failed rows excluded)."""
    from jaxforget.completion import fit_table

    Z = out["Z"]
    ok = ~out["failed"]
    Zok = Z[ok]
    lines = [f"Z: {Z.shape[0]} tasks x {Z.shape[1]} examples ({int((~ok).sum())} failed tasks)"]
    if Zok.size == 0:
        return "\n".join(lines)
    finite = Zok[np.isfinite(Zok)]
    lines.append(f"mean {finite.mean():.4f}  std {finite.std():.4f}  positive {np.mean(finite > 0):.1%}")
    row = np.nanmean(Zok, axis=1)
    names_ok = [n for n, f in zip(task_names, ok) if f]
    order = np.argsort(-row)
    lines.append("most forgetting tasks:  " + ", ".join(f"{names_ok[i]} ({row[i]:+.3f})" for i in order[:3]))
    lines.append("least forgetting tasks: " + ", ".join(f"{names_ok[i]} ({row[i]:+.3f})" for i in order[::-1][:3]))
    col = np.nanmean(Zok, axis=0)
    order = np.argsort(-col)
    lines.append("most forgotten examples:  " + ", ".join(f"{example_ids[j]} ({col[j]:+.3f})" for j in order[:3]))
    lines.append("least forgotten examples: " + ", ".join(f"{example_ids[j]} ({col[j]:+.3f})" for j in order[::-1][:3]))
    if "Z_em" in out:
        em = out["Z_em"][ok]
        lines.append(f"exact match: base right on {out['em_before'].mean():.1%} of {out['em_before'].size} examples; "
                     f"forgotten (Z_em = 1) on {np.nanmean(em) if np.isfinite(em).any() else float('nan'):.1%} "
                     "of the measured entries")
    if Zok.shape[0] >= 2:
        ranks = tuple(range(1, min(5, *Zok.shape) + 1))
        table = fit_table(Zok, ranks=ranks)
        lines.append("R^2: " + "  ".join(f"{k} {v:.3f}" for k, v in table.items()))
    return "\n".join(lines)


def _heatmap_image(Z: np.ndarray) -> np.ndarray:
    """Z with rows and columns sorted by their means, blue-white-red, as an [H, W, 3] uint8 image."""
    from matplotlib import colormaps

    Zs = np.nan_to_num(Z, nan=0.0)
    Zs = Zs[np.argsort(-Zs.mean(axis=1))][:, np.argsort(-Zs.mean(axis=0))]
    lim = max(float(np.quantile(np.abs(Zs), 0.99)), 1e-6)
    rgba = colormaps["bwr"]((np.clip(Zs, -lim, lim) + lim) / (2 * lim))
    rgb = (rgba[..., :3] * 255).astype(np.uint8)
    return np.repeat(rgb, max(1, 200 // max(1, Z.shape[0])), axis=0)  # rows tall enough to see


def merge(path: Path, echo=print) -> dict[str, np.ndarray]:
    """Assemble forgetting.npz of a run directory from its rows (every task must be finished)."""
    run = RunDir(path)
    meta = run.read_meta()
    out = run.assemble(meta["task_names"], meta["example_ids"],
                       em_base_correct_only=meta["config"]["eval"].get("em_base_correct_only", True))
    echo(summarize(out, meta["task_names"], meta["example_ids"]))
    echo(f"wrote {run.forgetting_path}")
    return out


def collect(config: CollectConfig, echo=print) -> int:
    """Run (or resume) the collection; returns the process exit code (1 when a task failed).

    With --distributed every process of the run calls this; process 0 alone writes the run
    directory and echoes, and all return the same code."""
    if config.merge is not None:
        merge(config.merge, echo)
        return 0
    check_config(config)
    init_distributed(config)  # before any other JAX call

    from tqdm import tqdm

    from jaxforget.tracking import open_tracker

    primary = _is_primary()
    if not primary:
        echo = _silent
    setup = build_setup(config, echo)
    run = RunDir(config.out)
    task_names = setup.task_names
    example_ids = [ex.id for ex in setup.upstream]
    meta = dict(config=_config_dict(config), model_dir=str(setup.model_dir), task_names=task_names,
                em_example_ids=setup.em_set.ids if setup.em_set is not None else None,
                example_ids=example_ids, seeds=dict(data=config.data.seed, train=config.train.seed,
                                                    world=config.world.seed),
                versions=_versions(), status="running")

    def open_run() -> dict[str, Any]:
        resumed = run.start(meta)
        return dict(resumed=resumed, has_base=run.read_base() is not None, finished=run.finished())

    # Process 0 reads (and creates) the run directory; every process acts on what it found.
    found = _on_primary(open_run, f"open the run directory {run.root}")
    resumed, finished = found["resumed"], set(found["finished"])
    echo(f"{'resuming' if resumed else 'starting'} {run.root}: {len(task_names)} tasks x {len(example_ids)} "
         f"upstream examples; model {setup.model_dir}")

    engine = build_engine(setup, config)
    em_eval = None
    if setup.em_set is not None:
        from jaxforget.exact_match import make_em_eval

        em_eval = make_em_eval(setup.em_set, setup.tokenizer, batch_size=config.eval.em_batch_size,
                               max_new_tokens=config.eval.em_max_new_tokens, pad_id=_pad_id(setup.tokenizer),
                               sharding=_batch_sharding(setup.mesh, config.eval.em_batch_size))
    nll_before = None  # process 0's: the others never need it
    if not found["has_base"]:
        echo("measuring the base model's NLL on the upstream examples")
        nll_before = engine.evaluate(engine.base_params)[0]  # adapters start at B = 0: each is the base model
        extra = {}
        if em_eval is not None:
            extra["em_before"] = em_eval(engine.model(engine.base_params, 0))
            echo(f"base model exact match: {extra['em_before'].mean():.1%} of {extra['em_before'].size} examples")
        if primary:
            run.write_base(nll_before, **extra)
            atomic_write_jsonl(run.root / "upstream.jsonl", [
                dict(id=ex.id, source=ex.source, n_tokens=len(tok.ids), nll_before=float(nll), text=ex.text[:500])
                for ex, tok, nll in zip(setup.upstream, setup.upstream_tok, nll_before)])
    elif primary:
        nll_before = run.read_base()["nll_before"]

    shard_i, shard_n = config.shard_index
    mine = [i for i in range(len(task_names)) if i % shard_n == shard_i]
    todo = [i for i in mine if i not in finished]
    echo(f"shard {shard_i}/{shard_n}: {len(mine)} tasks, {len(mine) - len(todo)} already done")
    tracker = open_tracker("tensorboard", run.tb_dir) if primary else open_tracker("none")
    if not resumed:
        tracker.hparams(_flat(_config_dict(config)), {"tasks": float(len(task_names))})
    failed = []
    K = config.tasks_per_step
    with tracker, tqdm(total=len(todo) * config.train.max_steps, disable=config.quiet or not primary,
                       desc="collect", unit="step") as progress:
        for group in (todo[g:g + K] for g in range(0, len(todo), K)):
            progress.set_postfix(task=", ".join(task_names[i] for i in group))
            results = train_group(group, setup=setup, config=config, run=run, engine=engine, tracker=tracker,
                                  em_eval=em_eval,
                                  progress=progress)
            failed += [task_names[i] for i, fields in zip(group, results) if isinstance(fields, TaskFailed)]
            if config.train.checkpoint_every > 0:
                _barrier(f"closed checkpoints of group {group[0]}")  # before process 0 removes them
            if primary:
                _record_group(group, results, run=run, task_names=task_names, nll_before=nll_before,
                              tracker=tracker, echo=echo)
    if primary:
        missing = sorted(set(range(len(task_names))) - set(run.finished()))
        if missing:
            echo(f"{len(missing)} tasks still to do in other shards; `python -m jaxforget.collect --merge {run.root}` "
                 "assembles Z once they are finished")
        else:
            out = run.assemble(task_names, example_ids, em_base_correct_only=config.eval.em_base_correct_only)
            _write_tasks_jsonl(run, task_names, setup)
            all_failed = [str(run.read_row(j)["name"]) for j in range(len(task_names))
                          if str(run.read_row(j)["status"]) == "failed"]
            run.update_meta(status="complete" if not all_failed else "complete_with_failures",
                            failed_tasks=all_failed)
            echo(summarize(out, task_names, example_ids))
            echo(f"wrote {run.forgetting_path}")
        # traces of the jitted steps in this process: one per batch shape, whatever the number of tasks
        train_jit = engine.train_step.jitted
        run.update_meta(compilations=dict(train_step=train_jit._cache_size() if train_jit else 0,
                                          eval_step=engine.eval_step.jitted._cache_size()))
    return 1 if failed else 0


def _silent(*_args, **_kwargs) -> None:
    """The echo of processes other than 0."""


def _record_group(group: list[int], results: list, *, run: RunDir, task_names: list[str], nll_before: np.ndarray,
                  tracker, echo) -> None:
    """Process 0, after a group of tasks: their rows, TensorBoard summaries, the checkpoint removed."""
    for i, fields in zip(group, results):
        name = task_names[i]
        if isinstance(fields, TaskFailed):
            log.error("task %s failed: %s", name, fields)
            echo(f"task {name} FAILED: {fields}")
            run.write_row(i, name=name, nll_after=np.full(len(nll_before), np.nan), status="failed",
                          reason=str(fields))
            continue
        run.write_row(i, name=name, **fields)
        z = fields["nll_after"] - nll_before
        tracker.scalar("upstream_nll/mean_after", float(np.mean(fields["nll_after"])), i)
        tracker.scalar("forgetting/mean", float(np.mean(z)), i)
        tracker.histogram(f"forgetting/{name}", z, i)
    shutil.rmtree(run.checkpoints_dir / f"task_{group[0]:05d}", ignore_errors=True)
    done_rows = sorted(run.finished())
    rows = np.stack([run.read_row(j)["nll_after"] for j in done_rows]) - nll_before[None]
    tracker.image("forgetting/Z_sorted", _heatmap_image(rows), len(done_rows))
    tracker.flush()


def _save_model(model, path: Path, tokenizer) -> None:
    """The fine-tuned model as an HF directory (save_hf folds unmerged adapters into the weights).
    Every process calls it (save_hf gathers what is sharded across processes); process 0 writes."""
    from jaxforget import models

    primary = _is_primary()
    tmp = path.with_name(path.name + ".tmp")
    if primary:
        shutil.rmtree(tmp, ignore_errors=True)
    models.save_hf(model, tmp, tokenizer=tokenizer)
    if primary:
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)


def _write_tasks_jsonl(run: RunDir, task_names: list[str], setup: Setup) -> None:
    records = []
    for j, name in enumerate(task_names):
        row = run.read_row(j)
        losses = row.get("train_losses", np.zeros(0))
        records.append(dict(
            name=name, status=str(row["status"]), reason=str(row["reason"]), n_train=len(setup.task_train[name]),
            n_train_tokens=int(row["train_tokens"]) if "train_tokens" in row else None,
            steps=int(row["steps_run"]) if "steps_run" in row else None,
            train_loss_before=float(losses[0]) if losses.size else None,
            train_loss_after=float(np.mean(losses[-10:])) if losses.size else None,
            seconds=float(row["seconds"]) if "seconds" in row else None))
    atomic_write_jsonl(run.root / "tasks.jsonl", records)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def cli(argv: list[str] | None = None) -> int:
    config = tyro.cli(CollectConfig, args=argv)
    logging.basicConfig(level=logging.WARNING if config.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return collect(config)
    except (ValueError, FileNotFoundError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
