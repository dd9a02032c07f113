import numpy as np
import pytest

from jaxforget.completion import (
    Method, additive, evaluate, knn, logistic_mf, low_rank, planted_matrix, reveal_mask, split_rows,
)
import jax


@pytest.fixture(scope="module")
def planted():
    return planted_matrix(14, 120, seed=0, nan_fraction=0.02)


def _stack(Z, train, t, rev):
    Zp = np.concatenate([Z[train], Z[t][None]])
    Mp = np.concatenate([np.isfinite(Z[train]), rev[None]])
    return Zp, Mp


@pytest.mark.parametrize(
    "method,fit",
    [
        ("additive", lambda Z, M, s: additive(Z, M, reg_row=1.0, reg_col=1.0, n_epochs=50)),
        ("knn_baseline:k=5", lambda Z, M, s: knn(Z, M, k=5, rule="baseline", baseline_reg_row=1.0,
                                                  baseline_reg_col=1.0, baseline_epochs=50)),
        ("mf:rank=2,n_iters=20", lambda Z, M, s: low_rank(Z, M, rank=2, n_iters=20, seed=s)),
    ],
)
def test_vmapped_protocol_equals_a_loop_of_single_fits(planted, method, fit):
    Z = planted.Z
    test_rows = [3, 7, 11]
    res = evaluate(Z, test_rows=test_rows, methods=[method], k=10, seeds=(0, 5))
    pred = res.predictions[Method.parse(method).label]
    assert pred.shape == (2, 3, Z.shape[1])
    for s_i, seed in enumerate((0, 5)):
        for t_i, t in enumerate(test_rows):
            Zp, Mp = _stack(Z, res.train_rows, t, res.reveal[s_i, t_i])
            expect = np.asarray(fit(Zp, Mp, seed).predict_row(-1))
            np.testing.assert_allclose(pred[s_i, t_i], expect, atol=2e-5)


def test_chunked_solve_equals_all_at_once(planted):
    kw = dict(test_rows=[0, 1, 2, 3], methods=["mf:rank=2,n_iters=10"], k=10, seeds=(1, 2))
    a = evaluate(planted.Z, **kw).predictions
    b = evaluate(planted.Z, batch_size=3, **kw).predictions
    np.testing.assert_allclose(a["mf:n_iters=10,rank=2"], b["mf:n_iters=10,rank=2"], atol=1e-5)


def test_metrics_only_use_hidden_entries_and_poison_changes_nothing(planted):
    Z = planted.Z.copy()
    kw = dict(test_rows=[2, 9], methods=["additive", "knn_baseline"], k=15, seeds=(0, 1))
    clean = evaluate(Z, **kw)
    mask = np.isfinite(Z)
    for poison in (np.nan, 1e30):
        res = evaluate(np.where(mask, Z, poison), mask, **kw)
        for m in clean.methods:
            np.testing.assert_array_equal(res.predictions[m], clean.predictions[m])
            np.testing.assert_array_equal(res.metrics[m]["rmse"], clean.metrics[m]["rmse"])
    # rmse is over hidden (not revealed, measured) entries only
    hidden = mask[[2, 9]][None] & ~clean.reveal
    err = clean.predictions["additive"] - Z[[2, 9]][None]
    expect = [np.sqrt(np.mean(err[s][hidden[s]] ** 2)) for s in range(2)]
    np.testing.assert_allclose(clean.metrics["additive"]["rmse"], expect, rtol=1e-5)


def test_reveal_schemes():
    key = jax.random.key(0)
    observed = np.ones((4, 50), bool)
    observed[1, :20] = False
    r = np.asarray(reveal_mask(key, observed, 7))
    assert r.sum(axis=1).tolist() == [7, 7, 7, 7] and not (r & ~observed).any()
    assert len({tuple(np.flatnonzero(row)) for row in r}) > 1  # independent per row
    ref = np.asarray(reveal_mask(key, observed, 30, "reference"))
    assert (ref[0] == ref[2]).all() and ref[0].sum() <= 30 and not (ref & ~observed).any()


def test_fold_in_mode_folds_rows_into_one_fit(planted):
    Z = planted.Z
    res = evaluate(Z, test_rows=[4, 5], methods=["additive"], k=12, seeds=(3,), mode="fold_in")
    fit = additive(Z[res.train_rows], reg_row=1.0, reg_col=1.0, n_epochs=50)
    expect = np.asarray(fit.fold_in(Z[[4, 5]], res.reveal[0]))
    np.testing.assert_allclose(res.predictions["additive"][0], expect, atol=1e-5)


def test_binary_protocol_with_logistic_methods():
    rng = np.random.default_rng(0)
    logits = 3 * rng.normal(size=(20, 2)) @ rng.normal(size=(2, 150))
    Y = (logits > 0).astype(np.float32)
    res = evaluate(Y, test_rows=[0, 1, 2], methods=["logistic_mf:rank=2,optimizer=adam,lr=0.05,n_iters=300",
                                                    "logistic_additive:n_iters=500,optimizer=adam,lr=0.05"],
                   k=30, seeds=(0,), binary=True)
    summary = res.summary()
    mf = summary["logistic_mf:lr=0.05,n_iters=300,optimizer=adam,rank=2"]
    assert mf["auc"][0] > 0.85
    assert all(0 <= p <= 1 for p in res.predictions[res.methods[0]].ravel()[:100])


def test_protocol_bad_input(planted):
    Z = planted.Z
    with pytest.raises(ValueError, match="k=500 revealed entries per test row, but the matrix has 120 columns"):
        evaluate(Z, test_rows=[0], k=500)
    with pytest.raises(ValueError, match="unknown method 'svdpp'"):
        evaluate(Z, test_rows=[0], methods=["svdpp"])
    with pytest.raises(ValueError, match="unknown option.*'rnk' for method 'mf'"):
        evaluate(Z, test_rows=[0], methods=["mf:rnk=3"])
    with pytest.raises(ValueError, match="not of the form name=value"):
        Method.parse("mf:rank")
    with pytest.raises(ValueError, match="out of range"):
        evaluate(Z, test_rows=[14])
    with pytest.raises(ValueError, match="for binary matrices"):
        evaluate(Z, test_rows=[0], methods=["logistic_mf"])
    with pytest.raises(ValueError, match="unknown reveal scheme"):
        evaluate(Z, test_rows=[0], reveal="sometimes")
    with pytest.raises(ValueError, match="have no more than k observed"):
        evaluate(Z, test_rows=[0], k=119)


def test_split_rows_is_seeded():
    train, test = split_rows(20, 0.25, seed=1)
    assert len(test) == 5 and sorted(train + test) == list(range(20))
    assert split_rows(20, 0.25, seed=1) == (train, test) and split_rows(20, 0.25, seed=2) != (train, test)
