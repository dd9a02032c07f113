"""collect's configuration is checked in one pass before anything is built or written: every numeric flag
has a range (NaN / inf refused), errors name the flag as typed, --out must be a writable directory."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pytest
from test_collect import flags

from jaxforget.cli import numeric_fields
from jaxforget.collect import CollectConfig, EvalConfig, TrainConfig, check_config, cli
from jaxforget.collect.config import RANGES, DataConfig, LoraTarget, ModelConfig, resolve_lengths

BAD_FLAGS = [
    (["--train.lr", "nan"], "--train.lr must be a finite number > 0; got nan"),
    (["--train.lr", "inf"], "--train.lr must be a finite number > 0; got inf"),
    (["--train.lr", "-1"], "--train.lr must be > 0; got -1.0"),
    (["--train.clip-norm", "-1"], "--train.clip-norm must be > 0; got -1.0"),
    (["--train.warmup-steps", "-3"], "--train.warmup-steps must be >= 0; got -3"),
    (["--train.checkpoint-every", "-5"], "--train.checkpoint-every must be >= 0; got -5"),
    (["--eval.eval-every", "-1"], "--eval.eval-every must be >= 0; got -1"),
    (["--log-every", "0"], "--log-every must be >= 1; got 0"),
    (["--train.mode", "lora", "--train.lora-rank", "0"], "--train.lora-rank must be >= 1; got 0"),
    (["--train.max-epochs", "0"], "--train.max-epochs must be > 0; got 0.0"),
    (["--train.end-lr-fraction", "1.5"], "--train.end-lr-fraction must be in [0, 1]; got 1.5"),
    (["--train.weight-decay", "nan"], "--train.weight-decay must be a finite number >= 0; got nan"),
    (["--train.divergence-factor", "0.5"], "--train.divergence-factor must be 0 (off) or >= 1; got 0.5"),
    (["--train.buckets", "0", "96"], "--train.buckets must be >= 1; got (0, 96)"),
    (["--data.val-fraction", "1"], "--data.val-fraction must be in [0, 1); got 1.0"),
    (["--data.seed", "-1"], "--data.seed must be >= 0; got -1"),
    (["--data.min-tokens", "1"], "--data.min-tokens must be >= 2; got 1"),
    (["--data.chunk-tokens", "128"], "--data.chunk-tokens 128: a chunk is one sequence; raise --data.max-len 64 to at "
                                     "least 128"),
    (["--data.chunk-docs", "5"], "--data.chunk-docs only applies with --data.chunk-tokens"),
    (["--world.n-countries", "1"], "--world.n-countries must be >= 2; got 1"),
    (["--pretrain.lr", "-0.1"], "--pretrain.lr must be > 0; got -0.1"),
    (["--base.n-heads", "5"], "--base.d-model 32 must be a multiple of --base.n-heads 5"),
    (["--tasks-per-step", "0"], "--tasks-per-step must be >= 1; got 0"),
    (["--mesh", "0"], "--mesh must be >= 1; got (0,)"),
    # several at once: all of them, in one line
    (["--train.clip-norm", "-1", "--eval.eval-every", "-1"],
     "--train.clip-norm must be > 0; got -1.0; --eval.eval-every must be >= 0; got -1"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_is_refused_by_name_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert cli([*flags(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not out.exists()  # no lock, no meta.json, nothing built


def test_every_numeric_flag_has_a_range():
    full = resolve_lengths(CollectConfig(mesh=(1,), tasks_per_pass=1, num_processes=1, process_id=0,  # all given
                                         data=DataConfig(chunk_tokens=64, chunk_docs=10),
                                         eval=EvalConfig(budget=0.5, anchors=1)))
    assert set(numeric_fields(full)) == set(RANGES)
    check_config(dataclasses.replace(full, distributed=True))  # the defaults are in range


def test_lora_targets_are_checked_against_the_models_list():
    from jaxforget.models.decoder import LORA_TARGETS

    assert typing.get_args(LoraTarget) == tuple(LORA_TARGETS)
    with pytest.raises(ValueError, match="--train.lora-targets q qq: choose one or more of q, k, v, o, gate, up, down"):
        check_config(CollectConfig(train=TrainConfig(mode="lora", lora_targets=("q", "qq"))))
    with pytest.raises(SystemExit) as e:  # on the command line, tyro refuses it while parsing
        cli(["--train.lora-targets", "qq"])
    assert e.value.code == 2


def test_out_must_be_a_directory_this_process_can_write(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli([*flags(afile)]) == 2
    assert capsys.readouterr().err == f"error: --out {afile}: is a file, not a directory\n"
    assert cli([*flags(afile / "run")]) == 2
    assert capsys.readouterr().err == (f"error: --out {afile}/run: {afile} is a file, so no directory can be created "
                                       "under it\n")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert cli([*flags(ro / "run")]) == 2
        assert capsys.readouterr().err == f"error: --out {ro}/run: {ro} is not writable (permission denied)\n"
    elif Path("/sys/kernel").is_dir():  # root writes past permission bits: a filesystem that refuses new entries
        out = Path("/sys/jaxforget-test-run")
        assert cli([*flags(out)]) == 2
        assert capsys.readouterr().err.startswith(f"error: {out}: cannot create the run directory's lock file")


def test_the_whole_config_is_checked_not_only_the_fields_collect_reads_first():
    bad = dataclasses.replace(CollectConfig(), log_every=0, train=TrainConfig(lr=float("nan")))
    with pytest.raises(ValueError, match=r"^--train.lr must be a finite number > 0; got nan; --log-every must be >= 1"):
        check_config(bad)


def test_length_defaults_follow_the_model(tmp_path, capsys):
    import json

    # the built-in world keeps its lengths and buckets: the default run's configuration (and Z) as before
    builtin = resolve_lengths(CollectConfig())
    assert (builtin.data.max_len, builtin.data.task_max_len) == (64, 96)
    assert (builtin.train.buckets, builtin.eval.buckets) == ((32, 48, 64, 96), (16, 32, 48, 64))
    assert resolve_lengths(builtin) is builtin
    # another length for the built-in model: buckets from the quantiles, not ones too short for it
    longer = resolve_lengths(CollectConfig(data=DataConfig(max_len=128)))
    assert (longer.data.max_len, longer.eval.buckets, longer.train.buckets) == (128, (), ())

    def model(context: int) -> CollectConfig:
        path = tmp_path / f"m{context}"
        path.mkdir(exist_ok=True)
        (path / "config.json").write_text(json.dumps(dict(
            architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=4, intermediate_size=128, vocab_size=256,
            max_position_embeddings=context)))
        return CollectConfig(model=ModelConfig(path=path))

    # --model.path: the paper's recipe (documents up to 2048 tokens, tasks 1024) within the model's context
    olmo = resolve_lengths(model(4096))
    assert (olmo.data.max_len, olmo.data.task_max_len, olmo.train.buckets, olmo.eval.buckets) == (2048, 1024, (), ())
    short = resolve_lengths(model(512))
    assert (short.data.max_len, short.data.task_max_len) == (512, 512)
    given = resolve_lengths(CollectConfig(model=short.model, data=DataConfig(max_len=64)))
    assert (given.data.max_len, given.data.task_max_len) == (64, 512)  # a given value is kept
    check_config(dataclasses.replace(model(1024), out=tmp_path / "run"))  # the resolved defaults pass the checks
    # and --help says so
    with pytest.raises(SystemExit):
        cli(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: 64 for the built-in base model; with --model.path, the model's context" in text
    assert "with --model.path, the paper's fine-tuning length 1024" in text
