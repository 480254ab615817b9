"""Semantic-segmentation metrics: a streaming, mergeable confusion matrix (numpy only).

The numbers match chainercv's ``calc_semantic_segmentation_confusion`` /
``calc_semantic_segmentation_iou`` that the authors' ``eval_cam.py`` and ``eval_sem_seg.py`` use
(../shared/method.md 8, 9.4):

- rows are ground truth, columns are predictions, for ``num_classes`` = K + 1 classes
  (0 = background);
- a ground-truth pixel outside ``0..K`` (255 = ignore, or chainercv's -1) is not counted;
- a *prediction* outside ``0..K`` is a bug in the caller (e.g. an unmapped 255), so it raises
  instead of being silently dropped; callers that want the authors' "255 -> 0" do it explicitly;
- IoU_c = TP / (GT_c + Pred_c - TP); a class absent from both ground truth and prediction has IoU
  NaN and is left out of the mean (``np.nanmean``), exactly as chainercv does.

Shards of an evaluation (one job per shard) each fill a matrix; ``merge``/``+`` sums them, and
``save``/``load`` round-trip them through JSON or ``.npz`` so the merge can happen in another job.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.store import temp_file

__all__ = ["ConfusionMatrix", "confusion_matrix"]


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """The (num_classes x num_classes) int64 confusion of one label map pair (rows = GT)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} != prediction shape {pred.shape}")
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise TypeError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    n = int(num_classes)
    if pred.size:
        lo, hi = int(pred.min()), int(pred.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"prediction holds label {bad}, outside 0..{n - 1} (num_classes={n}); "
                "map ignore/void predictions (e.g. 255) to a class before scoring"
            )
    gt64 = gt.reshape(-1).astype(np.int64, copy=False)
    valid = (gt64 >= 0) & (gt64 < n)
    index = gt64[valid] * n + pred.reshape(-1)[valid].astype(np.int64, copy=False)
    return np.bincount(index, minlength=n * n).reshape(n, n)


class ConfusionMatrix:
    """Accumulates a confusion matrix over label maps; rows = ground truth, columns = prediction.

    >>> cm = ConfusionMatrix(3)
    >>> cm.update(np.array([[0, 1], [2, 255]]), np.array([[0, 1], [1, 0]]))
    >>> cm.iou().round(3).tolist()
    [1.0, 0.5, 0.0]
    """

    def __init__(self, num_classes: int, matrix: np.ndarray | None = None) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        if matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        else:
            matrix = np.asarray(matrix)
            if matrix.shape != (self.num_classes, self.num_classes):
                raise ValueError(
                    f"matrix shape {matrix.shape} does not fit num_classes={self.num_classes}"
                )
            if (matrix < 0).any():
                raise ValueError("a confusion matrix cannot hold negative counts")
            self.matrix = matrix.astype(np.int64, copy=True)

    # -- accumulation -------------------------------------------------------------------------
    def update(self, gt: np.ndarray, pred: np.ndarray) -> ConfusionMatrix:
        """Add one (ground truth, prediction) pair of equal shape; returns self for chaining."""
        self.matrix += confusion_matrix(gt, pred, self.num_classes)
        return self

    def update_many(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> ConfusionMatrix:
        for gt, pred in pairs:
            self.update(gt, pred)
        return self

    def merge(self, *others: ConfusionMatrix) -> ConfusionMatrix:
        """A new matrix that is the sum of this one and ``others`` (shards of one evaluation)."""
        out = ConfusionMatrix(self.num_classes, self.matrix)
        for other in others:
            if not isinstance(other, ConfusionMatrix):
                raise TypeError(f"cannot merge a {type(other).__name__} into a ConfusionMatrix")
            if other.num_classes != self.num_classes:
                raise ValueError(
                    f"cannot merge matrices of {self.num_classes} and {other.num_classes} classes"
                )
            out.matrix += other.matrix
        return out

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def __radd__(self, other: Any) -> ConfusionMatrix:
        if other == 0:  # lets sum(shards) work
            return self.merge()
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfusionMatrix)
            and other.num_classes == self.num_classes
            and np.array_equal(other.matrix, self.matrix)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.n_pixels})"

    # -- scores ---------------------------------------------------------------------------------
    @property
    def n_pixels(self) -> int:
        return int(self.matrix.sum())

    def _ratio(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1), np.nan)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN where the class is absent from both ground truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=1) + self.matrix.sum(axis=0) - np.diag(self.matrix)
        return self._ratio(tp, union.astype(np.float64))

    def precision(self) -> np.ndarray:
        """TP / predicted pixels per class; NaN where the class is never predicted."""
        return self._ratio(np.diag(self.matrix).astype(np.float64), self.matrix.sum(axis=0))

    def recall(self) -> np.ndarray:
        """TP / ground-truth pixels per class; NaN where the class is absent from the GT."""
        return self._ratio(np.diag(self.matrix).astype(np.float64), self.matrix.sum(axis=1))

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is defined (chainercv's nanmean); NaN if none."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """A JSON-ready summary: mIoU, per-class IoU/precision/recall by name, the raw matrix.

        NaN (class absent) becomes ``None`` so the file is strict JSON. ``class_names`` must
        list all ``num_classes`` names, background first; default ``class_0 ... class_K``.
        """
        names = list(class_names) if class_names is not None else [
            f"class_{i}" for i in range(self.num_classes)
        ]
        if len(names) != self.num_classes:
            raise ValueError(
                f"{len(names)} class names for {self.num_classes} classes "
                "(list the background first)"
            )

        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return {name: _nan_to_none(v) for name, v in zip(names, values, strict=True)}

        return {
            "num_classes": self.num_classes,
            "miou": _nan_to_none(self.miou()),
            "pixel_accuracy": _nan_to_none(self.pixel_accuracy()),
            "n_pixels": self.n_pixels,
            "class_names": names,
            "iou": per_class(self.iou()),
            "precision": per_class(self.precision()),
            "recall": per_class(self.recall()),
            "confusion": self.matrix.tolist(),
        }

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as ``.json`` (readable) or ``.npz`` (compact), by suffix."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".npz"):
            raise ValueError(f"{path}: save a confusion matrix as .json or .npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_file(path.parent, prefix=f".{path.name}.", suffix=suffix)
        try:
            with open(tmp, "wb") as fh:
                if suffix == ".json":
                    payload = {"num_classes": self.num_classes, "confusion": self.matrix.tolist()}
                    fh.write((json.dumps(payload) + "\n").encode())
                else:
                    np.savez_compressed(fh, confusion=self.matrix)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConfusionMatrix:
        """Read a matrix written by :meth:`save`, or a metrics JSON written from :meth:`to_dict`."""
        path = Path(path)
        if path.suffix.lower() == ".npz":
            with np.load(path) as data:
                matrix = data["confusion"]
            return cls(matrix.shape[0], matrix)
        payload = json.loads(path.read_text())
        matrix = np.asarray(payload["confusion"], dtype=np.int64)
        if matrix.ndim != 2:
            raise ValueError(f"{path}: 'confusion' is not a square matrix")
        return cls(int(payload.get("num_classes", matrix.shape[0])), matrix)


def _nan_to_none(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
