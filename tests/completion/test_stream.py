import numpy as np
import pytest

from jaxforget.completion import Completer, additive, complete_rows, planted_matrix
from jaxforget.completion.stream import FOLD_IN_TOLERANCE


@pytest.fixture(scope="module")
def stream():
    Z = planted_matrix(45, 300, seed=0).Z
    rng = np.random.default_rng(0)
    revealed = np.zeros((5, 300), bool)
    for t in range(5):
        revealed[t, rng.choice(300, 30, replace=False)] = True  # each row its own revealed entries
    return Z[:40], Z[40:], revealed


@pytest.mark.parametrize("method", sorted(FOLD_IN_TOLERANCE))
def test_fold_in_of_a_stream_equals_refit_within_the_stated_tolerance(stream, method):
    train, rows, revealed = stream
    c = Completer(train, method=method)
    folded = np.stack([c.fold_in(rows[t], revealed[t]) for t in range(len(rows))])  # one row at a time
    refit = complete_rows(train, rows, revealed, method=method)  # fit train + each row, predict it
    rms = np.sqrt(np.mean((folded - refit) ** 2, axis=1))
    assert rms.max() <= FOLD_IN_TOLERANCE[method], (method, rms)
    # and the kept fit is the protocol's fold-in: all rows at once give the same predictions
    np.testing.assert_allclose(c.fold_in(rows, revealed), folded, atol=1e-6)
    np.testing.assert_allclose(folded, complete_rows(train, rows, revealed, method=method, mode="fold_in"), atol=1e-6)


def test_append_warm_starts_and_reaches_the_cold_fit():
    Z = planted_matrix(45, 300, seed=1, nan_fraction=0.05).Z
    mask = np.isfinite(Z)
    c = Completer(Z[:40], method="additive")
    c.append(Z[40:43])
    c.append(Z[43:], mask[43:])
    assert c.shape == (45, 300) and c.warm_starts == 2
    np.testing.assert_array_equal(np.isnan(c.Z), ~mask)
    # additive ALS is convex: the warm-started refit is the cold fit of the grown matrix
    cold = additive(Z, reg_row=1.0, reg_col=1.0, n_epochs=50).predict()
    np.testing.assert_allclose(c.predict(), np.asarray(cold), atol=2e-6)
    # low-rank ALS starts from the previous column factors and fits the grown matrix as well as a cold start
    mf = Completer(Z[:40], method="mf")
    mf.append(Z[40:])
    cold = Completer(Z, method="mf").predict()
    train_rmse = [np.sqrt(np.mean((p - Z)[mask] ** 2)) for p in (mf.predict(), cold)]
    assert mf.warm_starts == 1 and train_rmse[0] <= train_rmse[1] * 1.01, train_rmse
    # methods without a warm start refit from scratch
    knn = Completer(Z[:40], method="knn_baseline")
    knn.append(Z[40:])
    assert knn.warm_starts == 0
    np.testing.assert_allclose(knn.predict(), Completer(Z, method="knn_baseline").predict(), atol=1e-6)


def test_completer_bad_input():
    Z = planted_matrix(10, 50, seed=2).Z
    c = Completer(Z, method="additive")
    with pytest.raises(ValueError, match=r"append: rows of shape \(1, 49\); the matrix has 50 columns"):
        c.append(Z[0, :49])
    with pytest.raises(ValueError, match="row\\(s\\) without any observed entry"):
        c.append(np.full((1, 50), np.nan))
    with pytest.raises(ValueError, match="have no revealed entry"):
        c.fold_in(Z[0], np.zeros(50, bool))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        Completer(Z, method="nope")
