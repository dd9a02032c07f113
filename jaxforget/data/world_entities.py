"""The built-in world's configuration, vocabulary and entities (countries, people, function names).

Shared by the upstream corpus (`jaxforget.data.world`) and the task suite (`jaxforget.data.world_tasks`);
everything is a deterministic function of a `WorldConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "sh",
           "t", "th", "v", "z", "qu", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "nd", "rk"]
_COUNTRY_SUFFIX = ["ia", "land", "or", "a", "esh", "ony", "ica", "ara"]
GOODS = ["salt", "copper", "wool", "tea", "glass", "rice", "silk", "iron", "amber", "cedar", "honey", "tin",
          "cotton", "marble", "pepper", "coffee", "paper", "olives", "leather", "wine", "grain", "pottery"]
ANIMALS = ["owl", "fox", "heron", "lynx", "otter", "crane", "badger", "falcon", "wolf", "hare", "bison", "raven",
            "stag", "swan", "seal", "boar"]
COLOURS = ["red", "blue", "green", "gold", "white", "black", "purple", "orange", "grey", "silver"]
JOBS = ["baker", "farmer", "teacher", "doctor", "sailor", "painter", "miner", "weaver", "potter", "merchant",
         "builder", "singer", "tailor", "fisher", "guard", "scribe", "smith", "gardener", "cook", "clerk"]
FOODS = ["apples", "pears", "bread", "cheese", "soup", "plums", "noodles", "dates", "figs", "beans", "rice cakes",
          "honey cakes", "fish stew", "pie", "grapes", "carrots"]
_VERBS = ["scale", "count", "merge", "shift", "clamp", "sum", "mix", "step", "round", "split", "grow", "trim"]
_NOUNS = ["price", "total", "speed", "weight", "score", "size", "rate", "depth", "load", "level", "cost", "age"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
GOOD_ADJ = ["fresh", "lovely", "excellent", "warm", "delicious", "great", "wonderful", "pleasant"]
BAD_ADJ = ["stale", "awful", "cold", "bland", "terrible", "soggy", "burnt", "bitter"]
UNITS = ["kilos of", "jars of", "bags of", "boxes of", "loaves of", ""]

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
    n_tasks: int = 21
    """Tasks: the 21 hand-written tasks (fewer: the first n_tasks of them), then further members of each task's
    family in turn, up to 168 (`<task>_v<j>`: another difficulty, content or conflict level, prompt template,
    answer format and size; world.json describes each). The upstream corpus and the base model do not depend
    on it."""

    def corpus(self) -> dict[str, int]:
        """The fields that determine the entities and the upstream corpus (and so the base model)."""
        return dict(seed=self.seed, n_countries=self.n_countries, n_people=self.n_people, n_upstream=self.n_upstream)


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

    def country(self, name: str) -> Country:
        """The country called ``name`` (a person's country, a country's neighbour)."""
        return next(c for c in self.countries if c.name == name)


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
                export=str(rng.choice(GOODS)), language=langs[i], animal=str(rng.choice(ANIMALS)),
                colour=str(rng.choice(COLOURS)), neighbour=countries[int(neighbours[i])],
                founded=int(rng.integers(1100, 1900)), population=int(rng.integers(1, 90)))
        for i in range(nc))
    names = _unique(rng, lambda r: _word(r, int(r.integers(1, 3))).capitalize(), config.n_people, taken)
    people = []
    for name in names:
        c = cs[int(rng.integers(nc))]
        people.append(Person(name=name, job=str(rng.choice(JOBS)), city=c.capital if rng.random() < 0.6 else c.city,
                             country=c.name, age=int(rng.integers(18, 80)), food=str(rng.choice(FOODS))))
    functions = tuple(sorted({f"{v}_{n}" for v in _VERBS for n in _NOUNS}))
    return Entities(cs, tuple(people), functions)


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]

def equation(rng) -> str:
    op = pick(rng, "+-*")
    if op == "*":
        a, b = int(rng.integers(2, 13)), int(rng.integers(2, 13))
        return f"{a} * {b} = {a * b}"
    a, b = int(rng.integers(1, 100)), int(rng.integers(1, 100))
    if op == "-" and b > a:
        a, b = b, a
    return f"{a} {op} {b} = {a + b if op == '+' else a - b}"


def code_function(rng, ent: Entities) -> tuple[str, Callable[[int], int], str]:
    """(source of a small function, its behaviour on ints, its name)."""
    name = pick(rng, ent.functions)
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
