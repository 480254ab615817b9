"""Multi-scale + flip CAM inference (method.md 7, the authors' ``make_clims``/IRN ``make_cam``).

For an image of size (H, W) and each scale s (default 1.0, 0.5, 1.5, 2.0):
the uint8 image is rescaled with PIL bicubic to (round(H*s), round(W*s)), ImageNet-normalised and
stacked with its horizontal flip; the network's inference CAM (ReLU'd raw class scores) of the
pair gives ``out[0] + flip(out[1])``. Over the scales:

* ``strided  = sum_s bilinear(out_s -> ((H-1)//4+1, (W-1)//4+1))``
* ``high_res = sum_s bilinear(out_s -> (((H-1)//16+1)*16, ((W-1)//16+1)*16))[:, :H, :W]``

(bilinear, align_corners=False), then only the image's classes are kept and each map is divided
by its own maximum + 1e-5.

``keys`` are **1-based class ids** (the values of the PNG label maps, 0 = background); class id
``c`` is network channel ``c - 1``. The authors store 0-based keys; this project stores 1-based
ones everywhere (CAM files, thresholding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaclims.cam.augment import normalize_imagenet, pil_rescale

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)
EPS = 1e-5


def strided_size(size: tuple[int, int], stride: int = 4) -> tuple[int, int]:
    """ceil(H/stride), ceil(W/stride)."""
    return ((size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1)


def strided_up_size(size: tuple[int, int], stride: int = 16) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``stride``."""
    h, w = strided_size(size, stride)
    return (h * stride, w * stride)


def _channels(keys: Sequence[int] | Tensor | np.ndarray, n_classes: int, device: torch.device
              ) -> Tensor:
    k = torch.as_tensor(np.asarray(keys, dtype=np.int64).reshape(-1), device=device)
    if k.numel() and (int(k.min()) < 1 or int(k.max()) > n_classes):
        raise ValueError(f"keys must be class ids in 1..{n_classes}, got {k.tolist()}")
    return k - 1


def aggregate_cams(outputs_per_scale: Sequence[Tensor], image_size: tuple[int, int],
                   keys: Sequence[int] | Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Combine per-scale CAMs of (image, flipped image) into the stride-4 and full-size CAMs.

    ``outputs_per_scale``: one [2, K, h_s, w_s] tensor per scale, the inference CAM of the
    image (index 0) and of its horizontal flip (index 1), already ReLU'd.
    Returns ``(strided [K', ceil(H/4), ceil(W/4)], high_res [K', H, W])`` float32 for the
    classes in ``keys`` (1-based ids, in that order), each map scaled to max 1 (by max + 1e-5).
    """
    height, width = image_size
    if not outputs_per_scale:
        raise ValueError("need at least one scale")
    first = outputs_per_scale[0]
    ch = _channels(keys, first.shape[1], first.device)
    s_size = strided_size(image_size, 4)
    up_size = strided_up_size(image_size, 16)
    strided = first.new_zeros((len(ch), *s_size), dtype=torch.float32)
    high = first.new_zeros((len(ch), *up_size), dtype=torch.float32)
    if len(ch) == 0:
        return strided, high[:, :height, :width]
    for out in outputs_per_scale:
        if out.dim() != 4 or out.shape[0] != 2:
            raise ValueError(f"expected [2, K, h, w] per scale, got {tuple(out.shape)}")
        cam = (out[0] + out[1].flip(-1))[ch].float().unsqueeze(0)
        strided += F.interpolate(cam, s_size, mode="bilinear", align_corners=False)[0]
        high += F.interpolate(cam, up_size, mode="bilinear", align_corners=False)[0]
    high = high[:, :height, :width]
    strided = strided / (strided.amax(dim=(1, 2), keepdim=True) + EPS)
    high = high / (high.amax(dim=(1, 2), keepdim=True) + EPS)
    return strided, high


def scale_batch(image: np.ndarray, scale: float) -> Tensor:
    """[2, 3, h, w] float32: the rescaled, normalised image and its horizontal flip."""
    img = image if scale == 1.0 else pil_rescale(image, scale, order=3)
    x = torch.from_numpy(np.ascontiguousarray(normalize_imagenet(img).transpose(2, 0, 1)))
    return torch.stack([x, x.flip(-1)])


@torch.inference_mode()
def multiscale_cam(net: nn.Module, image: np.ndarray, keys: Sequence[int] | Tensor | np.ndarray,
                   scales: Sequence[float] = DEFAULT_SCALES,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Strided and full-size CAMs of one uint8 HxWx3 RGB image (see :func:`aggregate_cams`).

    ``net`` must be in eval mode and provide ``cam(x) -> [N, K, h, w]`` (CamNet, RitcNet).
    """
    if net.training:
        raise ValueError("call net.eval() first: BatchNorm would use batch statistics")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if device is None:
        device = next(net.parameters()).device
    outputs = [net.cam(scale_batch(image, s).to(device)) for s in scales]
    return aggregate_cams(outputs, image.shape[:2], keys)
