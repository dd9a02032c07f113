"""Every ``--help`` text that states a range tells the truth: the command's range table (``RANGES``, checked
by :func:`jaxforget.cli.check_ranges` before any work) accepts what the help says and refuses what it
excludes (issue 27). Pure introspection: no command runs."""

from __future__ import annotations

import re
import typing

import pytest
import tyro._docstrings

from jaxforget import analyze, forecast, plan, predict, pretrain, replay
from jaxforget.cli import Range, flag_name, numeric_flags
from jaxforget.collect import config as collect_config

COMMANDS = {
    "collect": (collect_config.CollectConfig, collect_config.RANGES),
    "analyze": (analyze.AnalyzeConfig, analyze.RANGES),
    "predict": (predict.PredictConfig, predict.RANGES),
    "forecast": (forecast.ForecastConfig, forecast.RANGES),
    "replay": (replay.ReplayConfig, replay.RANGES),
    "plan": (plan.PlanCommand, plan.RANGES),
    "pretrain": (pretrain.PretrainConfig, pretrain.RANGES),
}

NUMBER = r"-?\d+(?:\.\d+)?"
INTERVAL = re.compile(rf"([\[(])\s*({NUMBER})\s*,\s*({NUMBER})\s*([\])])")  # [0, 1), (0, 1]
CHAIN = re.compile(rf"\(\s*({NUMBER})\s*(<=?)\s*[A-Za-z]\w*\s*(<=?)\s*({NUMBER})\s*\)")  # (0 < F <= 1)
ZERO_OFF = re.compile(r"\b0\s*(?:=|:|means)\s*(?:never|off|all|only|none|no)\b|\b0 \(off\)")  # 0 = never, 0: never
LOWER = re.compile(rf"(?<![\w.])(>=|>|at least)\s*({NUMBER})(?![\w.])")  # >= 1, at least 2 (not ">= data.max_len")
UP_TO = re.compile(r"\b(?:up to|at most)\s+(\d[\d,]*)\b(?!\s*(?:tokens|steps|examples|new))")


def field_doc(config_type: type, path: str) -> str:
    """The help text of a (dotted) field, as tyro shows it under its flag."""
    *outer, name = path.split(".")
    for part in outer:
        config_type = typing.get_type_hints(config_type)[part]
    return " ".join((tyro._docstrings.get_field_docstring(config_type, name, ()) or "").split())


def statements(text: str, kind: type) -> list[tuple[str, list[tuple[float, bool]]]]:
    """(what the help says, [(value, accepted?)]) for each range statement of a help text: probes on both
    sides of every bound it states."""
    eps = 1 if kind is int else 1e-6
    out = []
    for m in INTERVAL.finditer(text):
        lo, hi = float(m.group(2)), float(m.group(3))
        out.append((m.group(0), [(lo, m.group(1) == "["), (hi, m.group(4) == "]"), (lo - eps, False),
                                 (hi + eps, False), ((lo + hi) / 2, True)]))
    for m in CHAIN.finditer(text):
        lo, hi = float(m.group(1)), float(m.group(4))
        out.append((m.group(0), [(lo, m.group(2) == "<="), (hi, m.group(3) == "<="), (lo - eps, False),
                                 (hi + eps, False)]))
    if ZERO_OFF.search(text):
        out.append((ZERO_OFF.search(text).group(0), [(0, True)]))
    for m in LOWER.finditer(text):
        n = float(m.group(2))
        out.append((m.group(0), [(n, m.group(1) != ">"), (n - eps, False), (n + eps, True)]))
    for m in UP_TO.finditer(text):
        n = float(m.group(1).replace(",", ""))
        out.append((m.group(0), [(n, True), (n + eps, False)]))
    if kind is float and re.search(r"\bfraction\b", text) and not out:
        out.append(("a fraction", [(-0.5, False), (1.5, False)]))
    return out


CASES = [(command, path, kind) for command, (config_type, _) in COMMANDS.items()
         for path, kind in numeric_flags(config_type).items()]


@pytest.mark.parametrize("command, path, kind", CASES, ids=[f"{c}:{p}" for c, p, _ in CASES])
def test_the_help_states_the_range_that_is_checked(command, path, kind):
    config_type, ranges = COMMANDS[command]
    text = field_doc(config_type, path)
    for said, probes in statements(text, kind):
        rule = ranges.get(path)
        assert isinstance(rule, Range), f"{command} {flag_name(path)}: the help says {said!r}; nothing checks it"
        wrong = [(v, ok) for v, ok in probes if rule.accepts(v) != ok]
        assert not wrong, (f"{command} {flag_name(path)}: the help says {said!r} but the check is {rule}: "
                           + ", ".join(f"{v:g} {'refused' if ok else 'accepted'}" for v, ok in wrong))


def test_the_help_parser_finds_the_statements_it_checks():
    # the patterns themselves, on texts of the commands' own kinds (so a help that states a range is never skipped)
    said = dict(statements("A fraction in [0, 1); 0 = never; at least 2; up to 168 (0 < F <= 1)", float))
    assert set(said) == {"[0, 1)", "(0 < F <= 1)", "0 = never", "at least 2", "up to 168"}
    assert statements("the last must be >= data.task_max_len", int) == []  # a bound that is not a number
    assert statements("Final learning rate as a fraction of lr.", float)[0][0] == "a fraction"
