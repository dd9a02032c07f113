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
    assert_png(viz.save_png(viz.r2_curve(r2), tmp_path / "r2.png"), (6.0, 4.0))
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
