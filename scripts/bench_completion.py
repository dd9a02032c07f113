"""Benchmark: jaxforget.completion vs scikit-surprise under the paper's prediction protocol.

The paper's scale: 85 tasks x 10,000 examples (planted low-rank + additive + sparse blocks + noise,
seeded), 66 train / 19 test rows, k = 30 revealed entries per test row, 3 seeds = 57 problems.

What is the reference code's (``evaluate_for_all_ocl_ds`` of the paper's prediction script): the
reveal -- ``numpy.random.default_rng(seed).choice(N, k)``, with replacement, the same columns for
every test row (``reveal="reference"``, shared by both sides); one surprise refit per (seed, test
row) problem in a Python loop; ``Reader(rating_scale=(-100, 100))``, so predictions are in effect not
clipped (jaxforget does not clip either); scores on every column that was not drawn;
BaselineOnly and KNNBaseline (k=40, min_k=1, msd) with SGD baselines (1,000 epochs, lr 0.005, reg
0.02); SVD (5 factors, 1,000 epochs, lr 0.005, no regularisation, init std 0.001), unseeded
(numpy's global generator) unless ``--surprise-seed`` is given.

How this script differs, precisely: (1) surprise's trainsets are built directly from the matrix
(``tests/surprise_oracle.py``: inner ids = row/column indices, ratings row by row, column by column),
not through a DataFrame and ``Dataset.load_from_df`` -- the same ratings in the same order, so the
same fits; (2) the reference replaces NaN by 0 (``np.nan_to_num``) and scores it; the planted matrix
has no NaN; (3) surprise runs ``--surprise-problems`` of the 57 problems (spread evenly over seeds and
test tasks) at its full settings, its time extrapolated linearly to all problems (refits are
independent and equally sized), its RMSE compared with jaxforget's on the same problems.

jaxforget solves all 57 problems of a method in one compiled, vmapped program with its own solvers
(ALS additive, KNNBaseline with ALS baselines, biased rank-5 ALS ``mf``); its ``svd`` is surprise's
SVD update for update (seeded), run on the surprise problems only (``n_epochs * M * N`` sequential
steps per problem: ~13 s each at this scale on a 2-core CPU).

One surprise refit at 1,000 epochs takes ~35 s here, so the full loop would take ~1.5 hours for
the three methods. ``--surprise-problems 57`` runs everything. Prints a table and the time ratios.

    python scripts/bench_completion.py [--surprise-problems 3] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def surprise_trainset(Z, mask, scale):
    from surprise_oracle import trainset

    return trainset(Z, mask, rating_scale=scale)


REFERENCE_SCALE = (-100.0, 100.0)  # the reference code's Reader(rating_scale=(-100., 100.))


def surprise_algos(epochs: int, svd_seed: int | None):
    import surprise

    sgd = dict(method="sgd", n_epochs=epochs, learning_rate=0.005, reg=0.02)
    return {
        "additive": lambda: surprise.BaselineOnly(bsl_options=sgd, verbose=False),
        "knn_baseline": lambda: surprise.KNNBaseline(k=40, min_k=1, sim_options=dict(name="msd", user_based=True),
                                                     bsl_options=sgd, verbose=False),
        "svd": lambda: surprise.SVD(n_factors=5, n_epochs=epochs, lr_all=0.005, reg_all=0.0, init_std_dev=0.001,
                                    random_state=svd_seed),
    }


# surprise's algorithm -> the jaxforget method compared with it on the vmapped, all-problem run
JAX_PEER = {"additive": "additive", "knn_baseline": "knn_baseline", "svd": "mf"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=85)
    ap.add_argument("--cols", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=19)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--matrix-seed", type=int, default=0)
    ap.add_argument("--surprise-epochs", type=int, default=1000,
                    help="epochs of surprise's SGD solvers and of jaxforget's svd (the reference: 1000)")
    ap.add_argument("--surprise-problems", type=int, default=3,
                    help="surprise refits actually run (spread over seeds and tasks); time is extrapolated")
    ap.add_argument("--surprise-seed", type=int, default=None,
                    help="random_state of surprise's SVD (default: unseeded, as the reference code)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import jax

    from jaxforget.completion import complete_rows, evaluate, planted_matrix

    P = planted_matrix(args.rows, args.cols, rank=5, n_blocks=4, seed=args.matrix_seed)
    Z = P.Z
    n_train = args.rows - args.n_test
    test_rows = list(range(n_train, args.rows))
    methods = ["additive", "knn_baseline", "mf"]
    print(f"matrix {args.rows} x {args.cols} (planted, seed {args.matrix_seed}); {n_train} train / "
          f"{args.n_test} test rows; k={args.k}; seeds {args.seeds}; reference reveal; "
          f"backend {jax.default_backend()}", flush=True)

    # jaxforget: every problem, end to end (compilation included), one method at a time.
    t0 = time.perf_counter()
    res = evaluate(Z, test_rows=test_rows, methods=methods, k=args.k, seeds=args.seeds, reveal="reference")
    jax_total = time.perf_counter() - t0
    n_problems = len(args.seeds) * args.n_test
    everything = [(s, t) for s in range(len(args.seeds)) for t in range(args.n_test)]
    # spread the surprise runs over seeds and test tasks
    pick = np.unique(np.linspace(0, n_problems - 1, min(args.surprise_problems, n_problems)).round().astype(int))
    problems = [everything[i] for i in pick]
    train = Z[:n_train]

    # jaxforget's svd (surprise's SGD, seeded) on the surprise problems only: one program, problems in sequence.
    svd = f"svd:n_epochs={args.surprise_epochs}"
    t = time.perf_counter()
    svd_pred = complete_rows(train, np.stack([Z[test_rows[t_i]] for _, t_i in problems]),
                             np.stack([res.reveal[s_i, t_i] for s_i, t_i in problems]), method=svd,
                             seeds=[args.seeds[s_i] for s_i, _ in problems])
    svd_seconds = time.perf_counter() - t

    # scikit-surprise: the reference loop on the same revealed entries, for the chosen problems.
    algos = surprise_algos(args.surprise_epochs, args.surprise_seed)
    rows = []
    for m, make in algos.items():
        sq_s, sq_j, n_err, seconds = 0.0, 0.0, 0, 0.0
        for p_i, (s_i, t_i) in enumerate(problems):
            rev = res.reveal[s_i, t_i]
            t_row = Z[test_rows[t_i]]
            t = time.perf_counter()
            mask = np.concatenate([np.ones_like(train, bool), rev[None]])
            algo = make().fit(surprise_trainset(np.concatenate([train, t_row[None]]), mask, REFERENCE_SCALE))
            hidden = np.flatnonzero(res.hidden[s_i, t_i])
            pred = np.array([algo.predict(n_train, j).est for j in hidden])
            seconds += time.perf_counter() - t
            sq_s += float(np.sum((pred - t_row[hidden]) ** 2))
            peer = svd_pred[p_i] if m == "svd" else res.predictions[m][s_i, t_i]
            sq_j += float(np.sum((peer[hidden] - t_row[hidden]) ** 2))
            n_err += hidden.size
        per_problem = seconds / max(len(problems), 1)
        jax_seconds = svd_seconds / len(problems) * n_problems if m == "svd" else res.seconds[m]
        rows.append(dict(
            method=m,
            surprise_rmse=float(np.sqrt(sq_s / n_err)),
            jaxforget_same_method_rmse=float(np.sqrt(sq_j / n_err)),
            jaxforget_rmse_all=float(res.summary()[JAX_PEER[m]]["rmse"][0]) if m != "svd" else None,
            surprise_seconds_per_problem=per_problem,
            surprise_seconds_total=per_problem * n_problems,
            jaxforget_seconds_total=jax_seconds,
            jaxforget_seconds_extrapolated=m == "svd",
            speedup=per_problem * n_problems / jax_seconds,
        ))
        print(f"  {m}: surprise {per_problem:.1f} s/problem over {len(problems)} problems", flush=True)
    mf = res.summary()["mf"]["rmse"][0]

    extrapolated = len(problems) < n_problems
    print(f"\n{n_problems} problems; surprise ran {len(problems)} at {args.surprise_epochs} epochs"
          + (" (time extrapolated linearly)" if extrapolated else ""))
    print("| method | RMSE surprise | RMSE jaxforget, same method and problems | RMSE jaxforget (all) | surprise s | "
          "jaxforget s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        all_rmse = f"{r['jaxforget_rmse_all']:.4f}" if r["jaxforget_rmse_all"] is not None else "—"
        star = " (extrapolated)" if r["jaxforget_seconds_extrapolated"] else ""
        print(f"| {r['method']} | {r['surprise_rmse']:.4f} | {r['jaxforget_same_method_rmse']:.4f} | {all_rmse} | "
              f"{r['surprise_seconds_total']:.0f} | {r['jaxforget_seconds_total']:.2f}{star} | {r['speedup']:.0f}x |")
    print(f"| mf (jaxforget's rank-5 ALS, for comparison) | — | — | {mf:.4f} | — | {res.seconds['mf']:.2f} | — |")
    s_total = sum(r["surprise_seconds_total"] for r in rows)
    j_total = jax_total - res.seconds["mf"] + next(r["jaxforget_seconds_total"] for r in rows if r["method"] == "svd")
    print(f"end to end (additive, knn_baseline, svd): surprise {s_total:.0f} s, jaxforget {j_total:.1f} s, "
          f"ratio {s_total / j_total:.0f}x")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(args=vars(args), rows=rows, jaxforget_mf_rmse_all=mf, jaxforget_total=j_total,
                           surprise_total=s_total, surprise_problems_run=len(problems), n_problems=n_problems),
                      fh, indent=2)


if __name__ == "__main__":
    main()
