#!/usr/bin/env bash
# The paper's forgetting-prediction benchmark on one matrix (reference split if the file has one).
# Usage: bash experiments/paper_prediction_protocol.sh MATRIX [extra predict flags...]
set -euo pipefail
matrix=${1:?usage: $0 MATRIX [flags...]}
shift
python -m jaxforget.predict --matrix "$matrix" \
  --reveal reference --k 30 --seeds 0 1 2 3 4 5 6 7 8 9 --clip \
  --methods additive knn_baseline:k=40,min_k=1,sim=msd mf:rank=5 \
  "$@"
