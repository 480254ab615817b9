"""Multi-scale + flip CAM aggregation: sizes, key selection, normalisation, flip equivariance."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from qaclims.cam.inference import (
    aggregate_cams,
    multiscale_cam,
    scale_batch,
    strided_size,
    strided_up_size,
)
from qaclims.cam.networks import RitcNet


def test_sizes():
    assert strided_size((37, 50)) == (10, 13)
    assert strided_size((36, 48)) == (9, 12)
    assert strided_up_size((37, 50)) == (48, 64)
    assert strided_up_size((32, 48)) == (32, 48)


def test_aggregate_single_scale_identity_and_keys():
    g = torch.Generator().manual_seed(0)
    out = torch.rand(2, 4, 9, 12, generator=g)           # already at the strided size of 36x48
    strided, high = aggregate_cams([out], (36, 48), keys=[3, 1])
    assert strided.shape == (2, 9, 12) and high.shape == (2, 36, 48)
    summed = out[0] + out[1].flip(-1)
    expected = summed[[2, 0]] / (summed[[2, 0]].amax(dim=(1, 2), keepdim=True) + 1e-5)
    assert torch.allclose(strided, expected, atol=1e-6)
    assert torch.allclose(high.amax(dim=(1, 2)), torch.ones(2), atol=1e-4)


def test_aggregate_sums_scales_before_normalising():
    g = torch.Generator().manual_seed(1)
    outs = [torch.rand(2, 3, 5, 7, generator=g), torch.rand(2, 3, 10, 13, generator=g)]
    strided, high = aggregate_cams(outs, (37, 50), keys=np.array([2]))
    assert strided.shape == (1, 10, 13) and high.shape == (1, 37, 50)
    s = sum(F.interpolate((o[0] + o[1].flip(-1))[None, 1:2], (10, 13), mode="bilinear",
                          align_corners=False)[0] for o in outs)
    assert torch.allclose(strided, s / (s.max() + 1e-5), atol=1e-6)
    h = sum(F.interpolate((o[0] + o[1].flip(-1))[None, 1:2], (48, 64), mode="bilinear",
                          align_corners=False)[0] for o in outs)[:, :37, :50]
    assert torch.allclose(high, h / (h.max() + 1e-5), atol=1e-6)


def test_aggregate_no_keys_and_bad_keys():
    out = torch.rand(2, 3, 4, 4)
    strided, high = aggregate_cams([out], (13, 15), keys=[])
    assert strided.shape == (0, 4, 4) and high.shape == (0, 13, 15)
    with pytest.raises(ValueError):
        aggregate_cams([out], (13, 15), keys=[0])      # keys are 1-based
    with pytest.raises(ValueError):
        aggregate_cams([out], (13, 15), keys=[4])


def test_scale_batch_holds_image_and_flip():
    img = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    b = scale_batch(img, 0.5)
    assert b.shape == (2, 3, 5, 7)
    assert torch.equal(b[1], b[0].flip(-1))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    model = RitcNet(torchvision.models.resnet18(weights=None), n_classes=4).eval()
    with torch.no_grad():   # make every class respond somewhere
        model.classifier.weight.normal_(0, 1)
    return model


def test_multiscale_cam_shapes(net):
    img = np.random.default_rng(1).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    strided, high = multiscale_cam(net, img, keys=[1, 4])
    assert strided.shape == (2, 10, 13) and high.shape == (2, 37, 50)
    assert strided.dtype == high.dtype == torch.float32
    assert (strided >= 0).all() and (strided.amax(dim=(1, 2)) <= 1).all()


def test_flipped_image_gives_flipped_cam(net):
    img = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    flipped = np.ascontiguousarray(img[:, ::-1])
    s1, h1 = multiscale_cam(net, img, keys=[1, 2, 3])
    s2, h2 = multiscale_cam(net, flipped, keys=[1, 2, 3])
    assert torch.allclose(s2, s1.flip(-1), atol=1e-4)
    assert torch.allclose(h2, h1.flip(-1), atol=1e-4)   # W multiple of 16: no crop asymmetry


def test_multiscale_cam_refuses_training_mode(net):
    net.train()
    try:
        with pytest.raises(ValueError):
            multiscale_cam(net, np.zeros((16, 16, 3), np.uint8), keys=[1])
    finally:
        net.eval()
