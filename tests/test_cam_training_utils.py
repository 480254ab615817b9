"""PolyOptimizer schedule and momentum quirk; the authors' training augmentation."""

import random

import numpy as np
import pytest
import torch

from qaclims.cam.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainAugment,
    normalize_imagenet,
    pil_rescale,
    random_crop,
    random_resize_long,
)
from qaclims.cam.optim import AUTHORS_MOMENTUM, PolyOptimizer, poly_lr


def _optimizer(**kw):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    groups = [{"params": [a], "lr": 0.1, "weight_decay": 1e-4},
              {"params": [b], "lr": 1.0, "weight_decay": 1e-4}]
    return PolyOptimizer(groups, lr=0.1, max_step=10, **kw), a, b


def test_poly_schedule_values():
    opt, a, b = _optimizer()
    seen = []
    for _ in range(12):
        (a.sum() + b.sum()).backward()
        opt.step()
        seen.append(opt.current_lrs())
    # lr of step t = lr0 * (1 - t/10)^0.9, set before the step
    assert seen[0] == [pytest.approx(0.1), pytest.approx(1.0)]
    assert seen[1][0] == pytest.approx(0.1 * 0.9**0.9)
    assert seen[5][1] == pytest.approx(0.5**0.9)
    assert seen[9][0] == pytest.approx(0.1 * 0.1**0.9)
    assert seen[10] == seen[11] == seen[9]              # frozen after max_step
    assert [s[0] for s in seen] == [pytest.approx(poly_lr(0.1, t, 10)) for t in range(12)]


def test_momentum_quirk_is_the_default_and_explicit():
    opt, _, _ = _optimizer()
    assert AUTHORS_MOMENTUM == 1e-4
    assert all(g["momentum"] == 1e-4 and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    opt9, _, _ = _optimizer(momentum=0.9, power=1.0)
    assert opt9.param_groups[0]["momentum"] == 0.9 and opt9.power == 1.0


def test_state_dict_resumes_schedule():
    opt, a, b = _optimizer()
    for _ in range(4):
        (a.sum() + b.sum()).backward()
        opt.step()
    state = opt.state_dict()
    fresh, a2, b2 = _optimizer()
    fresh.load_state_dict(state)
    assert fresh.global_step == 4
    (a2.sum() + b2.sum()).backward()
    fresh.step()
    assert fresh.current_lrs()[1] == pytest.approx(poly_lr(1.0, 4, 10))


def test_normalize_and_rescale():
    img = np.full((4, 6, 3), 255, np.uint8)
    out = normalize_imagenet(img)
    assert out.dtype == np.float32
    assert np.allclose(out[0, 0], (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD))
    assert pil_rescale(np.zeros((5, 7, 3), np.uint8), 0.5).shape == (2, 4, 3)  # round(2.5)=2


def test_random_resize_long_range():
    rng = random.Random(0)
    img = np.zeros((100, 200, 3), np.uint8)
    longs = {max(random_resize_long(img, 320, 640, rng).shape[:2]) for _ in range(30)}
    assert min(longs) >= 320 and max(longs) <= 640 and len(longs) > 5


def test_random_crop_pads_with_fill_values():
    rng = random.Random(1)
    img = np.ones((3, 5, 3), np.float32)
    lab = np.zeros((3, 5), np.uint8)
    ci, cl = random_crop([img, lab], 8, [0.0, 255], rng)
    assert ci.shape == (8, 8, 3) and cl.shape == (8, 8)
    assert ci.sum() == 3 * 5 * 3 and (cl == 0).sum() == 15 and (cl == 255).sum() == 64 - 15
    assert np.array_equal(ci[..., 0] == 1, cl == 0)      # same placement
    big = np.arange(20 * 30).reshape(20, 30)
    (c,) = random_crop([big], 8, [0], rng)
    r0, c0 = divmod(int(c[0, 0]), 30)
    assert np.array_equal(c, big[r0:r0 + 8, c0:c0 + 8])


def test_train_augment_shapes_and_label_alignment():
    img = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    label = np.zeros((60, 90), np.uint8)
    label[:, :45] = 1
    aug = TrainAugment(resize_long=(40, 50), crop_size=48)
    x, lab = aug(img, label, rng=random.Random(3))
    assert x.shape == (3, 48, 48) and x.dtype == np.float32 and lab.shape == (48, 48)
    assert set(np.unique(lab)) <= {0, 1, 255} and (lab == 255).any()
    assert (x[:, lab == 255] == 0).all()                 # padding is 0 in normalised space
    assert TrainAugment()(img, rng=random.Random(0)).shape == (3, 512, 512)
