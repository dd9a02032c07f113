#!/usr/bin/env bash
# The decisive replay study on the 85-task world (collect it first: bash experiments/world85_collect.sh RUN).
# Pre-registered: its question, arms, unit, test and decision rule are written in README.md ("The decisive
# replay study") before it was run; the report applies them (python -m jaxforget.replay: the task is the
# unit, one paired t-test per contrast, Holm across the report's contrasts, TOST at ±3%).
#
# Every task of the run is a replay task, once (seed 0): the 85 rows are dealt into 5 seeded folds and a
# task's predicted row is completed from the 68 rows outside its fold (--folds 5, cross-fitting). Ratio
# 1/32, k = 30, budgets in loss tokens (every arm of a task replays the same tokens), common random
# numbers (every arm of a task shares the Gumbel noise and the batch order), forgetting measured on the
# 5,000 held-out upstream examples only (--measure heldout). Arms: random; offline:mf and the oracle (the
# positive control: the task's true row) at two sharpness levels, an effective sample size of 5% and 25%
# of the 5,000-example pool (@ess=F: τ chosen per draw). 425 fine-tunings, as two processes (one per core
# of a 2-core machine) over the two halves of the tasks; the report is built from all results at the end.
# Usage: bash experiments/world85_decisive.sh [RUN] [extra replay flags]
set -euo pipefail
run=${1:-runs/world85}
shift || true
extra=("$@")
out="$run/decisive"
strategies=(random oracle@ess=0.05 oracle@ess=0.25 offline:mf@ess=0.05 offline:mf@ess=0.25)
mapfile -t tasks < <(python -c "import json,sys; print('\n'.join(json.load(open(sys.argv[1]))['task_names']))" \
                     "$run/meta.json")
half=$(( (${#tasks[@]} + 1) / 2 ))

study() {  # study OUT TASK...
  python -m jaxforget.replay "$run" --out "$1" --tasks "${@:2}" --folds 5 --split-seed 0 --seeds 0 \
    --ratio 0.03125 --k 30 --heldout-fraction 0.5 --heldout-seed 0 --measure heldout --budget tokens \
    --strategies "${strategies[@]}" "${extra[@]}"
}

study "$out.part0" "${tasks[@]:0:half}" --quiet > "$out.part0.log" 2>&1 &
first=$!
study "$out.part1" "${tasks[@]:half}" --quiet > "$out.part1.log" 2>&1
wait "$first"
mkdir -p "$out/results"
cp -n "$out".part0/results/*.npz "$out".part1/results/*.npz "$out/results/"
study "$out" "${tasks[@]}"  # every fine-tuning is on disk: the report over all 85 tasks
