import numpy as np
import pytest
from scipy import stats

from jaxforget import analysis as A
from jaxforget import completion as C


def jaccard(a, b) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / len(a | b)


def multiplicative_matrix(M=40, N=300, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    alpha = rng.lognormal(0.0, 0.5, M)
    beta = rng.gamma(2.0, 0.1, N)
    return (np.outer(alpha, beta) + noise * rng.normal(size=(M, N))).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Goodness of fit


def test_multiplicative_matrix_rank1_explains_it_and_beats_additive():
    g = A.goodness(multiplicative_matrix(), max_rank=3)
    r2 = g["r2"]
    assert r2["multiplicative"] == r2["rank_1"] > 0.99
    assert r2["multiplicative"] > r2["additive"] + 0.05
    assert r2["rank_1"] <= r2["rank_2"] <= r2["rank_3"] <= 1.0
    assert g["method"] == "truncated_svd"
    assert g["counts"]["n_missing"] == 0


def test_additive_matrix_additive_r2_is_one():
    rng = np.random.default_rng(1)
    M, N = 200, 2000  # the paper's ridge (15 on tasks, 10 on examples) shrinks effects by N/(N+15) and M/(M+10)
    Z = 0.2 + rng.normal(0, 0.3, (M, 1)) + rng.normal(0, 0.3, (1, N)) + 0.001 * rng.normal(size=(M, N))
    r2 = A.goodness(Z.astype(np.float32), max_rank=1)["r2"]
    assert r2["additive"] > 0.99
    assert r2["additive"] > r2["row_mean"] and r2["additive"] > r2["col_mean"]


def test_fit_table_defaults_to_the_ranks_a_small_matrix_has():
    # The README's C.fit_table(Z) on fewer than 5 tasks: ranks 1..M, the last one exact.
    Z = multiplicative_matrix(M=3, N=40, noise=0.1)
    table = C.fit_table(Z)
    assert [k for k in table if k.startswith("rank_")] == ["rank_1", "rank_2", "rank_3"]
    assert table["rank_3"] == pytest.approx(1.0, abs=1e-5)
    assert table == pytest.approx(C.fit_table(Z, ranks=(1, 2, 3)))
    assert list(C.fit_table(multiplicative_matrix(M=8, N=40)))[-1] == "rank_5"  # 5 when there are enough
    with pytest.raises(ValueError, match=r"ranks \[4\] out of range \[1, 3\]"):
        C.fit_table(Z, ranks=(1, 4))  # an explicit rank beyond the matrix is still an error


def test_r2_labels_name_the_ridge_additive_fit():
    # The additive row is a ridge fit (the paper's 15 / 10), which can explain less than the column
    # means alone on few tasks; its label says so.
    assert A.r2_label("additive") == "additive (ridge ALS, λ 15/10)"
    assert A.ADDITIVE_REG == (15.0, 10.0)
    assert A.r2_label("rank_3") == "rank 3" and A.r2_label("col_mean") == "column mean only"
    Z = multiplicative_matrix(M=3, N=40, noise=0.5, seed=3)
    ridge = A.goodness(Z, max_rank=1)["r2"]["additive"]
    assert ridge == pytest.approx(C.fit_table(Z, ranks=(1,), reg_row=15.0, reg_col=10.0)["additive"])


def test_nan_entries_are_ignored_and_counted():
    Z = multiplicative_matrix()
    Zn = Z.copy()
    rng = np.random.default_rng(2)
    holes = rng.random(Z.shape) < 0.1
    Zn[holes] = np.nan
    g = A.goodness(Zn, max_rank=2)
    assert g["counts"]["n_missing"] == int(holes.sum())
    assert g["counts"]["n_observed"] == Z.size - int(holes.sum())
    assert g["counts"]["rows_with_missing"] == int(holes.any(axis=1).sum())
    assert g["method"] == "masked_als"
    # Hidden cells may hold anything: garbage under an explicit mask gives the same table.
    garbage = np.where(holes, 1e6, Z).astype(np.float32)
    assert A.goodness(garbage, ~holes, max_rank=2)["r2"] == pytest.approx(g["r2"], abs=1e-6)
    assert g["r2"]["multiplicative"] > 0.99
    assert g["moments"]["mean"] == pytest.approx(float(np.nanmean(Zn)), rel=1e-5)


def test_all_nan_row_is_an_error_naming_it():
    Z = multiplicative_matrix()
    Z[7] = np.nan
    with pytest.raises(ValueError, match=r"row\(s\) without any observed entry \(rows 7\)"):
        A.goodness(Z)


def test_components_of_a_masked_fit_are_an_ordered_svd():
    Z = multiplicative_matrix(noise=0.05)
    Z[np.random.default_rng(3).random(Z.shape) < 0.2] = np.nan
    fit = A.rank_fit(Z, rank=3)
    U, s, V = A.components(fit)
    np.testing.assert_allclose((U * s) @ V.T, np.asarray(fit.predict()), atol=1e-4)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-4)
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-4)
    assert np.all(np.diff(s) <= 0) and np.all(V.sum(axis=0) >= 0)


def test_effect_order_sorts_descending():
    rows, cols = A.effect_order([0.1, 0.5, 0.3], [2.0, -1.0, 3.0, 0.0])
    assert rows.tolist() == [1, 2, 0] and cols.tolist() == [2, 0, 3, 1]


# ----------------------------------------------------------------------------------------------
# Correlations


@pytest.mark.parametrize("n, strength", [(12, 0.6), (85, 0.2), (5000, 0.02), (150_000, 0.01)])
def test_correlation_matches_scipy(n, strength):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = strength * x + rng.normal(size=n)
    x[::7] = np.round(x[::7], 1)  # ties for the midranks
    y[3] = np.nan  # pairs with a missing value are left out
    ok = np.isfinite(y)
    c = A.correlation(x, y)
    r, p = stats.pearsonr(x[ok], y[ok])
    rho, p_s = stats.spearmanr(x[ok], y[ok])
    assert c.n == ok.sum()
    assert c.pearson == pytest.approx(r, abs=1e-9)
    assert c.spearman == pytest.approx(rho, abs=1e-9)
    assert c.pearson_p == pytest.approx(p, rel=1e-6, abs=1e-300)
    assert c.spearman_p == pytest.approx(p_s, rel=1e-6, abs=1e-300)


def test_correlation_degenerate_inputs_are_nan():
    assert np.isnan(A.correlation([1.0, 2.0], [3.0, 1.0]).pearson)  # n < 3
    c = A.correlation([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])  # constant variable
    assert np.isnan(c.pearson) and np.isnan(c.spearman_p) and c.to_json()["pearson"] is None
    with pytest.raises(ValueError, match="one length"):
        A.correlation([1, 2, 3], [1, 2])


def test_correlate_effects_numeric_and_categorical():
    rng = np.random.default_rng(4)
    beta = rng.normal(size=200)
    domains = ["web" if b > 0.5 else "code" if b < -0.5 else "books" for b in beta]
    nll = list(beta * 2 + rng.normal(size=200))
    nll[0] = None  # unknown
    rows = A.correlate_effects(beta, {"nll_before": nll, "source": domains}, effect_name="beta")
    assert [(r["statistic"], r["level"]) for r in rows] == [
        ("nll_before", None), ("source", "books"), ("source", "code"), ("source", "web")]
    assert rows[0]["n"] == 199 and rows[0]["pearson"] > 0.8
    web = np.array([d == "web" for d in domains], float)
    assert rows[3]["pearson"] == pytest.approx(stats.pearsonr(beta, web)[0], abs=1e-9)
    with pytest.raises(ValueError, match="'bad' has 3 values for 200 beta"):
        A.correlate_effects(beta, {"bad": [1, 2, 3]}, effect_name="beta")
    with pytest.raises(ValueError, match="mixes numbers"):
        A.correlate_effects(beta[:2], {"mixed": [1.0, {"a": 1}]}, effect_name="beta")


# ----------------------------------------------------------------------------------------------
# Residual blocks


def block_matrix(seed=0, sign=1.0):
    """Multiplicative matrix plus one block of 6 tasks x 40 examples (+-0.25) and noise 0.05."""
    rng = np.random.default_rng(seed)
    M, N = 40, 400
    Z = np.outer(rng.lognormal(0, 0.5, M), rng.gamma(2.0, 0.1, N)) + 0.05 * rng.normal(size=(M, N))
    rows = np.sort(rng.choice(M, 6, replace=False))
    cols = np.sort(rng.choice(N, 40, replace=False))
    Z[np.ix_(rows, cols)] += sign * 0.25
    return Z.astype(np.float32), rows, cols


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_planted_block_is_found_with_its_rows_and_columns(sign):
    Z, rows, cols = block_matrix(sign=sign)
    search = A.find_blocks(Z, seed=0)
    assert len(search.blocks) == 1  # the refit without the block leaves no negative "shadow" block
    b = search.blocks[0]
    assert b.sign == sign
    assert jaccard(b.rows, rows) >= 0.8 and jaccard(b.cols, cols) >= 0.8
    assert b.p_value == pytest.approx(1 / 20) and b.score > search.threshold
    assert abs(b.mean_residual) > 0.15 and np.sign(b.mean_residual) == sign
    assert b.n_observed == len(b.rows) * len(b.cols)


def test_blocks_of_planted_matrix_are_recovered():
    P = C.planted_matrix(40, 400, rank=1, additive_scale=0.0, n_blocks=2, block_scale=0.3, seed=3)
    search = A.find_blocks(P.Z, seed=1)
    assert len(search.blocks) == 2
    for rows, cols in P.blocks:
        best = max(search.blocks, key=lambda b: jaccard(b.cols, cols))
        assert jaccard(best.rows, rows) >= 0.8 and jaccard(best.cols, cols) >= 0.8


def test_low_rank_plus_noise_has_no_block():
    rng = np.random.default_rng(5)
    M, N = 40, 400
    Z = (np.outer(rng.lognormal(0, 0.5, M), rng.gamma(2.0, 0.1, N))
         + 0.5 * np.outer(rng.normal(0, 0.3, M), rng.normal(0, 0.3, N)) + 0.05 * rng.normal(size=(M, N)))
    for seed in (0, 1):
        search = A.find_blocks(Z.astype(np.float32), rank=2, seed=seed)
        assert search.blocks == []
        assert search.null_scores.shape == (19,) and search.seed == seed


def test_block_search_ignores_hidden_entries_and_checks_arguments():
    Z, rows, cols = block_matrix(seed=1)
    hidden = np.zeros(Z.shape, bool)
    hidden[0, ::2] = True
    hidden[rows[0], cols[:3]] = True
    a = A.find_blocks(np.where(hidden, 1e3, Z), ~hidden, seed=0)
    b = A.find_blocks(np.where(hidden, np.nan, Z), seed=0)
    assert [x.rows.tolist() for x in a.blocks] == [x.rows.tolist() for x in b.blocks]
    assert [x.cols.tolist() for x in a.blocks] == [x.cols.tolist() for x in b.blocks]
    assert jaccard(a.blocks[0].cols, cols) >= 0.8
    assert a.blocks[0].n_observed == len(a.blocks[0].rows) * len(a.blocks[0].cols) - 3
    assert np.isnan(b.residual[hidden]).all() and np.isfinite(b.residual[~hidden]).all()
    with pytest.raises(ValueError, match="raise n_permutations"):
        A.find_blocks(Z, n_permutations=9, alpha=0.05)
    with pytest.raises(ValueError, match="min_rows=50"):
        A.find_blocks(Z, min_rows=50)


def test_domain_enrichment_two_proportion_z_test():
    domains = ["web"] * 60 + ["code"] * 40 + [None] * 5
    in_block = np.zeros(105, bool)
    in_block[50:70] = True  # 10 web + 10 code in the block; 50 web + 30 code outside
    rows = A.domain_enrichment(in_block, domains)
    assert [r["domain"] for r in rows] == ["code", "web"]
    code = rows[0]
    p1, p2, n1, n2 = 10 / 20, 30 / 80, 20, 80
    pooled = 40 / 100
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert code["n_block"] == 10 and code["frac_block"] == pytest.approx(p1) and code["frac_rest"] == pytest.approx(p2)
    assert code["z"] == pytest.approx(z, rel=1e-5)
    assert code["p"] == pytest.approx(stats.norm.sf(z), rel=1e-4)
    assert rows[1]["z"] == pytest.approx(-z, rel=1e-5)
    assert A.domain_enrichment(in_block, [None] * 105) == []


# ----------------------------------------------------------------------------------------------
# Forgetting over time


def test_r2_over_steps():
    rng = np.random.default_rng(6)
    M, T, N = 10, 4, 80
    a, b = rng.lognormal(size=M), rng.gamma(2.0, 0.1, N)
    Zs = np.zeros((M, T, N), np.float32)
    for t in range(1, T):
        Zs[:, t] = t * np.outer(a, b) + (t - 1) * 0.05 * rng.normal(size=(M, N))
    out = A.r2_over_steps(Zs, steps=[0, 10, 20, 30])
    assert [r["step"] for r in out] == [0, 10, 20, 30]
    assert out[0]["r2_rank1"] is None and out[0]["mean"] == 0.0  # constant at step 0
    assert out[1]["r2_rank1"] == pytest.approx(1.0, abs=1e-5)
    assert out[1]["r2_rank1"] > out[3]["r2_rank1"] > 0.5
    Zs[0, 2, :5] = np.nan  # masked path gives the same R^2 up to the fit
    masked = A.r2_over_steps(Zs, steps=[0, 10, 20, 30])
    assert masked[2]["n_observed"] == M * N - 5
    assert masked[1]["r2_rank1"] == pytest.approx(out[1]["r2_rank1"], abs=1e-4)
    Zs[3, 1] = np.nan  # a task not measured at a step (stopped early by its epoch cap): fit the others
    partial = A.r2_over_steps(Zs, steps=[0, 10, 20, 30])
    assert partial[1]["n_observed"] == (M - 1) * N
    assert partial[1]["r2_rank1"] == pytest.approx(A.r2_over_steps(np.delete(Zs, 3, axis=0)[:, 1:2])[0]["r2_rank1"])
    with pytest.raises(ValueError, match="steps has 2 entries"):
        A.r2_over_steps(Zs, steps=[0, 1])
