"""Benchmark: jaxforget.completion vs scikit-surprise under the paper's prediction protocol.

The paper's scale: 85 tasks x 10,000 examples (planted low-rank + additive + sparse blocks + noise,
seeded), 66 train / 19 test rows, k = 30 revealed entries per test row, 3 seeds = 57 problems.
scikit-surprise runs exactly as the reference code does -- one refit per (seed, test row) problem
in a Python loop: BaselineOnly and KNNBaseline (k=40, min_k=1, msd) with SGD baselines (1,000
epochs, lr 0.005, reg 0.02), SVD (5 factors, 1,000 epochs, lr 0.005, no regularisation, init std
0.001); predictions clipped to the rating scale (the train entries' range). jaxforget solves all 57
problems of a method in one compiled, vmapped program (with its own solvers: ALS additive,
KNNBaseline with ALS baselines, biased rank-5 ALS MF) and clips likewise.

One surprise refit at 1,000 epochs takes ~35 s here, so the full loop would take ~1.5 hours per
the three methods. By default surprise therefore runs ``--surprise-problems`` problems (spread evenly
over seeds and test tasks) at its full settings; its end-to-end time is extrapolated linearly to all problems (refits are
independent and equally sized) and its RMSE is compared with jaxforget's on the same problems.
``--surprise-problems 57`` runs everything. Prints a table and the time ratios.

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


def surprise_algos(epochs: int):
    import surprise

    sgd = dict(method="sgd", n_epochs=epochs, learning_rate=0.005, reg=0.02)
    return {
        "additive": lambda: surprise.BaselineOnly(bsl_options=sgd, verbose=False),
        "knn_baseline": lambda: surprise.KNNBaseline(k=40, min_k=1, sim_options=dict(name="msd", user_based=True),
                                                     bsl_options=sgd, verbose=False),
        "mf": lambda: surprise.SVD(n_factors=5, n_epochs=epochs, lr_all=0.005, reg_all=0.0, init_std_dev=0.001,
                                   random_state=0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=85)
    ap.add_argument("--cols", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=19)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--matrix-seed", type=int, default=0)
    ap.add_argument("--surprise-epochs", type=int, default=1000)
    ap.add_argument("--surprise-problems", type=int, default=6,
                    help="surprise refits actually run (spread over seeds and tasks); time is extrapolated")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import jax

    from jaxforget.completion import evaluate, planted_matrix

    P = planted_matrix(args.rows, args.cols, rank=5, n_blocks=4, seed=args.matrix_seed)
    Z = P.Z
    n_train = args.rows - args.n_test
    test_rows = list(range(n_train, args.rows))
    methods = ["additive", "knn_baseline", "mf"]
    print(f"matrix {args.rows} x {args.cols} (planted, seed {args.matrix_seed}); {n_train} train / "
          f"{args.n_test} test rows; k={args.k}; seeds {args.seeds}; backend {jax.default_backend()}", flush=True)

    # jaxforget: everything, end to end (compilation included), one method at a time.
    t0 = time.perf_counter()
    res = evaluate(Z, test_rows=test_rows, methods=methods, k=args.k, seeds=args.seeds, clip=True)
    jax_total = time.perf_counter() - t0
    n_problems = len(args.seeds) * args.n_test
    everything = [(s, t) for s in range(len(args.seeds)) for t in range(args.n_test)]
    # spread the surprise runs over seeds and test tasks
    pick = np.unique(np.linspace(0, n_problems - 1, min(args.surprise_problems, n_problems)).round().astype(int))
    problems = [everything[i] for i in pick]

    # scikit-surprise: the reference loop on the same revealed entries, for the chosen problems.
    train = Z[:n_train]
    scale = (float(train.min()), float(train.max()))
    algos = surprise_algos(args.surprise_epochs)
    rows = []
    for m in methods:
        sq_s, sq_j, n_err, seconds = 0.0, 0.0, 0, 0.0
        for s_i, t_i in problems:
            rev = res.reveal[s_i, t_i]
            t_row = Z[test_rows[t_i]]
            t = time.perf_counter()
            mask = np.concatenate([np.ones_like(train, bool), rev[None]])
            algo = algos[m]().fit(surprise_trainset(np.concatenate([train, t_row[None]]), mask, scale))
            hidden = np.flatnonzero(~rev)
            pred = np.array([algo.predict(n_train, j).est for j in hidden])
            seconds += time.perf_counter() - t
            sq_s += float(np.sum((pred - t_row[hidden]) ** 2))
            sq_j += float(np.sum((res.predictions[m][s_i, t_i, hidden] - t_row[hidden]) ** 2))
            n_err += hidden.size
        per_problem = seconds / max(len(problems), 1)
        rows.append(dict(
            method=m,
            surprise_rmse=float(np.sqrt(sq_s / n_err)),
            jaxforget_rmse_same_problems=float(np.sqrt(sq_j / n_err)),
            jaxforget_rmse_all=float(res.summary()[m]["rmse"][0]),
            surprise_seconds_per_problem=per_problem,
            surprise_seconds_total=per_problem * n_problems,
            jaxforget_seconds_total=res.seconds[m],
            speedup=per_problem * n_problems / res.seconds[m],
        ))
        print(f"  {m}: surprise {per_problem:.1f} s/problem over {len(problems)} problems", flush=True)

    extrapolated = len(problems) < n_problems
    print(f"\n{n_problems} problems; surprise ran {len(problems)} at {args.surprise_epochs} epochs"
          + (" (time extrapolated linearly)" if extrapolated else ""))
    print("| method | RMSE surprise | RMSE jaxforget (same problems) | RMSE jaxforget (all) | surprise s | "
          "jaxforget s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['surprise_rmse']:.4f} | {r['jaxforget_rmse_same_problems']:.4f} | "
              f"{r['jaxforget_rmse_all']:.4f} | {r['surprise_seconds_total']:.0f} | {r['jaxforget_seconds_total']:.2f} | "
              f"{r['speedup']:.0f}x |")
    s_total = sum(r["surprise_seconds_total"] for r in rows)
    print(f"end to end (3 methods): surprise {s_total:.0f} s, jaxforget {jax_total:.1f} s, "
          f"ratio {s_total / jax_total:.0f}x")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(args=vars(args), rows=rows, jaxforget_total=jax_total, surprise_total=s_total,
                           surprise_problems_run=len(problems), n_problems=n_problems), fh, indent=2)


if __name__ == "__main__":
    main()
