#!/usr/bin/env bash
# The built-in world at the paper's shape: 85 tasks (the 21 hand-written tasks and 64 further members of
# their families, --world.n-tasks) x 10,000 upstream examples, full fine-tuning with the default recipe.
# Family members' prompts are longer (templates, wider tables, answers in capitals): task length 128.
set -euo pipefail
python -m jaxforget.collect --out "${1:-runs/world85}" --world.n-tasks 85 --data.n-upstream 10000 \
  --data.task-max-len 128 --train.buckets 48 64 96 128 "${@:2}"
