#!/usr/bin/env bash
# Forecast on the built-in world: collect the 16 train tasks of the default split (predict's and
# replay's --split 0.25, seed 0), then forecast each of the 5 held-out tasks from k = 30 measured
# upstream examples (3 seeds) and score the forecast against the measured row (--measure-all).
# About 5 minutes on a 2-core CPU with the base model cached.
set -euo pipefail
out=${1:-runs/forecast16}
train="arith_chain arith_reversed atlas_counterfactual code_arrow code_output compare_numbers count_items country_qa
       diary inverse_qa person_qa reverse_letters sentiment shout_reply spell table_lookup"
python -m jaxforget.collect --out "$out" --data.task-names $train --quiet
for task in arith_words capital_list dialogue_reply shift_cipher sort_words; do
  python -m jaxforget.forecast "$out" --task "$task" --k 30 --seeds 0 1 2 --measure-all --quiet
done
python - "$out" <<'PY'
import json, sys, pathlib
import numpy as np
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1], "forecast").glob("*/measured/summary.json"))]
labels = list(rows[0]["scores"])
print(f"{len(rows)} held-out tasks x {len(rows[0]['seeds'])} seeds, k = {rows[0]['k']} of {rows[0]['n_upstream']}")
print("| predictor | RMSE | AUC | precision@100 |\n|---|---|---|---|")
for label in labels:
    cells = [np.mean([r["scores"][label][m]["mean"] for r in rows]) for m in ("rmse", "auc", "precision@100")]
    print(f"| {label} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
PY
