"""What a run is made of, built once: the base model on its mesh, the tokenizer, the upstream sample and
the tokenised tasks (:func:`build_setup`), or the same rebuilt from a finished run directory
(:func:`setup_from_run`) for the steps that work on one (replay, rep_dot, forecast)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget import models
from jaxforget.cli import config_from_dict, range_errors
from jaxforget.collect.config import (RANGES, CollectConfig, chat_template, em_field_map, resolve_lengths,
                                      task_field_map, upstream_field_map)
from jaxforget.collect.distributed import is_primary, on_primary
from jaxforget.data import readers, tokenize
from jaxforget.data.tokenize import Tokenized
from jaxforget.data.world import ensure_world
from jaxforget.exact_match import ExactMatchSet, build_em_set
from jaxforget.pretrain import ensure_base_model
from jaxforget.store import RunDir, RunError


@dataclasses.dataclass
class Setup:
    """Everything a run needs, built once."""

    model: Any
    """The base model (nnx), placed on `mesh`."""
    tokenizer: Any
    model_dir: Path
    upstream: list[readers.UpstreamExample]
    """The N upstream examples (Z's columns), in order."""
    upstream_tok: list[Tokenized]
    task_names: list[str]
    """The M tasks (Z's rows), in order."""
    task_train: dict[str, list[Tokenized]]
    """Each task's training split, tokenised."""
    mesh: Any
    em_set: ExactMatchSet | None = None
    """With --eval.metrics em: the exact-match examples."""
    upstream_skipped: list[dict] = dataclasses.field(default_factory=list)
    """Sampled upstream examples left out for having fewer than --data.min-tokens tokens: id and where."""

    @property
    def pad_id(self) -> int:
        """The token that pads batches: the tokenizer's pad token, else its EOS, else 0."""
        for tok_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if tok_id is not None:
                return int(tok_id)
        return 0


def tasks_path(config: CollectConfig, world_dir: Path | None = None) -> Path:
    """Where the run's tasks come from: --data.tasks, else the built-in world's task files (`world_dir`,
    or the cached world, built on first use)."""
    if config.data.tasks is not None:
        return Path(config.data.tasks)
    return (world_dir or ensure_world(config.world, vocab_size=config.base.vocab_size)) / "tasks"


def read_run_tasks(config: CollectConfig, world_dir: Path | None = None) -> dict[str, list[readers.TaskExample]]:
    """The run's tasks (--data.task-names of them, in that order; else all, sorted by name), every record read
    and checked: called before the upstream corpus is read and before the run directory is locked, so a bad
    task file costs nothing."""
    tasks = readers.read_tasks(tasks_path(config, world_dir), task_field_map(config.data))
    names = list(config.data.task_names) or sorted(tasks)
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise ValueError(f"--data.task-names: unknown task(s) {unknown}; available: {sorted(tasks)}")
    return {n: tasks[n] for n in names}


def read_em_records(config: CollectConfig) -> list[readers.TaskExample] | None:
    """With --eval.metrics em: every record of --data.em-upstream, read and checked (None without em)."""
    d = config.data
    if "em" not in config.eval.metrics:
        return None
    if d.em_preset == "auto" and not Path(d.em_upstream).is_dir():
        return readers.read_task_file(d.em_upstream, "em_upstream", check_task_field=False)
    tasks = readers.read_tasks(d.em_upstream, em_field_map(d))
    return [ex for name in sorted(tasks) for ex in tasks[name]]


@functools.lru_cache(maxsize=4)
def _template(d) -> str | None:
    return chat_template(d)


def task_train_examples(records: list[readers.TaskExample], tokenizer, config: CollectConfig) -> list[Tokenized]:
    """A task's training split (seeded by --data.seed and the task's name; or the split its files give),
    tokenised as collect trains it (with --data.chat-template's template when given)."""
    d = config.data
    train, _ = readers.split_task(records, val_fraction=d.val_fraction, seed=d.seed)
    return tokenize.tokenize_tasks(train, tokenizer, tokenize.TokenizeConfig(max_len=d.task_max_len,
                                                                             template=_template(d)))


def check_token_ids(vocab_size: int, model_dir: Path, tokenizer, *parts: tuple[str, list[Tokenized]]) -> None:
    """Every token id below the model's vocabulary size; else a ValueError naming the model directory: its
    tokenizer is not the model's (an id beyond the embedding table would read no row of it)."""
    for what, examples in parts:
        top = max((int(np.max(ex.ids)) for ex in examples if len(ex.ids)), default=-1)
        if top >= vocab_size:
            raise ValueError(f"{model_dir}: the tokenizer ({len(tokenizer)} tokens) gives {what} token id {top}, beyond "
                             f"the model's vocabulary of {vocab_size} (config.json vocab_size): the tokenizer does not "
                             "belong to this model")


def build_setup(config: CollectConfig, echo=print, tasks: dict[str, list[readers.TaskExample]] | None = None
                ) -> Setup:
    """Model (on the mesh), tokenizer, upstream sample and tasks (`tasks`: read_run_tasks's, when already
    read). The tasks are read first, before the model and the upstream corpus. In a multi-process run (after
    `init_distributed`) every process calls it; process 0 builds the built-in world and base model
    (when they are used and not cached yet) before the others look for them."""
    config = resolve_lengths(config)  # a config not through collect() (research code, tests): the same defaults
    d = config.data

    def built_in() -> tuple[Path | None, Path | None]:
        world = (ensure_world(config.world, vocab_size=config.base.vocab_size)
                 if d.upstream is None or d.tasks is None else None)
        base = (ensure_base_model(config.world, config.base, config.pretrain, echo=echo)
                if config.model.path is None else None)
        return world, base

    if jax.process_count() > 1:  # the cache's atomic builds would cope with a race, but one build is enough
        built = on_primary(lambda: [p and str(p) for p in built_in()], "build the built-in world and base model")
        # the others find process 0's entries (a shared cache) or build identical ones of their own
        world_dir, model_dir = [p and Path(p) for p in built] if is_primary() else built_in()
    else:
        world_dir, model_dir = built_in()
    model_dir = Path(config.model.path) if config.model.path is not None else model_dir
    tasks = tasks if tasks is not None else read_run_tasks(config, world_dir)
    names = list(tasks)
    em_records = read_em_records(config)
    mesh = models.make_mesh(config.mesh) if config.mesh is not None else models.make_mesh()
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    param_dtype = jnp.bfloat16 if config.model.param_dtype == "bfloat16" else jnp.float32
    model, tokenizer = models.load(model_dir, dtype=dtype, mesh=mesh, param_dtype=param_dtype,
                                   remat=config.train.remat)
    if tokenizer is None:
        raise FileNotFoundError(f"{model_dir}: no tokenizer files; collect needs the model's tokenizer")

    corpus = d.upstream if d.upstream is not None else world_dir / "upstream.jsonl"
    def sample(n: int, flag: str) -> list:
        try:
            return readers.sample_upstream_files(corpus, n, seed=d.seed, stratify=d.stratify,
                                                 fields=upstream_field_map(d))
        except ValueError as e:
            if not str(e).startswith("cannot sample"):  # a damaged record names its file and line already
                raise
            # the sampler does not know which flag asked for n: name it, and the fix, for the user
            raise ValueError(f"{flag} {n}: {e} ({corpus}); give {flag} at most the corpus size") from None

    if d.chunk_tokens is not None:  # documents sampled, then chunked, then chunks sampled (the paper's MPT setup)
        docs = sample(d.chunk_docs, "--data.chunk-docs")
        upstream, upstream_tok = tokenize.chunk_upstream(docs, tokenizer, chunk_tokens=d.chunk_tokens,
                                                         n=d.n_upstream, seed=d.seed)
    else:
        upstream = sample(d.n_upstream, "--data.n-upstream")
        upstream_tok = tokenize.tokenize_upstream(upstream, tokenizer, tokenize.TokenizeConfig(
            max_len=d.max_len, nll_tokens=config.nll_tokens, min_tokens=d.min_tokens, template=_template(d)))
    kept = {t.id for t in upstream_tok}
    skipped = [dict(id=ex.id, where=ex.where) for ex in upstream if ex.id not in kept]
    if skipped:
        echo(f"left out {len(skipped)} of {len(upstream)} upstream examples with fewer than {d.min_tokens} tokens "
             "(--data.min-tokens; named in meta.json upstream_skipped)")
        upstream = [ex for ex in upstream if ex.id in kept]
    task_train = {n: task_train_examples(tasks[n], tokenizer, config) for n in names}
    check_token_ids(model.arch.vocab_size, model_dir, tokenizer,
                    ("the upstream sample", upstream_tok), *((f"task {n}", task_train[n]) for n in names))
    em_set = None
    if em_records is not None:
        rng = np.random.default_rng([d.seed, 1])
        if len(em_records) > d.n_em:
            em_records = [em_records[i] for i in sorted(rng.choice(len(em_records), d.n_em, replace=False))]
        em_set = build_em_set(em_records, tokenizer, max_len=d.task_max_len, template=_template(d))
    return Setup(model, tokenizer, model_dir, upstream, upstream_tok, names, task_train, mesh, em_set, skipped)


def setup_from_run(path: str | Path, echo=print) -> tuple[CollectConfig, Setup, dict[str, Any]]:
    """The configuration, Setup and meta.json of a collect run directory, for the steps that work on a
    finished run (replay, the rep_dot predictor): the run's recorded configuration rebuilt (the same
    upstream sample, task splits and tokenisation), the exact base model it used when that directory
    still exists (else rebuilt from the configuration), NLL only, one task per step. The upstream ids
    and task names are checked against the run's."""
    run = RunDir(path)
    meta = run.read_run_meta()
    config = config_from_dict(CollectConfig, meta["config"], f"{run.meta_path}: config")
    errors = range_errors(config, RANGES)  # a recorded value no flag could have given: an edited or damaged file
    if errors:
        raise RunError(f"{run.meta_path}: config out of range ({'; '.join(errors)})")
    # the lengths too, for a record without them (a run set up by hand): model.path set below would change them
    config = resolve_lengths(config)
    # the token accounting the run used, pinned before model.path is set below (which would turn 'auto' into
    # 'paper'); a run from before the flag used 'builtin'
    used = meta.get("nll_tokens") or ("builtin" if "nll_tokens" not in meta["config"].get("data", {})
                                      else config.nll_tokens)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, nll_tokens=used))
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
