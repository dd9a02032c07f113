#!/usr/bin/env bash
# How far the default run's figures (docs/collect.md) move across CPU vector ISAs. XLA's CPU kernels round
# differently on AVX2 and AVX-512, so another machine pretrains a slightly different base model and
# gets a different Z. This runs the default pipeline from an empty cache (world, base model, collect,
# predict) once with the machine's best ISA and once with XLA_FLAGS=--xla_cpu_max_isa=AVX2 (what an
# AVX2-only CPU does), each in its own cache, and prints both sets of figures and their difference.
# Measured on the development machine (AVX-512): identical to the bit, i.e. the flag does not reach
# the kernels whose rounding differs between real CPUs (see docs/collect.md, "What is deterministic").
#   bash scripts/isa_spread.sh [WORK_DIR]        # about 6 minutes on a 2-core CPU
set -euo pipefail
work=${1:-runs/isa_spread}
mkdir -p "$work"
for isa in native AVX2; do
  if [ "$isa" = native ]; then unset XLA_FLAGS; else export XLA_FLAGS=--xla_cpu_max_isa=$isa; fi
  if [ ! -f "$work/run_$isa/forgetting.npz" ]; then  # a finished run of an earlier call is kept
    rm -rf "$work/cache_$isa" "$work/run_$isa"
    JAXFORGET_CACHE="$work/cache_$isa" python -m jaxforget.collect --out "$work/run_$isa" --quiet > "$work/collect_$isa.log"
  fi
  python -m jaxforget.predict --matrix "$work/run_$isa" --methods additive knn_baseline mf > "$work/predict_$isa.log" 2>&1
done
unset XLA_FLAGS
python - "$work" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from jaxforget.completion import fit_table
work = Path(sys.argv[1])
runs = {}
for isa in ("native", "AVX2"):
    f = np.load(work / f"run_{isa}" / "forgetting.npz")
    Z, names = f["Z"], [str(x) for x in f["task_names"]]
    row = Z.mean(1)
    pred = json.loads((work / f"run_{isa}" / "predict" / "additive+knn_baseline+mf.json").read_text())
    runs[isa] = (Z, names, row, fit_table(Z), pred)
    print(f"{isa:>6}: Z mean {Z.mean():.4f} std {Z.std():.4f} positive {np.mean(Z > 0):.1%}; "
          f"arith_chain {row[names.index('arith_chain')]:+.3f}; most {[names[i] for i in np.argsort(-row)[:3]]}, "
          f"least {[names[i] for i in np.argsort(row)[:3]]}")
    print("        R^2 " + "  ".join(f"{k} {v:.3f}" for k, v in runs[isa][3].items()))
    scores = {**pred["baselines"]["summary"], **pred["summary"]}
    print("        predict " + "  ".join(f"{m}: rmse {scores[m]['rmse']['mean']:.4f} auc {scores[m]['auc']['mean']:.3f}"
                                     for m in ("revealed_mean", "column_mean", "additive", "knn_baseline", "mf")))
(Za, *_), (Zb, *_) = runs["native"], runs["AVX2"]
print(f"max |Z_native - Z_AVX2| {np.abs(Za - Zb).max():.4f}; mean |diff| {np.abs(Za - Zb).mean():.4f}; "
      f"corr {np.corrcoef(Za.ravel(), Zb.ravel())[0, 1]:.4f}")
PY
