#!/usr/bin/env bash
# The paper's replay experiment on a collected run: for the held-out tasks, fine-tune once per strategy
# (no replay, random, oracle, offline additive / KNN / MF from k = 30 measured entries, online MF after
# 10% of the steps), 1 replayed upstream example per 32 task examples (use --ratio 0.125 for
# instruction-tuned models), drawn without replacement with probability softmax(score / 0.1), plain LM
# loss on them; forgetting measured on half of the run's upstream examples, never replayed (the paper:
# 10,000 -- collect the run with --data.n-upstream 20000). The paper matched the arms in examples
# (--budget examples; jaxforget's default matches them in loss tokens) and drew each arm's randomness
# apart (jaxforget's arms always share one random stream: common random numbers).
# Usage: bash experiments/paper_replay.sh RUN [extra replay flags, e.g. --tasks a b c]
set -euo pipefail
run=${1:?usage: $0 RUN [flags...]}
shift
python -m jaxforget.replay "$run" \
  --ratio 0.03125 --temperature 0.1 --budget examples --k 30 --heldout-fraction 0.5 --online-fraction 0.1 \
  --strategies none random oracle offline:additive offline:knn_baseline offline:mf online:mf \
  --seeds 0 1 2 \
  "$@"
