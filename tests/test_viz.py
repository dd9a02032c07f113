import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxforget import viz


def assert_png(path, size_in: tuple[float, float], dpi: int = viz.DPI) -> np.ndarray:
    """The PNG opens, has figsize * dpi pixels and is not a single colour."""
    img = mpimg.imread(path)
    w, h = size_in
    assert img.shape[:2] == (round(h * dpi), round(w * dpi)), path
    assert img[..., :3].std() > 0.01, f"{path} is blank"
    return img


@pytest.fixture
def Z():
    rng = np.random.default_rng(0)
    Z = np.outer(rng.lognormal(size=12), rng.gamma(2.0, 0.1, 150)) + 0.05 * rng.normal(size=(12, 150))
    Z[3, 7] = np.nan
    return Z


def test_symmetric_range_is_robust():
    x = np.concatenate([np.linspace(-0.3, 0.3, 999), [50.0], [np.nan]])
    assert viz.symmetric_range(x, 0.99) == pytest.approx(0.2976, abs=1e-3)
    assert viz.symmetric_range(x, 1.0) == 50.0
    assert viz.symmetric_range(np.zeros(5)) == 1.0
    assert viz.symmetric_range([np.nan]) == 1.0


def test_heatmap_and_panels(tmp_path, Z):
    names = [f"task{i}" for i in range(12)]
    fig = viz.heatmap(Z, vmax=0.5, title="Z", row_labels=names)
    assert_png(viz.save_png(fig, tmp_path / "h.png"), (10.0, 6.0))
    fig = viz.panels([("a", Z), ("b", -Z), ("c", Z * 0)], vmax=0.5, suptitle="three")
    assert_png(viz.save_png(fig, tmp_path / "p.png"), (16.0, 5.0))


def test_heatmap_colours_are_centred_at_zero(tmp_path):
    # Left half -v, right half +v: the two halves must be blue and red, and 0 white.
    Z = np.concatenate([np.full((4, 10), -0.4), np.zeros((4, 10)), np.full((4, 10), 0.4)], axis=1)
    fig = viz.heatmap(Z, vmax=0.5, marginals=False)
    img = assert_png(viz.save_png(fig, tmp_path / "c.png"), (10.0, 6.0))
    row = img[img.shape[0] // 2]
    x0, x1 = int(0.1 * img.shape[1]), int(0.86 * img.shape[1])  # the main axes' horizontal extent
    left, mid, right = (row[x0 + (x1 - x0) * f // 6, :3] for f in (1, 3, 5))
    assert left[2] > left[0] + 0.2  # blue
    assert right[0] > right[2] + 0.2  # red
    assert np.all(mid > 0.95)  # white


def test_curves_distributions_scatter(tmp_path, Z):
    r2 = {"row_mean": 0.2, "col_mean": 0.4, "additive": 0.6, "multiplicative": 0.8, "rank_1": 0.8, "rank_2": 0.9}
    assert_png(viz.save_png(viz.r2_curve(r2), tmp_path / "r2.png"), (9.0, 4.0))
    fig = viz.task_distributions(Z, [f"t{i}" for i in range(12)], title="per task")
    assert_png(viz.save_png(fig, tmp_path / "d.png"), (8.0, 4.0))  # 12 tasks: the minimum height
    big = viz.task_distributions(np.tile(Z, (10, 1)), [f"t{i}" for i in range(120)], title="per task")
    assert_png(viz.save_png(big, tmp_path / "d2.png"), (8.0, 0.16 * 120 + 1.5))
    rng = np.random.default_rng(1)
    panel_list = [viz.Panel(rng.normal(size=50), rng.normal(size=50), "x", "alpha", "Pearson 0.1"),
                  viz.Panel(["a", "b"] * 25, rng.normal(size=50), "domain", "beta"),
                  viz.Panel([None] + list(rng.normal(size=49)), rng.normal(size=50), "x2", "alpha")]
    assert_png(viz.save_png(viz.scatter_grid(panel_list, title="t"), tmp_path / "s.png"), (12.6, 3.9))
    fig = viz.r2_over_steps([0, 10, 20], [None, 0.9, 0.8], [0.0, 0.1, 0.2])
    assert_png(viz.save_png(fig, tmp_path / "steps.png"), (6.0, 4.0))


def test_block_heatmap_orders_blocks_first_and_samples_the_rest(tmp_path, Z):
    R = Z - Z.mean()
    blocks = [(np.array([2, 5]), np.array([10, 11, 12])), (np.array([5, 7]), np.array([12, 40]))]
    fig, order = viz.block_heatmap(R, blocks, vmax=0.5, title="blocks", max_cols=20, seed=3)
    assert_png(viz.save_png(fig, tmp_path / "b.png"), (10.0, 6.0))
    assert order["rows"][:3] == [2, 5, 7] and sorted(order["rows"]) == list(range(12))
    assert order["cols"][:4] == [10, 11, 12, 40] and len(order["cols"]) == 20 and len(set(order["cols"])) == 20
    _, again = viz.block_heatmap(R, blocks, vmax=0.5, title="blocks", max_cols=20, seed=3)
    assert again["cols"] == order["cols"]  # the sample is seeded


def _axis_boxes(fig):
    """Pixel boxes of every axis' tick labels and label, as drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    return [b for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            if (b := axis.get_tightbbox(renderer)) is not None and b.width > 0]


LONG_NAMES = ["atlas_counterfactual", "dialogue_reply", "reverse_letters", "compare_numbers", "arith_reversed",
              "a_very_long_task_name_xx", "shout_reply"] * 3  # 21 tasks, as the built-in world


def test_long_task_names_and_axis_labels_stay_on_the_canvas(tmp_path):
    Z = np.random.default_rng(0).normal(size=(21, 300))
    for name, fig, size in (
            ("h.png", viz.heatmap(Z, vmax=1.0, title="t", row_labels=LONG_NAMES), (10.0, 6.0)),
            ("p.png", viz.panels([("Z", Z), ("fit", Z), ("residual", Z)], vmax=1.0, row_labels=LONG_NAMES),
             (16.0, 5.0))):
        assert_png(viz.save_png(fig, tmp_path / name), size)  # the canvas keeps its size
        for box in _axis_boxes(fig):
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, (name, box)
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert labels == LONG_NAMES, name  # task names, not 0.0, 2.5, ...


def test_matrix_ticks_are_integers_and_colour_bars_say_what_they_show(tmp_path):
    Z = np.random.default_rng(0).normal(size=(21, 7))
    fig = viz.panels([("Z", Z), ("fit", Z)], vmax=1.0)  # no names: indices
    viz.save_png(fig, tmp_path / "p.png")
    for ax in (fig.axes[0], fig.axes[3]):
        for ticks in (ax.get_yticks(), ax.get_xticks()):
            assert np.all(ticks == np.round(ticks)), ticks
    fig = viz.heatmap(Z, vmax=1.0, cbar_label="component 2 = σ u vᵀ (change in log-perplexity)")
    assert fig.axes[-1].get_ylabel() == "component 2 = σ u vᵀ (change in log-perplexity)"
    assert viz.heatmap(Z, vmax=1.0).axes[-1].get_ylabel() == "Z (change in log-perplexity)"
    fig, _ = viz.block_heatmap(Z, [], vmax=1.0, title="b")
    assert fig.axes[-1].get_ylabel().startswith("residual")
    fig = viz.r2_curve({"additive": 0.4, "rank_1": 0.8}, labels={"additive": "additive (ridge ALS, λ 15/10)"})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][1] == "additive (ridge ALS, λ 15/10): 0.400"


def _texts(fig):
    """Every piece of text drawn on a figure (tick labels, labels, titles, annotations, legends)."""
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


def test_figure_defects_of_issue_27_stay_fixed(tmp_path, Z):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    names = [f"task_{i:02d}" for i in range(12)]
    r2 = {"row_mean": 0.06, "col_mean": 0.2, "additive": 0.14, "additive_exact": 0.26, "multiplicative": 0.79,
          "rank_1": 0.79, "rank_2": 0.92, "rank_3": 1.0}
    curve = viz.r2_curve(r2)
    dist = viz.task_distributions(Z, names, title="per task")
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=12), rng.normal(size=12)
    grid = viz.scatter_grid([viz.Panel(xs, ys, "loss drop", "α", names=names)], title="α",
                            subtitle="α_i: the task's weight")
    figs = dict(curve=curve, dist=dist, grid=grid, heat=viz.heatmap(Z, vmax=0.5, row_labels=names),
                panels=viz.panels([("Z", Z), ("fit", Z)], vmax=0.5, row_labels=names))
    for name, fig in figs.items():
        viz.save_png(fig, tmp_path / f"{name}.png")
        small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < viz.LABEL_PT]
        assert not small, (name, small)  # task names and every other label at >= 7 pt
    # r2_vs_rank: the top point's value label inside the axes (not clipped), the legend beside them (over no line)
    renderer = FigureCanvasAgg(curve).get_renderer()
    ax = curve.axes[0]
    top = max((t for t in ax.texts), key=lambda t: t.get_window_extent(renderer).y1)
    assert top.get_text() == "1.000" and top.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y1
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    # task_distributions says that it leaves the extreme examples out
    assert "not drawn" in dist.axes[0].get_xlabel()
    # correlations: the extreme dots named by their task (all of them when few), at most NAMED_POINTS
    named = sorted(t.get_text() for t in grid.axes[0].texts)
    assert 6 <= len(named) <= viz.NAMED_POINTS and names[int(np.argmax(ys))] in named and names[int(np.argmax(xs))] in named
    small = viz.scatter_grid([viz.Panel(xs[:5], ys[:5], "x", "α", names=names[:5])], title="α")
    assert sorted(t.get_text() for t in small.axes[0].texts) == names[:5]
    assert not viz.informative(viz.Panel([12] * 5, rng.normal(size=5), "steps", "α"))  # constant x: no panel
