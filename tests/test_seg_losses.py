"""DeepLab losses: plain and class-balanced CE against hand values, label resizing, MSC sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from qaclims.seg.losses import (
    balanced_cross_entropy,
    criterion,
    cross_entropy,
    msc_loss,
    resize_labels,
)


def _logits(rows: list[list[float]]) -> torch.Tensor:
    """Per-pixel class scores [[s0, s1, ...] per pixel] as [1, C, 1, P]."""
    return torch.tensor(rows, dtype=torch.float32).T[None, :, None, :]


def _ce(scores: list[float], target: int) -> float:
    return -(scores[target] - math.log(sum(math.exp(s) for s in scores)))


PIXELS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.5], [4.0, 4.0, 4.0],
          [9.0, -9.0, 0.0]]


def test_balanced_ce_hand_values() -> None:
    logits = _logits(PIXELS)
    labels = torch.tensor([[[0, 1, 2, 0, 0, 255]]])  # 3 bg, 2 fg, 1 ignored
    bg = (_ce(PIXELS[0], 0) + _ce(PIXELS[3], 0) + _ce(PIXELS[4], 0)) / 3
    fg = (_ce(PIXELS[1], 1) + _ce(PIXELS[2], 2)) / 2
    assert balanced_cross_entropy(logits, labels).item() == pytest.approx((bg + fg) / 2, 1e-6)
    plain = (bg * 3 + fg * 2) / 5
    assert cross_entropy(logits, labels).item() == pytest.approx(plain, 1e-6)
    # the balance really reweights: here it differs from the plain mean
    assert abs((bg + fg) / 2 - plain) > 1e-3


def test_balanced_ce_empty_groups_are_zero_not_nan() -> None:
    logits = _logits(PIXELS[:3])
    only_bg = torch.tensor([[[0, 0, 255]]])
    expect = (_ce(PIXELS[0], 0) + _ce(PIXELS[1], 0)) / 2 / 2
    assert balanced_cross_entropy(logits, only_bg).item() == pytest.approx(expect, 1e-6)
    only_fg = torch.tensor([[[1, 255, 2]]])
    expect = (_ce(PIXELS[0], 1) + _ce(PIXELS[2], 2)) / 2 / 2
    assert balanced_cross_entropy(logits, only_fg).item() == pytest.approx(expect, 1e-6)
    nothing = torch.full((1, 1, 3), 255)
    logits.requires_grad_(True)
    for fn in (balanced_cross_entropy, cross_entropy):
        loss = fn(logits, nothing)
        assert loss.item() == 0.0
        loss.backward()  # still differentiable


def test_resize_labels_matches_pil_nearest() -> None:
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((321, 321), (41, 41)), ((321, 321), (21, 21)),
                             ((30, 50), (7, 11)), ((8, 8), (8, 8))]:
        lab = rng.integers(0, 21, (h, w)).astype(np.uint8)
        lab[rng.random((h, w)) < 0.1] = 255
        expect = np.asarray(Image.fromarray(lab).resize((ow, oh), Image.Resampling.NEAREST))
        got = resize_labels(torch.from_numpy(lab.astype(np.int64))[None], (oh, ow))[0].numpy()
        assert (got == expect).all()


def test_msc_loss_sums_outputs_at_their_own_sizes() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[:, :2] = 255
    outputs = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2), torch.randn(2, 3, 3, 3),
               torch.randn(2, 3, 4, 4)]
    for kind in ("ce", "balanced"):
        fn = criterion(kind)
        expect = sum(fn(o, resize_labels(labels, o.shape[-2:])) for o in outputs)
        assert msc_loss(outputs, labels, kind).item() == pytest.approx(expect.item(), 1e-6)
    single = msc_loss(outputs[0], labels, "ce")
    assert single.item() == pytest.approx(
        cross_entropy(outputs[0], resize_labels(labels, (4, 4))).item(), 1e-6)
    with pytest.raises(ValueError, match="unknown DeepLab loss"):
        msc_loss(outputs, labels, "focal")
