"""Stage F: background-threshold search and CAM evaluation (method.md 8).

On the split with ground truth (config ``dataset.splits.cam_eval``; VOC ``train``): every
threshold of the grid is evaluated in one pass (:func:`qaclims.cam.threshold.sweep_thresholds`),
plus the authors' fixed 0.15. The prediction is the argmax over ``[threshold, CAM_1 .. CAM_K']``
mapped to the image's 1-based class ids; mIoU is chainercv's nan-mean over background + K classes.

``threshold.json``: split, n_images, the grid and its mIoU curve, ``best_threshold``,
``best_miou``, ``miou_at_fixed`` (0.15), per-class IoU at both (by class name), the CAM files.
``threshold.png``: the curve with both points marked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.cam.cam_store import CamStore
from qaclims.cam.settings import ThresholdSettings
from qaclims.store import read_label_png, write_json

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


def eval_rows(manifest: Any, split: str) -> Any:
    """Rows of ``split`` with ground truth; an error when there are none."""
    from qaclims.data.manifest import split_view

    rows = split_view(manifest, split)
    rows = rows[rows["has_gt"]].reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no images with ground truth to evaluate CAMs on")
    return rows


def cam_samples(store: CamStore, rows: Any) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(high_res, keys, gt)`` per row; every image must be in the store."""
    missing = [i for i in rows["image_id"] if i not in store]
    if missing:
        raise KeyError(f"{len(missing)} images of the evaluation split have no CAMs (first: "
                       f"{missing[0]}); were the CAMs exported for this split?")
    for image_id, gt_path in zip(rows["image_id"], rows["gt_path"], strict=True):
        keys, high = store.high_res(image_id)
        gt = read_label_png(gt_path)
        if gt.shape != high.shape[1:]:
            raise ValueError(f"image {image_id}: ground truth {gt_path} is {gt.shape}, "
                             f"its CAM {high.shape[1:]}")
        yield high, keys, gt


def evaluate_store(store: CamStore, rows: Any, class_names: Sequence[str],
                   settings: ThresholdSettings) -> dict[str, Any]:
    """The threshold sweep of the CAMs in ``store`` over ``rows`` (names include background)."""
    from qaclims.cam.threshold import sweep_thresholds

    res = sweep_thresholds(cam_samples(store, rows), settings.grid(), n_classes=len(class_names),
                           fixed_threshold=settings.fixed)
    names = list(class_names)
    res["class_names"] = names
    res["iou_at_best"] = dict(zip(names, res["iou_at_best"], strict=True))
    res["iou_at_fixed"] = dict(zip(names, res["iou_at_fixed"], strict=True))
    return res


def search_threshold(cam_files: Sequence[PathLike], manifest: PathLike, classes: PathLike,
                     out_json: PathLike, *, split: str, settings: ThresholdSettings,
                     out_plot: PathLike | None = None, title: str = "") -> dict[str, Any]:
    """Evaluate the CAMs of ``split``; write ``threshold.json`` (and the plot). -> the result."""
    from qaclims.data.manifest import class_names, read_classes, read_manifest

    classes_list = read_classes(classes)
    df = read_manifest(manifest, num_classes=len(classes_list))
    rows = eval_rows(df, split)
    with CamStore(cam_files) as store:
        res = evaluate_store(store, rows, class_names(classes_list), settings)
    res = {"split": split, **res, "cam_files": [str(p) for p in cam_files]}
    write_json(res, out_json)
    log.info("%s: best threshold %.2f mIoU %.4f; at %.2f mIoU %.4f (%d images of %s)",
             title or out_json, res["best_threshold"], res["best_miou"] or float("nan"),
             res["fixed_threshold"], res["miou_at_fixed"] or float("nan"), res["n_images"], split)
    if out_plot is not None:
        plot_threshold_curve(res, out_plot, title)
    return res


def plot_threshold_curve(result: dict[str, Any], path: PathLike, title: str = "") -> None:
    """mIoU against the background threshold, best and fixed thresholds marked (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qaclims.store import atomic_path

    t = np.asarray(result["thresholds"], float)
    m = np.asarray([np.nan if v is None else v for v in result["miou"]], float) * 100
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(t, m, color="tab:blue", lw=1.5, label="mIoU")
    if result["best_miou"] is not None:
        ax.scatter([result["best_threshold"]], [result["best_miou"] * 100], color="tab:red",
                   zorder=3, label=f"best {result['best_miou'] * 100:.1f} @ "
                                   f"{result['best_threshold']:.2f}")
    if result["miou_at_fixed"] is not None:
        ax.scatter([result["fixed_threshold"]], [result["miou_at_fixed"] * 100],
                   color="tab:green", marker="s", zorder=3,
                   label=f"{result['miou_at_fixed'] * 100:.1f} @ {result['fixed_threshold']:.2f}")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("CAM mIoU (%)")
    ax.set_title(title or f"CAM mIoU on {result.get('split', '')} ({result['n_images']} images)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
