#!/usr/bin/env bash
# The built-in world with LoRA adapters (the paper's v1 protocol: r=64, alpha=16), 8 tasks trained
# together per step, forgetting also measured every 50 steps (the M x T x N tensor).
set -euo pipefail
python -m jaxforget.collect --out "${1:-runs/builtin_lora}" \
  --train.mode lora --train.lora-rank 64 --train.lora-alpha 16 --train.lr 1e-3 \
  --tasks-per-step 8 --eval.eval-every 50 "${@:2}"
