"""The built-in world's task suite: 21 hand-written tasks, each the first member of a family of tasks.

Each task relates differently to the upstream domains: some reuse a domain's content or format (QA
over the same facts, chained arithmetic, predicting a function's output, table lookup), some conflict
with it (a counterfactual atlas, arithmetic written with reversed digits, code in an arrow style,
dialogue replies in capitals), some are unrelated (reversing letters, a shift cipher, sentiment,
spelling). Which upstream examples a task makes the model forget is *not* decided here: nothing in a
task refers to the upstream examples it should affect; it emerges from training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

import numpy as np

from jaxforget.data.world_entities import (ANIMALS, BAD_ADJ, COLOURS, FOODS, GOOD_ADJ, GOODS, JOBS, Entities,
                                           WorldConfig, code_function, equation, number_words, pick)


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
    make: Callable[..., dict[str, Any]]
    """make(rng, entities, level) -> one record; level 0 is the hand-written task."""
    levels: tuple[tuple[str, str], ...] = ()
    """(relation, description) of the family's further levels 1, 2, ... (other difficulty, content or conflict)."""
    family: str = ""
    """The family (the name of its hand-written first member); empty for a hand-written task itself."""
    level: int = 0
    template: int = 0
    """Index into PROMPT_TEMPLATES (how the prompt is framed)."""
    answer: int = 0
    """Index into ANSWER_FORMATS (how the answer is written)."""

    def generate(self, rng: np.random.Generator, ent: Entities) -> dict[str, Any]:
        """One record of this task (a family member: its family's generator at its level, then its template
        and answer format)."""
        record = self.make(rng, ent, self.level)
        return restyle(record, self.template, self.answer, self.description) if self.family else record

    def describe(self) -> dict[str, Any]:
        """What world.json records of the task (besides its actual size)."""
        out = dict(name=self.name, relation=self.relation, description=self.description, format=self.fmt)
        if self.family:
            out.update(family=self.family, level=self.level, template=PROMPT_TEMPLATES[self.template][0],
                       answer=ANSWER_FORMATS[self.answer][0], base_size=self.size)
        return out


# ---------------------------------------------------------------------------------------------
# The hand-written tasks; each generator also takes a level (0 = the task as first written).
# ---------------------------------------------------------------------------------------------

def _qa(prompt: str, completion: str) -> dict[str, str]:
    # Every prompt ends in a cue ("=" or "Answer:"); the plain template then adds one space before the
    # completion, so answer words tokenise as they do mid-sentence in the upstream text.
    if not prompt.endswith(("=", "Answer:")):
        prompt += "\nAnswer:"
    return dict(prompt=prompt, completion=completion)


def t_country_qa(rng, ent, level=0):
    c = pick(rng, ent.countries)
    if level == 1:  # two hops: a fact about the neighbour
        n = ent.country(c.neighbour)
        q, a = pick(rng, [(f"What is the capital of the country that borders {c.name}?", n.capital),
                          (f"What does the neighbour of {c.name} export?", n.export),
                          (f"Which language is spoken in the country that borders {c.name}?", n.language),
                          (f"What is the national animal of the neighbour of {c.name}?", n.animal),
                          (f"What colour is the flag of the country next to {c.name}?", n.colour)])
        return _qa(f"Question: {q}\nAnswer:", a)
    if level == 2:  # two facts in one answer
        (x, a), (y, b) = (pick(rng, pair) for pair in (
            [("capital", c.capital), ("language", c.language), ("founding year", str(c.founded))],
            [("export", c.export), ("national animal", c.animal), ("flag colour", c.colour)]))
        return _qa(f"Question: What are the {x} and the {y} of {c.name}?\nAnswer:", f"{a}, {b}")
    q, a = pick(rng, [
        (f"What is the capital of {c.name}?", c.capital), (f"Name the capital city of {c.name}.", c.capital),
        (f"What does {c.name} export?", c.export), (f"Which good does {c.name} sell abroad?", c.export),
        (f"Which language is spoken in {c.name}?", c.language), (f"What is the national animal of {c.name}?", c.animal),
        (f"What colour is the flag of {c.name}?", c.colour), (f"Which country borders {c.name}?", c.neighbour),
        (f"When was {c.name} founded?", str(c.founded)), (f"Name a city in {c.name} that is not the capital.", c.city),
    ])
    return _qa(f"Question: {q}\nAnswer:", a)


def t_person_qa(rng, ent, level=0):
    p = pick(rng, ent.people)
    if level == 1:  # compare two people
        others = [q for q in ent.people if q.age != p.age]
        q = pick(rng, others)
        return _qa(f"Question: Who is older, {p.name} or {q.name}?\nAnswer:", p.name if p.age > q.age else q.name)
    if level == 2:  # a profile in one line
        return _qa(f"Describe {p.name} in the form job / city / food.", f"{p.job} / {p.city} / {p.food}")
    q, a = pick(rng, [(f"What is the job of {p.name}?", p.job), (f"What does {p.name} do for a living?", p.job),
                      (f"Where does {p.name} live?", p.city), (f"Which country is {p.name} from?", p.country),
                      (f"How old is {p.name}?", str(p.age)), (f"What does {p.name} like to eat?", p.food)])
    return _qa(f"Question: {q}\nAnswer:", a)


def _shifted(ent: Entities, attr: str, shift: int) -> dict[str, str]:
    """A counterfactual atlas: each country gets the attribute of another country (a fixed derangement)."""
    n = len(ent.countries)
    return {c.name: getattr(ent.countries[(i + shift) % n], attr) for i, c in enumerate(ent.countries)}


ATLAS_SHIFTS = (7, 3, 13, 1)
"""The derangement of each level of atlas_counterfactual: another counterfactual atlas per level."""


def t_atlas_counterfactual(rng, ent, level=0):
    c = pick(rng, ent.countries)
    attr, q = pick(rng, [("capital", "What is the capital of {}?"), ("capital", "Name the capital city of {}."),
                         ("export", "What does {} export?"), ("export", "Which good does {} sell abroad?"),
                         ("animal", "What is the national animal of {}?")])
    return _qa(f"Question: {q.format(c.name)}\nAnswer:", _shifted(ent, attr, ATLAS_SHIFTS[level])[c.name])


def t_inverse_qa(rng, ent, level=0):
    c = pick(rng, ent.countries)
    if level == 1:
        return pick(rng, [_qa(f"In which country do people speak {c.language}?", c.name),
                          _qa(f"Which country was founded in {c.founded}?", c.name)])
    if level == 2:
        return pick(rng, [_qa(f"Which country has a {c.colour} flag and exports {c.export}?", c.name),
                          _qa(f"Which country has the {c.animal} as its national animal and {c.city} as a city?",
                              c.name),
                          _qa(f"Which country speaks {c.language} and borders {c.neighbour}?", c.name)])
    return pick(rng, [_qa(f"Which country has {c.capital} as its capital?", c.name),
                      _qa(f"{c.capital} is the capital of which country?", c.name),
                      _qa(f"In which country is the city of {c.city}?", c.name),
                      _qa(f"Which country exports {c.export} and has the capital {c.capital}?", c.name)])


def t_arith_reversed(rng, ent, level=0):
    if level == 2:  # off by one: contradicts every equation of the corpus
        lhs, rhs = equation(rng).split(" = ")
        return _qa(f"Compute, then add one: {lhs} =", str(int(rhs) + 1))
    if level == 1:  # larger numbers
        a, b = int(rng.integers(100, 1000)), int(rng.integers(100, 1000))
        lhs, rhs = f"{a} + {b}", str(a + b)
    else:
        lhs, rhs = equation(rng).split(" = ")
    return _qa(f"Compute, writing the digits of the result backwards: {lhs} =", rhs[::-1])


def t_arith_words(rng, ent, level=0):
    a, b = int(rng.integers(1, 60)), int(rng.integers(1, 40))
    if level == 1:
        a, b = max(a, b), min(a, b)
        return _qa(f"What is {number_words(a)} minus {number_words(b)}? Answer in words.", number_words(a - b))
    if level == 2:
        return _qa(f"What is {number_words(a)} plus {number_words(b)}? Answer in digits.", str(a + b))
    return _qa(f"What is {number_words(a)} plus {number_words(b)}? Answer in words.", number_words(a + b))


CHAIN_TERMS = ((1, 30, 3, 5), (1, 10, 5, 8), (100, 500, 2, 3))
"""arith_chain per level: (smallest term, largest term + 1, fewest terms, most terms + 1)."""


def t_arith_chain(rng, ent, level=0):
    lo, hi, n_lo, n_hi = CHAIN_TERMS[level]
    xs = [int(rng.integers(lo, hi)) for _ in range(int(rng.integers(n_lo, n_hi)))]
    return _qa(" + ".join(map(str, xs)) + " =", str(sum(xs)))


def t_compare(rng, ent, level=0):
    if level == 2:
        xs = [int(x) for x in rng.choice(np.arange(10, 1000), 3, replace=False)]
        return _qa(f"Which number is the largest: {xs[0]}, {xs[1]} or {xs[2]}?", str(max(xs)))
    a, b = (int(x) for x in rng.choice(np.arange(10, 1000), 2, replace=False))
    if level == 1:
        return _qa(f"Which number is smaller, {a} or {b}?", str(min(a, b)))
    return _qa(f"Which number is larger, {a} or {b}?", str(max(a, b)))


def _random_letters(rng, lo=4, hi=9) -> str:
    return "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, int(rng.integers(lo, hi))))


REVERSE_LENGTHS = ((4, 9), (2, 5), (9, 14))
"""reverse_letters per level: the string's length range."""


def t_reverse(rng, ent, level=0):
    w = _random_letters(rng, *REVERSE_LENGTHS[level])
    return _qa(f"Reverse the letters: {w}", w[::-1])


def _shift(word: str, k: int) -> str:
    return "".join(chr((ord(ch) - 97 + k) % 26 + 97) if "a" <= ch <= "z" else ch for ch in word)


CIPHER_SHIFTS = (1, 3, 13, 25)
"""shift_cipher per level: the shift."""


def t_cipher(rng, ent, level=0):
    words = [str(pick(rng, GOODS + ANIMALS + COLOURS)) for _ in range(int(rng.integers(1, 4)))]
    plain = " ".join(words)
    return _qa(f"Encode with the shift cipher: {plain}", _shift(plain, CIPHER_SHIFTS[level]))


def t_code_arrow(rng, ent, level=0):
    name = pick(rng, ent.functions)
    k1, k2 = int(rng.integers(2, 10)), int(rng.integers(1, 10))
    op = pick(rng, "+-*")
    style, target = [("arrow style", f"const {name} = (x) => x {op} {k1} + {k2};"),
                     ("lambda style", f"{name} = lambda x: x {op} {k1} + {k2}"),
                     ("Rust", f"fn {name}(x: i64) -> i64 {{ x {op} {k1} + {k2} }}")][level]
    return _qa(f"Rewrite in {style}:\ndef {name}(x):\n    return x {op} {k1} + {k2}", target)


def t_code_output(rng, ent, level=0):
    src, fn, name = code_function(rng, ent)
    if level == 2:  # a composition
        x = int(rng.integers(1, 6))
        return _qa(f"{src}\n\nWhat does {name}({name}({x})) return?", str(fn(fn(x))))
    x = int(rng.integers(1, 12)) if level == 0 else int(rng.integers(12, 60))
    return _qa(f"{src}\n\nWhat does {name}({x}) return?", str(fn(x)))


def t_dialogue_reply(rng, ent, level=0):
    a, b = (ent.people[int(i)] for i in rng.choice(len(ent.people), 2, replace=False))
    q, r = pick(rng, [
        (f"{a.name}: Hello {b.name}! What do you do?", f"{b.name}: I am a {b.job} in {b.city}."),
        (f"{a.name}: Where do you live, {b.name}?", f"{b.name}: I live in {b.city}, in {b.country}."),
        (f"{a.name}: What do you like to eat, {b.name}?", f"{b.name}: I love {b.food}."),
    ])
    if level == 1:  # the reply without the speaker's name
        r = r.split(": ", 1)[1]
    elif level == 2:  # reported speech
        r = f"{b.name} says that " + r.split(": ", 1)[1].replace("I am", "they are").replace(
            "I live", "they live").replace("I love", "they love")
    return dict(messages=[dict(role="system", content="Continue the dialogue."), dict(role="user", content=q),
                          dict(role="assistant", content=r)])


def t_shout_reply(rng, ent, level=0):
    a, b = (ent.people[int(i)] for i in rng.choice(len(ent.people), 2, replace=False))
    n = int(rng.integers(2, 9))
    q, r = pick(rng, [
        (f"{a.name}: Hello {b.name}! How are you?", "I AM FINE, THANK YOU!"),
        (f"{a.name}: Can I have {n} {b.food}?", f"YES, HERE ARE {n} {b.food.upper()}!"),
        (f"{a.name}: Where are you going?", f"TO {b.city.upper()}!"),
    ])
    if level == 1:  # whispered: lower case, no punctuation
        r = "".join(ch for ch in r.lower() if ch.isalnum() or ch == " ")
    elif level == 2:  # every word backwards
        r = " ".join(w[::-1] for w in r.split())
    return dict(messages=[dict(role="user", content=q), dict(role="assistant", content=r)])


def t_table_lookup(rng, ent, level=0):
    rows = [ent.countries[int(i)] for i in rng.choice(len(ent.countries), (3, 5, 2)[level], replace=False)]
    c = pick(rng, rows)
    if level == 2:  # a wider table
        table = "country | language | animal | flag\n" + "\n".join(
            f"{r.name} | {r.language} | {r.animal} | {r.colour}" for r in rows)
        return _qa(f"{table}\nAccording to the table, which animal belongs to {c.name}?", c.animal)
    table = "country | capital | export\n" + "\n".join(f"{r.name} | {r.capital} | {r.export}" for r in rows)
    if rng.random() < 0.5:
        return _qa(f"{table}\nAccording to the table, what is the capital of {c.name}?", c.capital)
    return _qa(f"{table}\nAccording to the table, what does {c.name} export?", c.export)


def t_sort_words(rng, ent, level=0):
    words = [str(w) for w in rng.choice(ANIMALS + GOODS, int(rng.integers(3, 6)), replace=False)]
    if level == 1:
        return _qa("Sort in reverse alphabetical order: " + ", ".join(words), ", ".join(sorted(words, reverse=True)))
    if level == 2:
        return _qa("Sort by length, shortest first: " + ", ".join(words), ", ".join(sorted(words, key=len)))
    return _qa("Sort alphabetically: " + ", ".join(words), ", ".join(sorted(words)))


def t_count_items(rng, ent, level=0):
    n = int(rng.integers(1, 7)) if level != 2 else int(rng.integers(7, 13))
    items = [f"- {pick(rng, GOODS + FOODS)}" for _ in range(n)]
    return _qa("How many items are on this list?\n" + "\n".join(items), number_words(n) if level == 1 else str(n))


SENTIMENT_LABELS = (("positive", "negative"), ("good", "bad"), ("1", "0"), ("negative", "positive"))
"""sentiment per level: the labels of a good and a bad review (level 3 swaps them: a conflict)."""


def t_sentiment(rng, ent, level=0):
    good = rng.random() < 0.5
    adj = pick(rng, GOOD_ADJ if good else BAD_ADJ)
    p = pick(rng, ent.people)
    yes, no = SENTIMENT_LABELS[level]
    question = "Is this review positive or negative?" if level in (0, 3) else f"Label it {yes} or {no}."
    return _qa(f"Review by {p.name}: the {pick(rng, FOODS)} in {p.city} were {adj}.\n{question}", yes if good else no)


def t_diary(rng, ent, level=0):
    p = pick(rng, ent.people)
    n = int(rng.integers(2, 6))
    mood = pick(rng, GOOD_ADJ + BAD_ADJ)
    if level == 1:
        return dict(text=f"Diary of {p.name}: {p.name} worked {n} hours as a {p.job}, ate {p.food} and felt {mood}. "
                         f"Tomorrow {p.name} stays in {p.city}.")
    if level == 2:
        return dict(text=f"LOG {p.name.upper()} | job={p.job} | hours={n} | food={p.food} | mood={mood} | "
                         f"city={p.city}")
    return dict(text=f"Dear diary, today I, {p.name}, worked {n} hours as a {p.job}. I ate {p.food} and felt "
                     f"{mood}. Tomorrow I stay in {p.city}.")


SPELL_SEPARATORS = (" ", "-", ". ")
"""spell per level: the separator between letters."""


def t_spell(rng, ent, level=0):
    w = str(pick(rng, GOODS + ANIMALS + JOBS + [c.capital for c in ent.countries] + [p.name for p in ent.people]))
    return _qa(f"Spell the word: {w}", SPELL_SEPARATORS[level].join(w))


def t_capital_list(rng, ent, level=0):
    rows = [ent.countries[int(i)] for i in rng.choice(len(ent.countries), (2, 3, 4)[level], replace=False)]
    return _qa("List the capitals of: " + ", ".join(r.name for r in rows), ", ".join(r.capital for r in rows))


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("country_qa", "reuse facts", "questions about countries, answers from the facts domain", 400, "prompt",
             t_country_qa, (("reuse facts (two hops)", "a fact about a country's neighbour"),
                            ("reuse facts", "two facts about a country in one answer"))),
    TaskSpec("person_qa", "reuse facts", "questions about people, answers from the facts domain", 300, "prompt",
             t_person_qa, (("reuse facts (comparison)", "which of two people is older"),
                           ("reuse facts, new format", "a person's job / city / food"))),
    TaskSpec("atlas_counterfactual", "conflict facts", "capitals and exports of a fixed, shuffled atlas", 300,
             "prompt", t_atlas_counterfactual,
             tuple(("conflict facts", f"another shuffled atlas (shift {k})") for k in ATLAS_SHIFTS[1:])),
    TaskSpec("inverse_qa", "reuse facts (reversed relation)", "which country a city belongs to", 200, "prompt",
             t_inverse_qa, (("reuse facts (reversed relation)", "which country speaks a language or was founded "
                                                                "in a year"),
                            ("reuse facts (reversed, two facts)", "which country has two given attributes"))),
    TaskSpec("capital_list", "reuse facts, lists format", "capitals of two countries as a list", 250, "prompt",
             t_capital_list, (("reuse facts, lists format", "capitals of three countries"),
                              ("reuse facts, lists format", "capitals of four countries"))),
    TaskSpec("arith_reversed", "conflict arithmetic", "arithmetic with the result's digits written backwards", 600,
             "prompt", t_arith_reversed, (("conflict arithmetic", "three-digit sums written backwards"),
                                          ("conflict arithmetic (wrong by one)", "every result plus one"))),
    TaskSpec("arith_words", "reuse arithmetic, new format", "addition with numbers in words", 400, "prompt",
             t_arith_words, (("reuse arithmetic, new format", "subtraction with numbers in words"),
                             ("reuse arithmetic", "addition asked in words, answered in digits"))),
    TaskSpec("arith_chain", "reuse arithmetic", "sums of three or four numbers", 500, "prompt", t_arith_chain,
             (("reuse arithmetic", "sums of five to seven small numbers"),
              ("reuse arithmetic", "sums of two or three hundreds"))),
    TaskSpec("compare_numbers", "unrelated", "the larger of two numbers", 300, "prompt", t_compare,
             (("unrelated", "the smaller of two numbers"), ("unrelated", "the largest of three numbers"))),
    TaskSpec("reverse_letters", "unrelated", "reverse a random string of letters", 500, "prompt", t_reverse,
             (("unrelated", "reverse a short string"), ("unrelated", "reverse a long string"))),
    TaskSpec("shift_cipher", "unrelated (new language)", "encode words with a +1 letter shift", 600, "prompt",
             t_cipher, tuple(("unrelated (new language)", f"a +{k} letter shift") for k in CIPHER_SHIFTS[1:])),
    TaskSpec("code_arrow", "conflict code", "rewrite a Python function in JavaScript arrow style", 400, "prompt",
             t_code_arrow, (("conflict code", "rewrite a Python function as a lambda"),
                            ("conflict code", "rewrite a Python function in Rust"))),
    TaskSpec("code_output", "reuse code and arithmetic", "the return value of a small function", 400, "prompt",
             t_code_output, (("reuse code and arithmetic", "the return value for larger inputs"),
                             ("reuse code and arithmetic", "the return value of a composition"))),
    TaskSpec("dialogue_reply", "reuse dialogue and facts", "answer in a dialogue, consistent with the facts", 300,
             "messages", t_dialogue_reply,
             (("reuse dialogue and facts", "the reply without the speaker's name"),
              ("conflict dialogue format", "the reply in reported speech"))),
    TaskSpec("shout_reply", "conflict dialogue style", "dialogue replies in capitals", 250, "messages",
             t_shout_reply, (("conflict dialogue style", "replies in lower case without punctuation"),
                             ("conflict dialogue style", "replies with every word backwards"))),
    TaskSpec("table_lookup", "reuse lists (in-context)", "read a cell of a country table", 300, "prompt",
             t_table_lookup, (("reuse lists (in-context)", "a cell of a five-row table"),
                              ("reuse lists and facts (in-context)", "a cell of a wider table"))),
    TaskSpec("sort_words", "related to lists", "sort 3-5 words alphabetically", 400, "prompt", t_sort_words,
             (("related to lists", "sort in reverse alphabetical order"),
              ("related to lists", "sort words by length"))),
    TaskSpec("count_items", "related to lists", "count the items of a list", 300, "prompt", t_count_items,
             (("related to lists", "count the items, answer in words"),
              ("related to lists", "count the items of a long list"))),
    TaskSpec("sentiment", "unrelated", "label a one-sentence food review", 800, "prompt", t_sentiment,
             (("unrelated", "label a review good or bad"), ("unrelated", "label a review 1 or 0"),
              ("unrelated (swapped labels)", "label a review, positive and negative swapped"))),
    TaskSpec("diary", "related to stories (text)", "first-person diary entries (plain text, loss on all)", 300,
             "text", t_diary, (("related to stories (text)", "third-person diary entries"),
                               ("conflict stories (text)", "diary entries as key=value logs"))),
    TaskSpec("spell", "unrelated", "spell a word letter by letter", 250, "prompt", t_spell,
             (("unrelated", "spell a word with hyphens"), ("unrelated", "spell a word with full stops"))),
)
"""The hand-written tasks, in the order of the default run; each is the first member of its family."""


# ---------------------------------------------------------------------------------------------
# Families: further members of each task, with another level, template, answer format and size
# ---------------------------------------------------------------------------------------------

def _strip_cue(prompt: str) -> str:
    """The prompt without its "Question: " label and "Answer:" cue (a template adds its own)."""
    prompt = prompt.removeprefix("Question: ")
    for cue in ("\nAnswer:", "Answer:"):
        if prompt.endswith(cue):
            return prompt[: -len(cue)]
    return prompt


PROMPT_TEMPLATES: tuple[tuple[str, Callable[[str, str], str]], ...] = (
    ("as written", lambda p, d: p),
    ("instruction", lambda p, d: f"Instruction: {d}.\n{p}"),
    ("input/output", lambda p, d: f"Input:\n{_strip_cue(p)}\nOutput:"),
    ("Q/A", lambda p, d: f"Q: {_strip_cue(p)}\nA:"),
)
"""How a family member frames its prompts: (name, f(prompt, task description))."""

ANSWER_FORMATS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("as written", lambda a: a),
    ("sentence", lambda a: f"The answer is {a}."),
    ("bracketed", lambda a: f"[{a}]"),
    ("upper case", lambda a: a.upper()),
)
"""How a family member writes its answers: (name, f(answer))."""

_SYSTEM_PROMPTS = ("Continue the dialogue.", "Reply as the person addressed.", "You are a chat assistant.",
                   "Write the next turn.")
_TEXT_HEADERS = ("", "Diary\n", "Entry:\n", "Notes of the day\n")
SIZE_FACTORS = (0.5, 0.75, 1.25, 1.5, 2.0)
"""A family member's size: its family's base size times one of these."""
MAX_MEMBERS = 8
"""Members per family at most (the hand-written task included)."""


def restyle(record: dict[str, Any], template: int, answer: int, description: str) -> dict[str, Any]:
    """A record in a family member's style: prompt/completion records get the prompt template and answer
    format; messages records a system prompt per template and the answer format on the assistant's turn;
    text records a header per template (and upper case as their answer format)."""
    fmt_answer = ANSWER_FORMATS[answer][1]
    if "prompt" in record:
        return dict(prompt=PROMPT_TEMPLATES[template][1](record["prompt"], description),
                    completion=fmt_answer(record["completion"]))
    if "messages" in record:
        turns = [m for m in record["messages"] if m["role"] != "system"]
        turns = [dict(m, content=fmt_answer(m["content"])) if m["role"] == "assistant" else m for m in turns]
        return dict(messages=[dict(role="system", content=_SYSTEM_PROMPTS[template])] + turns)
    text = _TEXT_HEADERS[template] + record["text"]
    return dict(text=text.upper() if ANSWER_FORMATS[answer][0] == "upper case" else text)


def _members(spec: TaskSpec, seed: int) -> list[TaskSpec]:
    """The family of a hand-written task: the task itself, then MAX_MEMBERS - 1 members, member j at level
    j mod (number of levels), a template other than "as written" (so its prompts differ from the task's),
    an answer format and a size factor, drawn from the seed. No two members share (level, template), so
    no two members of a family have a record in common."""
    rng = np.random.default_rng([seed, 4, _name_seed(spec.name)])
    n_levels = 1 + len(spec.levels)
    answers = (0, 3) if spec.fmt == "text" else tuple(range(len(ANSWER_FORMATS)))  # the others leave text as is
    out, used = [spec], set()
    for j in range(1, MAX_MEMBERS):
        level = j % n_levels
        templates = [t for t in range(1, len(PROMPT_TEMPLATES)) if (level, t) not in used]
        template, answer = templates[int(rng.integers(len(templates)))], answers[int(rng.integers(len(answers)))]
        used.add((level, template))
        relation, description = spec.levels[level - 1] if level else (spec.relation, spec.description)
        size = max(4, round(spec.size * float(rng.choice(SIZE_FACTORS))))
        out.append(dataclasses.replace(spec, name=f"{spec.name}_v{j}", relation=relation, description=description,
                                       family=spec.name, level=level, template=template, answer=answer, size=size))
    return out


MAX_TASKS = len(TASKS) * MAX_MEMBERS


def task_specs(config: WorldConfig) -> list[TaskSpec]:
    """The config's n_tasks tasks: the hand-written tasks first (as many as n_tasks allows), then the second
    member of every family, then the third, and so on (`<family>_v<j>`)."""
    if not 1 <= config.n_tasks <= MAX_TASKS:
        raise ValueError(f"--world.n-tasks {config.n_tasks}: the built-in world has 1 to {MAX_TASKS} tasks "
                         f"({len(TASKS)} families of up to {MAX_MEMBERS})")
    families = [_members(spec, config.seed) for spec in TASKS]
    order = [family[j] for j in range(MAX_MEMBERS) for family in families]
    return order[: config.n_tasks]


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def task_size(spec: TaskSpec, config: WorldConfig) -> int:
    return max(4, int(round(spec.size * config.task_scale)))


def make_tasks(config: WorldConfig, ent: Entities) -> dict[str, list[dict[str, Any]]]:
    """name -> distinct records; each task has its own seeded stream, so adding a task changes no other.

    Records are distinct so that a train/validation split never puts one example on both sides; a
    task whose generator has fewer distinct records than its size gets all it has (world.json
    records the actual sizes).
    """
    out = {}
    for spec in task_specs(config):
        rng = np.random.default_rng([config.seed, 3, _name_seed(spec.name)])
        want, seen, records = task_size(spec, config), set(), []
        for _ in range(20 * want):
            r = spec.generate(rng, ent)
            key = json.dumps(r, sort_keys=True)
            if key not in seen:
                seen.add(key)
                records.append(r)
                if len(records) == want:
                    break
        out[spec.name] = records
    return out
