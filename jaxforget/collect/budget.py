"""``collect --eval.budget F``: measure a fraction F of each task's row of Z and complete the rest.

Which entries a task measures (:class:`Budget`), F·N of them in all:

- *anchors* (``--eval.anchors``): columns drawn once from the seed and measured for every task; they
  tie the rows together for the completion;
- a *random share*, drawn per task from (seed, task index), so a task's entries depend neither on the
  order tasks finish in nor on ``--shard``, ``--tasks-per-step``, ``--distributed`` or a resume.

Both are *stratified* on the base model's NLL (:func:`stratified`): the columns sorted by it are cut
into as many equal strata as columns are drawn, and one column is drawn from each. Every column is
equally likely, as in a simple random draw (so means over the measured entries stay unbiased), but
the sample spans the range of base NLL, which on the built-in world correlates 0.59 with a column's
forgetting (RMS over tasks), so estimates from it vary less: the whole matrix's R² by rank at a tenth
of the entries was within 0.019 of the full matrix's for six seeds, against up to 0.044 unstratified.
- with ``--eval.select active``, half of that share is drawn at random (first round) and the rest is
  chosen after it (second round) as the columns the completion is **least sure of**: the largest
  predictive variance of the task's row under a ridge fold-in on the column factors of the rows
  finished so far (leverage, chosen greedily in blocks). Why uncertainty rather than "predicted most
  forgotten": the completion's expected squared error on a column grows with that variance, so
  measuring those columns removes the largest expected errors (the D-optimal design of the row's
  fold-in), and the choice never depends on the row's own values, so the fit stays unbiased (the
  entries are missing at random given what was measured). Under the multiplicative model
  Z_ij = α_i β_j the two criteria pick the same columns (the variance grows with β_j², the
  forgetting with α_i β_j). ``--eval.select forgotten`` takes the other criterion: the columns of the
  highest fold-in prediction from the first round's values (the examples replay would want).

The base model is measured on all N examples (Z needs its NLL wherever a task is measured).

Completion, with a registered :mod:`jaxforget.completion` method (``--eval.completion``):

- *fold-in as rows arrive* (:class:`RowCompleter`): each new row is folded into a fit of the rows
  finished so far (their measured entries only), refitted each time their count doubles, so a run of
  M tasks fits O(log M) times and compiles once per shape. The fold-in row is provisional (RUN/rows,
  TensorBoard, the selection of active columns);
- *refit at the end* (:func:`complete`): one fit of every measured entry of Z gives ``Z_completed``,
  and a second fit without the held-back entries (``--eval.holdout`` of each task's random share, anchors
  excluded) gives the error bars: per task the RMSE, Spearman correlation and top-100 precision of the
  completion on those measured entries (:func:`holdout_scores`). Their fit has (1 - holdout) of the
  random share, so with random selection they slightly overstate the error of ``Z_completed`` (by 2-7%
  on the built-in world); under active selection they understated it (by 6-12% there): the tasks
  measure many of the same high-variance columns, which leaves the other columns fewer observations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

ACTIVE_RANK = 5
"""Column factors (leading singular vectors of the completed reference rows) that active selection's
predictive variance uses."""
ACTIVE_BLOCKS = 16
"""Greedy picks of active selection are made in this many blocks (the variance is updated between)."""
MIN_REFERENCE_ROWS = 2
"""Finished rows needed before rows are folded into a fit (fewer: a row's unmeasured entries are filled
with the mean of its measured ones, and active selection draws its second round at random)."""
TOP = 100
"""The top-n of the per-task precision (the paper's replay picks the top forgotten examples); a twentieth of the
row when N < 2,000 (the top 100 of 100 examples would be the whole row)."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """The entries a budgeted run measures: ``n`` columns, ``fraction`` of them per task, ``anchors`` of
    those shared by every task, the rest drawn per task (``select``: all at random, or half at random
    and half by :func:`leverage_picks`); ``holdout`` of each task's random share held back for the
    error bars; ``method`` the completion; ``seed`` every draw and the completion's initial factors."""

    n: int
    fraction: float
    anchors: int
    select: str = "random"
    method: str = "mf:reg=1"
    holdout: float = 0.2
    seed: int = 0
    strata: tuple[int, ...] | None = dataclasses.field(default=None, repr=False)
    """The columns in the order the draws are stratified on (:func:`strata_order` of the base model's NLL);
    None: unstratified."""

    @classmethod
    def from_eval(cls, e: Any, n: int, nll_before: np.ndarray | None = None) -> Budget | None:
        """The budget of an ``EvalConfig`` (``--eval.*``) over ``n`` examples, its draws stratified on
        ``nll_before`` (the base model's NLL; collect always passes it); None when every entry is measured."""
        if e.budget >= 1:
            return None
        per_task = per_task_count(e.budget, n)
        anchors = default_anchors(per_task) if e.anchors is None else e.anchors
        strata = None if nll_before is None else strata_order(nll_before)
        return cls(n=n, fraction=e.budget, anchors=anchors, select=e.select, method=e.completion,
                   holdout=e.holdout, seed=e.seed, strata=strata)

    def _draw(self, rng: np.random.Generator, allowed: np.ndarray, k: int) -> np.ndarray:
        """``k`` distinct columns where ``allowed`` (bool [N]): stratified on :attr:`strata`, else uniform."""
        if self.strata is None:
            return rng.choice(np.flatnonzero(allowed), k, replace=False)
        order = np.asarray(self.strata)
        return stratified(rng, order[allowed[order]], k)

    def random_entries(self, measured: np.ndarray) -> np.ndarray:
        """bool [M, N]: the entries of ``measured`` [M, N] that were drawn uniformly (anchors and random shares: all
        of them with random selection, the first round with active), the ones an unbiased estimate may use."""
        if self.select == "random":
            return measured
        return measured & np.stack([self.first_round(i) for i in range(measured.shape[0])])

    @property
    def per_task(self) -> int:
        """Examples measured after each task."""
        return per_task_count(self.fraction, self.n)

    def anchor_columns(self) -> np.ndarray:
        """int64 [anchors]: the columns every task measures (sorted)."""
        return np.sort(self._draw(np.random.default_rng([self.seed, 0]), np.ones(self.n, bool), self.anchors))

    def _anchor_mask(self) -> np.ndarray:
        mask = np.zeros(self.n, bool)
        mask[self.anchor_columns()] = True
        return mask

    def first_round(self, task: int) -> np.ndarray:
        """bool [N]: what task ``task`` measures first: the anchors and its random share (all of it with
        random selection, the larger half with active)."""
        mask = self._anchor_mask()
        rest = self.per_task - self.anchors
        k = rest if self.select == "random" else rest - rest // 2  # two rounds: the larger half first
        mask[self._draw(np.random.default_rng([self.seed, 1, task]), ~mask, k)] = True
        return mask

    def second_round(self, task: int, first: np.ndarray, completer: RowCompleter,
                     z_first: np.ndarray | None = None) -> np.ndarray:
        """bool [N]: the columns task ``task`` measures after ``first`` (none with random selection). active: the
        most uncertain under the column factors of ``completer`` (:func:`leverage_picks`); forgotten: the highest
        of the row's fold-in from its first-round values ``z_first`` (Z, NaN elsewhere). Drawn at random while
        ``completer`` has no fit yet."""
        k = self.per_task - int(first.sum())
        mask = np.zeros(self.n, bool)
        if k <= 0 or self.select == "random":
            return mask
        if completer.completer is None:
            mask[self._draw(np.random.default_rng([self.seed, 2, task]), ~first, k)] = True
        elif self.select == "active":
            mask[leverage_picks(completer.factors(), first, k)] = True
        else:
            pred = np.where(first, -np.inf, completer.fold_in(z_first, first))
            mask[np.argsort(-pred, kind="stable")[:k]] = True
        return mask

    def held_back(self, task: int, first: np.ndarray) -> np.ndarray:
        """bool [N]: the measured entries of task ``task`` left out of the error bars' refit: ``holdout``
        of its first-round random share (a uniform sample of the non-anchor columns), anchors never."""
        pool = np.flatnonzero(first & ~self._anchor_mask())
        k = int(round(self.holdout * pool.size))
        mask = np.zeros(self.n, bool)
        mask[np.random.default_rng([self.seed, 3, task]).choice(pool, k, replace=False)] = True
        return mask

    def record(self) -> dict[str, Any]:
        """meta.json's ``budget`` (the settings; :func:`complete` adds the measured figures)."""
        return dict(fraction=self.fraction, per_task=self.per_task, anchors=self.anchors, select=self.select,
                    method=self.method, holdout=self.holdout, seed=self.seed,
                    active=dict(criterion="predictive variance (leverage)", rank=ACTIVE_RANK,
                                blocks=ACTIVE_BLOCKS) if self.select == "active" else
                    dict(criterion="highest fold-in prediction") if self.select == "forgotten" else None)


def strata_order(nll_before: np.ndarray) -> tuple[int, ...]:
    """The columns sorted by the base model's NLL (ties by index; a non-finite NLL last)."""
    x = np.asarray(nll_before, np.float64)
    return tuple(np.lexsort((np.arange(x.size), np.where(np.isfinite(x), x, np.inf))).tolist())


def stratified(rng: np.random.Generator, ordered: np.ndarray, k: int) -> np.ndarray:
    """``k`` of the columns ``ordered`` (sorted by the stratifying value): one drawn uniformly from each of
    ``k`` consecutive strata of (nearly) equal size. Each column has probability k / len(ordered), as in a
    simple random draw."""
    edges = np.linspace(0, ordered.size, k + 1).round().astype(int)
    return ordered[edges[:-1] + np.floor(rng.random(k) * np.diff(edges)).astype(int)]


def per_task_count(fraction: float, n: int) -> int:
    """Examples a task measures under ``--eval.budget fraction``: round(fraction * n), at least 1."""
    return min(n, max(1, int(round(fraction * n))))


def default_anchors(per_task: int) -> int:
    """``--eval.anchors`` unset: a fifth of each task's measured examples."""
    return per_task // 5


def budget_errors(e: Any, n: int) -> list[str]:
    """Why ``--eval.*`` cannot make a budget over ``n`` examples (empty when it can)."""
    if e.budget >= 1:
        given = [f for f, v, d in (("--eval.anchors", e.anchors, None), ("--eval.select", e.select, "random"))
                 if v != d]
        return [f"{' and '.join(given)} only apply with --eval.budget < 1"] if given else []
    per_task = per_task_count(e.budget, n)
    anchors = default_anchors(per_task) if e.anchors is None else e.anchors
    errors = []
    if anchors >= per_task:
        errors.append(f"--eval.anchors {anchors}: must be below the {per_task} examples each task measures "
                      f"(--eval.budget {e.budget:g} of {n}), to leave a random share")
    rest = per_task - anchors
    if e.holdout > 0 and int(round(e.holdout * (rest - rest // 2 if e.select != "random" else rest))) < 1:
        errors.append(f"--eval.holdout {e.holdout:g}: holds back no entry of the {rest} random ones a task measures; "
                      "raise --eval.budget or --eval.holdout, or set --eval.holdout 0 (no error bars)")
    try:
        from jaxforget.completion import Method

        m = Method.parse(e.completion)
        if m.link != "identity":
            errors.append(f"--eval.completion {e.completion}: a logistic method predicts probabilities, not Z")
    except ValueError as err:
        errors.append(f"--eval.completion {e.completion}: {err}")
    return errors


def leverage_picks(factors: np.ndarray, measured: np.ndarray, k: int, blocks: int = ACTIVE_BLOCKS) -> np.ndarray:
    """The ``k`` columns outside ``measured`` of largest predictive variance v_jᵀ A⁻¹ v_j, where v_j are the
    rows of ``factors`` [N, r] and A = λI + Σ v vᵀ over the measured columns (λ: the mean ‖v_j‖², one
    average column's worth of prior). Greedy in ``blocks`` blocks: each takes the highest current
    variances, then A grows by them, so later blocks avoid directions already measured."""
    V = np.asarray(factors, np.float64)
    lam = max(float(np.mean(np.sum(V**2, axis=1))), 1e-12)
    A = lam * np.eye(V.shape[1]) + V[measured].T @ V[measured]
    free = ~measured.copy()
    picked: list[np.ndarray] = []
    sizes = np.diff(np.linspace(0, k, blocks + 1).round().astype(int))
    for b in sizes[sizes > 0]:
        var = np.einsum("nr,rs,ns->n", V, np.linalg.inv(A), V)
        var[~free] = -np.inf
        top = np.argpartition(-var, b - 1)[:b]
        picked.append(top)
        free[top] = False
        A += V[top].T @ V[top]
    return np.sort(np.concatenate(picked))


class RowCompleter:
    """The fit new rows are folded into (:class:`jaxforget.completion.Completer`): ``budget.method`` on the
    measured entries of the finished rows, refitted by :meth:`update` whenever their count has doubled
    since the last fit (O(log M) fits; one compilation per shape)."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.completer = None
        self.n_rows = 0
        self._factors: np.ndarray | None = None

    def update(self, Z_rows: np.ndarray) -> bool:
        """Refit on ``Z_rows`` [M', N] (NaN = not measured; failed rows left out by the caller) when M' is
        at least :data:`MIN_REFERENCE_ROWS` and twice the rows of the current fit; returns whether it did."""
        m = Z_rows.shape[0]
        if m < MIN_REFERENCE_ROWS or m < 2 * self.n_rows:
            return False
        from jaxforget.completion import Completer

        self.completer = Completer(Z_rows, method=self.budget.method, seed=self.budget.seed)
        self.n_rows, self._factors = m, None
        return True

    def fold_in(self, z: np.ndarray, known: np.ndarray) -> np.ndarray:
        """float32 [N]: the row ``z`` with its ``known`` entries kept and the rest predicted by folding it into
        the current fit (before any fit: the mean of the known entries)."""
        z = np.asarray(z, np.float32)
        if self.completer is None:
            fill = np.float32(np.mean(z[known])) if known.any() else np.float32(0.0)
            return np.where(known, z, fill)
        pred = self.completer.fold_in(np.where(known, z, np.nan), known)
        return np.where(known, z, pred).astype(np.float32)

    def factors(self) -> np.ndarray | None:
        """[N, r]: the column factors of active selection, the leading :data:`ACTIVE_RANK` right singular vectors
        of the fit's completed rows scaled by their singular values (None before any fit)."""
        if self.completer is None:
            return None
        if self._factors is None:
            P = np.asarray(self.completer.predict(), np.float64)
            _, s, Vt = np.linalg.svd(P, full_matrices=False)
            r = min(ACTIVE_RANK, int(np.sum(s > s[0] * 1e-6)))
            self._factors = (Vt[:r].T * s[:r]) / math.sqrt(P.shape[0])
        return self._factors


# ------------------------------------------------------------------------------------------------
# the end of the run: Z_completed and the error bars


def holdout_scores(pred: np.ndarray, Z: np.ndarray, held: np.ndarray, n_top: int = TOP) -> dict[str, float]:
    """One task's completion error on its held-back entries ``held`` (bool [N]) of the measured row ``Z``:
    RMSE, Spearman, and the top-``n_top`` precision scaled to the held-back sample (of the
    round(n_held · n_top / N) held-back entries predicted highest, the fraction among the as many
    measured highest: the share of the row's top n_top / N the completion finds, estimated on a
    uniform sample; its ``n_top_held`` says how many entries it rests on). Spearman is
    :func:`jaxforget.analysis.correlation`'s (NaN under 3 entries or for a constant prediction), the precision
    :func:`jaxforget.completion.precision_at_n` (ties at random, in expectation)."""
    from jaxforget.analysis import correlation
    from jaxforget.completion import precision_at_n

    p, z = pred[held], Z[held]
    n_top = min(n_top, max(1, Z.size // 20))
    if not p.size:
        return dict(n=0, rmse=math.nan, spearman=math.nan, precision=math.nan, top=n_top, n_top_held=0)
    k = max(1, int(round(p.size * n_top / Z.size)))
    return dict(n=int(p.size), rmse=float(np.sqrt(np.mean((p - z) ** 2))), spearman=correlation(p, z).spearman,
                precision=float(precision_at_n(p[None], z[None], np.ones((1, p.size), bool), k)), top=n_top,
                n_top_held=k)


def complete(Z: np.ndarray, measured: np.ndarray, holdout: np.ndarray, failed: np.ndarray, budget: Budget
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """The refit at the end of a budgeted run: ``Z_completed`` [M, N] (the measured entries kept, the rest from
    one fit of ``budget.method`` on every measured entry; NaN on failed rows) and the error bars (a second fit
    without the ``holdout`` entries, scored on them per task: :func:`holdout_scores`; pooled over tasks)."""
    from jaxforget.completion import fit_method

    ok = ~failed
    Z_completed = np.full(Z.shape, np.nan, np.float32)
    per_task: list[dict[str, Any] | None] = [None] * Z.shape[0]
    if ok.sum() < MIN_REFERENCE_ROWS:
        Z_completed[ok] = np.where(measured[ok], Z[ok], np.nanmean(np.where(measured[ok], Z[ok], np.nan)))
        return Z_completed, dict(per_task=per_task, pooled=None)
    Zok, mok, hok = Z[ok], measured[ok], holdout[ok]
    fit = fit_method(np.where(mok, Zok, 0.0), budget.method, mask_train=mok, seed=budget.seed)
    Z_completed[ok] = np.where(mok, Zok, np.asarray(fit.predict(), np.float32))
    pooled = None
    if hok.any():
        fit = fit_method(np.where(mok & ~hok, Zok, 0.0), budget.method, mask_train=mok & ~hok, seed=budget.seed)
        pred = np.asarray(fit.predict(), np.float32)
        for i, row in zip(np.flatnonzero(ok), range(Zok.shape[0])):
            per_task[i] = holdout_scores(pred[row], Zok[row], hok[row])
        scored = [s for s in per_task if s is not None and s["n"] > 0]
        err = np.concatenate([pred[r][hok[r]] - Zok[r][hok[r]] for r in range(Zok.shape[0])])
        sp, pr = (np.array([s[k] for s in scored]) for k in ("spearman", "precision"))
        pooled = dict(n=int(err.size), rmse=float(np.sqrt(np.mean(err**2))),
                      spearman_median=float(np.median(sp[np.isfinite(sp)])) if np.isfinite(sp).any() else math.nan,
                      precision_mean=float(np.mean(pr[np.isfinite(pr)])) if np.isfinite(pr).any() else math.nan)
    return Z_completed, dict(per_task=per_task, pooled=pooled)


def simulate(Z_full: np.ndarray, budget: Budget) -> dict[str, Any]:
    """A budgeted collection replayed on a fully measured ``Z_full`` [M, N], tasks in order one at a time: the
    same draws, fold-ins, active choices and final refit as ``collect --eval.budget`` (a measured entry is
    Z_full's), for benchmarks and tests that compare budgets without fine-tuning again. Returns ``measured``,
    ``holdout``, ``Z_fold`` (each row folded in as it arrived), ``fold`` (their held-back scores), ``Z_completed``
    and ``scores`` (:func:`complete`)."""
    M, N = Z_full.shape
    completer = RowCompleter(budget)
    measured, holdout = np.zeros((M, N), bool), np.zeros((M, N), bool)
    Z_fold = np.zeros((M, N), np.float32)
    fold = []
    for i in range(M):
        first = budget.first_round(i)
        second = budget.second_round(i, first, completer, np.where(first, Z_full[i], np.nan).astype(np.float32))
        measured[i], holdout[i] = first | second, budget.held_back(i, first)
        z = np.where(measured[i], Z_full[i], np.nan).astype(np.float32)
        pred = completer.fold_in(z, measured[i] & ~holdout[i])
        fold.append(holdout_scores(pred, Z_full[i], holdout[i]))
        Z_fold[i] = np.where(measured[i], Z_full[i], pred)
        completer.update(np.where(measured[: i + 1], Z_full[: i + 1], np.nan))
    Z = np.where(measured, Z_full, np.nan).astype(np.float32)
    Z_completed, scores = complete(Z, measured, holdout, np.zeros(M, bool), budget)
    return dict(measured=measured, holdout=holdout, Z_fold=Z_fold, fold=fold, Z_completed=Z_completed, scores=scores)
