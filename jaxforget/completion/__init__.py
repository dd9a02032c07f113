"""Pure-JAX fitting and completion of forgetting matrices (imports jax, optax and numpy only).

Every solver takes ``Z: float[M, N]`` and ``mask: bool[M, N]`` (True = observed; default: the finite
entries), never lets a hidden entry influence the fit, and returns a small result object whose
``predict()`` gives the full ``[M, N]`` prediction, ``predict_row(i)`` one row and
``fold_in(z, mask)`` the prediction for a new row without refitting. The ``fit_*`` functions are
the jitted, validation-free cores (vmappable over problems); the short names validate first.

>>> from jaxforget import completion as C
>>> fit = C.additive(Z, mask)                 # mu + b_row[i] + b_col[j]
>>> fit = C.multiplicative(Z)                 # alpha[i] * beta[j]
>>> fit = C.low_rank(Z, mask, rank=5)         # biased masked MF (ALS)
>>> fit = C.knn(Z, mask, sim="msd", rule="baseline")
>>> C.fit_table(Z)                            # R^2 of row/col mean, additive (ridge, exact), rank 1..5
>>> res = C.evaluate(Z, test_rows=range(66, 85), methods=["additive", "knn_baseline", "mf"])
>>> print(res.table())                        # with the trivial baselines and each method's gain
>>> c = C.Completer(Z, method="mf")           # fit once; c.fold_in(rows, revealed); c.append(rows)
"""

from jaxforget.completion.additive import (
    AdditiveFit,
    additive,
    col_mean_fit,
    exact_additive,
    fit_additive,
    row_mean_fit,
)
from jaxforget.completion.baselines import BASELINES, baseline_predictions
from jaxforget.completion._common import check_options, mm, prepare
from jaxforget.completion.goodness import LOW_RANK_ITERS, LOW_RANK_REG, fit_table, rank_fit, sampled_rank_r2
from jaxforget.completion.knn import KNNFit, fit_knn, knn, similarity
from jaxforget.completion.logistic import fit_logistic_mf, logistic_mf
from jaxforget.completion.low_rank import (
    LowRankFit,
    fit_low_rank,
    fit_soft_impute,
    fit_truncated_svd,
    low_rank,
    multiplicative,
    soft_impute,
    truncated_svd,
)
from jaxforget.completion.metrics import all_metrics, classification, precision_at_n, r2, rmse, roc_auc
from jaxforget.completion.protocol import (
    METHODS,
    Method,
    ProtocolResult,
    complete_rows,
    evaluate,
    fit_method,
    reference_reveal,
    reveal_mask,
    split_rows,
)
from jaxforget.completion.sgd_mf import fit_svd_sgd
from jaxforget.completion.stream import Completer
from jaxforget.completion.synthetic import Planted, planted_matrix

__all__ = [
    "BASELINES", "LOW_RANK_ITERS", "LOW_RANK_REG",
    "AdditiveFit", "Completer", "KNNFit", "LowRankFit", "METHODS", "Method", "Planted", "ProtocolResult",
    "additive", "all_metrics", "baseline_predictions", "classification", "col_mean_fit", "complete_rows", "evaluate",
    "exact_additive", "fit_additive", "fit_knn", "fit_logistic_mf", "fit_low_rank", "fit_method", "fit_soft_impute",
    "fit_svd_sgd", "fit_table", "sampled_rank_r2", "fit_truncated_svd", "knn", "logistic_mf", "low_rank", "multiplicative",
    "planted_matrix", "precision_at_n", "r2", "reference_reveal", "reveal_mask", "check_options", "mm", "prepare",
    "rank_fit", "rmse",
    "roc_auc", "row_mean_fit", "similarity", "soft_impute", "split_rows", "truncated_svd",
]
