import json

import numpy as np
import pytest

from qaclims.irn.evaluate import IrLabelScore
from qaclims.irn.ir_labels import (
    CrfParams,
    IrLabelItem,
    crf_inference_label,
    make_ir_label,
    make_ir_labels,
)

H, W = 48, 64


def _square_scene(seed: int = 0):
    """A bright square on a dark, slightly noisy background and a blurred CAM that spills
    well over the square's edges (as a stride-16 CAM does)."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), 30, np.int64)
    img[12:36, 20:44] = 220
    img = np.clip(img + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    cam = np.exp(-(((yy - 24) / 14.0) ** 2 + ((xx - 32) / 14.0) ** 2)).astype(np.float32)
    square = np.zeros((H, W), bool)
    square[12:36, 20:44] = True
    return img, cam / cam.max(), square


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_crf_snaps_the_blurred_cam_to_the_square():
    img, cam, square = _square_scene()
    raw_fg = cam > 0.30
    assert _iou(raw_fg, square) < 0.8  # the threshold alone spills over the edges
    label = make_ir_label(img, cam[None], [7], image_id="sq")
    assert label.dtype == np.uint8 and label.shape == (H, W)
    assert set(np.unique(label)) <= {0, 7, 255}
    assert _iou(label == 7, square) > 0.97
    assert not (label[square] == 0).any()  # no confident background on the object


def test_combination_rule_without_crf_iterations():
    # t = 0: the CRF returns its unary argmax, i.e. the thresholded CAM itself, so the
    # combination can be checked exactly: >0.30 -> class, (0.10, 0.30] -> 255, else 0
    yy, xx = np.mgrid[:20, :24]
    cam = np.clip(1 - np.hypot(yy - 10, xx - 12) / 12, 0, 1).astype(np.float32)
    cam[0, 0] = 0.30  # ties go to the background plane (argmax picks the first)
    cam[0, 1] = 0.10
    img = np.zeros((20, 24, 3), np.uint8)
    label = make_ir_label(img, cam[None], [5], crf=CrfParams(t=0), image_id="ring")
    expected = np.where(cam > 0.30, 5, np.where(cam > 0.10, 255, 0))
    np.testing.assert_array_equal(label, expected)
    assert label[0, 0] == 255 and label[0, 1] == 0
    assert {0, 5, 255} == set(np.unique(label))


def test_two_classes_keep_their_ids_including_large_ones():
    img = np.zeros((16, 32, 3), np.uint8)
    cams = np.zeros((2, 16, 32), np.float32)
    cams[0, :, :12] = 0.9
    cams[1, :, 20:] = 0.2  # only above the background threshold -> uncertain
    cams[1, :, 26:] = 0.8
    # ids 128 + 128 would wrap to 0 in uint8 arithmetic: the fg id must survive
    label = make_ir_label(img, cams, [3, 128], crf=CrfParams(t=0), image_id="two")
    assert (label[:, :12] == 3).all()
    assert (label[:, 12:20] == 0).all()
    assert (label[:, 20:26] == 255).all()
    assert (label[:, 26:] == 128).all()


def test_threshold_order_and_monotonicity():
    yy, xx = np.mgrid[:20, :24]
    cam = np.clip(1 - np.hypot(yy - 10, xx - 12) / 12, 0, 1).astype(np.float32)[None]
    img = np.zeros((20, 24, 3), np.uint8)
    crf = CrfParams(t=0)
    lo = make_ir_label(img, cam, [2], fg_threshold=0.3, bg_threshold=0.1, crf=crf)
    hi = make_ir_label(img, cam, [2], fg_threshold=0.6, bg_threshold=0.1, crf=crf)
    assert (hi == 2).sum() < (lo == 2).sum()
    assert ((hi == 2) <= (lo == 2)).all()  # a stricter fg threshold only removes fg pixels
    assert ((hi == 0) == (lo == 0)).all()  # the confident background is the bg pass's
    with pytest.raises(ValueError, match="fg_threshold"):
        make_ir_label(img, cam, [2], fg_threshold=0.05, bg_threshold=0.1)


def test_image_without_classes_is_confident_background():
    img = np.zeros((5, 6, 3), np.uint8)
    label = make_ir_label(img, np.zeros((0, 5, 6), np.float32), [])
    assert label.shape == (5, 6) and (label == 0).all()


@pytest.mark.parametrize(("case", "match"), [
    ("nan", "NaN"),
    ("size", "CAM size"),
    ("keys", "2 keys for 1 CAM planes"),
    ("dtype", "uint8"),
    ("zero_key", "1..254"),
])
def test_bad_inputs_name_the_image(case, match):
    img = np.zeros((8, 10, 3), np.uint8)
    cam = np.zeros((1, 8, 10), np.float32)
    keys = [4]
    if case == "nan":
        cam[0, 3, 3] = np.nan
    elif case == "size":
        cam = np.zeros((1, 8, 11), np.float32)
    elif case == "keys":
        keys = [4, 5]
    elif case == "dtype":
        img = img.astype(np.float32)
    elif case == "zero_key":
        keys = [0]
    with pytest.raises(ValueError, match=match) as info:
        make_ir_label(img, cam, keys, image_id="2008_000123")
    assert "2008_000123" in str(info.value)


def test_crf_params():
    assert CrfParams.from_dict({"t": 5}).t == 5
    assert CrfParams.from_dict(None) == CrfParams()
    assert CrfParams().to_dict()["bilateral_srgb"] == 5.0
    with pytest.raises(ValueError, match="unknown CRF"):
        CrfParams.from_dict({"iterations": 5})
    with pytest.raises(ValueError, match="gt_prob"):
        CrfParams(gt_prob=1.0)
    with pytest.raises(ValueError, match="2 labels"):
        crf_inference_label(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), 1)


def test_crf_accepts_non_contiguous_images():
    img, cam, square = _square_scene()
    flipped = img[:, ::-1]  # a view with negative strides
    labels = (cam[:, ::-1] > 0.3).astype(np.int64)
    out = crf_inference_label(flipped, labels, 2)
    assert _iou(out == 1, square[:, ::-1]) > 0.97


def test_parallel_matches_sequential_in_order():
    items = []
    for i in range(3):
        img, cam, _ = _square_scene(seed=i)
        items.append(IrLabelItem(f"img{i}", img, cam[None] * (0.5 + 0.25 * i), [i + 1]))
    seq = list(make_ir_labels(items, n_workers=1))
    par = list(make_ir_labels(iter(items), n_workers=2, max_pending=2))
    assert [k for k, _ in par] == ["img0", "img1", "img2"]
    for (k1, a), (k2, b) in zip(seq, par, strict=True):
        assert k1 == k2
        np.testing.assert_array_equal(a, b)
    bad = IrLabelItem("broken", items[0].image, items[0].high_res[:, :5], [1])
    with pytest.raises(ValueError, match="broken"):
        list(make_ir_labels([items[0], bad], n_workers=2))


# -- evaluation ---------------------------------------------------------------------------------
def test_ir_label_score_by_hand_and_merge():
    gt = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 255]])
    ir = np.array([[0, 255, 1, 0],
                   [1, 2, 255, 2]])
    s = IrLabelScore(3).update(ir, gt, "a")
    d = s.to_dict(["bg", "cat", "dog"])
    # valid gt pixels: 7 (one 255 ignored); uncertain among them: 2
    assert d["n_pixels"] == 7 and d["n_uncertain"] == 2
    assert d["coverage"] == pytest.approx(5 / 7)
    # confident bg: (0,0) right, (0,3) wrong (gt 1) -> 1/2
    assert d["bg_precision"] == pytest.approx(0.5)
    # confident fg: (0,2)=1 right, (1,0)=1 wrong, (1,1)=2 right -> 2/3
    assert d["fg_precision"] == pytest.approx(2 / 3)
    pc = d["per_class"]
    assert pc["precision"] == {"bg": 0.5, "cat": 0.5, "dog": 1.0}
    assert pc["coverage"]["bg"] == pytest.approx(2 / 3)
    assert pc["coverage"]["dog"] == pytest.approx(0.5)
    assert pc["recall"]["cat"] == pytest.approx(0.5)
    assert pc["n_gt"] == {"bg": 3, "cat": 2, "dog": 2}
    json.dumps(d)  # strict JSON

    other = IrLabelScore(3).update(np.full((1, 2), 255), np.array([[1, 1]]))
    merged = IrLabelScore.from_dict(json.loads(json.dumps(d))) + other
    assert merged.to_dict()["n_pixels"] == 9
    # class 1: both pixels of the first image got a confident label (one of them wrong),
    # the two of the second are uncertain
    assert pc["coverage"]["cat"] == 1.0
    assert merged.to_dict()["per_class"]["coverage"]["class_1"] == pytest.approx(2 / 4)
    empty = IrLabelScore(3).to_dict()
    assert empty["fg_precision"] is None and empty["per_class"]["precision"]["class_2"] is None


def test_ir_label_score_rejects_bad_maps():
    s = IrLabelScore(3)
    with pytest.raises(ValueError, match="img9"):
        s.update(np.zeros((2, 2)), np.zeros((2, 3)), "img9")
    with pytest.raises(ValueError, match="holds 7"):
        s.update(np.full((2, 2), 7), np.zeros((2, 2)), "img9")
    with pytest.raises(ValueError, match="class names"):
        s.to_dict(["bg"])
