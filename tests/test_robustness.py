"""The classes of bad input closed for every command (issue 25), in-process and on one shared tiny run.

1. Every numeric flag of every command x {-1, 0, nan, inf}: either the value is in the flag's range table
   (the documented valid values) or the command exits with status 2 and prints exactly one line that
   names the flag as typed, before anything is read or built.
2. Every file of a run directory x {missing, empty, ``{}``, truncated, garbage} x every command that reads
   it: exit status 2, one line naming the file, and the run directory byte for byte as it was.
"""

from __future__ import annotations

import dataclasses
import json
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


def _collect_cli(argv):
    raise SystemExit(collect_main.cli(argv))


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


COMMANDS = sorted(_commands(Path(".")))
VALUES = (-1, 0, math.nan, math.inf)


def _replace(config, path: str, value):
    """`config` with the field at dotted `path` set to `value` (as a 1-tuple where the field is a tuple)."""
    head, _, rest = path.partition(".")
    if rest:
        return dataclasses.replace(config, **{head: _replace(getattr(config, head), rest, value)})
    kind = numeric_flags(type(config))[head]
    hint = typing.get_type_hints(type(config))[head]
    is_tuple = any(typing.get_origin(t) is tuple for t in (typing.get_args(hint) or (hint,)) + (hint,))
    value = kind(value) if math.isfinite(value) else value  # nan / inf stay floats, as a caller could pass them
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
             (forecast.cli, [str(tmp_path), "--task", "t", "--seeds", "-1"], "--seeds must be >= 0"),
             # found by the same search: an overflowing size, a fraction split out of range
             (plan.cli, ["--plan.device-memory", "1e400"], "--plan.device-memory '1e400': not a device memory size"),
             (predict.cli, ["--split", "1.5", "--synthetic-rows", "8", "--synthetic-cols", "20"],
              "--split 1.5: test fraction must be in (0, 1)"),
             (predict.cli, ["--split", "nan", "--synthetic-rows", "8", "--synthetic-cols", "20"], "--split nan: ")]
    for cli, argv, message in cases:
        assert message in _one_error_line(capsys, lambda: cli(argv)), argv


# ------------------------------------------------------------------------------------------------
# Every file of a run directory x every kind of damage x every command that reads it.

DAMAGE = {
    "missing": None,
    "empty": b"",
    "{}": b"{}",
    "truncated": "half",
    "garbage": b"\x89\xff\x00\x13 not what was written \xfe" * 8,
}
# file -> {command: whether the command needs the file (a missing optional file is not damage)}
READERS = {
    "meta.json": {"merge": True, "forecast": True, "replay": True, "analyze": False},
    "forgetting.npz": {"forecast": True, "replay": True, "predict": True, "analyze": True},
    "base.npz": {"merge": True, "forecast": True, "replay": True},
    "rows/task_00000.npz": {"merge": True},
    "tasks.jsonl": {"analyze": False},
    "upstream.jsonl": {"analyze": False},
}
# {} is a valid meta.json for analyze, which only copies it into its report
VALID = {("meta.json", "analyze", "{}")}


def _argv(command: str, run: Path, out: Path) -> tuple:
    return {
        "merge": (_collect_cli, ["--merge", str(run)]),
        "forecast": (forecast.cli, [str(run), "--task", "sort_words", "--out", str(out)]),
        "replay": (replay.cli, [str(run), "--out", str(out)]),
        "predict": (predict.cli, ["--matrix", str(run), "--out", str(out / "p.json")]),
        "analyze": (analyze.cli, [str(run), "--out", str(out), "--tracker", "none"]),
    }[command]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "locks" not in p.relative_to(root).parts}


CASES = [(f, c, d) for f, readers in READERS.items() for c, needed in readers.items() for d in DAMAGE
         if (needed or d != "missing") and (f, c, d) not in VALID]


@pytest.fixture(scope="module")
def clean_run(tiny_run, tmp_path_factory):
    """The shared tiny run without its saved models and TensorBoard logs (no command here reads them)."""
    out = tmp_path_factory.mktemp("clean") / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("models", "tb", "checkpoints", "locks"))
    return out


def test_the_sweep_covers_every_file_and_command():
    assert {f for f, _, _ in CASES} == set(READERS)
    assert {c for _, c, _ in CASES} == {"merge", "forecast", "replay", "predict", "analyze"}
    assert len(CASES) >= 60


@pytest.mark.parametrize("name,command,damage", CASES, ids=["-".join(c) for c in CASES])
def test_a_damaged_run_file_is_one_line_naming_it_and_the_run_is_untouched(name, command, damage, clean_run,
                                                                           tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    path = run / name
    assert path.is_file(), f"the tiny run has no {name}"
    how = DAMAGE[damage]
    if how is None:
        path.unlink()
    elif how == "half":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(how)
    before = _snapshot(run)
    cli, argv = _argv(command, run, tmp_path / "out")
    line = _one_error_line(capsys, lambda: cli(argv))
    assert Path(name).name in line, line
    assert _snapshot(run) == before


def test_a_damaged_parquet_file_is_one_line_naming_it(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from jaxforget.data.formats import iter_records

    good = tmp_path / "up.parquet"
    pq.write_table(pa.table({"text": [f"document {i}" for i in range(100)]}), good)
    assert len(list(iter_records(good, required_columns=("text",)))) == 100
    data = good.read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("empty", b""), ("garbage", b"PAR1 not parquet"),
                          ("json", b'{"text": "a jsonl record under a parquet name"}\n')):
        bad = tmp_path / f"{name}.parquet"
        bad.write_bytes(content)
        with pytest.raises(ValueError) as e:
            list(iter_records(bad, required_columns=("text",)))
        assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b"null", b'"llama"', b"", b"\xff\xfe"])
def test_a_config_json_that_is_not_an_object_is_one_line(content, tmp_path, capsys):
    """plan and collect --model.path: a config.json that is not a JSON object (issue 25: a traceback before)."""
    (tmp_path / "config.json").write_bytes(content)
    line = _one_error_line(capsys, lambda: plan.cli(["--model.path", str(tmp_path), "--out", str(tmp_path / "o")]))
    assert f"{tmp_path / 'config.json'}:" in line, line
    code = collect_main.cli(["--model.path", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{tmp_path / 'config.json'}:" in err[0], err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# The wrecked-model rule (issue 25, cases 5 and 6)


def test_wrecked_fails_a_model_at_or_beyond_chance_and_passes_a_trained_one():
    from jaxforget.collect.loop import wrecked

    V = 1024  # ln V = 6.93, the issue's model
    nll = np.full(50, 0.9, np.float32)
    assert wrecked([3.0, 1.0, 0.5], nll, V) is None
    # case 5 (--train.lr 1): upstream NLL 0.72 -> 43 nats/token, far beyond chance
    reason = wrecked([3.0, 2.0, 2.5], np.full(50, 43.0, np.float32), V)
    assert reason.startswith("wrecked: mean upstream NLL after fine-tuning 43 nats/token") and "6.931" in reason
    # case 6 (--train.lr 1e4): collapsed to the uniform distribution, loss and NLL = ln V everywhere
    assert "6.931" in wrecked([math.log(V)] * 12, np.full(50, math.log(V), np.float32), V)
    # a loss stuck at ln V fails the task even when the NLL happens to be below chance
    assert "collapsed to the uniform" in wrecked([5.0] + [math.log(V) + 1e-4] * 10, nll, V)
    assert wrecked([5.0] + [math.log(V)] * 9 + [math.log(V) - 0.1], nll, V) is None  # the last one moved
    assert wrecked([1.0], np.full(50, math.log(V) * 0.99, np.float32), V) is None  # below chance by 1%


def test_a_collapsed_model_is_recorded_as_failed_not_ok(cache, tmp_path):
    """Case 6 end to end: --train.lr 1e4 on the tiny world collapses the model to the uniform output; with
    the divergence rule off, the task still fails, with the reason."""
    from test_collect import TASKS, tiny

    from jaxforget.collect import DataConfig, TrainConfig, collect
    from jaxforget.store import RunDir

    out = tmp_path / "wrecked"
    config = tiny(out, data=DataConfig(n_upstream=20, task_names=TASKS[:1]),
                  train=TrainConfig(max_steps=6, batch_size=8, lr=1e4, warmup_steps=0, checkpoint_every=0,
                                    divergence_factor=0))
    assert collect(config, echo=lambda *_: None) == 1
    row = RunDir(out).read_row(0)
    assert str(row["status"]) == "failed" and str(row["reason"]).startswith("wrecked: ")
    assert RunDir(out).read_meta()["failed_tasks"] == [TASKS[0]]
    assert np.isnan(np.load(RunDir(out).forgetting_path)["Z"]).all()


@pytest.mark.slow
def test_a_model_pushed_beyond_chance_is_recorded_as_failed(cache, tmp_path):
    """Case 5 end to end: --train.lr 1 sends the upstream NLL above ln V; the divergence rule off."""
    from test_collect import TASKS, tiny

    from jaxforget.collect import DataConfig, TrainConfig, collect
    from jaxforget.store import RunDir

    out = tmp_path / "beyond"
    config = tiny(out, data=DataConfig(n_upstream=20, task_names=TASKS[:1]),
                  train=TrainConfig(max_steps=12, batch_size=8, lr=1.0, warmup_steps=2, checkpoint_every=0,
                                    divergence_factor=0))
    assert collect(config, echo=lambda *_: None) == 1
    assert "at or above the uniform distribution's ln V" in str(RunDir(out).read_row(0)["reason"])


# ------------------------------------------------------------------------------------------------
# Checkpoints bound to their run (issue 25, case 1)


class _Stop(Exception):
    pass


def test_a_checkpoint_of_another_run_is_refused_in_one_line(cache, tmp_path, monkeypatch, capsys):
    """Run A (--train.lr 1e-3) stops right after its checkpoint at step 5; its checkpoint, copied into run B
    (same task, same step, --train.lr 2e-3), is refused with one line naming it instead of being resumed."""
    from test_collect import TASKS, TRAIN, tiny  # TRAIN: its compiled step is shared with the collect tests

    from jaxforget.collect import DataConfig, collect
    from jaxforget.collect import loop as loop_module

    def stop_at_first_checkpoint(where: str) -> None:
        if where == "checkpoint:0:5":
            raise _Stop(where)

    monkeypatch.setattr(loop_module, "fault_point", stop_at_first_checkpoint)
    data = DataConfig(n_upstream=20, task_names=TASKS[:1])
    train = TRAIN  # lr 1e-3, a checkpoint every 5 steps
    a = tiny(tmp_path / "a", data=data, train=train)
    with pytest.raises(_Stop):
        collect(a, echo=lambda *_: None)
    ckpt = tmp_path / "a" / "checkpoints" / "task_00000"
    assert (ckpt / "5").is_dir()
    b = tiny(tmp_path / "b", data=data, train=dataclasses.replace(train, lr=2e-3))
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoints" / "task_00000")
    assert collect_main.execute(b) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'b' / 'checkpoints' / 'task_00000'}: checkpoint at step 5 is a " \
        "checkpoint of another run (configuration fingerprint" in err[0], err
    assert not (tmp_path / "b" / "rows").exists()  # nothing resumed, no row written


# ------------------------------------------------------------------------------------------------
# forecast --append as a transaction (issue 25, case 2)


def _append_fixture(clean_run, tmp_path):
    from jaxforget.store import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(clean_run, run.root)
    # the new task's row: task 0's measured row under another name (what append_row writes does not depend on it)
    old = run.read_row(0)
    row = RunDir.row_arrays(name="sort_words", nll_after=old["nll_after"], train_losses=old["train_losses"],
                            steps_run=old["steps_run"], train_tokens=old["train_tokens"], seconds=old["seconds"],
                            seed=old["seed"])
    n_train = [json.loads(line)["n_train"] for line in (run.root / "tasks.jsonl").read_text().splitlines()] + [7]
    return run, row, n_train


def test_append_row_writes_the_row_the_assembly_tasks_and_meta_together(clean_run, tmp_path):
    from jaxforget.forecast import append_row, run_state

    run, row, n_train = _append_fixture(clean_run, tmp_path)
    before = np.load(run.forgetting_path)
    append_row(run, row, n_train, run_state(run))
    after, meta = np.load(run.forgetting_path), run.read_run_meta()
    assert meta["task_names"][-1] == meta["config"]["data"]["task_names"][-1] == "sort_words"
    assert after["Z"].shape == (before["Z"].shape[0] + 1, before["Z"].shape[1])
    np.testing.assert_array_equal(after["Z"][:-1], before["Z"])
    np.testing.assert_array_equal(after["Z"][-1], row["nll_after"] - before["nll_before"])
    tasks = [json.loads(line) for line in (run.root / "tasks.jsonl").read_text().splitlines()]
    assert [t["name"] for t in tasks] == meta["task_names"] and tasks[-1]["n_train"] == 7
    assert str(run.read_row(len(tasks) - 1)["name"]) == "sort_words"


@pytest.mark.parametrize("fail_at", ["atomic_write_jsonl", "atomic_write_json"])
def test_an_append_that_fails_part_way_leaves_the_run_as_it_was(fail_at, clean_run, tmp_path, monkeypatch):
    from jaxforget import forecast as forecast_module
    from jaxforget.forecast import append_row, run_state
    from jaxforget.store import RunError

    run, row, n_train = _append_fixture(clean_run, tmp_path)
    before = _snapshot(run.root)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(forecast_module, fail_at, disk_full)
    with pytest.raises(RunError, match="could not append sort_words .*No space left on device.*the run is as it was"):
        append_row(run, row, n_train, run_state(run))
    assert _snapshot(run.root) == before


@pytest.mark.parametrize("damage", ["a damaged row", "a run changed meanwhile"])
def test_an_append_on_a_damaged_or_changed_run_writes_nothing(damage, clean_run, tmp_path):
    from jaxforget.forecast import append_row, run_state
    from jaxforget.store import RunError

    run, row, n_train = _append_fixture(clean_run, tmp_path)
    state = run_state(run)
    if damage == "a damaged row":
        run.row_path(1).write_bytes(b"PK\x03\x04 truncated")
        state = run_state(run)
        message = "task_00001.npz: corrupted or unreadable"
    else:
        (run.root / "tasks.jsonl").write_text((run.root / "tasks.jsonl").read_text() + "\n")
        message = "tasks.jsonl changed while forecast was fine-tuning"
    before = _snapshot(run.root)
    with pytest.raises(RunError, match=message):
        append_row(run, row, n_train, state)
    assert _snapshot(run.root) == before


def test_a_second_append_at_once_is_refused_before_it_fine_tunes(clean_run, tmp_path, capsys):
    """The run lock is taken before the fine-tuning: while one append (here: its lock) works on the run, a
    second is one line, at once, and writes nothing (before, both reported success and one row was lost)."""
    from jaxforget.store import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(clean_run, run.root)
    before = _snapshot(run.root)
    first = run.lock_run()
    try:
        line = _one_error_line(capsys, lambda: forecast.cli([str(run.root), "--task", "sort_words", "--measure-all",
                                                             "--append", "--out", str(tmp_path / "out")]))
    finally:
        first.release()
    assert "another collect process is working on this run directory" in line, line
    assert _snapshot(run.root) == before and not (tmp_path / "out").exists()
    # a damaged row is found before the fine-tuning too
    run.row_path(2).write_bytes(b"garbage")
    line = _one_error_line(capsys, lambda: forecast.cli([str(run.root), "--task", "sort_words", "--measure-all",
                                                         "--append", "--out", str(tmp_path / "out")]))
    assert "task_00002.npz: corrupted or unreadable" in line and not (tmp_path / "out").exists()


def test_a_tokenizer_larger_than_the_model_is_named_not_an_overflow(cache, tmp_path, capsys):
    """A model whose vocabulary (config.json) is smaller than its tokenizer's: one line saying so, naming the
    directory, before the base model is evaluated (before: "the activations overflow")."""
    from safetensors.numpy import load_file, save_file
    from test_collect import flags, tiny

    from jaxforget.pretrain import ensure_base_model

    ref = tiny(tmp_path / "unused")
    base = tmp_path / "small_vocab"
    shutil.copytree(ensure_base_model(ref.world, ref.base, ref.pretrain, echo=lambda *_: None), base)
    V = 300  # of the tokenizer's 384
    tensors = load_file(base / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key in tensors:
            tensors[key] = np.ascontiguousarray(tensors[key][:V])
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "vocab_size": V}))
    out = tmp_path / "run"
    line = _one_error_line(capsys, lambda: _collect_cli([*flags(out), "--model.path", str(base),
                                                         "--data.n-upstream", "20"]))
    assert line.startswith(f"error: {base}: the tokenizer (384 tokens) gives the upstream sample token id ")
    assert "beyond the model's vocabulary of 300" in line and "overflow" not in line
    assert not (out / "base.npz").exists()


@pytest.mark.parametrize("field, value, message", [
    ("lr", "abc", "config.train.lr: expected float, got 'abc'"),
    ("max_steps", 1.5, "config.train.max_steps: expected int, got 1.5"),
    ("lora_targets", "q", "config.train.lora_targets: expected a list, got 'q'"),
    ("lr", -1.0, "config out of range (--train.lr must be > 0; got -1.0)"),
])
def test_a_mistyped_recorded_config_is_one_line_naming_meta_json(field, value, message, clean_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    meta = json.loads((run / "meta.json").read_text())
    meta["config"]["train"][field] = value
    (run / "meta.json").write_text(json.dumps(meta))
    before = _snapshot(run)
    for cli, argv in (_argv("forecast", run, tmp_path / "out"), _argv("replay", run, tmp_path / "out")):
        line = _one_error_line(capsys, lambda: cli(argv))
        assert f"{run / 'meta.json'}: " in line and message in line, line
    assert _snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["meta.json", "base.npz", "rows/task_00000.npz"])
@pytest.mark.parametrize("damage", ["empty", "{}", "truncated", "garbage"])
def test_collect_resuming_a_damaged_run_is_one_line_and_leaves_it_untouched(name, damage, tiny_run, tmp_path,
                                                                             capsys):
    """Resume (collect with the run's own flags) builds the model before it reads the run: slower, so apart."""
    from test_collect import flags

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("models", "tb", "checkpoints", "locks"))
    path = run / name
    how = DAMAGE[damage]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if how == "half" else how)
    before = _snapshot(run)
    line = _one_error_line(capsys, lambda: _collect_cli(flags(run) + ["--save-models"]))
    assert Path(name).name in line, line
    assert _snapshot(run) == before


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".pkl"])
@pytest.mark.parametrize("damage", ["empty", "{}", "truncated", "garbage"])
def test_a_damaged_matrix_file_is_one_line_naming_it(suffix, damage, tmp_path, capsys):
    """predict --matrix and analyze on a matrix file of each format, damaged."""
    import pickle

    Z = np.random.default_rng(0).normal(size=(6, 9)).astype(np.float32)
    path = tmp_path / f"z{suffix}"
    if suffix == ".npy":
        np.save(path, Z)
    elif suffix == ".npz":
        np.savez(path, Z=Z)
    elif suffix == ".csv":
        np.savetxt(path, Z, delimiter=",")
    else:
        path.write_bytes(pickle.dumps({"train_mat": Z[:4], "test_mat": Z[4:]}))
    how = DAMAGE[damage]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if how == "half" else how)
    if suffix == ".csv" and damage == "truncated":
        return  # half the rows of a CSV are still a matrix: no damage to detect
    for cli, argv in ((predict.cli, ["--matrix", str(path), "--out", str(tmp_path / "p.json")]),
                      (analyze.cli, [str(path), "--out", str(tmp_path / "a"), "--tracker", "none"])):
        line = _one_error_line(capsys, lambda: cli(argv))
        assert str(path) in line, line
