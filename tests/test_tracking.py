import io
import json

import numpy as np
import pytest
from PIL import Image

from jaxforget.tracking import JsonlTracker, NullTracker, TensorBoardTracker, Tracker, image_array, open_tracker


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def test_image_array_accepts_arrays_png_bytes_and_files(tmp_path, rgb):
    np.testing.assert_array_equal(image_array(rgb), rgb)
    np.testing.assert_array_equal(image_array(_png(rgb)), rgb)
    (tmp_path / "a.png").write_bytes(_png(rgb))
    np.testing.assert_array_equal(image_array(tmp_path / "a.png"), rgb)
    gray = image_array(np.linspace(0, 1, 30).reshape(5, 6))
    assert gray.shape == (5, 6, 1) and gray.dtype == np.uint8 and gray.max() == 255 and gray.min() == 0
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 5\)"):
        image_array(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"finite values in \[0, 1\]"):
        image_array(np.full((2, 2), 2.0))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_array(tmp_path / "missing.png")


def test_jsonl_tracker_records_every_kind(tmp_path, rgb):
    path = tmp_path / "logs" / "events.jsonl"
    with JsonlTracker(path) as t:
        t.scalar("loss", 1.5, step=3)
        t.scalar("r2", float("nan"), step=4)
        t.scalars({"a": 1, "b": 2}, step=5, prefix="x/")
        t.image("fig/heat map", _png(rgb), step=2)
        t.histogram("alpha", [1.0, 2.0, np.nan, 3.0])
        t.text("report", "# hi")
        t.hparams({"rank": 5, "path": tmp_path}, {"r2": 0.9})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = [(r["kind"], r["name"], r["step"]) for r in records]
    assert kinds == [("scalar", "loss", 3), ("scalar", "r2", 4), ("scalar", "x/a", 5), ("scalar", "x/b", 5),
                     ("image", "fig/heat map", 2), ("histogram", "alpha", 0), ("text", "report", 0),
                     ("hparams", "hparams", 0)]
    assert records[0]["value"] == 1.5 and records[1]["value"] is None
    image = records[4]
    assert image["shape"] == [12, 20, 3]
    np.testing.assert_array_equal(np.asarray(Image.open(path.parent / image["file"])), rgb)
    hist = records[5]
    assert hist["count"] == 3 and hist["mean"] == 2.0 and sum(hist["counts"]) == 3
    assert records[6]["text"] == "# hi"
    assert records[7]["hparams"] == {"rank": 5, "path": str(tmp_path)} and records[7]["metrics"] == {"r2": 0.9}


def test_tensorboard_tracker_writes_readable_events(tmp_path, rgb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardTracker(tmp_path / "tb") as t:
        for step in range(3):
            t.scalar("r2/rank_1", 0.5 + 0.1 * step, step)
        t.image("heatmap", rgb, step=1)
        t.image("gray", np.zeros((4, 4)), step=0)
        t.histogram("beta", np.arange(10.0))
        t.histogram("empty", [np.nan])  # nothing finite: skipped, not an error
        t.text("report", "hello")
        t.hparams({"rank": 3, "path": tmp_path}, {"r2": 0.9})  # must not clobber the events above
    assert (tmp_path / "tb" / "hparams").is_dir()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert [round(e.value, 5) for e in acc.Scalars("r2/rank_1")] == [0.5, 0.6, 0.7]
    assert set(tags["images"]) == {"heatmap", "gray"}
    img = acc.Images("heatmap")[0]
    assert (img.height, img.width, img.step) == (12, 20, 1)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.encoded_image_string))), rgb)
    assert tags["histograms"] == ["beta"]
    assert "report/text_summary" in tags["tensors"]


def test_null_tracker_and_factory(tmp_path):
    with NullTracker() as t:
        t.scalar("x", 1.0)
        t.image("y", b"not even a png")  # the null backend does not look at its arguments
    assert isinstance(open_tracker("none"), Tracker)
    with open_tracker("jsonl", tmp_path / "e.jsonl") as t:
        assert isinstance(t, JsonlTracker)
    with pytest.raises(ValueError, match="needs a path"):
        open_tracker("tensorboard")
    with pytest.raises(ValueError, match="unknown tracker 'wandb'"):
        open_tracker("wandb", tmp_path)


def test_close_is_idempotent(tmp_path):
    t = JsonlTracker(tmp_path / "e.jsonl")
    t.close()
    t.close()
    tb = TensorBoardTracker(tmp_path / "tb")
    tb.close()
    tb.close()


def test_tensorboard_tags_are_made_legal_without_a_log_line(tmp_path, caplog):
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jaxforget.tracking import tensorboard_tag

    assert tensorboard_tag("heldout_forgetting/offline:mf:rank=3") == "heldout_forgetting/offline_mf_rank_3"
    assert tensorboard_tag("/a b/c-d.e") == "a_b/c-d.e"
    with caplog.at_level(logging.INFO), TensorBoardTracker(tmp_path / "tb") as t:
        t.scalar("change_vs_none/offline:additive", -0.2)
        t.histogram("z/online:mf", [1.0, 2.0])
        t.text("report/offline:mf", "x")
    assert "is illegal" not in caplog.text  # tensorboardX renames with an INFO line per call
    tags = EventAccumulator(str(tmp_path / "tb")).Reload().Tags()
    assert tags["scalars"] == ["change_vs_none/offline_additive"] and tags["histograms"] == ["z/online_mf"]
