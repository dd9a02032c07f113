"""``python -m jaxforget.plan``: will a collect run fit, and how long will it take? Answered before the run.

Takes collect's own flags (``CollectConfig``) plus ``--plan.*``. The model is built abstractly from its
``config.json`` (``nnx.eval_shape``: no weight is allocated or read, so a directory holding only
config.json will do), placed on the configured mesh, and collect's jitted train and eval steps are
lowered and compiled for the largest bucket shapes. XLA's compiled memory analysis gives the
temporary bytes of each step per device; the parameter and optimizer bytes per device follow from
the shardings; XLA's cost analysis gives the FLOPs per step. The wall time of the run is the FLOPs
of all its steps at a stated MFU of a stated peak. With ``--plan.device-memory`` the plan says
whether the run fits and, when it does not, which knob (remat, fsdp, batch, parameter dtype) would
make it fit, by planning again with that knob changed. With ``--eval.budget F`` (collect's
own flag) each task's evaluations measure round(F·N) of the N upstream examples instead of
all of them (the base model still measures all N): the plan prints the time with the budget and what
it saves.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m jaxforget.plan \\
        --model.path olmo-7b-config --mesh 1 8 1 --train.batch-size 8 --train.buckets 1024 \\
        --data.task-max-len 1024 --plan.device-memory 80GB
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from jaxforget.cli import Range, above, at_least, closing, range_errors
from jaxforget.collect.budget import per_task_count
from jaxforget.collect.config import RANGES as COLLECT_RANGES
from jaxforget.collect.config import CollectConfig, check_config, resolve_lengths

# bfloat16 dense peak of one device, TFLOP/s, by jax device_kind (the spec sheets' figures).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "TPU v4": 275.0, "TPU v5e": 197.0,
               "TPU v5p": 459.0, "TPU v6e": 918.0}
DEFAULT_PEAK = 989.0  # H100/H200 SXM bfloat16 dense: what the plan assumes when planning on a CPU
HEADROOM = 0.9  # of the device memory usable by the run (CUDA context, cuDNN workspace, fragmentation)


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """What the plan assumes about the run and the device."""

    device_memory: str | None = None
    """Memory of one device, e.g. 80GB, 80GiB, 141GB: say whether the run fits (and which knob makes it fit)."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for the wall-time estimate."""
    peak_tflops: float | None = None
    """Peak TFLOP/s of one device (bfloat16 dense). Default: from the device kind when known, else an H100's 989."""
    n_tasks: int = 85
    """Tasks in the run (the paper: 85); each takes --train.max-steps steps (the epoch cap is not applied)."""
    suggest: bool = True
    """When the run does not fit, plan again with each knob changed and report those that fit."""


@dataclasses.dataclass(frozen=True)
class PlanCommand(CollectConfig):
    """Plan a collect run: memory per device, FLOPs per step and wall time, before any weight is loaded."""

    plan: PlanConfig = PlanConfig()


RANGES: dict[str, Range] = {
    # collect's flags as collect checks them, and --plan.* (tests/test_robustness.py checks that none is missing)
    **COLLECT_RANGES, "plan.mfu": Range(0, 1, lo_open=True), "plan.peak_tflops": above(0), "plan.n_tasks": at_least(1),
}


def check_plan(config: PlanCommand) -> None:
    """Every flag checked before config.json is read: collect's checks, --plan.* ranges (NaN / inf refused)
    and --plan.device-memory (a size > 0), each error naming the flag as typed."""
    errors = [e for e in range_errors(config, RANGES) if e.startswith("--plan.")]
    if config.plan.device_memory is not None:
        try:
            if parse_bytes(config.plan.device_memory) <= 0:
                errors.append(f"--plan.device-memory must be > 0; got {config.plan.device_memory!r}")
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("; ".join(errors))
    check_config(config)


_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_bytes(text: str, flag: str = "--plan.device-memory") -> int:
    """'80GB' -> 80e9, '80GiB' -> 80 * 2**30, '81920MiB', '8e10' (bytes); anything else is a ValueError naming `flag`."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{flag} {text!r}: expected a size such as 80GB, 80GiB or 81920MiB")
    size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(size) or size >= 2**80:  # beyond any device, and beyond float's integers
        raise ValueError(f"{flag} {text!r}: not a device memory size (expected e.g. 80GB)")
    return int(size)


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _scaled(x: float, units: tuple[tuple[float, str], ...]) -> str:
    """`x` in the largest unit it reaches (the first otherwise), with three significant digits: the sizes of a
    one-layer test model and of OLMo-7B both read as numbers, never as 0.000B or 0.00 TFLOP."""
    scale, unit = next(((s, u) for s, u in reversed(units) if abs(x) >= s), units[0])
    value = x / scale
    return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"


def fmt_count(n: float) -> str:
    """A parameter count: 30.5K, 1.18B."""
    return _scaled(n, ((1, ""), (1e3, "K"), (1e6, "M"), (1e9, "B"), (1e12, "T"))).replace(" ", "")


def fmt_flops(n: float) -> str:
    """FLOPs: 512 MFLOP, 3.4 GFLOP, 1.2 TFLOP, 5.6 PFLOP."""
    return _scaled(n, ((1, "FLOP"), (1e3, "kFLOP"), (1e6, "MFLOP"), (1e9, "GFLOP"), (1e12, "TFLOP"), (1e15, "PFLOP")))


def fmt_seconds(s: float) -> str:
    """A duration: < 0.01 s, 0.42 s, 12 s, 3.5 min, 2.1 h, 3.2 days."""
    if s < 0.01:
        return "< 0.01 s"
    if s < 60:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.2g} min" if s < 600 else f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.2g} h" if s < 36000 else f"{s / 3600:.0f} h"
    return f"{s / 86400:.3g} days"


@dataclasses.dataclass
class StepPlan:
    """One compiled step on one device: bytes from XLA's memory analysis, FLOPs from its cost analysis."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    xla_flops: float
    """Per device, per call: XLA's cost analysis of the partitioned program. It counts the body of a
    loop once (the layer scan, the log-prob chunks), so it is shown, not used for the time."""
    model_flops: float
    """All devices together, per call: the model FLOPs that define MFU (`model_flops`)."""

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + max(0, self.output_bytes - self.alias_bytes)


@dataclasses.dataclass
class Plan:
    """The plan of a run, per device."""

    n_devices: int
    mesh: dict[str, int]
    n_params: int
    param_bytes: int
    """Trained (or, with LoRA, frozen + adapter) parameters, one copy, per device."""
    base_copy_bytes: int
    """Full fine-tuning keeps the base weights for the next task beside the trained copy."""
    optimizer_bytes: int
    train: StepPlan
    eval: StepPlan
    train_shape: tuple[int, ...]
    eval_shape: tuple[int, ...]
    steps_per_task: int
    eval_batches: int
    """Batches of one evaluation of all N upstream examples (the base model's; a task's without a budget)."""
    n_upstream: int
    """N, the upstream examples the base model measures."""
    evals_per_task: int
    n_tasks: int
    peak_tflops: float
    mfu: float
    device_memory: int | None = None
    suggestions: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    """(flags, planned peak bytes) of the knob changes that fit."""
    budget: float = 1.0
    """--eval.budget: the fraction of the N examples each evaluation of a task measures."""

    @property
    def task_examples(self) -> int:
        """Upstream examples one evaluation of a task measures: round(budget * N), collect's own count (all N
        without a budget)."""
        return per_task_count(self.budget, self.n_upstream)

    @property
    def task_eval_batches(self) -> int:
        """Eval batches of one evaluation of a task (eval_batches without a budget)."""
        return -(-self.task_examples // self.eval_shape[0])

    @property
    def peak_bytes(self) -> int:
        """The most one device holds: the train step (its state and batch as arguments, temporaries)
        beside the kept base copy, or an evaluation of the trained parameters beside the state."""
        train = self.base_copy_bytes + self.train.peak_bytes
        evaluate = self.base_copy_bytes + self.param_bytes + self.optimizer_bytes + self.eval.temp_bytes
        return max(train, evaluate)

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.peak_bytes <= HEADROOM * self.device_memory

    @property
    def train_flops(self) -> float:
        """Model FLOPs of the run's training steps."""
        return self.n_tasks * self.steps_per_task * self.train.model_flops

    @property
    def eval_flops(self) -> float:
        """Model FLOPs of the run's evaluations: every task's (with the budget) and the base model's, of all N."""
        batches = self.n_tasks * self.evals_per_task * self.task_eval_batches + self.eval_batches
        return batches * self.eval.model_flops

    @property
    def seconds(self) -> float:
        """Wall time of the whole run: every device's FLOPs at `mfu` of `peak_tflops`."""
        return (self.train_flops + self.eval_flops) / (self.n_devices * self.mfu * self.peak_tflops * 1e12)

    @property
    def eval_share(self) -> float:
        """The evaluations' share of the run's FLOPs (its time)."""
        return self.eval_flops / (self.train_flops + self.eval_flops)

    @property
    def unbudgeted(self) -> "Plan":
        """The same run measuring every entry (--eval.budget 1)."""
        return dataclasses.replace(self, budget=1.0, suggestions=[])

    def report(self) -> str:
        mesh = " x ".join(f"{k} {v}" for k, v in self.mesh.items())
        lines = [
            f"plan: {fmt_count(self.n_params)} parameters on {self.n_devices} device(s) ({mesh}); per device:",
            f"  parameters      {fmt_bytes(self.param_bytes)}" + (
                f" (+ {fmt_bytes(self.base_copy_bytes)} base copy kept for the next task)" if self.base_copy_bytes else ""),
            f"  optimizer       {fmt_bytes(self.optimizer_bytes)}",
            f"  train step      {self.train_shape}: temporaries {fmt_bytes(self.train.temp_bytes)}, "
            f"{fmt_flops(self.train.model_flops / self.n_devices)} model "
            f"(XLA cost analysis: {fmt_flops(self.train.xla_flops)}, loop bodies counted once)",
            f"  eval step       {self.eval_shape}: temporaries {fmt_bytes(self.eval.temp_bytes)}, "
            f"{fmt_flops(self.eval.model_flops / self.n_devices)} model "
            f"(XLA cost analysis: {fmt_flops(self.eval.xla_flops)})",
            f"  peak            {fmt_bytes(self.peak_bytes)}",
            f"  time            {self.n_tasks} tasks x ({self.steps_per_task} steps + {self.evals_per_task} x "
            f"{self.task_eval_batches} eval batches): {fmt_seconds(self.seconds)} at {self.mfu:.0%} MFU of "
            f"{self.peak_tflops:.0f} TFLOP/s per device ({fmt_seconds(self.seconds / self.n_tasks)} per task)",
        ]
        if self.budget < 1:
            full = self.unbudgeted
            saved = full.seconds - self.seconds
            lines.append(
                f"  budget          {self.budget:g}: each task measures {self.task_examples:,} of the "
                f"{self.n_upstream:,} upstream examples ({self.task_eval_batches} eval batches), the base model "
                f"all; "
                f"evaluation {self.eval_share:.0%} of the time ({full.eval_share:.0%} measuring all); saves "
                f"{fmt_seconds(saved)} ({saved / full.seconds:.0%}) of {fmt_seconds(full.seconds)}")
        if self.device_memory is not None:
            verdict = "fits" if self.fits else "does not fit"
            lines.append(f"  {verdict} in {fmt_bytes(self.device_memory)} per device "
                         f"(planned peak {self.peak_bytes / self.device_memory:.0%}; the limit is {HEADROOM:.0%})")
            if self.fits and self.peak_bytes > 0.75 * self.device_memory:
                lines.append("  note: above JAX's default 75% preallocation on GPU: run with "
                             "XLA_PYTHON_CLIENT_MEM_FRACTION=0.92")
            if not self.fits:
                if self.suggestions:
                    lines.append("  would fit with:")
                    lines += [f"    {flags}  (peak {fmt_bytes(peak)})" for flags, peak in self.suggestions]
                else:
                    lines.append("  no single knob (remat, fsdp, batch, param dtype) makes it fit")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def plan_mesh(shape: tuple[int, ...] | None):
    """The configured mesh over the first devices; a shape that does not divide the devices is an error naming --mesh."""
    import jax

    from jaxforget import models

    devices = jax.devices()
    shape = tuple(shape) if shape is not None else (len(devices), 1, 1)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--mesh {' '.join(map(str, shape))}: expected three positive sizes (data fsdp tensor)")
    n = math.prod(shape)
    if n > len(devices) or len(devices) % n:
        raise ValueError(f"--mesh {' '.join(map(str, shape))}: {n} devices do not divide the {len(devices)} "
                         f"available ({jax.default_backend()}); on a CPU, "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n} provides {n}")
    return models.make_mesh(shape, devices=devices[:n])


def plan_arch(path) -> Any:
    """The ArchConfig the run will build from `path`: config.json, and when the weights are there too, an output
    head kept apart from a tied embedding as ``models.load`` keeps it (tie_word_embeddings with a distinct
    head in the safetensors). Without weights, config.json alone."""
    from pathlib import Path

    from jaxforget import models
    from jaxforget.models.hf import open_checkpoint, untied_if_distinct

    arch = models.read_arch(path)
    path = Path(path)
    if arch.tie_embeddings and ((path / "model.safetensors").is_file()
                                or (path / "model.safetensors.index.json").is_file()):
        arch = untied_if_distinct(arch, open_checkpoint(path), source=str(path))
    return arch


def check_dtype(name: str, flag: str) -> Any:
    """The jnp dtype `name`, refused (naming `flag`) when the default backend cannot hold it."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(name)
    try:
        jax.block_until_ready(jax.device_put(jnp.zeros((2,), dtype)) + 1)
    except Exception as e:  # the backend's own error type varies
        raise ValueError(f"{flag} {name}: not supported by the {jax.default_backend()} backend ({e})") from None
    return dtype


def _shard_bytes(tree) -> int:
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def model_flops(arch, tokens: int, length: int, kind: str) -> float:
    """Model FLOPs of `tokens` tokens in sequences of `length` (the PaLM convention of MFU): 2 per
    weight of every matmul (the output head included, the embedding lookup not) and 4 * T * d_attn
    per layer for attention, forward; training 3x that (full fine-tuning), or 2x (LoRA: no weight
    gradients of the frozen base; the small adapters are ignored). Remat's recomputation is not counted."""
    a = arch
    matmul = a.n_layers * (a.d_model * a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads)
                           + a.d_model * a.d_ff * (3 if a.mlp == "gated" else 2)) + a.vocab_size * a.d_model
    forward = 2 * matmul + 4 * a.n_layers * length * a.n_heads * a.head_dim
    return tokens * forward * {"eval": 1, "full": 3, "lora": 2}[kind]


def _step_plan(compiled, flops: float) -> StepPlan:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return StepPlan(argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
                    alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                    xla_flops=float((cost or {}).get("flops", 0.0)), model_flops=flops)


def plan_run(config: PlanCommand) -> Plan:
    """Build the model abstractly, compile collect's steps for the configured mesh and shapes, and plan.
    Buckets left to the length quantiles (known only once the data is read) are planned at the longest
    length, --data.task-max-len resp. --data.max-len: the worst case."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxforget import models
    from jaxforget.collect.engine import batch_sharding, lead_sharding, make_tx
    from jaxforget.models.sharding import variable_sharding
    from jaxforget.train import (SplitModel, TrainState, abstract_state, make_eval_step, make_stacked_eval_step,
                                 make_stacked_train_step, make_train_step)

    if config.model.path is None:
        raise ValueError("plan needs --model.path: a Hugging Face directory with a config.json (weights not needed)")
    arch = plan_arch(config.model.path)
    dtype = check_dtype(config.model.dtype, "--model.dtype")
    param_dtype = check_dtype(config.model.param_dtype, "--model.param-dtype")
    p = config.plan
    device_memory = None if p.device_memory is None else parse_bytes(p.device_memory)
    if not 0 < p.mfu <= 1:
        raise ValueError(f"--plan.mfu {p.mfu}: expected a fraction in (0, 1]")
    mesh = plan_mesh(config.mesh)
    t, K = config.train, config.tasks_per_step

    def build():
        model = models.Decoder(arch, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0), remat=t.remat)
        if t.mode == "lora":
            lora = models.LoraConfig(rank=t.lora_rank, alpha=t.lora_alpha, targets=t.lora_targets)
            models.add_lora(model, lora, seed=0, n_adapters=None if K == 1 else K)
        return model

    model = nnx.eval_shape(build)
    for _, var in nnx.iter_graph(model):  # abstract values onto their shardings
        if isinstance(var, nnx.Variable) and hasattr(var.get_value(), "shape"):
            v = var.get_value()
            var.set_value(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=variable_sharding(var, mesh)))
    optim, tx = make_tx(t)
    wrt = models.LoRAParam if t.mode == "lora" else nnx.Param
    graphdef, params, frozen = nnx.split(model, wrt, ...)
    split = SplitModel(graphdef, frozen)
    replicated = NamedSharding(mesh, PartitionSpec())
    if K == 1:
        state = abstract_state(params, tx)
        train_step, eval_step = make_train_step(split, tx, schedule=optim.schedule()), make_eval_step(split)
    else:
        per_pass = config.tasks_per_pass or (1 if jax.default_backend() == "cpu" else K)
        opt = jax.eval_shape(jax.vmap(tx.init), params)
        opt = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), opt)
        state = TrainState(params, opt, jax.ShapeDtypeStruct((K,), jnp.int32, sharding=replicated))
        train_step = make_stacked_train_step(split, tx, schedule=optim.schedule(), per_pass=per_pass)
        eval_step = make_stacked_eval_step(split, per_pass=per_pass)

    B, T = t.batch_size, max(t.buckets or (config.data.task_max_len,))
    lead = ((K,) if K > 1 else ()) + ((t.grad_accum,) if t.grad_accum > 1 else ())
    bsh = lead_sharding(batch_sharding(mesh, B), len(lead))
    batch = [jax.ShapeDtypeStruct(lead + (B, T), d, sharding=bsh) for d in (jnp.int32, jnp.int32, jnp.bool_)]
    if K > 1:
        batch.append(jax.ShapeDtypeStruct((K,), jnp.bool_, sharding=replicated))
    train = _step_plan(train_step.lower(state, *batch).compile(),
                       model_flops(arch, math.prod(lead + (B, T)), T, t.mode))
    EB, ET = config.eval.batch_size, max(config.eval.buckets or (config.data.max_len,))
    esh = batch_sharding(mesh, EB)
    ebatch = [jax.ShapeDtypeStruct((EB, ET), d, sharding=esh) for d in (jnp.int32, jnp.int32, jnp.bool_)]
    evaluate = _step_plan(eval_step.lower(state.params, *ebatch).compile(),
                          K * model_flops(arch, EB * ET, ET, "eval"))

    param_bytes = _shard_bytes(params) + _shard_bytes(frozen)
    kind = jax.devices()[0].device_kind
    peak = p.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()), DEFAULT_PEAK)
    evals_per_task = 1 + (t.max_steps // config.eval.eval_every if config.eval.eval_every else 0)
    return Plan(n_devices=mesh.size, mesh=dict(mesh.shape), n_params=arch.n_params(), param_bytes=param_bytes,
                base_copy_bytes=_shard_bytes(params) if t.mode == "full" else 0,
                optimizer_bytes=_shard_bytes(state.opt_state), train=train, eval=evaluate,
                train_shape=lead + (B, T), eval_shape=(EB, ET), steps_per_task=t.max_steps,
                eval_batches=-(-config.data.n_upstream // EB), n_upstream=config.data.n_upstream,
                evals_per_task=evals_per_task, n_tasks=p.n_tasks, peak_tflops=peak, mfu=p.mfu,
                device_memory=device_memory, budget=config.eval.budget)


def knob_changes(config: PlanCommand, n_available: int) -> list[tuple[str, PlanCommand]]:
    """Single-knob changes that lower memory, as (flags, config): remat, fsdp over more devices,
    half the batch (grad accumulation keeps the effective batch), bfloat16 parameters."""
    R = dataclasses.replace
    t, m = config.train, config.model
    out = []
    if t.remat != "full":
        out.append(("--train.remat full", R(config, train=R(t, remat="full"))))
    shape = tuple(config.mesh) if config.mesh is not None else (n_available, 1, 1)
    if math.prod(shape) < n_available:
        fsdp = n_available // (shape[0] * shape[2])
        out.append((f"--mesh {shape[0]} {fsdp} {shape[2]}", R(config, mesh=(shape[0], fsdp, shape[2]))))
    elif shape[1] < n_available and shape[0] > 1:
        out.append((f"--mesh 1 {shape[0] * shape[1]} {shape[2]}", R(config, mesh=(1, shape[0] * shape[1], shape[2]))))
    if t.batch_size > 1:
        out.append((f"--train.batch-size {t.batch_size // 2} --train.grad-accum {t.grad_accum * 2}",
                    R(config, train=R(t, batch_size=t.batch_size // 2, grad_accum=t.grad_accum * 2))))
    if m.param_dtype != "bfloat16":
        out.append(("--model.param-dtype bfloat16", R(config, model=R(m, param_dtype="bfloat16"))))
    return out


def fsdp_estimate(plan: Plan, device_memory: int) -> tuple[str, int] | None:
    """More devices than this machine has: the smallest fsdp size that fits, estimated by dividing
    the parameters, optimizer state and temporaries by it (fsdp splits weights and batch alike)."""
    for n in (2, 4, 8, 16, 32, 64):
        if n <= plan.mesh["fsdp"]:
            continue
        scale = plan.mesh["fsdp"] / n
        if plan.peak_bytes * scale <= HEADROOM * device_memory:
            return (f"an fsdp axis of {n} devices (estimated; plan on {n} devices to confirm)",
                    int(plan.peak_bytes * scale))
    return None


def plan(config: PlanCommand, echo=print) -> Plan:
    """Plan the run, print the report, and (when it does not fit) the knobs that would make it fit."""
    import jax

    check_plan(config)
    asked, config = config, resolve_lengths(config)  # as collect resolves them (the model's context, the paper)
    result = plan_run(config)
    if result.fits is False and config.plan.suggest:
        for flags, changed in knob_changes(config, len(jax.devices())):
            other = plan_run(changed)
            if other.fits:
                result.suggestions.append((flags, other.peak_bytes))
        if not any(f.startswith("--mesh") for f, _ in result.suggestions):
            est = fsdp_estimate(result, result.device_memory)
            if est is not None:
                result.suggestions.append(est)
    echo(result.report())
    echo(closing([], next_steps=[f"python -m jaxforget.collect {' '.join(collect_flags(asked))}".rstrip()
                                 + ("   (after the changes above)" if result.fits is False else "")]))
    return result


def collect_flags(config: CollectConfig) -> list[str]:
    """The flags of `config` that differ from collect's defaults, as typed (--plan.* left out): the collect
    command that runs what was planned."""
    def walk(value, default, prefix: str) -> list[str]:
        out: list[str] = []
        for f in dataclasses.fields(default):
            v, d, name = getattr(value, f.name), getattr(default, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(d) and dataclasses.is_dataclass(v):
                out += walk(v, d, f"{name}.")
            elif v != d:
                flag = "--" + name.replace("_", "-")
                if isinstance(v, bool):
                    out.append(flag if v else f"--{prefix.replace('_', '-')}no-{f.name.replace('_', '-')}")
                elif isinstance(v, tuple):
                    out.append(" ".join([flag, *map(str, v)]))
                else:
                    out.append(f"{flag} {v}")
        return out

    return walk(CollectConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(CollectConfig)}),
                CollectConfig(), "")


def main(config: PlanCommand) -> int:
    plan(config)
    return 0


def cli(argv: list[str] | None = None) -> int:
    from jaxforget.cli import run

    return run(PlanCommand, main, argv, prog="python -m jaxforget.plan")


if __name__ == "__main__":
    import sys

    sys.exit(cli())
