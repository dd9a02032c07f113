#!/usr/bin/env bash
# The paper's forgetting-prediction benchmark on one matrix (reference split if the file has one), as
# the reference code runs it: its reveal (numpy default_rng(seed).choice(N, k), shared by the test rows),
# 10 seeds, k = 30, no clipping (its rating scale is ±100), KNNBaseline k=40/min_k=1/msd, and svd =
# surprise's SVD (5 factors, 1,000 epochs, lr 0.005, no regularisation, init std 0.001). additive and the
# KNN baselines are ALS here (the reference: SGD); mf (rank-5 ALS) is a different, stronger estimator
# shown beside svd. The baselines are always in the table.
# Usage: bash experiments/paper_prediction_protocol.sh MATRIX [extra predict flags...]
set -euo pipefail
matrix=${1:?usage: $0 MATRIX [flags...]}
shift
python -m jaxforget.predict --matrix "$matrix" \
  --reveal reference --k 30 --seeds 0 1 2 3 4 5 6 7 8 9 \
  --methods additive knn_baseline:k=40,min_k=1,sim=msd svd mf:rank=5 \
  "$@"
