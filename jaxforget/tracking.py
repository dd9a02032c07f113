"""One small experiment-tracking interface with TensorBoard, JSON-lines and null backends.

Entry points (``collect``, ``analyze``, ...) log through a :class:`Tracker` and never import a
backend themselves, so the same code writes TensorBoard events in a run, JSON lines in a test and
nothing in a library call::

    with open_tracker("tensorboard", RUN / "tb" / "analyze") as tb:
        tb.scalar("r2/rank_1", 0.93, step=0)
        tb.image("heatmap/sorted", "heatmap_sorted.png")      # PNG file, PNG bytes or [H, W(, C)] array
        tb.histogram("alpha", alpha)
        tb.text("report", markdown)
        tb.hparams({"max_rank": 5}, {"r2/rank_1": 0.93})

Backends: :class:`TensorBoardTracker` (tensorboardX, no TensorFlow needed), :class:`JsonlTracker`
(one JSON object per event in a ``.jsonl`` file; images are stored as PNG files beside it) and
:class:`NullTracker`. All are context managers; ``close`` is idempotent.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

ImageLike = np.ndarray | bytes | str | Path
"""An image: ``[H, W]`` or ``[H, W, C]`` (C = 1, 3 or 4) array, uint8 in 0..255 or float in [0, 1];
or encoded PNG bytes; or the path of a PNG file."""


def image_array(image: ImageLike) -> np.ndarray:
    """``image`` as an ``[H, W, C]`` uint8 array (C = 1, 3 or 4). Raises ValueError naming the problem."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {path}: no such file")
        image = path.read_bytes()
    if isinstance(image, bytes):
        from PIL import Image  # a dependency of matplotlib; imported only when a PNG is decoded

        with Image.open(io.BytesIO(image)) as im:
            image = np.asarray(im.convert("RGBA") if im.mode not in ("L", "RGB", "RGBA") else im)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape:
        raise ValueError(f"an image must be [H, W] or [H, W, C] with C in (1, 3, 4); got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, np.float64)
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ValueError("a float image must hold finite values in [0, 1]")
        arr = np.round(arr * 255).astype(np.uint8)
    return arr


class Tracker:
    """Base class and null backend: every method accepts its arguments and does nothing.

    ``step`` is the global step (an int); ``name`` a slash-separated tag (``"r2/rank_1"``).
    """

    def scalar(self, name: str, value: float, step: int = 0) -> None:
        """One scalar value."""

    def scalars(self, values: Mapping[str, float], step: int = 0, *, prefix: str = "") -> None:
        """Several scalars at one step, each logged as ``prefix + key``."""
        for key, value in values.items():
            self.scalar(prefix + key, value, step)

    def image(self, name: str, image: ImageLike, step: int = 0) -> None:
        """One image (see :data:`ImageLike`)."""

    def histogram(self, name: str, values: Any, step: int = 0) -> None:
        """The distribution of ``values`` (any shape; non-finite values are dropped)."""

    def text(self, name: str, text: str, step: int = 0) -> None:
        """A text (markdown in TensorBoard)."""

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The run's hyperparameters and its final metrics (TensorBoard's HParams tab)."""

    def flush(self) -> None:
        """Write buffered events."""

    def close(self) -> None:
        """Flush and release the backend; further calls are errors for real backends."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullTracker(Tracker):
    """Logs nothing (library calls, dry runs)."""


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, np.float64).ravel()
    return arr[np.isfinite(arr)]


def _hparam_value(v: Any) -> bool | int | float | str:
    # TensorBoard's HParams plugin accepts only bool, number and string values.
    return v if isinstance(v, (bool, int, float, str)) else str(v)


_ILLEGAL_TAG = re.compile(r"[^-/\w.]")  # what tensorboardX renames (with an INFO line per call)


def tensorboard_tag(name: str) -> str:
    """``name`` as a legal TensorBoard tag: characters other than letters, digits, ``_ - . /`` become
    ``_`` and leading slashes go (``heldout/offline:mf`` -> ``heldout/offline_mf``), as tensorboardX
    would rename it, but without its "Summary name ... is illegal" log line."""
    return _ILLEGAL_TAG.sub("_", name).lstrip("/")


class TensorBoardTracker(Tracker):
    """TensorBoard event files under ``logdir`` via tensorboardX (no TensorFlow needed). Tags are
    :func:`tensorboard_tag` of the names given."""

    def __init__(self, logdir: str | Path):
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(logdir=str(self.logdir))
        self._closed = False

    def scalar(self, name: str, value: float, step: int = 0) -> None:
        self._writer.add_scalar(tensorboard_tag(name), float(value), step)

    def image(self, name: str, image: ImageLike, step: int = 0) -> None:
        arr = image_array(image)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        self._writer.add_image(tensorboard_tag(name), arr, step, dataformats="HWC")

    def histogram(self, name: str, values: Any, step: int = 0) -> None:
        values = _finite(values)
        if values.size:  # tensorboardX refuses an empty histogram
            self._writer.add_histogram(tensorboard_tag(name), values, step)

    def text(self, name: str, text: str, step: int = 0) -> None:
        self._writer.add_text(tensorboard_tag(name), text, step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        # tensorboardX writes hparams through a second writer in a subdirectory; name it (its default
        # is a timestamp) and never "." -- that writer's event file would overwrite this one's.
        self._writer.add_hparams({k: _hparam_value(v) for k, v in hparams.items()},
                                 {k: float(v) for k, v in metrics.items()}, name="hparams")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._writer.close()
            self._closed = True


class JsonlTracker(Tracker):
    """One JSON object per event in ``path`` (``{"kind", "name", "step", "time", ...}``).

    Scalars carry ``value`` (NaN/inf as null); images are written as PNG files in
    ``<path stem>_images/`` and the record carries ``file`` (relative to ``path``'s folder) and
    ``shape``; histograms carry ``count``, ``min``, ``max``, ``mean``, ``std`` and 30-bin ``counts`` /
    ``edges``; texts carry ``text``; hparams carry ``hparams`` and ``metrics``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._image_dir = self.path.with_name(f"{self.path.stem}_images")

    def _write(self, kind: str, name: str, step: int, **fields) -> None:
        record = dict(kind=kind, name=name, step=int(step), time=time.time(), **fields)
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")

    def scalar(self, name: str, value: float, step: int = 0) -> None:
        value = float(value)
        self._write("scalar", name, step, value=value if math.isfinite(value) else None)

    def image(self, name: str, image: ImageLike, step: int = 0) -> None:
        from PIL import Image

        arr = image_array(image)
        self._image_dir.mkdir(exist_ok=True)
        file = self._image_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}_{int(step)}.png"
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(file)
        self._write("image", name, step, file=str(file.relative_to(self.path.parent)), shape=list(arr.shape))

    def histogram(self, name: str, values: Any, step: int = 0) -> None:
        values = _finite(values)
        summary: dict[str, Any] = dict(count=int(values.size))
        if values.size:
            counts, edges = np.histogram(values, bins=30)
            summary.update(min=float(values.min()), max=float(values.max()), mean=float(values.mean()),
                           std=float(values.std()), counts=counts.tolist(), edges=edges.tolist())
        self._write("histogram", name, step, **summary)

    def text(self, name: str, text: str, step: int = 0) -> None:
        self._write("text", name, step, text=str(text))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        metrics = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        self._write("hparams", "hparams", 0, hparams={k: _hparam_value(v) for k, v in hparams.items()},
                    metrics=metrics)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def open_tracker(kind: Literal["tensorboard", "jsonl", "none"], path: str | Path | None = None) -> Tracker:
    """A tracker by name: ``tensorboard`` (``path`` = log directory), ``jsonl`` (``path`` = file) or ``none``."""
    if kind == "none":
        return NullTracker()
    if path is None:
        raise ValueError(f"tracker {kind!r} needs a path")
    if kind == "tensorboard":
        return TensorBoardTracker(path)
    if kind == "jsonl":
        return JsonlTracker(path)
    raise ValueError(f"unknown tracker {kind!r}; expected 'tensorboard', 'jsonl' or 'none'")
