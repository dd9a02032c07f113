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
    ap.add_argument("--full-n", action="store_true", help="the protocol at 21 x 2,000, 85 x 10,000 and 85 x 141,871")
    ap.add_argument("--joint-seeds", type=int, default=1, help="--full-n: seeds the joint refit is run on at full N")
    ap.add_argument("--shape", default=None, help=argparse.SUPPRESS)  # --full-n's child process: ROWSxCOLS
    args = ap.parse_args()
    if args.shape:
        return full_n_child(args)
    if args.full_n:
        return full_n(args)

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


FULL_N_SHAPES = [(21, 2_000, 5, 3), (85, 10_000, 19, 10), (85, 141_871, 19, 10)]
"""(rows, columns, test rows, seeds): the default run's shape, the benchmark's, the paper's Dolma matrix."""
PROTOCOL = ["additive", "knn_baseline", "mf"]


def cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        flags = open("/proc/cpuinfo").read()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        return f"{names[0]} ({isa})" if names else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def full_n(args) -> None:
    import subprocess

    rows = []
    for M, N, n_test, n_seeds in FULL_N_SHAPES:
        cmd = [sys.executable, __file__, "--shape", f"{M}x{N}", "--n-test", str(n_test), "--seeds",
               *map(str, range(n_seeds)), "--matrix-seed", str(args.matrix_seed), "--k", str(args.k),
               "--joint-seeds", str(args.joint_seeds if N > 100_000 else 0)]
        print(f"== {M} x {N}: {n_test} test rows x {n_seeds} seeds", flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"   process: {r['process_cpu_seconds']:.1f} CPU-s, peak {r['peak_rss_gib']:.2f} GiB, "
              f"{r['compilations']} compilations", flush=True)
    full = rows[-1]
    full["surprise"] = surprise_full_n(args)
    print(f"\nmachine: {cpu_name()}, {os.cpu_count()} CPUs; CPU-s = user + system, "
          "all threads; RMSE on the hidden entries (observed / planted signal)\n")
    print("| shape | method | solver | batching | CPU-s | RMSE observed | RMSE signal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for m in PROTOCOL:
            x = r["methods"][m]
            print(f"| {r['shape']} | {m} | {x['solver']} | {x['batching']} | {x['cpu_seconds']:.1f} | "
                  f"{x['rmse']:.4f} | {x['rmse_signal']:.4f} |")
        print(f"| {r['shape']} | whole process | | | {r['process_cpu_seconds']:.1f} | peak {r['peak_rss_gib']:.2f} GiB "
              f"| {r['compilations']} compilations |")
    if full.get("joint"):
        j = full["joint"]
        print(f"\njoint refit at {full['shape']} on {j['problems']} of {j['all_problems']} problems (seeds "
              f"{j['seeds']}), CPU time extrapolated linearly to all:")
        print("| method | joint CPU-s (extrapolated) | max abs difference | RMSE joint | RMSE train-block |")
        print("|---|---|---|---|---|")
        for m in PROTOCOL:
            x = j["methods"][m]
            print(f"| {m} | {x['cpu_seconds_all']:.0f} | {x['max_abs_diff']:.1e} | {x['rmse_joint']:.5f} | "
                  f"{x['rmse_block']:.5f} |")
    sp = full["surprise"]
    print(f"\nscikit-surprise's reference loop at {full['shape']}: one problem at {sp['epochs']} epochs, "
          f"extrapolated to 1,000 epochs and {full['problems']} problems:")
    total = 0.0
    for m, x in sp["methods"].items():
        all_problems = x["seconds_1000_epochs"] * full["problems"]
        total += all_problems
        print(f"| {m} | {x['seconds'][0]:.1f} s / {x['seconds'][1]:.1f} s | {x['seconds_1000_epochs']:.0f} s per "
              f"problem | {all_problems / 3600:.0f} h for all |")
    ours = full["process_cpu_seconds"]
    print(f"reference protocol ~{total:.0f} s (extrapolated) against jaxforget's {ours:.0f} CPU-s: ~{total / ours:.0f}x")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(args=vars(args), machine=cpu_name(), shapes=rows), fh, indent=2)


def full_n_child(args) -> None:
    """One shape of --full-n in this process; prints one JSON line."""
    import resource

    import jax
    from jax import monitoring

    compiles = []
    monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: compiles.append(1) if name == "/jax/core/compile/backend_compile_duration" else None)
    from jaxforget.completion import evaluate, planted_matrix

    M, N = map(int, args.shape.split("x"))
    P = planted_matrix(M, N, rank=5, n_blocks=4, seed=args.matrix_seed)
    test_rows = list(range(M - args.n_test, M))
    res = evaluate(P.Z, test_rows=test_rows, methods=PROTOCOL, k=args.k, seeds=args.seeds, reveal="reference")
    signal = np.broadcast_to(P.signal[test_rows][None], res.hidden.shape)

    def rmse(pred, truth, where):
        return float(np.sqrt(np.mean((pred[where] - truth[where]) ** 2)))

    methods = {}
    for m in PROTOCOL:
        how = res.settings["solvers"][m]
        b = how["batching"]
        methods[m] = dict(solver=how["solver"], cpu_seconds=how["cpu_seconds"],
                          batching=f"{b['batch']}/{b['problems']} at once, {b['bytes'] / 2**30:.2f} GiB",
                          rmse=float(res.summary()[m]["rmse"][0]), rmse_signal=rmse(res.predictions[m], signal,
                                                                                     res.hidden))
    out = dict(shape=f"{M} x {N}", problems=len(args.seeds) * args.n_test, methods=methods,
               process_cpu_seconds=time.process_time(), compilations=len(compiles),
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, backend=jax.default_backend())
    if args.joint_seeds:
        seeds = args.seeds[:args.joint_seeds]
        joint = {}
        for m in PROTOCOL:
            t = time.process_time()
            j = evaluate(P.Z, test_rows=test_rows, methods=[m], k=args.k, seeds=seeds, reveal="reference",
                         solver="joint")
            cpu = time.process_time() - t
            a, b = j.predictions[m], res.predictions[m][:len(seeds)]
            hidden = j.hidden
            joint[m] = dict(cpu_seconds=cpu, cpu_seconds_all=cpu * len(args.seeds) / len(seeds),
                            max_abs_diff=float(np.abs(a - b).max()), rmse_joint=rmse(a, P.Z[test_rows][None], hidden),
                            rmse_block=rmse(b, P.Z[test_rows][None], hidden))
        out["joint"] = dict(seeds=seeds, problems=len(seeds) * args.n_test, all_problems=out["problems"],
                            methods=joint)
    print(json.dumps(out))


def surprise_full_n(args, epochs=(5, 20)) -> dict:
    """scikit-surprise on one problem of the full-N shape at two epoch counts; time per problem at 1,000
    epochs from the line through the two."""
    from jaxforget.completion import planted_matrix, reference_reveal

    M, N, n_test, _ = FULL_N_SHAPES[-1]
    Z = planted_matrix(M, N, rank=5, n_blocks=4, seed=args.matrix_seed).Z
    train, t_row = Z[:M - n_test], Z[M - n_test]
    rev = reference_reveal(0, np.ones((1, N), bool), args.k)[0]
    mask = np.concatenate([np.ones_like(train, bool), rev[None]])
    trainset = surprise_trainset(np.concatenate([train, t_row[None]]), mask, REFERENCE_SCALE)
    hidden = np.flatnonzero(~rev)
    out = {}
    for m in ("additive", "knn_baseline", "svd"):
        seconds = []
        for e in epochs:
            t = time.process_time()
            algo = surprise_algos(e, 0)[m]().fit(trainset)
            [algo.predict(M - n_test, j) for j in hidden]
            seconds.append(time.process_time() - t)
        per_epoch = (seconds[1] - seconds[0]) / (epochs[1] - epochs[0])
        out[m] = dict(seconds=seconds, seconds_1000_epochs=seconds[0] + (1000 - epochs[0]) * per_epoch)
        print(f"   surprise {m}: {seconds[0]:.1f} s at {epochs[0]} epochs, {seconds[1]:.1f} s at {epochs[1]}", flush=True)
    return dict(epochs=list(epochs), methods=out)


if __name__ == "__main__":
    main()
