"""ConfusionMatrix against a brute-force per-pixel reference (hypothesis) and chainercv's rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qaclims.metrics import ConfusionMatrix, confusion_matrix


def brute_force(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, n), dtype=np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if 0 <= g < n:
            out[g, p] += 1
    return out


def reference_scores(m: np.ndarray) -> tuple[list[float], float]:
    ious = []
    for c in range(m.shape[0]):
        tp = m[c, c]
        union = m[c, :].sum() + m[:, c].sum() - tp
        ious.append(tp / union if union else math.nan)
    defined = [v for v in ious if not math.isnan(v)]
    return ious, (sum(defined) / len(defined) if defined else math.nan)


@st.composite
def label_pair(draw, n_classes=None):
    n = draw(st.integers(1, 8)) if n_classes is None else n_classes
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12))
    gt = draw(hnp.arrays(np.int16, shape, elements=st.integers(0, n - 1)))
    # ignore pixels: 255 and anything else outside 0..K, at random places
    ignore = draw(hnp.arrays(np.bool_, shape))
    ignore_value = draw(st.sampled_from([255, -1, n, n + 7]))
    gt = np.where(ignore, ignore_value, gt).astype(np.int16)
    pred = draw(hnp.arrays(draw(st.sampled_from([np.uint8, np.int32, np.int64])), shape,
                           elements=st.integers(0, n - 1)))
    return n, gt, pred


@settings(max_examples=150, deadline=None)
@given(label_pair())
def test_matches_brute_force(case):
    n, gt, pred = case
    cm = ConfusionMatrix(n).update(gt, pred)
    ref = brute_force(gt, pred, n)
    assert np.array_equal(cm.matrix, ref)
    ious, miou = reference_scores(ref)
    np.testing.assert_allclose(cm.iou(), ious, equal_nan=True)
    if math.isnan(miou):
        assert math.isnan(cm.miou())
    else:
        assert cm.miou() == pytest.approx(miou)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.lists(label_pair(n), min_size=1, max_size=5)))
def test_merge_of_shards_equals_whole(cases):
    n = cases[0][0]
    shards = [ConfusionMatrix(n).update(gt, pred) for _, gt, pred in cases]
    whole = ConfusionMatrix(n)
    for _, gt, pred in cases:
        whole.update(gt.ravel(), pred.ravel())
    assert shards[0].merge(*shards[1:]) == whole
    assert sum(shards) == whole
    total = shards[0]
    for s in shards[1:]:
        total = total + s
    assert total == whole
    assert np.array_equal(shards[0].matrix, ConfusionMatrix(n).update(*cases[0][1:]).matrix)


def test_chainercv_example_and_nan_class():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 3]])
    cm = ConfusionMatrix(5).update(gt, pred)
    # class 3 only predicted (on ignored pixels: not counted) -> absent -> NaN; class 4 absent too
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 3)
    assert iou[1] == pytest.approx(2 / 3)
    assert iou[2] == pytest.approx(1 / 2)
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(cm.precision()[:3], [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(cm.recall()[:3], [1 / 2, 1.0, 1 / 2])
    assert cm.n_pixels == 6
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)


def test_prediction_outside_range_is_an_error():
    gt = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="255"):
        ConfusionMatrix(21).update(gt, np.full((2, 2), 255, np.uint8))
    with pytest.raises(ValueError, match="-1"):
        ConfusionMatrix(21).update(gt, np.full((2, 2), -1, np.int32))
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(21).update(gt, np.zeros((2, 3), np.uint8))
    with pytest.raises(TypeError, match="integer"):
        ConfusionMatrix(21).update(gt, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="classes"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))


def test_empty_matrix_scores_are_nan():
    cm = ConfusionMatrix(3)
    assert np.isnan(cm.iou()).all()
    assert math.isnan(cm.miou())
    d = cm.to_dict(["background", "a", "b"])
    assert d["miou"] is None and d["iou"]["a"] is None


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_save_load_roundtrip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(4).update(rng.integers(0, 4, (30, 20)), rng.integers(0, 4, (30, 20)))
    path = tmp_path / f"sub/cm{suffix}"
    cm.save(path)
    assert ConfusionMatrix.load(path) == cm
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_to_dict_is_strict_json_and_loadable(tmp_path):
    cm = ConfusionMatrix(3).update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    d = cm.to_dict(["background", "cat", "dog"])
    text = json.dumps(d, allow_nan=False)
    assert d["iou"]["dog"] is None and d["iou"]["cat"] == pytest.approx(0.5)
    assert d["miou"] == pytest.approx(0.5)
    (tmp_path / "m.json").write_text(text)
    assert ConfusionMatrix.load(tmp_path / "m.json") == cm
    with pytest.raises(ValueError, match="background"):
        cm.to_dict(["cat", "dog"])


def test_function_form_and_large_map_speed():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 21, (512, 512), dtype=np.uint8)
    gt[:10] = 255
    pred = rng.integers(0, 21, (512, 512), dtype=np.uint8)
    m = confusion_matrix(gt, pred, 21)
    assert m.sum() == 502 * 512
    assert m.dtype == np.int64
