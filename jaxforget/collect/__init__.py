"""``python -m jaxforget.collect``: the forgetting-matrix engine, as a package.

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
checkpoint (verified: a damaged one is an error, never a resume). One process works on a run
directory at a time (a lock), except ``--shard`` jobs, which lock the tasks they train. One compiled
train step and one compiled eval step (per bucket shape) serve every task.

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

The package, one reason to change per module:

    config       the dataclasses and their checks (no jax: ``--help`` is instant)
    setup        model + tokenizer + upstream sample + tokenised tasks (build_setup, setup_from_run)
    engine       the compiled steps and what feeds them (Engine, build_engine, task_seed, stack_slots)
    loop         fine-tuning a group of tasks (TrainLoop; train_group: checkpoints, resume, failures)
    checkpoints  the orbax checkpoints of the group in progress, with a digest verified on restore
    run          the run: shards, rows, merge, summary, TensorBoard (collect, merge, summarize)
    distributed  several processes in one run (init_distributed, on_primary, barrier)
    __main__     the command line

Importing ``jaxforget.collect`` is cheap; each name below loads its module on first use (the one
lazy import of the package, so that ``python -m jaxforget.collect --help`` does not load jax).
"""


from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("CollectConfig", "DataConfig", "EvalConfig", "ModelConfig", "TrainConfig", "check_config",
                     "config_dict"), "config"),
    **dict.fromkeys(("Setup", "build_setup", "setup_from_run"), "setup"),
    **dict.fromkeys(("Engine", "TaskSchedule", "batch_sharding", "build_engine", "resolve_buckets", "stack_slots",
                     "task_seed"), "engine"),
    **dict.fromkeys(("TaskFailed", "TrainLoop", "run_schedule", "train_group"), "loop"),
    **dict.fromkeys(("collect", "merge", "summarize"), "run"),
    "cli": "__main__",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
