import numpy as np
import pytest

from jaxforget.completion import additive, exact_additive, fit_table, r2
from surprise_oracle import predict_matrix, surprise, trainset


def _data(seed=0, M=12, N=40, p=0.6):
    rng = np.random.default_rng(seed)
    Z = 0.3 * rng.normal(size=(M, N)) + rng.normal(size=(M, 1)) + rng.normal(size=(1, N))
    return Z, rng.random((M, N)) < p


@pytest.mark.parametrize("n_epochs,reg_row,reg_col", [(10, 15.0, 10.0), (3, 2.0, 0.5)])
def test_als_matches_surprise_baseline_only(n_epochs, reg_row, reg_col):
    Z, mask = _data()
    algo = surprise.BaselineOnly(
        bsl_options=dict(method="als", n_epochs=n_epochs, reg_u=reg_row, reg_i=reg_col), verbose=False
    ).fit(trainset(Z, mask))
    fit = additive(Z, mask, reg_row=reg_row, reg_col=reg_col, n_epochs=n_epochs)
    np.testing.assert_allclose(np.asarray(fit.b_row), algo.bu, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fit.b_col), algo.bi, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fit.predict()), predict_matrix(algo, *Z.shape), atol=1e-6)


def test_gd_reaches_the_als_optimum():
    Z, mask = _data(1)
    als = additive(Z, mask, reg_row=2.0, reg_col=3.0, n_epochs=300)
    gd = additive(Z, mask, method="gd", reg_row=2.0, reg_col=3.0, n_epochs=3000, lr=0.02)
    np.testing.assert_allclose(np.asarray(gd.predict()), np.asarray(als.predict()), atol=2e-3)


def test_planted_additive_is_fitted():
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(20, 1)) + rng.normal(size=(1, 300)) + 0.01 * rng.normal(size=(20, 300))
    mask = rng.random(Z.shape) < 0.7
    fit = additive(Z, mask, reg_row=0.0, reg_col=0.0, n_epochs=100)
    assert float(r2(Z, fit.predict())) > 0.999  # hidden entries included
    table = fit_table(Z, reg_row=0.0, reg_col=0.0)  # the paper's ridge terms (15/10) shrink a 20-row fit
    assert table["additive"] > 0.999 and table["additive"] > table["row_mean"]


def test_fold_in_is_the_closed_form_row_update():
    Z, mask = _data(3)
    fit = additive(Z[:-1], mask[:-1], reg_row=4.0, reg_col=1.0, n_epochs=30)
    z, m = Z[-1], mask[-1]
    b = np.sum(m * (z - float(fit.mu) - np.asarray(fit.b_col))) / (4.0 + m.sum())
    np.testing.assert_allclose(np.asarray(fit.fold_in(z, m)), float(fit.mu) + b + np.asarray(fit.b_col), atol=1e-6)
    batch = np.asarray(fit.fold_in(Z[-3:], mask[-3:]))
    assert batch.shape == (3, Z.shape[1])
    np.testing.assert_allclose(batch[-1], np.asarray(fit.fold_in(z, m)), atol=1e-6)


def test_hidden_entries_never_influence_the_fit():
    Z, mask = _data(4)
    clean = np.asarray(additive(Z, mask).predict())
    for poison in (np.nan, 1e30, -np.inf):
        Zp = np.where(mask, Z, poison)
        np.testing.assert_array_equal(np.asarray(additive(Zp, mask).predict()), clean)


def test_bad_input_errors():
    Z, mask = _data(5)
    Zn = Z.copy()
    Zn[2, 3] = np.nan
    mask[2, 3] = True
    with pytest.raises(ValueError, match=r"Z\[2, 3\] is observed .* not finite"):
        additive(Zn, mask)
    m2 = mask.copy()
    m2[4] = False
    with pytest.raises(ValueError, match=r"without any observed entry \(rows 4\)"):
        additive(Z, m2)
    with pytest.raises(ValueError, match="does not match"):
        additive(Z, mask[:, :-1])
    with pytest.raises(ValueError, match="unknown additive method 'sgdx'"):
        additive(Z, mask, method="sgdx")
    with pytest.raises(ValueError, match="2-D"):
        additive(Z[0])


def _lstsq_additive(Z, mask):
    """Oracle: least squares over the design [1 | row one-hot | column one-hot] of the observed entries."""
    M, N = Z.shape
    i, j = np.nonzero(mask)
    X = np.zeros((i.size, 1 + M + N))
    X[:, 0] = 1
    X[np.arange(i.size), 1 + i] = 1
    X[np.arange(i.size), 1 + M + j] = 1
    coef = np.linalg.lstsq(X, Z[i, j].astype(np.float64), rcond=None)[0]
    return coef[0] + coef[1:1 + M][:, None] + coef[1 + M:][None, :]


@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_exact_additive_is_the_least_squares_fit(missing):
    rng = np.random.default_rng(3)
    Z = (rng.normal(size=(7, 1)) + rng.normal(size=(1, 40)) + 0.5 * rng.normal(size=(7, 40))).astype(np.float32)
    mask = rng.random(Z.shape) >= missing
    fit = exact_additive(Z, mask)
    expect = _lstsq_additive(Z, mask)
    np.testing.assert_allclose(np.asarray(fit.predict())[mask], expect[mask], atol=2e-5)
    # the best additive model: no ridge fit explains more; with few rows the paper's ridge explains less
    table = fit_table(np.where(mask, Z, np.nan), ranks=(1,))
    ridge = float(r2(Z, additive(Z, mask, n_epochs=100).predict(), mask))
    np.testing.assert_allclose(table["additive"], ridge, atol=1e-6)
    np.testing.assert_allclose(table["additive_exact"], float(r2(Z, expect.astype(np.float32), mask)), atol=1e-5)
    assert table["additive_exact"] > table["additive"] + 0.02


def test_exact_additive_with_a_disconnected_observed_pattern():
    # rows {0, 1} and {2, 3} share no observed column: offsets are not identified, fitted values are
    Z = np.arange(24, dtype=np.float32).reshape(4, 6) % 5
    mask = np.zeros_like(Z, bool)
    mask[:2, :3] = mask[2:, 3:] = True
    mask[0, 0] = False
    got = np.asarray(exact_additive(Z, mask).predict())
    np.testing.assert_allclose(got[mask], _lstsq_additive(Z, mask)[mask], atol=1e-4)
