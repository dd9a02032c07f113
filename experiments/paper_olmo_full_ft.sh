#!/usr/bin/env bash
# The paper's final-version fine-tuning protocol (full fine-tuning of an OLMo-style base model on each
# task): 1,000 steps capped at 3 epochs, lr 2e-6, batch 8, 10 warm-up steps then linear decay,
# grad-norm clip 1.0, max length 1,024 with left truncation (the task reader keeps the answer end),
# loss on answer tokens only. bfloat16 compute, data-parallel over every local device.
# Usage: bash experiments/paper_olmo_full_ft.sh HF_MODEL_DIR UPSTREAM.jsonl TASKS_DIR OUT [extra flags...]
set -euo pipefail
model=${1:?usage: $0 HF_MODEL_DIR UPSTREAM.jsonl TASKS_DIR OUT [flags...]}
upstream=${2:?}; tasks=${3:?}; out=${4:?}
shift 4
python -m jaxforget.collect --out "$out" \
  --model.path "$model" --model.dtype bfloat16 \
  --data.upstream "$upstream" --data.tasks "$tasks" --data.n-upstream 10000 \
  --data.max-len 1024 --data.task-max-len 1024 --eval.buckets 128 256 512 1024 \
  --train.mode full --train.lr 2e-6 --train.batch-size 8 --train.warmup-steps 10 \
  --train.max-steps 1000 --train.max-epochs 3 --train.clip-norm 1.0 \
  --train.buckets 128 256 512 1024 --train.checkpoint-every 200 \
  "$@"
