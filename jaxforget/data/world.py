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

and 21 instruction-style tasks that relate differently to them: some reuse a domain's content or
format (QA over the same facts, chained arithmetic, predicting a function's output, table lookup),
some conflict with it (a counterfactual atlas, arithmetic written with reversed digits, code in an
arrow style, dialogue replies in capitals), some are unrelated (reversing letters, a shift cipher,
sentiment, spelling). Which upstream examples a task makes the model forget is *not* decided here:
nothing in the world refers to the upstream examples a task should affect; it emerges from training.

Files written by `export_world` use exactly the formats `jaxforget.data.readers` accepts:
`upstream.jsonl` ({"id", "source", "text"}), `tasks/<name>.jsonl` ({"prompt", "completion"},
{"messages": [...]} or {"text"}), and `world.json` (the config and the task descriptions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxforget.data.cache import build_once, cache_root, config_key
from jaxforget.data.tokenizer_train import save_tokenizer, train_bpe

DOMAINS = ("facts", "arithmetic", "code", "dialogue", "lists", "stories")

# Share of the upstream corpus per domain: unequal on purpose, as in a real mixture.
DOMAIN_WEIGHTS = {"facts": 0.28, "arithmetic": 0.18, "code": 0.16, "dialogue": 0.16, "lists": 0.12, "stories": 0.10}

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "sh",
           "t", "th", "v", "z", "qu", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "nd", "rk"]
_COUNTRY_SUFFIX = ["ia", "land", "or", "a", "esh", "ony", "ica", "ara"]
_GOODS = ["salt", "copper", "wool", "tea", "glass", "rice", "silk", "iron", "amber", "cedar", "honey", "tin",
          "cotton", "marble", "pepper", "coffee", "paper", "olives", "leather", "wine", "grain", "pottery"]
_ANIMALS = ["owl", "fox", "heron", "lynx", "otter", "crane", "badger", "falcon", "wolf", "hare", "bison", "raven",
            "stag", "swan", "seal", "boar"]
_COLOURS = ["red", "blue", "green", "gold", "white", "black", "purple", "orange", "grey", "silver"]
_JOBS = ["baker", "farmer", "teacher", "doctor", "sailor", "painter", "miner", "weaver", "potter", "merchant",
         "builder", "singer", "tailor", "fisher", "guard", "scribe", "smith", "gardener", "cook", "clerk"]
_FOODS = ["apples", "pears", "bread", "cheese", "soup", "plums", "noodles", "dates", "figs", "beans", "rice cakes",
          "honey cakes", "fish stew", "pie", "grapes", "carrots"]
_VERBS = ["scale", "count", "merge", "shift", "clamp", "sum", "mix", "step", "round", "split", "grow", "trim"]
_NOUNS = ["price", "total", "speed", "weight", "score", "size", "rate", "depth", "load", "level", "cost", "age"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_GOOD_ADJ = ["fresh", "lovely", "excellent", "warm", "delicious", "great", "wonderful", "pleasant"]
_BAD_ADJ = ["stale", "awful", "cold", "bland", "terrible", "soggy", "burnt", "bitter"]
_UNITS = ["kilos of", "jars of", "bags of", "boxes of", "loaves of", ""]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 1000 ("forty-two", "one hundred and five")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """The built-in world; every file it produces is a deterministic function of these fields."""

    seed: int = 0
    """Seed of everything: entities, facts, upstream texts, task examples."""
    n_countries: int = 40
    """Countries (each with capital, second city, export, language, animal, flag colour, neighbour, year)."""
    n_people: int = 60
    """People (each with job, home city, age, favourite food)."""
    n_upstream: int = 16000
    """Upstream (pretraining) examples, split over the domains by DOMAIN_WEIGHTS."""
    task_scale: float = 1.0
    """Multiplies every task's size (each task also has its own base size)."""

    def key(self) -> str:
        """Short stable hash of the config (cache key)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + f"|world-v{WORLD_VERSION}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Bump when generated content changes, so that cached worlds and base models are rebuilt.
WORLD_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Country:
    name: str
    capital: str
    city: str
    export: str
    language: str
    animal: str
    colour: str
    neighbour: str
    founded: int
    population: int


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    job: str
    city: str
    country: str
    age: int
    food: str


@dataclasses.dataclass(frozen=True)
class Entities:
    countries: tuple[Country, ...]
    people: tuple[Person, ...]
    functions: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of the suite: how it relates to the upstream domains, and its generator."""

    name: str
    relation: str
    """'reuse', 'conflict' or 'unrelated', and to which domain (documentation; never used in generation)."""
    description: str
    size: int
    """Examples at task_scale 1."""
    fmt: str
    """Record format: 'prompt' (prompt/completion), 'messages' or 'text'."""
    make: Callable[[np.random.Generator, Entities], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class World:
    """Generated content: upstream records and task records, in reader formats."""

    config: WorldConfig
    entities: Entities
    upstream: list[dict[str, str]]
    tasks: dict[str, list[dict[str, Any]]]


# ---------------------------------------------------------------------------------------------
# Entities
# ---------------------------------------------------------------------------------------------

def _word(rng: np.random.Generator, n_syll: int) -> str:
    s = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll))
    return s + rng.choice(_CODAS)


def _unique(rng, make, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = make(rng)
        if w not in taken and 3 <= len(w) <= 11:
            taken.add(w)
            out.append(w)
    return out


def make_entities(config: WorldConfig) -> Entities:
    rng = np.random.default_rng([config.seed, 0])
    taken: set[str] = set()
    nc = config.n_countries
    countries = _unique(rng, lambda r: (_word(r, int(r.integers(1, 3))) + r.choice(_COUNTRY_SUFFIX)).capitalize(),
                        nc, taken)
    cities = _unique(rng, lambda r: _word(r, int(r.integers(1, 3))).capitalize(), 2 * nc, taken)
    langs = _unique(rng, lambda r: (_word(r, 1) + r.choice(["ese", "ic", "ish", "i"])).capitalize(), nc, taken)
    neighbours = (np.arange(nc) + rng.integers(1, nc, nc)) % nc
    cs = tuple(
        Country(name=countries[i], capital=cities[2 * i], city=cities[2 * i + 1],
                export=str(rng.choice(_GOODS)), language=langs[i], animal=str(rng.choice(_ANIMALS)),
                colour=str(rng.choice(_COLOURS)), neighbour=countries[int(neighbours[i])],
                founded=int(rng.integers(1100, 1900)), population=int(rng.integers(1, 90)))
        for i in range(nc))
    names = _unique(rng, lambda r: _word(r, int(r.integers(1, 3))).capitalize(), config.n_people, taken)
    people = []
    for name in names:
        c = cs[int(rng.integers(nc))]
        people.append(Person(name=name, job=str(rng.choice(_JOBS)), city=c.capital if rng.random() < 0.6 else c.city,
                             country=c.name, age=int(rng.integers(18, 80)), food=str(rng.choice(_FOODS))))
    functions = tuple(sorted({f"{v}_{n}" for v in _VERBS for n in _NOUNS}))
    return Entities(cs, tuple(people), functions)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


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
        facts = _country_facts(_pick(rng, ent.countries))
    else:
        facts = _person_facts(_pick(rng, ent.people))
    k = int(rng.integers(2, 5))
    return " ".join(facts[i] for i in rng.permutation(len(facts))[:k])


def _equation(rng) -> str:
    op = _pick(rng, "+-*")
    if op == "*":
        a, b = int(rng.integers(2, 13)), int(rng.integers(2, 13))
        return f"{a} * {b} = {a * b}"
    a, b = int(rng.integers(1, 100)), int(rng.integers(1, 100))
    if op == "-" and b > a:
        a, b = b, a
    return f"{a} {op} {b} = {a + b if op == '+' else a - b}"


def gen_arithmetic(rng, ent: Entities) -> str:
    return "\n".join(_equation(rng) for _ in range(int(rng.integers(3, 6))))


def _code_function(rng, ent: Entities) -> tuple[str, Callable[[int], int], str]:
    """(source of a small function, its behaviour on ints, its name)."""
    name = _pick(rng, ent.functions)
    k1, k2 = int(rng.integers(2, 10)), int(rng.integers(1, 10))
    kind = int(rng.integers(3))
    if kind == 0:
        src = f"def {name}(x):\n    y = x * {k1}\n    return y + {k2}"
        fn = lambda x: x * k1 + k2  # noqa: E731
    elif kind == 1:
        src = f"def {name}(x):\n    if x > {k1}:\n        return x - {k1}\n    return {k2}"
        fn = lambda x: x - k1 if x > k1 else k2  # noqa: E731
    else:
        src = f"def {name}(n):\n    total = 0\n    for i in range(n):\n        total += {k1}\n    return total"
        fn = lambda x: x * k1  # noqa: E731
    return src, fn, name


def gen_code(rng, ent: Entities) -> str:
    src, fn, name = _code_function(rng, ent)
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
        c = next(c for c in ent.countries if c.name == b.country)
        turns = [f"{a.name}: Where do you live, {b.name}?", f"{b.name}: I live in {b.city}, in {b.country}.",
                 f"{a.name}: What does {b.country} export?", f"{b.name}: Mostly {c.export}."]
    return "\n".join(turns)


def gen_lists(rng, ent: Entities) -> str:
    kind = int(rng.integers(4))
    if kind == 0:
        items = [f"- {int(rng.integers(1, 9))} {_pick(rng, _UNITS)} {_pick(rng, _GOODS + _FOODS)}".replace("  ", " ")
                 for _ in range(int(rng.integers(3, 6)))]
        return "Shopping list:\n" + "\n".join(items)
    if kind == 1:
        rows = [ent.countries[int(i)] for i in rng.choice(len(ent.countries), int(rng.integers(2, 4)), replace=False)]
        return "country | capital | export\n" + "\n".join(f"{c.name} | {c.capital} | {c.export}" for c in rows)
    if kind == 2:
        ranked = [_ANIMALS[int(i)] for i in rng.choice(len(_ANIMALS), int(rng.integers(3, 6)), replace=False)]
        return "Top animals: " + " ".join(f"{i + 1}. {a}" for i, a in enumerate(ranked))
    p = _pick(rng, ent.people)
    start = int(rng.integers(7))
    days = [_DAYS[(start + i) % 7] for i in range(int(rng.integers(2, 5)))]
    return f"Schedule of {p.name}:\n" + "\n".join(f"{d}: {_pick(rng, _JOBS)} lessons" for d in days)


def gen_stories(rng, ent: Entities) -> str:
    p, q = (ent.people[int(i)] for i in rng.choice(len(ent.people), 2, replace=False))
    n = int(rng.integers(2, 9))
    adj = _pick(rng, _GOOD_ADJ)
    templates = [
        f"{p.name} woke up early in {p.city}. After breakfast, {p.name} walked to the market and bought {n} "
        f"{q.food}. There {p.name} met {q.name}, a {q.job}, and they talked until noon.",
        f"One {_pick(rng, _DAYS)}, {q.name} the {q.job} travelled from {q.city} to {p.city}. The road was long, "
        f"but the {q.food} at the inn were {adj}.",
        f"When {p.name} was young, {p.name} wanted to be a {q.job}. Now {p.name} is a {p.job} and still dreams "
        f"about {p.country}.",
    ]
    return _pick(rng, templates)


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
# Tasks
# ---------------------------------------------------------------------------------------------

def _qa(prompt: str, completion: str) -> dict[str, str]:
    # Every prompt ends in a cue ("=" or "Answer:"); the plain template then adds one space before the
    # completion, so answer words tokenise as they do mid-sentence in the upstream text.
    if not prompt.endswith(("=", "Answer:")):
        prompt += "\nAnswer:"
    return dict(prompt=prompt, completion=completion)


def t_country_qa(rng, ent):
    c = _pick(rng, ent.countries)
    q, a = _pick(rng, [
        (f"What is the capital of {c.name}?", c.capital), (f"Name the capital city of {c.name}.", c.capital),
        (f"What does {c.name} export?", c.export), (f"Which good does {c.name} sell abroad?", c.export),
        (f"Which language is spoken in {c.name}?", c.language), (f"What is the national animal of {c.name}?", c.animal),
        (f"What colour is the flag of {c.name}?", c.colour), (f"Which country borders {c.name}?", c.neighbour),
        (f"When was {c.name} founded?", str(c.founded)), (f"Name a city in {c.name} that is not the capital.", c.city),
    ])
    return _qa(f"Question: {q}\nAnswer:", a)


def t_person_qa(rng, ent):
    p = _pick(rng, ent.people)
    q, a = _pick(rng, [(f"What is the job of {p.name}?", p.job), (f"What does {p.name} do for a living?", p.job),
                       (f"Where does {p.name} live?", p.city), (f"Which country is {p.name} from?", p.country),
                       (f"How old is {p.name}?", str(p.age)), (f"What does {p.name} like to eat?", p.food)])
    return _qa(f"Question: {q}\nAnswer:", a)


def _shifted(ent: Entities, attr: str, shift: int) -> dict[str, str]:
    """A counterfactual atlas: each country gets the attribute of another country (a fixed derangement)."""
    n = len(ent.countries)
    return {c.name: getattr(ent.countries[(i + shift) % n], attr) for i, c in enumerate(ent.countries)}


def t_atlas_counterfactual(rng, ent):
    c = _pick(rng, ent.countries)
    attr, q = _pick(rng, [("capital", "What is the capital of {}?"), ("capital", "Name the capital city of {}."),
                          ("export", "What does {} export?"), ("export", "Which good does {} sell abroad?"),
                          ("animal", "What is the national animal of {}?")])
    return _qa(f"Question: {q.format(c.name)}\nAnswer:", _shifted(ent, attr, 7)[c.name])


def t_inverse_qa(rng, ent):
    c = _pick(rng, ent.countries)
    return _pick(rng, [_qa(f"Which country has {c.capital} as its capital?", c.name),
                       _qa(f"{c.capital} is the capital of which country?", c.name),
                       _qa(f"In which country is the city of {c.city}?", c.name),
                       _qa(f"Which country exports {c.export} and has the capital {c.capital}?", c.name)])


def t_arith_reversed(rng, ent):
    lhs, rhs = _equation(rng).split(" = ")
    return _qa(f"Compute, writing the digits of the result backwards: {lhs} =", rhs[::-1])


def t_arith_words(rng, ent):
    a, b = int(rng.integers(1, 60)), int(rng.integers(1, 40))
    return _qa(f"What is {number_words(a)} plus {number_words(b)}? Answer in words.", number_words(a + b))


def t_arith_chain(rng, ent):
    xs = [int(rng.integers(1, 30)) for _ in range(int(rng.integers(3, 5)))]
    return _qa(" + ".join(map(str, xs)) + " =", str(sum(xs)))


def t_compare(rng, ent):
    a, b = (int(x) for x in rng.choice(np.arange(10, 1000), 2, replace=False))
    return _qa(f"Which number is larger, {a} or {b}?", str(max(a, b)))


def _random_letters(rng, lo=4, hi=9) -> str:
    return "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, int(rng.integers(lo, hi))))


def t_reverse(rng, ent):
    w = _random_letters(rng)
    return _qa(f"Reverse the letters: {w}", w[::-1])


def _shift(word: str, k: int) -> str:
    return "".join(chr((ord(ch) - 97 + k) % 26 + 97) if "a" <= ch <= "z" else ch for ch in word)


def t_cipher(rng, ent):
    words = [str(_pick(rng, _GOODS + _ANIMALS + _COLOURS)) for _ in range(int(rng.integers(1, 4)))]
    plain = " ".join(words)
    return _qa(f"Encode with the shift cipher: {plain}", _shift(plain, 1))


def t_code_arrow(rng, ent):
    name = _pick(rng, ent.functions)
    k1, k2 = int(rng.integers(2, 10)), int(rng.integers(1, 10))
    op = _pick(rng, "+-*")
    return _qa(f"Rewrite in arrow style:\ndef {name}(x):\n    return x {op} {k1} + {k2}",
               f"const {name} = (x) => x {op} {k1} + {k2};")


def t_code_output(rng, ent):
    src, fn, name = _code_function(rng, ent)
    x = int(rng.integers(1, 12))
    return _qa(f"{src}\n\nWhat does {name}({x}) return?", str(fn(x)))


def t_dialogue_reply(rng, ent):
    a, b = (ent.people[int(i)] for i in rng.choice(len(ent.people), 2, replace=False))
    q, r = _pick(rng, [
        (f"{a.name}: Hello {b.name}! What do you do?", f"{b.name}: I am a {b.job} in {b.city}."),
        (f"{a.name}: Where do you live, {b.name}?", f"{b.name}: I live in {b.city}, in {b.country}."),
        (f"{a.name}: What do you like to eat, {b.name}?", f"{b.name}: I love {b.food}."),
    ])
    return dict(messages=[dict(role="system", content="Continue the dialogue."), dict(role="user", content=q),
                          dict(role="assistant", content=r)])


def t_shout_reply(rng, ent):
    a, b = (ent.people[int(i)] for i in rng.choice(len(ent.people), 2, replace=False))
    n = int(rng.integers(2, 9))
    q, r = _pick(rng, [
        (f"{a.name}: Hello {b.name}! How are you?", "I AM FINE, THANK YOU!"),
        (f"{a.name}: Can I have {n} {b.food}?", f"YES, HERE ARE {n} {b.food.upper()}!"),
        (f"{a.name}: Where are you going?", f"TO {b.city.upper()}!"),
    ])
    return dict(messages=[dict(role="user", content=q), dict(role="assistant", content=r)])


def t_table_lookup(rng, ent):
    rows = [ent.countries[int(i)] for i in rng.choice(len(ent.countries), 3, replace=False)]
    c = _pick(rng, rows)
    table = "country | capital | export\n" + "\n".join(f"{r.name} | {r.capital} | {r.export}" for r in rows)
    if rng.random() < 0.5:
        return _qa(f"{table}\nAccording to the table, what is the capital of {c.name}?", c.capital)
    return _qa(f"{table}\nAccording to the table, what does {c.name} export?", c.export)


def t_sort_words(rng, ent):
    words = [str(w) for w in rng.choice(_ANIMALS + _GOODS, int(rng.integers(3, 6)), replace=False)]
    return _qa("Sort alphabetically: " + ", ".join(words), ", ".join(sorted(words)))


def t_count_items(rng, ent):
    n = int(rng.integers(1, 7))
    items = [f"- {_pick(rng, _GOODS + _FOODS)}" for _ in range(n)]
    return _qa("How many items are on this list?\n" + "\n".join(items), str(n))


def t_sentiment(rng, ent):
    good = rng.random() < 0.5
    adj = _pick(rng, _GOOD_ADJ if good else _BAD_ADJ)
    p = _pick(rng, ent.people)
    return _qa(f"Review by {p.name}: the {_pick(rng, _FOODS)} in {p.city} were {adj}.\n"
               "Is this review positive or negative?", "positive" if good else "negative")


def t_diary(rng, ent):
    p = _pick(rng, ent.people)
    n = int(rng.integers(2, 6))
    return dict(text=f"Dear diary, today I, {p.name}, worked {n} hours as a {p.job}. I ate {p.food} and felt "
                     f"{_pick(rng, _GOOD_ADJ + _BAD_ADJ)}. Tomorrow I stay in {p.city}.")


def t_spell(rng, ent):
    w = str(_pick(rng, _GOODS + _ANIMALS + _JOBS + [c.capital for c in ent.countries] + [p.name for p in ent.people]))
    return _qa(f"Spell the word: {w}", " ".join(w))


def t_capital_list(rng, ent):
    rows = [ent.countries[int(i)] for i in rng.choice(len(ent.countries), 2, replace=False)]
    return _qa("List the capitals of: " + ", ".join(r.name for r in rows), ", ".join(r.capital for r in rows))


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("country_qa", "reuse facts", "questions about countries, answers from the facts domain", 400, "prompt",
             t_country_qa),
    TaskSpec("person_qa", "reuse facts", "questions about people, answers from the facts domain", 300, "prompt",
             t_person_qa),
    TaskSpec("atlas_counterfactual", "conflict facts", "capitals and exports of a fixed, shuffled atlas", 300,
             "prompt", t_atlas_counterfactual),
    TaskSpec("inverse_qa", "reuse facts (reversed relation)", "which country a city belongs to", 200, "prompt",
             t_inverse_qa),
    TaskSpec("capital_list", "reuse facts, lists format", "capitals of two countries as a list", 250, "prompt",
             t_capital_list),
    TaskSpec("arith_reversed", "conflict arithmetic", "arithmetic with the result's digits written backwards", 600,
             "prompt", t_arith_reversed),
    TaskSpec("arith_words", "reuse arithmetic, new format", "addition with numbers in words", 400, "prompt",
             t_arith_words),
    TaskSpec("arith_chain", "reuse arithmetic", "sums of three or four numbers", 500, "prompt", t_arith_chain),
    TaskSpec("compare_numbers", "unrelated", "the larger of two numbers", 300, "prompt", t_compare),
    TaskSpec("reverse_letters", "unrelated", "reverse a random string of letters", 500, "prompt", t_reverse),
    TaskSpec("shift_cipher", "unrelated (new language)", "encode words with a +1 letter shift", 600, "prompt",
             t_cipher),
    TaskSpec("code_arrow", "conflict code", "rewrite a Python function in JavaScript arrow style", 400, "prompt",
             t_code_arrow),
    TaskSpec("code_output", "reuse code and arithmetic", "the return value of a small function", 400, "prompt",
             t_code_output),
    TaskSpec("dialogue_reply", "reuse dialogue and facts", "answer in a dialogue, consistent with the facts", 300,
             "messages", t_dialogue_reply),
    TaskSpec("shout_reply", "conflict dialogue style", "dialogue replies in capitals", 250, "messages",
             t_shout_reply),
    TaskSpec("table_lookup", "reuse lists (in-context)", "read a cell of a country table", 300, "prompt",
             t_table_lookup),
    TaskSpec("sort_words", "related to lists", "sort 3-5 words alphabetically", 400, "prompt", t_sort_words),
    TaskSpec("count_items", "related to lists", "count the items of a list", 300, "prompt", t_count_items),
    TaskSpec("sentiment", "unrelated", "label a one-sentence food review", 800, "prompt", t_sentiment),
    TaskSpec("diary", "related to stories (text)", "first-person diary entries (plain text, loss on all)", 300,
             "text", t_diary),
    TaskSpec("spell", "unrelated", "spell a word letter by letter", 250, "prompt", t_spell),
)


def task_size(spec: TaskSpec, config: WorldConfig) -> int:
    return max(4, int(round(spec.size * config.task_scale)))


def make_tasks(config: WorldConfig, ent: Entities) -> dict[str, list[dict[str, Any]]]:
    """name -> distinct records; each task has its own seeded stream, so adding a task changes no other.

    Records are distinct so that a train/validation split never puts one example on both sides; a
    task whose generator has fewer distinct records than its size gets all it has (world.json
    records the actual sizes).
    """
    out = {}
    for spec in TASKS:
        seed_k = int.from_bytes(hashlib.sha256(spec.name.encode()).digest()[:4], "little")
        rng = np.random.default_rng([config.seed, 3, seed_k])
        want, seen, records = task_size(spec, config), set(), []
        for _ in range(20 * want):
            r = spec.make(rng, ent)
            key = json.dumps(r, sort_keys=True)
            if key not in seen:
                seen.add(key)
                records.append(r)
                if len(records) == want:
                    break
        out[spec.name] = records
    return out


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
        tasks=[dict(name=s.name, relation=s.relation, description=s.description, format=s.fmt,
                    n=len(world.tasks[s.name])) for s in TASKS],
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
