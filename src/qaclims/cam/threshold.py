"""CAM -> label map with a background threshold, and the threshold sweep (method.md 8).

A label map is the argmax over ``[bg_threshold, cam_1, ..., cam_K']`` mapped through
``[0, *keys]``: a pixel is background unless some class map is *strictly* above the threshold
(ties go to the first plane, numpy's argmax). The threshold is compared in the CAMs' own floating
dtype, as the authors' ``np.pad(..., constant_values=thr)`` does.

:func:`sweep_thresholds` evaluates a whole grid of thresholds in one pass over the images and
reports the full curve (the authors' optional sweep stops at the first non-improvement; this one
does not). Per image it needs only each pixel's best class and score: for every (gt class, best
class, number of grid thresholds below the score) it counts pixels, and the confusion matrix of
each threshold follows by cumulative sums, so the cost does not grow with the grid size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from qaclims.metrics import ConfusionMatrix

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 + 0.01 * i, 2) for i in range(55))
"""0.05, 0.06, ..., 0.59: the authors' sweep grid."""

FIXED_THRESHOLD = 0.15
"""The authors' ``--cam_eval_thres``."""


def _float_cams(cams: Any) -> np.ndarray:
    arr = np.asarray(cams)
    if arr.ndim != 3:
        raise ValueError(f"expected cams [K', H, W], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr


def _keys(keys: Any, n: int) -> np.ndarray:
    k = np.asarray(keys, dtype=np.int64).reshape(-1)
    if len(k) != n:
        raise ValueError(f"{len(k)} keys for {n} CAM planes")
    if len(k) and (k.min() < 1 or k.max() > 254):
        raise ValueError(f"keys must be class ids in 1..254, got {k.tolist()}")
    return k


def cam_to_label(high_res: Any, keys: Any, bg_threshold: float) -> np.ndarray:
    """uint8 [H, W] label map: 0 background, else the 1-based class id from ``keys``."""
    cams = _float_cams(high_res)
    k = _keys(keys, cams.shape[0])
    bg = np.full((1, *cams.shape[1:]), bg_threshold, dtype=cams.dtype)
    arg = np.argmax(np.concatenate([bg, cams], axis=0), axis=0)
    return np.concatenate([[0], k]).astype(np.uint8)[arg]


def _image_histogram(cams: np.ndarray, keys: np.ndarray, gt: np.ndarray, grid: np.ndarray,
                     n_classes: int) -> np.ndarray:
    """Counts [C, C, T+1] of (gt, best class, #grid thresholds strictly below the best score)."""
    if cams.shape[1:] != gt.shape:
        raise ValueError(f"CAM size {cams.shape[1:]} != ground truth size {gt.shape}")
    n_t = len(grid)
    g_all = gt.astype(np.int64)
    valid = (g_all >= 0) & (g_all < n_classes)    # 255 / -1 (ignore) are not counted
    g = g_all[valid]
    if cams.shape[0] == 0:
        c = np.zeros_like(g)
        idx = np.zeros_like(g)
    else:
        if keys.max() >= n_classes:
            raise ValueError(f"keys {keys.tolist()} outside 1..{n_classes - 1}")
        c = keys[cams.argmax(axis=0)[valid]]
        score = cams.max(axis=0)[valid]
        # thresholds compared in the CAM dtype; side="left" counts grid values < score
        idx = np.searchsorted(grid.astype(cams.dtype), score, side="left").astype(np.int64)
    flat = (g * n_classes + c) * (n_t + 1) + idx
    counts = np.bincount(flat, minlength=n_classes * n_classes * (n_t + 1))
    return counts.reshape(n_classes, n_classes, n_t + 1)


def _confusions_from_histogram(hist: np.ndarray) -> np.ndarray:
    """[T, C, C] confusion matrices (rows gt, columns prediction) from the [C, C, T+1] counts.

    At grid threshold j a pixel keeps its best class when more than j grid values lie below its
    score, i.e. when its score is strictly above threshold j; otherwise it is background.
    """
    n_t = hist.shape[2] - 1
    below = np.cumsum(hist, axis=2)[:, :, :n_t]            # pixels with idx <= j -> background
    total = hist.sum(axis=2, keepdims=True)
    conf = np.moveaxis(total - below, 2, 0).copy()         # [T, C, C] pixels kept as their class
    conf[:, :, 0] += np.moveaxis(below.sum(axis=1), 1, 0)  # [T, C] added to the bg column
    return conf


def sweep_confusions(samples: Iterable[tuple[Any, Any, Any]], thresholds: Sequence[float],
                     n_classes: int = 21) -> tuple[list[float], list[ConfusionMatrix], int]:
    """One confusion matrix per threshold, in one pass over ``(high_res, keys, gt)`` samples.

    Returns (sorted distinct thresholds, their matrices, number of images). The matrix of
    threshold t equals accumulating ``cam_to_label(high_res, keys, t)`` against ``gt`` with
    :class:`qaclims.metrics.ConfusionMatrix` (ground truth outside 0..n_classes-1 ignored).
    """
    grid = np.asarray(sorted(set(float(t) for t in thresholds)), dtype=np.float64)
    if grid.size == 0:
        raise ValueError("no thresholds")
    hist = np.zeros((n_classes, n_classes, len(grid) + 1), dtype=np.int64)
    n_images = 0
    for cams, keys, gt in samples:
        arr = _float_cams(cams)
        hist += _image_histogram(arr, _keys(keys, arr.shape[0]), np.asarray(gt), grid, n_classes)
        n_images += 1
    conf = _confusions_from_histogram(hist)
    return grid.tolist(), [ConfusionMatrix(n_classes, m) for m in conf], n_images


def _nan_to_none(values: Any) -> Any:
    if np.ndim(values) == 0:
        return None if np.isnan(values) else float(values)
    return [None if np.isnan(v) else float(v) for v in values]


def sweep_thresholds(samples: Iterable[tuple[Any, Any, Any]],
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS, n_classes: int = 21,
                     fixed_threshold: float = FIXED_THRESHOLD) -> dict[str, Any]:
    """Evaluate background thresholds on ``(high_res [K', H, W], keys, gt [H, W])`` samples.

    ``n_classes`` counts background (VOC: 21); ground-truth values outside 0..n_classes-1 (255)
    are ignored. mIoU is the nan-mean of the per-class IoUs (a class absent from both GT and
    prediction is NaN and skipped, as in chainercv). Returns a JSON-ready dict (NaN -> None):
    the sorted grid ``thresholds`` and its ``miou`` curve, ``best_threshold`` (the lowest on a
    tie), ``best_miou``, ``iou_at_best``, the same at ``fixed_threshold`` (evaluated even when it
    is not on the grid), ``n_images`` and ``n_classes``.
    """
    grid_list = sorted(set(float(t) for t in thresholds))
    if not grid_list:
        raise ValueError("no thresholds")
    eval_grid, matrices, n_images = sweep_confusions(
        samples, [*grid_list, float(fixed_threshold)], n_classes)
    by_t = dict(zip(eval_grid, matrices, strict=True))
    curve = np.array([by_t[t].miou() for t in grid_list])
    best_j = int(np.nanargmax(curve)) if np.isfinite(curve).any() else 0
    best_t = grid_list[best_j]
    fixed = by_t[float(fixed_threshold)]
    return {
        "thresholds": grid_list,
        "miou": _nan_to_none(curve),
        "best_threshold": best_t,
        "best_miou": _nan_to_none(curve[best_j]),
        "iou_at_best": _nan_to_none(by_t[best_t].iou()),
        "fixed_threshold": float(fixed_threshold),
        "miou_at_fixed": _nan_to_none(fixed.miou()),
        "iou_at_fixed": _nan_to_none(fixed.iou()),
        "n_images": n_images,
        "n_classes": n_classes,
    }
