"""Background-threshold labelling and the one-pass threshold sweep (checked by brute force)."""

import json

import numpy as np
import pytest

from qaclims.cam.threshold import (
    DEFAULT_THRESHOLDS,
    cam_to_label,
    sweep_confusions,
    sweep_thresholds,
)
from qaclims.metrics import ConfusionMatrix


def test_cam_to_label_hand_example():
    cams = np.array([[[0.10, 0.15, 0.90], [0.50, 0.00, 0.30]],
                     [[0.05, 0.15, 0.90], [0.60, 0.00, 0.20]]], dtype=np.float32)
    label = cam_to_label(cams, keys=[3, 7], bg_threshold=0.15)
    assert label.dtype == np.uint8
    # 0.15 == threshold -> background; tie between classes -> first key
    assert label.tolist() == [[0, 0, 3], [7, 0, 3]]
    assert cam_to_label(cams, [3, 7], 0.95).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_cam_to_label_no_classes_is_all_background():
    assert cam_to_label(np.zeros((0, 2, 3), np.float32), [], 0.1).tolist() == [[0] * 3] * 2


def test_default_grid_is_the_authors():
    assert DEFAULT_THRESHOLDS[0] == 0.05 and DEFAULT_THRESHOLDS[-1] == 0.59
    assert len(DEFAULT_THRESHOLDS) == 55


def _samples(seed: int, n_classes: int = 6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(7):
        h, w = rng.integers(3, 9, size=2)
        k = i % 4                                       # includes an image without classes
        keys = np.sort(rng.choice(np.arange(1, n_classes), size=k, replace=False))
        # quantised scores so that many pixels sit exactly on grid thresholds
        cams = (rng.integers(0, 21, size=(k, h, w)) / 20).astype(np.float32)
        gt = rng.integers(0, n_classes, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.15] = 255
        out.append((cams, keys, gt))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_matches_brute_force(seed):
    samples = _samples(seed)
    thresholds = [0.5, 0.05, 0.1, 0.15, 0.35, 0.95, 0.0, 1.0, 0.1]
    grid, matrices, n_images = sweep_confusions(iter(samples), thresholds, n_classes=6)
    assert grid == sorted(set(thresholds)) and n_images == len(samples)
    for t, m in zip(grid, matrices, strict=True):
        brute = ConfusionMatrix(6)
        for cams, keys, gt in samples:
            brute.update(gt, cam_to_label(cams, keys, t))
        assert m == brute, t


def test_sweep_summary_matches_brute_force():
    samples = _samples(3)
    grid = [0.05, 0.2, 0.3, 0.45, 0.6]
    result = sweep_thresholds(samples, grid, n_classes=6, fixed_threshold=0.15)
    brute = {}
    for t in [*grid, 0.15]:
        cm = ConfusionMatrix(6)
        for cams, keys, gt in samples:
            cm.update(gt, cam_to_label(cams, keys, t))
        brute[t] = cm
    curve = [brute[t].miou() for t in grid]
    assert result["thresholds"] == grid
    assert result["miou"] == pytest.approx(curve)
    best = grid[int(np.argmax(curve))]
    assert result["best_threshold"] == best
    assert result["best_miou"] == pytest.approx(max(curve))
    iou_best = [None if np.isnan(v) else v for v in brute[best].iou()]
    assert result["iou_at_best"] == pytest.approx(iou_best)
    assert result["fixed_threshold"] == 0.15                 # evaluated although off the grid
    assert result["miou_at_fixed"] == pytest.approx(brute[0.15].miou())
    assert result["n_images"] == len(samples) and result["n_classes"] == 6
    json.dumps(result, allow_nan=False)


def test_sweep_accepts_float16_cams_and_compares_in_their_dtype():
    cams16 = np.array([[[0.15, 0.1501, 0.5]]], dtype=np.float16)
    gt = np.array([[1, 1, 1]], np.uint8)
    (_, [m], _) = sweep_confusions([(cams16, [1], gt)], [0.15], n_classes=2)
    expected = ConfusionMatrix(2).update(gt, cam_to_label(cams16, [1], 0.15))
    assert m == expected


def test_sweep_rejects_mismatched_inputs():
    cams = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(ValueError):
        sweep_thresholds([(cams, [1], np.zeros((3, 2), np.uint8))], [0.1], n_classes=3)
    with pytest.raises(ValueError):
        sweep_thresholds([(cams, [1, 2], np.zeros((2, 2), np.uint8))], [0.1], n_classes=3)
    with pytest.raises(ValueError):
        sweep_thresholds([(cams, [5], np.zeros((2, 2), np.uint8))], [0.1], n_classes=3)
