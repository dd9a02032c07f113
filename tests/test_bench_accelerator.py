"""scripts/bench_accelerator.py runs end to end on a CPU with --tiny shapes (what it does unchanged on a GPU)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_accelerator.py"


@pytest.mark.slow
def test_bench_accelerator_tiny(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_accelerator", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_accelerator", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = bench.main(bench.BenchConfig(tiny=True, iters=1, k=2, lora_batch=2, eval_batch=4, batch=2, length=32,
                                       peak_tflops=1.0))
    for key in ("train_tokens_per_s", "eval_tokens_per_s", "lora_stacked_tokens_per_s", "lora_sequential_tokens_per_s"):
        assert out[key] > 0 and math.isfinite(out[key]), key
    # MFU is model FLOPs / time / peak: consistent with the printed tokens/s
    flops = bench.model_flops(bench.TINY, 2 * 32, 32, "full")
    assert out["train_mfu"] == pytest.approx(flops * out["train_tokens_per_s"] / (2 * 32) / 1e12)
    assert "stacked" in capsys.readouterr().out
