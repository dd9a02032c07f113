#!/usr/bin/env bash
# The replay study on the 85-task world (collect it first: bash experiments/world85_collect.sh).
# 10 test tasks drawn as the paper draws its test tasks (a seeded random split of the run's tasks:
# --test-fraction 0.12, --split-seed 0; the other 75 rows train the completion), 5 seeds, ratios 1/32
# and 1/8, k = 30, tau = 0.1; the paper's softmax rule and the two diversity rules (@zsoftmax: tau
# relative to the row's spread; @stratified: the pool's domain mix, the score chooses within a
# domain). Forgetting is measured on the 5,000 held-out upstream examples, never replayed
# (--measure heldout: the 5,000 candidates are not re-measured). The two ratios run as two processes
# (one per core of a 2-core machine); no replay does not depend on the ratio, so it is fine-tuned once.
# Usage: bash experiments/world85_replay.sh [RUN] [extra replay flags]
set -euo pipefail
run=${1:-runs/world85}
shift || true
extra=("$@")
strategies=(none random oracle offline:mf offline:mf@zsoftmax offline:mf@stratified online:mf)

study() {  # study RATIO STRATEGY...
  python -m jaxforget.replay "$run" --out "$run/replay_ratio$1" --ratio "$1" --strategies "${@:2}" \
    --test-fraction 0.12 --split-seed 0 --seeds 0 1 2 3 4 --k 30 --temperature 0.1 \
    --heldout-fraction 0.5 --online-fraction 0.1 --measure heldout "${extra[@]}"
}

study 0.03125 "${strategies[@]}" &
first=$!
study 0.125 "${strategies[@]:1}" --quiet > "$run/replay_ratio0.125.log" 2>&1  # everything but none
wait "$first"
cp -n "$run"/replay_ratio0.03125/results/*.none.npz "$run/replay_ratio0.125/results/"
study 0.125 "${strategies[@]}"  # every fine-tuning is on disk now: the report with no replay
