"""``python -m jaxforget.replay``: sampling, mixing, the held-out guarantee, determinism, end to end."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re

import numpy as np
import pytest
from test_collect import TASKS, tiny
from jaxforget.replay import (ColumnSplit, ReplayConfig, Strategy, Trace, cli, fine_tune, load_context, main,
                              spread)
from jaxforget.data.batching import with_extra_rows
from jaxforget.replay_report import report_markdown, summarize
from jaxforget.selection import allocate, sample_without_replacement

TASK = TASKS[1]


# ------------------------------------------------------------------------------------------------
# sampling


def test_first_draw_follows_softmax_and_pairs_follow_sequential_probabilities():
    from scipy import stats

    scores, tau = np.array([0.3, 0.1, 0.0, -0.2, 0.25]), 0.2
    p = np.exp(scores / tau) / np.exp(scores / tau).sum()
    rng = np.random.default_rng(0)
    draws = np.array([sample_without_replacement(scores, 2, temperature=tau, rng=rng) for _ in range(20000)])
    first = np.bincount(draws[:, 0], minlength=5)
    assert stats.chisquare(first, 20000 * p).pvalue > 1e-3
    # P(i then j) = p_i * p_j / (1 - p_i): sampling without replacement, one draw after another
    exact = np.array([[p[i] * p[j] / (1 - p[i]) if i != j else 0 for j in range(5)] for i in range(5)])
    observed = np.zeros((5, 5))
    np.add.at(observed, (draws[:, 0], draws[:, 1]), 1)
    keep = exact.ravel() > 0
    assert stats.chisquare(observed.ravel()[keep], 20000 * exact.ravel()[keep]).pvalue > 1e-3
    # a wrong law is rejected by the same test (the test has power)
    uniform = np.full(5, 0.2)
    assert stats.chisquare(first, 20000 * uniform).pvalue < 1e-6


def test_draws_never_repeat_and_bad_scores_are_refused():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=50)
    for n in (0, 7, 50):
        idx = sample_without_replacement(scores, n, temperature=0.1, rng=rng)
        assert len(idx) == len(set(idx.tolist())) == n
    with pytest.raises(ValueError, match="cannot draw 51 distinct items from 50"):
        sample_without_replacement(scores, 51, temperature=0.1, rng=rng)
    with pytest.raises(ValueError, match="non-finite entries \\(first at 3\\)"):
        sample_without_replacement(np.array([0, 0, 0, np.nan]), 1, temperature=0.1, rng=rng)


def test_spread_is_even_and_complete():
    for n, slots in ((0, 5), (3, 7), (7, 7), (40, 12), (12, 40)):
        c = spread(n, slots)
        assert c.sum() == n and len(c) == slots and np.ptp(c) <= 1


def test_column_split_is_a_seeded_partition():
    a, b = ColumnSplit.make(100, 0.3, 4), ColumnSplit.make(100, 0.3, 4)
    assert np.array_equal(a.heldout, b.heldout) and a.heldout.size == 30
    assert np.array_equal(np.sort(np.concatenate([a.heldout, a.candidates])), np.arange(100))
    assert not np.array_equal(a.heldout, ColumnSplit.make(100, 0.3, 5).heldout)


def test_strategy_parsing_and_errors():
    assert Strategy.parse("offline:mf:rank=3").label == "offline:mf:rank=3"
    assert Strategy.parse("oracle") == Strategy("oracle") == Strategy.parse("oracle@softmax")
    for bad, msg in (("greedy", "unknown strategy 'greedy'"), ("online", "needs a completion method"),
                     ("random:mf", "takes no method"), ("offline:nope", "nope"),
                     ("offline:logistic_mf", "binary matrices")):
        with pytest.raises(ValueError, match=msg):
            Strategy.parse(bad)


def test_strategy_rules_parse_label_and_fail_clearly():
    s = Strategy.parse("offline:mf:rank=3@stratified")
    assert (s.kind, s.method, s.rule) == ("offline", "mf:rank=3", "stratified")
    assert s.label == "offline:mf:rank=3@stratified" and s.file_label == "offline_mf_rank=3@stratified"
    assert Strategy.parse("online:knn_baseline@zsoftmax").label == "online:knn_baseline@zsoftmax"
    assert Strategy.parse("random@stratified") == Strategy("random", None, "stratified")
    # no suffix: the paper's softmax, and the labels (file names, report rows) of before
    assert Strategy.parse("offline:mf") == Strategy("offline", "mf", "softmax")
    assert Strategy.parse("offline:mf").file_label == "offline_mf"
    # @ess=F: the draw's sharpness as an effective sample size, alone or with a rule
    assert Strategy.parse("oracle@ess=0.05") == Strategy("oracle", None, "softmax", 0.05)
    assert Strategy.parse("oracle@ess=0.05").label == "oracle@ess=0.05"
    assert Strategy.parse("offline:mf@stratified,ess=0.2").label == "offline:mf@stratified,ess=0.2"
    assert Strategy.parse("offline:mf@stratified,ess=0.2").file_label == "offline_mf@stratified_ess=0.2"
    assert Strategy.parse("oracle@softmax").label == "oracle"
    for bad, msg in (("none@zsoftmax", "none replays nothing, so it takes no selection rule"),
                     ("none@", "nothing after @"),
                     ("oracle@ess=0", "ess must be a fraction of the pool in (0, 1]"),
                     ("oracle@ess=x", "ess must be a fraction of the pool in (0, 1], got 'x'"),
                     ("random@ess=0.1", "random takes only @stratified"),
                     ("oracle@softmax,zsoftmax", "unknown selection rule 'zsoftmax'"),
                     ("oracle@greedy", "unknown selection rule 'greedy'; expected one of softmax, zsoftmax, "
                                       "stratified"),
                     ("random@zsoftmax", "random takes only @stratified"),
                     ("offline@stratified", "needs a completion method")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            Strategy.parse(bad)
    from jaxforget.replay import check_config

    with pytest.raises(ValueError, match="listed twice"):
        check_config(ReplayConfig(strategies=("oracle", "oracle@softmax")))


# ------------------------------------------------------------------------------------------------
# statistics and helpers used by the report


def test_paired_test_matches_scipy():
    from scipy import stats

    from jaxforget.analysis import paired_test

    rng = np.random.default_rng(0)
    x, y = rng.normal(0.1, 1, 9), rng.normal(0, 1, 9)
    res = paired_test(x, y)
    ref = stats.ttest_rel(x, y)
    assert res.n == 9 and abs(res.t - ref.statistic) < 1e-9 and abs(res.p_t - ref.pvalue) < 1e-9
    exact = stats.permutation_test((x - y,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                   alternative="two-sided")
    assert abs(res.p_perm - exact.pvalue) < 1e-9
    big = paired_test(rng.normal(1, 1, 30), np.zeros(30), n_permutations=2000)
    assert big.p_perm < 0.01 and big.p_t < 1e-4
    assert paired_test([1.0, np.nan], [0.0, 1.0]).n == 1


def test_complete_rows_equals_the_protocols_prediction():
    from jaxforget.completion import complete_rows, evaluate, planted_matrix

    Z = planted_matrix(12, 60, seed=3).Z
    res = evaluate(Z, test_rows=[10, 11], methods=["knn_baseline"], k=8, seeds=[5])
    pred = complete_rows(Z[:10], Z[10:], res.reveal[0], method="knn_baseline", seeds=5)
    np.testing.assert_allclose(pred, res.predictions["knn_baseline"][0], atol=1e-5)
    with pytest.raises(ValueError, match="no revealed entry"):
        complete_rows(Z[:10], Z[10:], np.zeros((2, 60), bool))


def test_config_from_dict_round_trips_a_run_config(tmp_path):
    from jaxforget.cli import config_from_dict
    from jaxforget.cli import to_jsonable
    from jaxforget.collect import CollectConfig

    config = tiny(tmp_path / "x", mesh=(1, 1, 1), shard="0/2")
    back = config_from_dict(CollectConfig, json.loads(json.dumps(to_jsonable(dataclasses.asdict(config)))))
    assert back == config
    with pytest.raises(ValueError, match=r"meta.json: config.train: unknown field\(s\) \['nope'\]"):
        config_from_dict(CollectConfig, {"train": {"nope": 1}}, "meta.json: config")


# ------------------------------------------------------------------------------------------------
# end to end on the tiny collected run


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("replay") / "out"


def _config(run_dir, out_dir, **changes) -> ReplayConfig:
    base = ReplayConfig(run=run_dir, tasks=(TASK,), ratio=0.15, k=5, seeds=(0,), quiet=True, out=out_dir,
                        strategies=("none", "random", "oracle", "offline:additive", "online:additive"))
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def context(run_dir, out_dir):
    return load_context(_config(run_dir, out_dir), echo=lambda *_: None)


def _replayed_rows(ctx, arrays, B: int, targets: list | None = None) -> list[int]:
    """Upstream indices found in the extra rows of the actual (1, B + R, T) input arrays (an example cut
    by the token budget matches as a prefix); ``targets`` collects each row's target tokens."""
    ids, attn, loss = arrays[0][0], arrays[1][0], arrays[2][0]
    found = []
    for r in range(B, ids.shape[0]):
        n = int(attn[r].sum())
        if n == 0:
            continue
        matches = [j for j, ex in enumerate(ctx.setup.upstream_tok)
                   if len(ex.ids) >= n and np.array_equal(ex.ids[:n], ids[r, :n])
                   and np.array_equal(ex.loss_mask[:n], loss[r, :n])]
        assert len(matches) >= 1, "an extra row is not an upstream example"
        found.append(matches[0])
        if targets is not None:
            targets.append(int(loss[r].sum()))
    return found


def test_heldout_examples_never_reach_a_batch_and_runs_are_deterministic(context):
    ctx = context
    s = Strategy.parse("online:additive")
    traces = [Trace(keep_arrays=True), Trace(keep_arrays=True)]
    res = [fine_tune(ctx, ctx.task_rows[0], 0, s, trace=tr) for tr in traces]
    B = ctx.collect_config.train.batch_size
    in_batches = [j for arrays in traces[0].arrays for j in _replayed_rows(ctx, arrays, B)]
    assert len(in_batches) == res[0]["replayed"].size > 0
    assert set(in_batches) <= set(ctx.columns.candidates.tolist())
    assert not set(in_batches) & set(ctx.columns.heldout.tolist())
    assert len(set(in_batches)) == len(in_batches)  # without replacement
    assert sorted(in_batches) == sorted(res[0]["replayed"].tolist())
    assert res[0]["revealed"].size == 5 and set(res[0]["revealed"].tolist()) <= set(ctx.columns.candidates.tolist())
    # same seed: the same batches, bit for bit, and the same forgetting
    for a, b in zip(traces[0].arrays, traces[1].arrays, strict=True):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(res[0]["z"], res[1]["z"])
    # another seed: other batches
    other = fine_tune(ctx, ctx.task_rows[0], 1, s)
    assert not np.array_equal(other["replayed"], res[0]["replayed"])


def test_arms_share_random_numbers_and_replay_the_same_tokens(context):
    ctx, row = context, context.task_rows[0]
    B = ctx.collect_config.train.batch_size
    traces = {label: Trace(keep_arrays=True) for label in ("random", "oracle", "oracle@ess=1")}
    res = {label: fine_tune(ctx, row, 0, Strategy.parse(label), trace=tr) for label, tr in traces.items()}
    # common random numbers: at ESS = the whole pool the oracle's draw is uniform, i.e. random's, example
    # for example and in the same order, so the two fine-tunings are one
    np.testing.assert_array_equal(res["oracle@ess=1"]["replayed"], res["random"]["replayed"])
    np.testing.assert_array_equal(res["oracle@ess=1"]["z"], res["random"]["z"])
    assert res["oracle@ess=1"]["ess"] == pytest.approx(1.0) and np.isinf(res["oracle@ess=1"]["temperature"])
    # budgets in tokens: every arm replays exactly the budget's loss tokens, counted in the batches trained on
    budget = int(res["random"]["token_budget"])
    pool_targets = np.array([ctx.setup.upstream_tok[j].n_targets for j in ctx.columns.candidates])
    n_replay = round(int(res["random"]["task_examples"]) * ctx.config.ratio)
    assert budget == round(n_replay * pool_targets.mean()) > 0
    for label, tr in traces.items():
        targets: list[int] = []
        for arrays in tr.arrays:
            _replayed_rows(ctx, arrays, B, targets)
        assert sum(targets) == int(res[label]["replayed_tokens"]) == budget, label
        assert res[label]["replay_token_share"] == pytest.approx(budget / (budget + res[label]["task_tokens"]))
        assert res[label]["stream"] == f"crn-v1:0,{row}"
    # the oracle's draw at --temperature 0.1 records its τ and the ESS that τ gives on this row
    from jaxforget.selection import ess_fraction
    assert res["oracle"]["temperature"] == 0.1
    assert res["oracle"]["ess"] == pytest.approx(ess_fraction(ctx.Z[row, ctx.columns.candidates], 0.1))
    # @ess=F finds the τ that gives it
    sharp = fine_tune(ctx, row, 0, Strategy.parse("oracle@ess=0.1"))
    assert sharp["ess"] == pytest.approx(0.1, rel=1e-4)
    # budgets in examples: the same number of examples in every arm, so their tokens differ
    ex = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, budget="examples"))
    by_examples = [fine_tune(ex, row, 0, Strategy.parse(label)) for label in ("random", "oracle")]
    assert [r["replayed"].size for r in by_examples] == [n_replay, n_replay]
    assert [int(r["token_budget"]) for r in by_examples] == [-1, -1]
    assert by_examples[0]["replayed_tokens"] == pool_targets[np.searchsorted(
        ctx.columns.candidates, by_examples[0]["replayed"])].sum()


def test_replay_weight_adds_the_replay_loss_to_the_tasks(context):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxforget.collect.engine import make_tx
    from jaxforget.models.logprobs import nll_sums
    from jaxforget.train import make_train_step, start_state

    ctx, row = context, context.task_rows[0]
    engine, t = ctx.engine, ctx.collect_config.train
    B = t.batch_size
    name = ctx.setup.task_names[row]
    batch = next(iter(engine.schedule(name, ctx.setup.task_train[name], 0).batches))
    extra = [ctx.setup.upstream_tok[j] for j in ctx.columns.candidates[:2]]
    mixed = with_extra_rows(batch, extra, engine.pad_id, B + 2, t.buckets)
    both = tuple(jnp.asarray(a) for a in (mixed.input_ids, mixed.attention_mask, mixed.loss_mask))
    # the gradient is that of mean(task NLL) + w * mean(replay NLL), each over its own target tokens (the
    # paper's loss would be one mean over all of them); one compiled step, checked against jax.grad of the formula
    w = 0.5
    step = make_train_step(engine.split, engine.tx, schedule=make_tx(t)[0].schedule(), task_rows=B, extra_weight=w)
    _, m = step(start_state(engine.base_params, engine.tx), *both)

    def loss(params, weight):
        sums, counts = nll_sums(nnx.merge(engine.split.graphdef, params, engine.split.frozen), *both)
        return sums[:B].sum() / counts[:B].sum() + weight * sums[B:].sum() / counts[B:].sum()

    def norm(tree):
        return float(jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(tree))))

    grad = jax.jit(jax.grad(loss))
    assert float(m["grad_norm"]) == pytest.approx(norm(grad(engine.base_params, w)), rel=1e-4)
    # and the replay rows count: it is not the task's gradient alone
    assert abs(float(m["grad_norm"]) - norm(grad(engine.base_params, 0.0))) > 1e-3 * float(m["grad_norm"])


def test_folds_cross_fit_every_task_independently_of_the_process_split(context):
    from jaxforget.replay import offline_scores, replay_rows

    names, Z = context.setup.task_names, context.Z
    config = dataclasses.replace(context.config, folds=2, tasks=())
    rows, folds = replay_rows(config, names, Z)
    assert rows == list(range(len(names))) and sorted(set(folds.values())) == [0, 1]
    # the folds are dealt over the run's rows, whichever tasks a process fine-tunes
    assert replay_rows(dataclasses.replace(config, tasks=(names[2],)), names, Z) == ([2], folds)
    ctx = dataclasses.replace(context, config=config, task_rows=rows, folds=folds)
    for row in rows:
        assert ctx.train_rows_for(row) == [i for i in rows if folds[i] != folds[row]]
    s = Strategy.parse("offline:additive")
    every = offline_scores(ctx, s, 0)
    alone = offline_scores(dataclasses.replace(ctx, task_rows=[2]), s, 0)
    assert list(alone) == [2]
    np.testing.assert_array_equal(alone[2][0], every[2][0])
    np.testing.assert_array_equal(alone[2][1], every[2][1])
    # a task's prediction sees only the rows outside its fold
    same = [i for i in rows if folds[i] == folds[2] and i != 2]
    other = [i for i in rows if folds[i] != folds[2]]
    for changed, moves in ((same, False), (other, True)):
        if not changed:
            continue
        Z2 = Z.copy()
        Z2[changed[0]] += 1.0
        pred = offline_scores(dataclasses.replace(ctx, Z=Z2, task_rows=[2]), s, 0)[2][0]
        assert (not np.array_equal(pred, every[2][0])) == moves


def test_families_come_from_the_worlds_description(context):
    from jaxforget.replay import families

    fam = families(context)  # the tiny world's tasks are hand-written: each is its own family's first member
    assert fam == {t: t for t in context.setup.task_names}


def test_online_probe_measures_only_unreplayed_examples_and_stratified_keeps_the_domain_mix(context):
    # k = the whole pool: the probe takes every example not replayed before the switch, and only those
    # (budgets in examples: each phase's draw is then exactly the proportional allocation of its count)
    ctx = dataclasses.replace(context, config=dataclasses.replace(context.config, k=context.columns.candidates.size,
                                                                  budget="examples"))
    trace = Trace()
    res = fine_tune(ctx, ctx.task_rows[0], 0, Strategy.parse("online:additive@stratified"), trace=trace)
    switch = max(1, math.ceil(ctx.config.online_fraction * len(trace.replayed)))
    before, after = np.concatenate(trace.replayed[:switch]), np.concatenate(trace.replayed[switch:])
    pool = ctx.columns.candidates
    assert before.size > 0 and after.size > 0
    assert not set(res["revealed"].tolist()) & set(before.tolist())
    assert sorted(res["revealed"].tolist()) == sorted(set(pool.tolist()) - set(before.tolist()))
    assert res["extra_forward"] == res["revealed"].size < ctx.config.k
    # @stratified: each draw (the random first phase, the predicted rest) keeps its candidates' domain mix
    domains = ctx.domains
    left = np.setdiff1d(pool, before)
    for drawn, candidates in ((before, pool), (after, left)):
        labels, sizes = np.unique(domains[candidates], return_counts=True)
        expected = allocate(sizes, drawn.size)
        assert [int(np.sum(domains[drawn] == lb)) for lb in labels] == expected.tolist()
    assert len(np.unique(domains[pool])) > 1


def test_measure_heldout_measures_the_heldout_and_replayed_examples_only(context):
    s = Strategy.parse("random")
    full = fine_tune(context, context.task_rows[0], 0, s)
    ctx = dataclasses.replace(context, config=dataclasses.replace(context.config, measure="heldout"))
    part = fine_tune(ctx, ctx.task_rows[0], 0, s)
    measured = np.union1d(ctx.columns.heldout, part["replayed"])
    np.testing.assert_array_equal(part["replayed"], full["replayed"])
    np.testing.assert_allclose(part["z"][measured], full["z"][measured], atol=1e-6)
    assert np.isnan(np.delete(part["z"], measured)).all() and np.isnan(part["candidate_forgetting"])
    np.testing.assert_allclose(part["heldout_forgetting"], full["heldout_forgetting"], atol=1e-6)
    assert part["status"] == "ok"


def test_oracle_replays_the_forgotten_and_reduces_their_forgetting(context):
    ctx = context
    row = ctx.task_rows[0]
    none = fine_tune(ctx, row, 0, Strategy("none"))
    oracle = fine_tune(ctx, row, 0, Strategy("oracle"))
    pool = ctx.columns.candidates
    z_true = ctx.Z[row]
    # the sampler followed the scores: the replayed examples are the more forgotten ones of the pool
    assert z_true[oracle["replayed"]].mean() > z_true[pool].mean()
    # and replaying them reduced their forgetting (the replayed distribution) relative to no replay
    assert oracle["z"][oracle["replayed"]].mean() < none["z"][oracle["replayed"]].mean() - 0.01
    # no replay reproduces the run's own fine-tuning exactly (same batches, same steps)
    np.testing.assert_array_equal(none["z"], ctx.Z[row])


def test_command_end_to_end_resumes_and_reports(run_dir, out_dir):
    config = _config(run_dir, out_dir)
    summary = main(config, echo=lambda *_: None)
    out = out_dir
    assert set(summary) == {"none", "random", "oracle", "offline:additive", "online:additive"}
    assert summary["none"]["extra_forward"] == 0 and summary["oracle"]["extra_forward"] == 25
    assert summary["online:additive"]["extra_forward"] == 5 and summary["offline:additive"]["extra_forward"] == 5
    rand = summary["random"]["vs_none"]
    assert rand["diff"] == pytest.approx(summary["random"]["heldout_forgetting"] - summary["none"]["heldout_forgetting"])
    assert rand["over_pairs"]["n"] == 1
    report = (out / "report.md").read_text()
    assert "| offline:additive |" in report and "held-out forgetting" in report
    assert "| domain | held-out examples |" in report and "MDE (80% power)" in report
    assert rand["n"] == 1 and rand["verdict"] == "undecided" and rand["p"] is None  # one task: nothing to test
    # the per-domain means, weighted by the domains' held-out counts, are the held-out forgetting
    saved = json.loads((out / "summary.json").read_text())
    counts = saved["heldout_per_domain"]
    assert sum(counts.values()) == 25 and len(counts) > 1
    for label, e in summary.items():
        weighted = sum(counts[d] * e["per_domain"][d] for d in counts if counts[d]) / 25
        assert weighted == pytest.approx(e["heldout_forgetting"], rel=1e-5)
    assert summary["none"]["replayed_domains"] == {}
    assert sum(summary["random"]["replayed_domains"].values()) == pytest.approx(1.0)
    tb = run_dir / "tb" / "replay_out"  # under the run's tb/, beside collect's events (issue 27)
    assert list(tb.glob("events.out.tfevents.*")) and not (out / "tb").exists()
    assert (out / "heldout_forgetting.png").stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    assert "negative = less forgetting" in saved["signs"]
    change = saved["summary"]["offline:additive"]["vs_none"]["relative_change"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0}).Reload()
    assert acc.Scalars("change_vs_none/offline_additive")[0].value == pytest.approx(change, rel=1e-6)
    assert saved["inference"]["unit"] == "task" and saved["inference"]["margin"] == 0.03
    assert "pairs_needed" not in json.dumps(saved) and "power" not in saved
    assert not [t for t in acc.Tags()["scalars"] if ":" in t]  # legal tags, no tensorboardX renaming
    files = sorted((out / "results").glob("*.npz"))
    assert len(files) == 5
    stamps = [f.stat().st_mtime_ns for f in files]
    lines: list[str] = []
    again = main(config, echo=lines.append)  # everything is on disk: nothing is recomputed
    end = lines[-1].splitlines()  # the closing block: report.md first, the figure, the run's tb
    assert end[0] == f"wrote       {out / 'report.md'}" and f"open first  {out / 'report.md'}" in end
    assert f"            {out / 'heldout_forgetting.png'}" in end and any(str(tb) in line for line in end)
    assert [f.stat().st_mtime_ns for f in files] == stamps and again == summary
    # a result from before the arms shared their random streams (no stream field) is redone
    online = out / "results" / f"{TASK}.s0.online_additive.npz"
    with np.load(online) as f:
        fields = {k: f[k] for k in f.files}
    np.savez(online, **{k: v for k, v in fields.items() if k != "stream"})
    said = []
    assert main(config, echo=said.append) == summary
    assert any("separate random streams; recomputing" in line for line in said)
    with np.load(online) as f:
        assert str(f["stream"]).startswith("crn-v1:0,") and str(f["online_probe"]) == "unreplayed"
        np.testing.assert_array_equal(f["z"], fields["z"])  # the same fine-tuning, bit for bit
        # the probe's signal: its forgetting at the switch and the same examples' at the end
        assert f["probe"].size == 5 and np.isfinite(f["probe_forgetting"]) and np.isfinite(f["probe_final_forgetting"])
        assert f["draw_ess"].shape == (2,) and f["draw_ess"][0] == pytest.approx(1.0)  # the random first phase
    probe = summary["online:additive"]["online_probe"]
    assert probe["probe_forgetting"] == pytest.approx(float(fields["probe_forgetting"]))
    assert probe["predicted_ess"] == pytest.approx(float(fields["ess"]))
    assert probe["random_by_construction"] == (float(fields["ess"]) >= 0.9)
    assert "| online:additive | " in report and "random by construction?" in report
    assert [f.stat().st_mtime_ns for f in files if f != online] == [t for f, t in zip(files, stamps) if f != online]
    with pytest.raises(Exception, match="another configuration .*ratio.*Or add --force to start afresh"):
        main(dataclasses.replace(config, ratio=0.3), echo=lambda *_: None)


def test_force_starts_a_replay_with_other_flags_afresh(tmp_path):
    from jaxforget.replay import forget_other_replay
    from jaxforget.store import RunDir

    store = RunDir(tmp_path / "replay")
    store.start(dict(config={"ratio": 0.15, "run": "runs/x"}))
    (store.root / "results").mkdir()
    (store.root / "results" / "t.s0.none.npz").write_bytes(b"x")
    said: list[str] = []
    forget_other_replay(store, {"ratio": 0.15, "run": "runs/x"}, said.append)  # the same flags: kept (a resume)
    assert (store.root / "results" / "t.s0.none.npz").exists() and store.meta_path.exists() and not said
    forget_other_replay(store, {"ratio": 0.3, "run": "runs/x"}, said.append)
    assert not (store.root / "results").exists() and not store.meta_path.exists()
    assert said == [f"--force: {store.root} held a replay with other flags; its results are deleted"]


def test_cli_errors_are_clear(run_dir, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nope")], "not a run directory"),
        ([str(run_dir), "--tasks", "nope"], "unknown task(s) ['nope']"),
        ([str(run_dir), "--strategies", "greedy"], "unknown strategy 'greedy'"),
        ([str(run_dir), "--ratio", "2"], "--ratio must be in [0, 1]"),
        ([str(run_dir), "--k", "1000", "--tasks", TASK], "--k 1000: only 25 candidate examples"),
        # refused before the run is loaded
        ([str(run_dir), "--temperature", "nan"], "--temperature must be a finite number > 0; got nan"),
        ([str(run_dir), "--temperature", "inf"], "--temperature must be a finite number > 0; got inf"),
        ([str(run_dir), "--ess", "0"], "--ess must be in (0, 1]; got 0.0"),
        ([str(run_dir), "--folds", "1"], "--folds must be 0 (off) or >= 2; got 1"),
        ([str(run_dir), "--replay-weight", "-1"], "--replay-weight must be >= 0; got -1.0"),
        ([str(run_dir), "--test-fraction", "1.5"], "--test-fraction must be in (0, 1); got 1.5"),
        ([str(run_dir), "--seeds", "-1"], "--seeds must be >= 0; got (-1,)"),
        ([str(run_dir), "--cluster", "family", "--equivalence-margin", "2"], "--equivalence-margin must be in (0, 1)"),
    ]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            cli(argv + ["--quiet", "--out", str(tmp_path / "o")])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err


def test_combinations_are_paired_by_seed_and_task():
    # the summary pairs each strategy's result with the reference's of the same (task, seed), averages the
    # seeds within each task, and compares over the tasks
    strategies = ["none", "random"]
    results = [dict(task=t, seed=s, strategy=st, status="ok", heldout_forgetting=h, candidate_forgetting=h,
                    replayed_forgetting=np.nan, extra_forward=0)
               for (t, s), (st, h) in itertools.product(
                   [("a", 0), ("a", 1), ("b", 0), ("b", 1)], [("none", 1.0), ("random", 0.5)])]
    results[-1]["heldout_forgetting"] = 0.7  # (b, 1) random
    results[2]["status"] = "failed"  # (a, 1) none: (a, 1) leaves the contrasts; task a keeps seed 0
    out = summarize(results, strategies, ["a", "b"], [0, 1])
    v = out["random"]["vs_none"]
    # task differences: a -0.5 (seed 0 only), b mean(-0.5, -0.3) = -0.4
    assert v["diff"] == pytest.approx(-0.45) and v["n"] == 2 and v["clusters"] == ["a", "b"]
    # one sign everywhere: mean F / mean F_ref - 1, negative = less forgetting (README, report.md, summary.json, TB)
    assert v["relative_change"] == pytest.approx(0.55 / 1.0 - 1)
    assert out["none"]["vs_random"]["relative_change"] == pytest.approx(1.0 / 0.55 - 1)
    report = report_markdown(out, header="# h")
    assert "| change vs none |" in report and "reduction" not in report
    lines = report.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| strategy | held-out forgetting |"))
    row = lines[header + 3]  # the random row of the strategy table
    assert row.startswith("| random |") and row.split(" | ")[4] == "-45.0%"
    assert lines[2].startswith("| strategy | vs | clusters n |")  # the primary table comes first
    assert "mean F / mean F_ref - 1 over the clusters; negative = less forgetting than the reference" in report
    assert out["random"]["per_task"] == {"a": 0.5, "b": pytest.approx(0.6)}
    assert v["over_clusters"]["n"] == 2 and v["over_pairs"]["n"] == 3


def test_summary_has_task_level_inference_a_secondary_pair_table_and_the_domain_tables():
    from scipy import stats
    from statsmodels.stats.power import TTestPower

    tasks, seeds = ["a", "b", "c"], [0, 1]
    domains = ["code", "code", "chat", "chat", "math", "math"]  # upstream columns 0..5
    heldout = np.array([0, 2, 3, 4])
    rng = np.random.default_rng(0)
    results, diffs = [], []
    for t, s in itertools.product(tasks, seeds):
        z_none = rng.uniform(0.5, 1.0, 6)
        z_rand = z_none - rng.uniform(0.0, 0.2, 6)
        for label, z, replayed in (("none", z_none, []), ("random", z_rand, [1, 5, 3])):
            results.append(dict(task=t, seed=s, strategy=label, status="ok", z=z.astype(np.float32),
                                heldout_forgetting=float(np.mean(z.astype(np.float32)[heldout])),
                                candidate_forgetting=0.0, replayed_forgetting=np.nan, extra_forward=0,
                                replayed=np.asarray(replayed, np.int64)))
            if label == "random":
                results[-1].update(ess=0.25 + 0.1 * s, temperature=0.1, replayed_tokens=1000 + 10 * s,
                                   replay_token_share=0.2)
        diffs.append(results[-1]["heldout_forgetting"] - results[-2]["heldout_forgetting"])
    out = summarize(results, ["none", "random"], tasks, seeds, domains=domains, heldout=heldout)
    v = out["random"]["vs_none"]
    d = np.asarray(diffs)  # [6] pairs, task-major
    task_d = d.reshape(3, 2).mean(1)
    x = np.array([[r["heldout_forgetting"] for r in results if r["task"] == t and r["strategy"] == "random"]
                  for t in tasks]).mean(1)
    y = x - task_d
    # primary: over the 3 tasks
    assert v["diff"] == pytest.approx(task_d.mean()) and v["n"] == 3
    assert v["ci"] == pytest.approx(list(stats.t.interval(0.95, 2, loc=task_d.mean(), scale=stats.sem(task_d))))
    assert v["p"] == pytest.approx(stats.ttest_1samp(task_d, 0).pvalue)
    ref = out["none"]["heldout_forgetting"]
    assert v["ref_mean"] == pytest.approx(ref) and v["relative_change"] == pytest.approx(task_d.mean() / ref)
    assert v["relative_ci"][0] < v["relative_change"] < v["relative_ci"][1]
    es = TTestPower().solve_power(effect_size=None, nobs=3, alpha=0.05, power=0.8)
    assert v["mde"] == pytest.approx(es * task_d.std(ddof=1), rel=1e-6)
    assert v["relative_change"] == pytest.approx(x.mean() / y.mean() - 1)
    assert "pairs_needed" not in v and "ci_over_tasks" not in v
    # secondary: over the 6 (task, seed) pairs, as before
    low, high = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    pairs = v["over_pairs"]
    assert pairs["n"] == 6 and pairs["sd_diff"] == pytest.approx(d.std(ddof=1))
    assert [pairs["ci_low"], pairs["ci_high"]] == pytest.approx([low, high])
    # the optional per-fine-tuning keys: means where present, None where absent
    assert out["random"]["ess"] == pytest.approx(0.3) and out["random"]["replayed_tokens"] == pytest.approx(1005)
    assert out["none"]["ess"] is None and out["none"]["temperature"] is None
    # per domain: the mean over the domain's held-out columns, then over task x seed
    z = {label: np.array([r["z"] for r in results if r["strategy"] == label], np.float64) for label in out}
    assert out["random"]["per_domain"] == pytest.approx(
        {"code": z["random"][:, 0].mean(), "chat": z["random"][:, [2, 3]].mean(), "math": z["random"][:, 4].mean()})
    assert out["random"]["replayed_domains"] == pytest.approx({"code": 1 / 3, "chat": 1 / 3, "math": 1 / 3})
    report = report_markdown(out, header="# h", heldout_per_domain={"chat": 2, "code": 1, "math": 1})
    lines = report.splitlines()
    row = next(ln for ln in lines if ln.startswith("| random | none | 3 |"))
    assert f"{v['diff']:+.4f} [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}]" in row and row.endswith(
        f"| {v['verdict']} | {v['mde']:.4f} ({v['mde_relative']:.1%}) |")
    secondary = lines.index("Secondary: pairs are not independent (seeds of one task); not used for any conclusion.")
    pair_row = next(ln for ln in lines[secondary:] if ln.startswith("| random | none |"))
    assert pair_row.startswith(f"| random | none | 6 | {d.mean():+.4f} | [{low:+.4f}, {high:+.4f}] |")
    assert secondary > lines.index(row)  # below the primary table
    strategy_row = next(ln for ln in lines if ln.startswith("| random | 0."))
    assert strategy_row.endswith("| 30.0% | 0.1 | 1,005 | 20.0% | 0 |")
    assert next(ln for ln in lines if ln.startswith("| none | 0.")).endswith("| — | — | — | — | 0 |")
    assert "| chat | 2 | " in report and "prospective" in report and "pairs needed" not in report.lower()
    # an identical strategy: no difference, no spread, equivalent
    same = [dict(r, strategy="copy") for r in results if r["strategy"] == "none"]
    tie = summarize(results + same, ["none", "copy"], tasks, seeds)["copy"]["vs_none"]
    assert tie["diff"] == 0 and tie["ci"] == [0.0, 0.0] and tie["p"] == 1
    # TOST: mean(F - 1.03 F_ref) = -0.03 mean(F_ref) < 0, with the SD of 0.03 F_ref over the tasks
    assert tie["p_tost"] == pytest.approx(stats.ttest_1samp(-0.03 * y, 0, alternative="less").pvalue)
    assert tie["p_tost"] < 0.05
    assert tie["verdict"] == "equivalent within ±3%" and tie["mde"] == 0
    tie_row = next(ln for ln in report_markdown(summarize(results + same, ["none", "copy"], tasks, seeds),
                                                header="# h").splitlines() if ln.startswith("| copy | none |"))
    assert tie_row.startswith("| copy | none | 3 | +0.0000 [+0.0000, +0.0000] |")
