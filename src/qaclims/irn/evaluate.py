"""How good are the IR labels? Precision of the confident pixels and coverage, per class.

An IR label (:mod:`qaclims.irn.ir_labels`) is 0 (confident background), a class id 1..K
(confident foreground) or 255 (uncertain). Against a ground-truth map (0..K, 255 ignore) it is
scored on the pixels whose ground truth is not ignored:

* ``precision[c]``: of the pixels labelled ``c``, the fraction whose ground truth is ``c``;
  ``fg_precision`` pools all classes 1..K, ``bg_precision`` is ``precision[0]``;
* ``coverage[c]``: of the ground-truth pixels of ``c``, the fraction that got a confident
  label (any, right or wrong); ``coverage`` pools all pixels;
* ``recall[c]``: of the ground-truth pixels of ``c``, the fraction labelled ``c``.

All of it follows from one count matrix ``[K+1, K+2]`` (rows: ground truth 0..K; columns:
IR label 0..K, then "uncertain"), so shards merge by addition and the JSON keeps the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["IrLabelScore"]

UNCERTAIN = 255


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> Any:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _none_if_nan(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


class IrLabelScore:
    """Accumulates IR-label vs ground-truth counts over images (``num_classes = K + 1``)."""

    def __init__(self, num_classes: int, counts: np.ndarray | None = None) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        shape = (self.num_classes, self.num_classes + 1)
        if counts is None:
            self.counts = np.zeros(shape, dtype=np.int64)
        else:
            counts = np.asarray(counts)
            if counts.shape != shape or (counts < 0).any():
                raise ValueError(f"counts must be a non-negative {shape} matrix, "
                                 f"got shape {counts.shape}")
            self.counts = counts.astype(np.int64, copy=True)

    def update(self, ir_label: np.ndarray, gt: np.ndarray, image_id: str = "?") -> IrLabelScore:
        """Add one image; returns self. Raises ValueError naming ``image_id`` on a size mismatch
        or an IR label value outside {0..K, 255}."""
        ir = np.asarray(ir_label)
        g = np.asarray(gt)
        if ir.shape != g.shape:
            raise ValueError(f"image {image_id!r}: IR label size {ir.shape} != ground truth "
                             f"size {g.shape}")
        n = self.num_classes
        ir64 = ir.reshape(-1).astype(np.int64)
        bad = (ir64 != UNCERTAIN) & ((ir64 < 0) | (ir64 >= n))
        if bad.any():
            raise ValueError(f"image {image_id!r}: IR label holds {int(ir64[bad][0])}, expected "
                             f"0..{n - 1} or {UNCERTAIN}")
        g64 = g.reshape(-1).astype(np.int64)
        valid = (g64 >= 0) & (g64 < n)
        col = np.where(ir64 == UNCERTAIN, n, ir64)[valid]
        self.counts += np.bincount(g64[valid] * (n + 1) + col,
                                   minlength=n * (n + 1)).reshape(n, n + 1)
        return self

    def merge(self, *others: IrLabelScore) -> IrLabelScore:
        out = IrLabelScore(self.num_classes, self.counts)
        for o in others:
            if not isinstance(o, IrLabelScore) or o.num_classes != self.num_classes:
                raise ValueError("can only merge IrLabelScore objects of the same num_classes")
            out.counts += o.counts
        return out

    def __add__(self, other: IrLabelScore) -> IrLabelScore:
        return self.merge(other)

    # -- scores -------------------------------------------------------------------------------
    def precision(self) -> np.ndarray:
        conf = self.counts[:, :-1]
        return _ratio(np.diag(conf), conf.sum(axis=0))

    def recall(self) -> np.ndarray:
        return _ratio(np.diag(self.counts[:, :-1]), self.counts.sum(axis=1))

    def coverage(self) -> np.ndarray:
        return _ratio(self.counts[:, :-1].sum(axis=1), self.counts.sum(axis=1))

    def summary(self) -> dict[str, float | None]:
        conf = self.counts[:, :-1]
        fg = conf[:, 1:]
        total = self.counts.sum()
        return {
            "fg_precision": _none_if_nan(_ratio(np.trace(conf) - conf[0, 0], fg.sum())),
            "bg_precision": _none_if_nan(_ratio(conf[0, 0], conf[:, 0].sum())),
            "precision": _none_if_nan(_ratio(np.trace(conf), conf.sum())),
            "coverage": _none_if_nan(_ratio(conf.sum(), total)),
            "fg_coverage": _none_if_nan(_ratio(conf[1:].sum(), self.counts[1:].sum())),
            "bg_coverage": _none_if_nan(_ratio(conf[0].sum(), self.counts[0].sum())),
        }

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready: the pooled summary, per-class precision/recall/coverage (None where
        undefined), pixel counts and the raw count matrix."""
        names = list(class_names) if class_names is not None else [
            f"class_{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes "
                             "(list the background first)")

        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return {nm: _none_if_nan(v) for nm, v in zip(names, values, strict=True)}

        return {
            "num_classes": self.num_classes,
            **self.summary(),
            "n_pixels": int(self.counts.sum()),
            "n_uncertain": int(self.counts[:, -1].sum()),
            "class_names": names,
            "per_class": {
                "precision": per_class(self.precision()),
                "recall": per_class(self.recall()),
                "coverage": per_class(self.coverage()),
                "n_gt": {nm: int(v) for nm, v in zip(names, self.counts.sum(axis=1),
                                                     strict=True)},
            },
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IrLabelScore:
        """Rebuild from :meth:`to_dict` output (e.g. a shard's JSON) for merging."""
        counts = np.asarray(d["counts"], dtype=np.int64)
        return cls(int(d.get("num_classes", counts.shape[0])), counts)
