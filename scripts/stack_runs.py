"""Stack the forgetting matrices of several collect runs that share their upstream columns into one .npz
(Z, task_names, example_ids) that analyze, predict and replay's loaders read: the paper's 85-row matrix is
three runs over the same upstream sample (FLAN, Tulu and Dolly tasks, each a different --data.task-preset),
stacked in that order.

    python scripts/stack_runs.py runs/flan runs/tulu runs/dolly --out runs/paper85.npz

The runs must list the same example_ids in the same order (the same upstream flags and seed give them);
task names repeated across runs are refused."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxforget.store import load_matrix  # noqa: E402


def stack(paths: list[Path]) -> dict[str, np.ndarray]:
    """Z (sum of rows x N), task_names and example_ids of the runs, in the given order; ValueError naming
    the run whose columns or task names do not fit."""
    mats = [load_matrix(p) for p in paths]
    for p, m in zip(paths[1:], mats[1:]):
        if list(m.col_ids) != list(mats[0].col_ids):
            raise ValueError(f"{p}: its upstream examples differ from {paths[0]}'s; run every part with the same "
                             "--data.upstream, --data.upstream-preset, --data.n-upstream, --data.stratify and --data.seed")
    names = [n for m in mats for n in m.row_names]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"task names {dup} occur in more than one of the runs; they would be ambiguous rows")
    return dict(Z=np.concatenate([m.Z for m in mats]), task_names=np.array(names),
                example_ids=np.array(mats[0].col_ids))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (or .npz / .npy matrices), in row order")
    p.add_argument("--out", type=Path, required=True, help="the stacked .npz to write")
    a = p.parse_args(argv)
    try:
        out = stack(a.runs)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    np.savez(a.out, **out)
    print(f"wrote {a.out}: {out['Z'].shape[0]} tasks x {out['Z'].shape[1]} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
