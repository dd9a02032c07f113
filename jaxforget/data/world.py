"""The built-in world: a small synthetic multi-domain corpus and task suite, deterministic from a seed.

It is the default data of `python -m jaxforget.collect` when no model or dataset is given. A seeded
set of entities (countries with capitals, exports, languages, animals, flag colours, neighbours and
founding years; people with jobs, home cities, ages and favourite foods; function names) feeds six
upstream domains of templated text:

    facts       "The capital of Veloria is Tarn. Veloria exports salt."
    arithmetic  "17 + 25 = 42\\n8 * 7 = 56\\n..."
    code        "def scale_price(x):\\n    y = x * 3\\n    return y + 2\\nprint(scale_price(4))  # 14"
    dialogue    "Mira: Hello Tam! What do you do?\\nTam: I am a baker in Tarn.\\n..."
    lists       shopping lists, country tables "country | capital | export", rankings, schedules
    stories     short narratives about the same people and places

and instruction-style tasks (`jaxforget.data.world_tasks`): 21 hand-written tasks that relate
differently to the domains (reuse, conflict, unrelated), and with `WorldConfig.n_tasks` further
members of their families. Which upstream examples a task makes the model forget is *not* decided
here: nothing in the world refers to the upstream examples a task should affect; it emerges from
training. Entities and vocabulary live in `jaxforget.data.world_entities`.

Files written by `export_world` use exactly the formats `jaxforget.data.readers` accepts:
`upstream.jsonl` ({"id", "source", "text"}), `tasks/<name>.jsonl` ({"prompt", "completion"},
{"messages": [...]} or {"text"}), and `world.json` (the config and the task descriptions).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxforget.data.cache import build_once, cache_root, config_key
from jaxforget.data.tokenizer_train import save_tokenizer, train_bpe
from jaxforget.data.world_entities import (ANIMALS, BAD_ADJ, DAYS, FOODS, GOOD_ADJ, GOODS, JOBS, UNITS, WORLD_VERSION,
                                           Country, Entities, Person, WorldConfig, code_function, equation,
                                           make_entities, number_words, pick)
from jaxforget.data.world_tasks import MAX_TASKS, TASKS, TaskSpec, make_tasks, task_specs

DOMAINS = ("facts", "arithmetic", "code", "dialogue", "lists", "stories")

# Share of the upstream corpus per domain: unequal on purpose, as in a real mixture.
DOMAIN_WEIGHTS = {"facts": 0.28, "arithmetic": 0.18, "code": 0.16, "dialogue": 0.16, "lists": 0.12, "stories": 0.10}

__all__ = ["BAD_ADJ", "DOMAINS", "DOMAIN_WEIGHTS", "GOOD_ADJ", "MAX_TASKS", "TASKS", "WORLD_VERSION", "Country",
           "Entities", "Person", "TaskSpec", "World", "WorldConfig", "domain_counts", "ensure_world", "export_world", "make_entities", "make_heldout",
           "make_tasks", "make_upstream", "make_world", "number_words", "task_specs", "write_world_files"]


@dataclasses.dataclass(frozen=True)
class World:
    """Generated content: upstream records and task records, in reader formats."""

    config: WorldConfig
    entities: Entities
    upstream: list[dict[str, str]]
    tasks: dict[str, list[dict[str, Any]]]


# ---------------------------------------------------------------------------------------------
# Upstream domains
# ---------------------------------------------------------------------------------------------

def _country_facts(c: Country) -> list[str]:
    return [
        f"The capital of {c.name} is {c.capital}.", f"{c.capital} is the capital of {c.name}.",
        f"{c.name} exports {c.export}.", f"People in {c.name} speak {c.language}.",
        f"{c.name} borders {c.neighbour}.", f"The national animal of {c.name} is the {c.animal}.",
        f"The flag of {c.name} is {c.colour}.", f"{c.name} was founded in {c.founded}.",
        f"{c.city} is a city in {c.name}.", f"About {c.population} million people live in {c.name}.",
    ]


def _person_facts(p: Person) -> list[str]:
    return [
        f"{p.name} is a {p.job} from {p.city}.", f"{p.name} lives in {p.city}, in {p.country}.",
        f"{p.name} is {p.age} years old.", f"The favourite food of {p.name} is {p.food}.",
        f"{p.name} works as a {p.job}.",
    ]


def gen_facts(rng, ent: Entities) -> str:
    if rng.random() < 0.65:
        facts = _country_facts(pick(rng, ent.countries))
    else:
        facts = _person_facts(pick(rng, ent.people))
    k = int(rng.integers(2, 5))
    return " ".join(facts[i] for i in rng.permutation(len(facts))[:k])


def gen_arithmetic(rng, ent: Entities) -> str:
    return "\n".join(equation(rng) for _ in range(int(rng.integers(3, 6))))


def gen_code(rng, ent: Entities) -> str:
    src, fn, name = code_function(rng, ent)
    x = int(rng.integers(1, 12))
    return f"{src}\n\nprint({name}({x}))  # {fn(x)}"


def gen_dialogue(rng, ent: Entities) -> str:
    a, b = (ent.people[int(i)] for i in rng.choice(len(ent.people), 2, replace=False))
    kind = int(rng.integers(3))
    if kind == 0:
        turns = [f"{a.name}: Hello {b.name}! What do you do?", f"{b.name}: I am a {b.job} in {b.city}.",
                 f"{a.name}: And how old are you?", f"{b.name}: I am {b.age}."]
    elif kind == 1:
        n, price = int(rng.integers(2, 9)), int(rng.integers(2, 12))
        turns = [f"{a.name}: Good morning. I would like {n} {b.food}.",
                 f"{b.name}: That is {price} coins each, so {n * price} coins.", f"{a.name}: Here you are. Thank you!"]
    else:
        c = ent.country(b.country)
        turns = [f"{a.name}: Where do you live, {b.name}?", f"{b.name}: I live in {b.city}, in {b.country}.",
                 f"{a.name}: What does {b.country} export?", f"{b.name}: Mostly {c.export}."]
    return "\n".join(turns)


def gen_lists(rng, ent: Entities) -> str:
    kind = int(rng.integers(4))
    if kind == 0:
        items = [f"- {int(rng.integers(1, 9))} {pick(rng, UNITS)} {pick(rng, GOODS + FOODS)}".replace("  ", " ")
                 for _ in range(int(rng.integers(3, 6)))]
        return "Shopping list:\n" + "\n".join(items)
    if kind == 1:
        rows = [ent.countries[int(i)] for i in rng.choice(len(ent.countries), int(rng.integers(2, 4)), replace=False)]
        return "country | capital | export\n" + "\n".join(f"{c.name} | {c.capital} | {c.export}" for c in rows)
    if kind == 2:
        ranked = [ANIMALS[int(i)] for i in rng.choice(len(ANIMALS), int(rng.integers(3, 6)), replace=False)]
        return "Top animals: " + " ".join(f"{i + 1}. {a}" for i, a in enumerate(ranked))
    p = pick(rng, ent.people)
    start = int(rng.integers(7))
    days = [DAYS[(start + i) % 7] for i in range(int(rng.integers(2, 5)))]
    return f"Schedule of {p.name}:\n" + "\n".join(f"{d}: {pick(rng, JOBS)} lessons" for d in days)


def gen_stories(rng, ent: Entities) -> str:
    p, q = (ent.people[int(i)] for i in rng.choice(len(ent.people), 2, replace=False))
    n = int(rng.integers(2, 9))
    adj = pick(rng, GOOD_ADJ)
    templates = [
        f"{p.name} woke up early in {p.city}. After breakfast, {p.name} walked to the market and bought {n} "
        f"{q.food}. There {p.name} met {q.name}, a {q.job}, and they talked until noon.",
        f"One {pick(rng, DAYS)}, {q.name} the {q.job} travelled from {q.city} to {p.city}. The road was long, "
        f"but the {q.food} at the inn were {adj}.",
        f"When {p.name} was young, {p.name} wanted to be a {q.job}. Now {p.name} is a {p.job} and still dreams "
        f"about {p.country}.",
    ]
    return pick(rng, templates)


DOMAIN_GENERATORS: dict[str, Callable[[np.random.Generator, Entities], str]] = {
    "facts": gen_facts, "arithmetic": gen_arithmetic, "code": gen_code, "dialogue": gen_dialogue,
    "lists": gen_lists, "stories": gen_stories,
}


def domain_counts(n: int) -> dict[str, int]:
    """Examples per domain for a corpus of n (largest remainder of DOMAIN_WEIGHTS)."""
    raw = {d: n * w for d, w in DOMAIN_WEIGHTS.items()}
    counts = {d: int(v) for d, v in raw.items()}
    for d in sorted(raw, key=lambda d: counts[d] - raw[d])[: n - sum(counts.values())]:
        counts[d] += 1
    return counts


def make_upstream(config: WorldConfig, ent: Entities) -> list[dict[str, str]]:
    """{"id", "source", "text"} records, domains interleaved in a seeded order; ids stable per seed."""
    records = []
    for k, (domain, count) in enumerate(domain_counts(config.n_upstream).items()):
        rng = np.random.default_rng([config.seed, 1, k])
        records += [dict(source=domain, text=DOMAIN_GENERATORS[domain](rng, ent)) for _ in range(count)]
    order = np.random.default_rng([config.seed, 2]).permutation(len(records))
    return [dict(id=f"up{i:06d}", source=records[j]["source"], text=records[j]["text"])
            for i, j in enumerate(order)]


# ---------------------------------------------------------------------------------------------
def make_world(config: WorldConfig = WorldConfig()) -> World:
    """Generate the world (a few seconds for the default size)."""
    ent = make_entities(config)
    return World(config, ent, make_upstream(config, ent), make_tasks(config, ent))


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_world_files(world: World, path: Path) -> None:
    """upstream.jsonl, tasks/<name>.jsonl and world.json into an existing directory."""
    _write_jsonl(path / "upstream.jsonl", world.upstream)
    (path / "tasks").mkdir()
    for name, records in world.tasks.items():
        _write_jsonl(path / "tasks" / f"{name}.jsonl", records)
    meta = dict(
        config=dataclasses.asdict(world.config), version=WORLD_VERSION, domains=list(DOMAINS),
        domain_counts=domain_counts(world.config.n_upstream),
        tasks=[dict(spec.describe(), n=len(world.tasks[spec.name])) for spec in task_specs(world.config)],
    )
    (path / "world.json").write_text(json.dumps(meta, indent=2) + "\n")


def export_world(world: World, path: str | os.PathLike) -> Path:
    """Write the world's files (see `write_world_files`) to `path`, atomically (temp dir + rename).

    An existing export at `path` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_world_files(world, tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def make_heldout(config: WorldConfig, n_per_domain: int, entities: Entities | None = None) -> list[dict[str, str]]:
    """Fresh draws from each domain's generator (a seed stream the corpus does not use), for measuring
    how well the base model learned the domains rather than the particular corpus examples."""
    ent = entities if entities is not None else make_entities(config)
    out = []
    for k, domain in enumerate(DOMAINS):
        rng = np.random.default_rng([config.seed, 9, k])
        out += [dict(id=f"heldout-{domain}-{i}", source=domain, text=DOMAIN_GENERATORS[domain](rng, ent))
                for i in range(n_per_domain)]
    return out


def ensure_world(config: WorldConfig = WorldConfig(), *, vocab_size: int = 1024,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """The exported world plus its tokenizer (`tokenizer/`, byte-level BPE trained on upstream.jsonl),
    built on first use under the cache (`<cache>/world/<key>`) and reused afterwards."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    key = config_key(config, dict(vocab_size=vocab_size, world_version=WORLD_VERSION))

    def build(tmp: Path) -> None:
        world = make_world(config)
        write_world_files(world, tmp)
        save_tokenizer(train_bpe((r["text"] for r in world.upstream), vocab_size=vocab_size), tmp / "tokenizer")

    return build_once(root / "world" / key, build)
