"""The ``svd`` method is surprise's SVD (the reference code's predictor), update for update."""

import numpy as np
import pytest

from jaxforget.completion import Method, evaluate, fit_svd_sgd, planted_matrix
from jaxforget.completion.sgd_mf import sgd_from
from surprise_oracle import predict_matrix, surprise, trainset

REFERENCE = dict(n_factors=5, n_epochs=1000, lr_all=0.005, reg_all=0.0, init_std_dev=0.001)


def _protocol_problem(seed=0):
    """Train rows fully measured plus one test row with k revealed entries, as the protocol builds it."""
    Z = planted_matrix(9, 60, seed=seed).Z
    mask = np.ones_like(Z, bool)
    mask[-1] = False
    mask[-1, np.random.default_rng(seed).choice(60, 10, replace=False)] = True
    return Z, mask


@pytest.mark.parametrize("options", [REFERENCE, dict(n_factors=3, n_epochs=200, lr_all=0.01, reg_all=0.05,
                                                     init_std_dev=0.1)])
def test_sgd_equals_surprise_svd_from_the_same_initial_factors(options):
    Z, mask = _protocol_problem()
    algo = surprise.SVD(random_state=4, **options).fit(trainset(Z, mask))
    # surprise draws P then Q from np.random.RandomState(random_state)
    rng = np.random.RandomState(4)
    k, std = options["n_factors"], options["init_std_dev"]
    P0, Q0 = rng.normal(0, std, (Z.shape[0], k)), rng.normal(0, std, (Z.shape[1], k))
    fit = sgd_from(Z, mask, P0, Q0, n_epochs=options["n_epochs"], lr=options["lr_all"], reg=options["reg_all"])
    np.testing.assert_allclose(np.asarray(fit.b_row), algo.bu, atol=2e-5)
    np.testing.assert_allclose(np.asarray(fit.b_col), algo.bi, atol=2e-5)
    np.testing.assert_allclose(np.asarray(fit.P), algo.pu, atol=5e-5)
    ref = predict_matrix(algo, *Z.shape)
    np.testing.assert_allclose(np.asarray(fit.predict()), ref, atol=2e-5)  # float32 vs surprise's float64
    hidden = ~mask[-1]
    assert np.abs(ref[-1, hidden]).max() > 0.1  # the compared predictions are not trivially 0


def test_svd_method_is_seeded_and_uses_the_reference_settings():
    m = Method("svd")
    assert {k: m.resolved[k] for k in ("rank", "n_epochs", "lr", "reg", "init_std")} == dict(
        rank=5, n_epochs=1000, lr=0.005, reg=0.0, init_std=0.001)
    Z, mask = _protocol_problem(1)
    a = np.asarray(fit_svd_sgd(Z, mask, n_epochs=50, seed=3).predict())
    np.testing.assert_array_equal(a, np.asarray(fit_svd_sgd(Z, mask, n_epochs=50, seed=3).predict()))
    assert np.abs(a - np.asarray(fit_svd_sgd(Z, mask, n_epochs=50, seed=4).predict())).max() > 1e-6


def test_svd_in_the_protocol_matches_surprise_on_the_reference_reveal():
    """One reference-protocol problem end to end: our reveal is the reference draw, and surprise's
    SVD started from our initial factors predicts the hidden entries as ``svd`` does."""
    Z = planted_matrix(10, 50, seed=2).Z
    res = evaluate(Z, test_rows=[9], methods=["svd:n_epochs=300"], k=8, seeds=(5,), reveal="reference")
    rev = res.reveal[0, 0]
    mask = np.ones_like(Z, bool)
    mask[9] = rev
    import jax

    kp, kq = jax.random.split(jax.random.key(5))
    P0 = 0.001 * np.asarray(jax.random.normal(kp, (10, 5)))
    Q0 = 0.001 * np.asarray(jax.random.normal(kq, (50, 5)))

    class Seeded(np.random.RandomState):  # hands surprise our initial factors, in its draw order
        def __init__(self):
            super().__init__(0)
            self.draws = [P0, Q0]

        def normal(self, *args, **kwargs):
            return self.draws.pop(0).astype(np.float64)

    algo = surprise.SVD(n_factors=5, n_epochs=300, lr_all=0.005, reg_all=0.0, init_std_dev=0.001,
                        random_state=Seeded()).fit(trainset(Z, mask))
    ref = np.array([algo.predict(9, j, clip=False).est for j in range(50)])
    hidden = res.hidden[0, 0]
    np.testing.assert_allclose(res.predictions["svd:n_epochs=300"][0, 0][hidden], ref[hidden], atol=2e-5)
