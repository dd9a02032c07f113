import jax
import numpy as np
import pytest
from jax import monitoring

from jaxforget.completion import (
    Method, additive, complete_rows, evaluate, fit_method, fit_svd_sgd, knn, low_rank, planted_matrix, reveal_mask,
    split_rows,
)


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
        ("svd:n_epochs=30", lambda Z, M, s: fit_svd_sgd(Z, M, n_epochs=30, seed=s)),
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
    with pytest.raises(ValueError, match="pass the integer seed"):
        reveal_mask(key, observed, 30, "reference")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_reference_reveal_is_the_reference_codes_numpy_draw(planted, seed):
    Z = planted.Z  # 120 columns, 2% NaN
    k, test_rows = 30, [1, 4, 9]
    res = evaluate(Z, test_rows=test_rows, methods=[], k=k, seeds=(seed,), reveal="reference")
    # the reference code: rng = np.random.default_rng(seed); rng.choice(np.arange(N), k), for every test row
    cols = np.random.default_rng(seed).choice(np.arange(Z.shape[1]), k)
    assert np.array_equal(cols, np.random.default_rng(seed).choice(Z.shape[1], k))
    expect = np.zeros(Z.shape[1], bool)
    expect[cols] = True
    observed = np.isfinite(Z[test_rows])
    np.testing.assert_array_equal(res.reveal[0], observed & expect[None])
    assert len(set(cols.tolist())) < k or seed != 0  # with replacement: seed 0 repeats a column
    np.testing.assert_array_equal(np.asarray(reveal_mask(seed, observed, k, "reference")), res.reveal[0])


def test_a_second_identical_complete_rows_call_does_not_recompile():
    Z = planted_matrix(12, 80, seed=1).Z  # a shape no other test compiles
    rev = np.zeros((2, Z.shape[1]), bool)
    rev[:, 10:40] = True
    traces = []
    monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: traces.append(name) if name == "/jax/core/compile/jaxpr_trace_duration" else None)
    for method in ("additive", "mf:rank=2", "knn_baseline", "soft_impute", "svd:n_epochs=5"):
        for mode in ("refit", "fold_in"):
            first = complete_rows(Z[2:], Z[:2], rev, method=method, seeds=[0, 1], mode=mode)
            n_first = len(traces)
            again = complete_rows(Z[2:], Z[:2], rev, method=method, seeds=[0, 1], mode=mode)
            assert n_first > 0 and len(traces) == n_first, f"{method}, {mode}: {len(traces) - n_first} new traces"
            np.testing.assert_array_equal(first, again)
    # a float option is an argument of the compiled program: another value does not recompile
    complete_rows(Z[2:], Z[:2], rev, method="mf:rank=2,reg=0.2", seeds=[0, 1])
    n = len(traces)
    complete_rows(Z[2:], Z[:2], rev, method="mf:rank=2,reg=0.7", seeds=[0, 1])
    assert len(traces) == n
    # a stream of rows folded into one kept fit: no refit, no recompilation
    fit = fit_method(Z[2:], "mf:rank=2")
    complete_rows(Z[2:], Z[:2], rev, method="mf:rank=2", mode="fold_in", fitted=fit)
    n = len(traces)
    out = complete_rows(Z[2:], Z[:2] + 1.0, rev, method="mf:rank=2", mode="fold_in", fitted=fit)
    assert len(traces) == n
    np.testing.assert_allclose(out, complete_rows(Z[2:], Z[:2] + 1.0, rev, method="mf:rank=2", mode="fold_in"),
                               atol=1e-6)
    with pytest.raises(ValueError, match="fitted= is a fit to fold rows into; it needs mode='fold_in'"):
        complete_rows(Z[2:], Z[:2], rev, method="mf:rank=2", fitted=fit)


def test_baselines_equal_hand_computations(planted):
    Z = planted.Z
    test_rows = [2, 5, 11]
    res = evaluate(Z, test_rows=test_rows, methods=["additive"], k=12, seeds=(0, 3), top_n=5)
    train = Z[res.train_rows]
    mu = np.nanmean(train)
    col = np.nanmean(train, axis=0)
    zt = Z[test_rows]
    for s_i in range(2):
        rev, hid = res.reveal[s_i], res.hidden[s_i]
        row = np.array([zt[t][rev[t]].mean() for t in range(3)])
        truth = zt[hid]
        preds = dict(zero=np.zeros_like(zt), train_mean=np.full_like(zt, mu), revealed_mean=np.repeat(row[:, None],
                     zt.shape[1], 1), column_mean=np.broadcast_to(col, zt.shape))
        for name, p in preds.items():
            np.testing.assert_allclose(res.baseline_predictions[name][s_i][hid], p[hid], rtol=1e-5, atol=1e-7)
            rmse = np.sqrt(np.mean((p[hid] - truth) ** 2))
            np.testing.assert_allclose(res.baselines[name]["rmse"][s_i], rmse, rtol=1e-5)
        pos = np.mean(truth > 0)
        np.testing.assert_allclose(res.baselines["all_positive"]["f1"][s_i], 2 * pos / (1 + pos), rtol=1e-6)
        np.testing.assert_allclose(res.baselines["all_positive"]["recall"][s_i], 1.0)
        assert np.isnan(res.baselines["all_positive"]["rmse"][s_i])
        np.testing.assert_allclose(res.baselines["zero"]["auc"][s_i], 0.5, atol=1e-6)
        np.testing.assert_allclose(res.baselines["zero"]["f1"][s_i], 0.0)
        # a constant ranks nothing: precision@5 is the chance level 5 / (hidden entries of the row)
        np.testing.assert_allclose(res.baselines["train_mean"]["precision@5"][s_i], np.mean(5 / hid.sum(axis=1)),
                                   rtol=1e-6)
    # gains: paired per seed against the best baseline of each metric (positive = better)
    best = res.best_baselines()
    rm = {b: res.baselines[b]["rmse"].mean() for b in ("zero", "train_mean", "revealed_mean", "column_mean")}
    assert best["rmse"] == min(rm, key=rm.get)
    gains = res.gains()["additive"]
    np.testing.assert_allclose(gains["rmse"], res.baselines[best["rmse"]]["rmse"] - res.metrics["additive"]["rmse"])
    np.testing.assert_allclose(gains["auc"], res.metrics["additive"]["auc"] - res.baselines[best["auc"]]["auc"])
    table = res.table()
    assert "| all_positive (baseline) | — |" in table
    assert f"({gains['rmse'].mean():+.4f})" in table.split("| additive |")[1].split("|")[0]


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
