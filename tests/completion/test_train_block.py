"""The train-block solvers against the joint refit they replace (itself tested against single fits and
scikit-surprise in test_protocol.py / test_knn.py), and the memory-sized batching of the protocol."""

import numpy as np
import pytest

from jaxforget.completion import Method, complete_rows, evaluate, planted_matrix


@pytest.fixture(scope="module")
def planted():
    # train rows fully measured (the train-block case), a few test-row entries not measured
    P = planted_matrix(16, 150, seed=3)
    Z = P.Z.copy()
    rng = np.random.default_rng(0)
    Z[12:][rng.random((4, 150)) < 0.1] = np.nan
    return Z


TEST_ROWS = [12, 13, 14, 15]

slow = pytest.mark.slow
METHODS = [
    "additive", "knn_baseline", "knn:sim=pearson", "mf", "mf:biased=false",
    *(pytest.param(m, marks=slow) for m in (
        "additive:reg_row=3,reg_col=0.5,n_epochs=7", "knn", "knn_baseline:sim=pearson", "knn_baseline:sim=cosine",
        "knn_baseline:sim=pearson_baseline", "knn_baseline:k=3,min_k=2",
        "knn_baseline:min_support=11",  # fewer common columns than that: every similarity 0, the baseline alone
        "mf:rank=2,n_iters=3,reg=0.5,reg_bias=2", "mf:n_iters=1")),
]


@pytest.mark.parametrize("method", METHODS)
def test_train_block_solver_is_the_joint_fit(planted, method):
    kw = dict(test_rows=TEST_ROWS, methods=[method], k=10, seeds=(0, 7))
    joint = evaluate(planted, solver="joint", **kw)
    block = evaluate(planted, solver="train_block", **kw)
    label = Method.parse(method).label
    assert joint.settings["solvers"][label]["solver"] == "joint"
    assert block.settings["solvers"][label]["solver"] == "train_block"
    np.testing.assert_allclose(block.predictions[label], joint.predictions[label], atol=2e-5, rtol=0)
    np.testing.assert_allclose(block.metrics[label]["rmse"], joint.metrics[label]["rmse"], rtol=1e-5)


@pytest.mark.parametrize("method", ["mf", pytest.param("additive", marks=slow), pytest.param("knn_baseline", marks=slow)])
def test_train_block_with_the_reference_reveal(planted, method):
    # the reference code's reveal draws with replacement and intersects with the measured entries, so
    # rows reveal different numbers of entries (padding in the train-block solver)
    kw = dict(test_rows=TEST_ROWS, methods=[method], k=12, seeds=(1, 2), reveal="reference")
    joint = evaluate(planted, solver="joint", **kw)
    counts = joint.reveal.sum(-1)
    assert counts.min() < counts.max() <= 12
    block = evaluate(planted, solver="train_block", **kw)
    np.testing.assert_allclose(block.predictions[method], joint.predictions[method], atol=2e-5, rtol=0)


def test_auto_solver_choice(planted):
    from jaxforget.completion.protocol import _solver_for

    full, holes = np.ones((3, 4), bool), np.ones((3, 4), bool)
    holes[0, 1] = False
    choice = {m: _solver_for(Method.parse(m), "refit", "auto", full)
              for m in ("additive", "knn", "knn_baseline", "mf", "svd", "mf:method=gd", "soft_impute",
                        "knn_baseline:baseline_method=gd", "additive:method=gd")}
    assert [m for m, s in choice.items() if s == "train_block"] == ["additive", "knn", "knn_baseline", "mf"]
    assert _solver_for(Method("mf"), "refit", "auto", holes) == "joint"  # a train row not fully measured
    assert _solver_for(Method("mf"), "fold_in", "auto", full) == "fold_in"
    kw = dict(test_rows=TEST_ROWS, k=10, seeds=(0,))
    holed = planted.copy()
    holed[0, 5] = np.nan
    with pytest.raises(ValueError, match="'train_block' cannot solve 'mf': the train rows have hidden entries"):
        evaluate(holed, methods=["mf"], solver="train_block", **kw)
    with pytest.raises(ValueError, match="cannot solve 'svd': it has no train-block solver"):
        evaluate(planted, methods=["svd"], solver="train_block", **kw)
    with pytest.raises(ValueError, match="unknown solver 'fast'"):
        evaluate(planted, methods=["mf"], solver="fast", **kw)


def test_plan_batch_takes_the_largest_batch_that_fits():
    import jax
    import jax.numpy as jnp

    from jaxforget.completion.batching import plan_batch, program_bytes

    xs = jnp.asarray(np.random.default_rng(0).normal(size=(24, 256)), jnp.float32)

    def program_for(batch):  # each problem holds a 256 x 256 temporary: bytes grow with the batch
        one = lambda x: jnp.sort(jnp.outer(x, x), axis=0)[0]  # noqa: E731 (a sort: the temporary is not fused away)
        return jax.jit(lambda a: jax.vmap(one)(a) if batch is None else jax.lax.map(one, a, batch_size=batch))

    whole = program_bytes(program_for(None).lower(xs).compile())
    plan = plan_batch(program_for, (xs,), 24, whole // 3)
    assert 1 <= plan.batch < 24 and plan.fits and plan.bytes <= whole // 3 and plan.compiles <= 6
    assert plan.bytes == program_bytes(program_for(plan.batch).lower(xs).compile())
    np.testing.assert_allclose(program_for(plan.batch)(xs), program_for(None)(xs), rtol=1e-6)
    assert plan_batch(program_for, (xs,), 24, whole).batch == 24  # all at once when it fits


@pytest.mark.parametrize("solver,method", [("train_block", "additive"), pytest.param("joint", "mf", marks=slow)])
def test_memory_budget_batches_the_problems(planted, solver, method):
    kw = dict(test_rows=TEST_ROWS, methods=[method], k=10, seeds=(0, 1, 2), solver=solver)
    whole = evaluate(planted, **kw)
    plan = whole.settings["solvers"][method]["batching"]
    assert plan["problems"] == 12 and plan["batch"] == 12 and plan["fits"] and plan["compiles"] == 1
    budget = plan["bytes"] - 1  # all at once no longer fits
    part = evaluate(planted, memory=budget, **kw)
    plan = part.settings["solvers"][method]["batching"]
    # a smaller batch is taken; whether it fits depends on the backend's fixed cost at this tiny size (on a
    # GPU a lax.map loop of 1 problem outweighs the vmapped 12), and the record says which
    assert plan["batch"] < 12 and plan["budget"] == budget and plan["fits"] == (plan["bytes"] <= budget)
    np.testing.assert_allclose(part.predictions[method], whole.predictions[method], atol=1e-5, rtol=0)


def test_complete_rows_uses_the_train_block_solver(planted):
    train = planted[:12]
    rev = np.zeros((2, 150), bool)
    rev[0, :20] = rev[1, 100:130] = True
    z = np.nan_to_num(planted[12:14])
    rev &= np.isfinite(planted[12:14])
    a = complete_rows(train, z, rev, method="mf", seeds=[3, 4])
    b = complete_rows(train, z, rev, method="mf", seeds=[3, 4], solver="joint")
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
