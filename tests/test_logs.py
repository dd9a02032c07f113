"""The console of the entry points: library INFO noise is silenced by default and comes back with
--verbose or JAXFORGET_LOG; usage lines name ``python -m jaxforget.<step>``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NOISE = ("_SignalingThread.join() waiting for signals", "Unable to initialize backend 'tpu'",
         "PyTorch was not found", "is illegal; using")

# Each library's own logger and message, as they log them (tensorboardX's through its real renaming
# function), then one jaxforget INFO line and one warning.
EMIT = """
import logging, sys
from jaxforget.logs import configure_logging
configure_logging(verbose="--verbose" in sys.argv, quiet="--quiet" in sys.argv)
from absl import logging as absl_logging
absl_logging.info("_SignalingThread.join() waiting for signals")
logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu': no libtpu")
from tensorboardX.summary import _clean_tag
_clean_tag("heldout/offline:mf")
logging.getLogger("jaxforget.collect").info("own info line")
logging.getLogger("jaxforget.collect").warning("own warning line")
"""


def _env(**changes) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXFORGET_LOG", "TRANSFORMERS_NO_ADVISORY_WARNINGS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(changes)
    return env


def _emit(*flags, **env) -> str:
    p = subprocess.run([sys.executable, "-c", EMIT, *flags], capture_output=True, text=True, cwd=ROOT,
                       env=_env(**env), timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout + p.stderr


def test_library_info_is_silenced_by_default_and_back_with_verbose_or_the_environment():
    default = _emit()
    assert not [n for n in NOISE if n in default], default
    # one format for jaxforget's own lines in every command: the message (warnings prefixed), no timestamp
    assert "\nown info line\n" in f"\n{default}" and "\nwarning: own warning line\n" in f"\n{default}"
    for out in (_emit("--verbose"), _emit(JAXFORGET_LOG="info"), _emit(JAXFORGET_LOG="DEBUG")):
        assert "_SignalingThread.join() waiting for signals" in out
        assert "Unable to initialize backend 'tpu'" in out
        assert "Summary name heldout/offline:mf is illegal" in out
        assert "own info line" in out
    quiet = _emit("--quiet")
    assert "own info line" not in quiet and "own warning line" in quiet
    assert "own info line" in _emit("--quiet", "--verbose")  # --verbose wins


def test_unknown_log_level_is_an_error_naming_the_variable():
    p = subprocess.run([sys.executable, "-c", EMIT], capture_output=True, text=True, cwd=ROOT,
                       env=_env(JAXFORGET_LOG="loud"), timeout=120)
    assert p.returncode != 0
    assert "JAXFORGET_LOG='loud': expected one of warning, info, debug" in p.stderr


def _replay(run_dir: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """``python -m jaxforget.replay`` on the tiny run, with torch hidden from transformers (as on a
    machine without it, where it says "PyTorch was not found" when the tokenizer is loaded)."""
    from test_replay import TASK

    argv = [str(run_dir), "--tasks", TASK, "--strategies", "none", "offline:additive", "--seeds", "0",
            "--ratio", "0.15", "--k", "5", "--out", str(out), *flags]
    code = ("import importlib.util as u, runpy, sys; find = u.find_spec; "
            "u.find_spec = lambda name, *a: None if name.split('.')[0] == 'torch' else find(name, *a); "
            f"sys.argv = ['replay', *{argv!r}]; "
            "runpy.run_module('jaxforget.replay', run_name='__main__', alter_sys=True)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=_env(JAXFORGET_CACHE=os.environ["JAXFORGET_CACHE"]), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.slow  # ~30 s: a whole replay command in a subprocess
def test_replay_console_is_free_of_library_noise(tiny_run, tmp_path):
    p = _replay(tiny_run, tmp_path / "quietly")
    console = p.stdout + p.stderr
    assert not [n for n in NOISE if n in console], console[-3000:]
    assert "| offline:additive |" in p.stdout  # the report is printed
    # the noise that is reproducible here comes back with --verbose; the tags stay legal
    loud = _replay(tiny_run, tmp_path / "loudly", "--verbose")
    console = loud.stdout + loud.stderr
    assert "PyTorch was not found" in console
    assert "is illegal" not in console


def test_usage_lines_name_the_module_not_a_file(capsys):
    from jaxforget import analyze, predict, pretrain, replay

    for module in (analyze, predict, pretrain, replay):
        with pytest.raises(SystemExit):
            module.cli(["--help"])
        usage = capsys.readouterr().out
        assert f"usage: python -m {module.__name__} " in usage, usage[:200]
        assert "--verbose" in usage and ".py" not in usage.splitlines()[0]
    with pytest.raises(SystemExit) as e:
        analyze.cli(["--max-rank", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "python -m jaxforget.analyze --help" in err and "analyze.py" not in err


def test_run_passes_the_plain_config_and_an_explicit_prog(capsys, tmp_path):
    import dataclasses

    from jaxforget.analyze import AnalyzeConfig
    from jaxforget.cli import prog_name, run

    got = run(AnalyzeConfig, lambda c: c, [str(tmp_path), "--max-rank", "3", "--verbose"])
    assert type(got) is AnalyzeConfig and got == dataclasses.replace(AnalyzeConfig(path=tmp_path), max_rank=3)
    with pytest.raises(SystemExit):
        run(AnalyzeConfig, lambda c: c, ["--help"], prog="python -m jaxforget.collect")
    assert capsys.readouterr().out.startswith("usage: python -m jaxforget.collect ")
    assert prog_name(run) == "python -m jaxforget.cli"
