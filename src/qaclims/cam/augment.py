"""Image preprocessing of the CAM stages, as in the authors' IRN-based data loaders.

Training (baseline CAM and RITC, method.md sections 5 and 6.2), in this order:
random long-side resize to an integer in [320, 640] (PIL bicubic) -> ImageNet normalisation ->
random horizontal flip -> random 512 crop, padded with 0 (the mean colour, in normalised space)
where the image is smaller, placed at a random offset. Label maps going through the same crop are
padded with 255 (ignore).

Randomness comes from a ``random.Random`` (default: the ``random`` module itself). PyTorch seeds
Python's ``random`` differently in each DataLoader worker, so the default is safe with workers;
a numpy Generator created in the parent would be copied into every worker unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_Rng = Any  # random.Random or the random module


def pil_resize(img: np.ndarray, size: tuple[int, int], order: int = 3) -> np.ndarray:
    """Resize an HxW[xC] uint8 array to ``size`` = (height, width); order 3 bicubic, 0 nearest."""
    if tuple(size) == img.shape[:2]:
        return img
    resample = {3: Image.Resampling.BICUBIC, 0: Image.Resampling.NEAREST}[order]
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), resample))


def pil_rescale(img: np.ndarray, scale: float, order: int = 3) -> np.ndarray:
    """Scale by ``scale``; the target size is (round(H*scale), round(W*scale))."""
    h, w = img.shape[:2]
    return pil_resize(img, (int(np.round(h * scale)), int(np.round(w * scale))), order)


def random_resize_long(img: np.ndarray, min_long: int, max_long: int,
                       rng: _Rng = random) -> np.ndarray:
    """Rescale so the long side becomes a random integer in [min_long, max_long] (bicubic)."""
    target = rng.randint(min_long, max_long)
    h, w = img.shape[:2]
    return pil_rescale(img, target / max(h, w), order=3)


def normalize_imagenet(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 HxWx3, ``(x / 255 - mean) / std`` per channel."""
    x = np.asarray(img, dtype=np.float32) / 255.0
    return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def random_hflip(arrays: Sequence[np.ndarray], rng: _Rng = random) -> list[np.ndarray]:
    """Flip all arrays left-right together with probability 1/2."""
    if rng.getrandbits(1):
        return [np.ascontiguousarray(a[:, ::-1]) for a in arrays]
    return list(arrays)


def random_crop_box(size: tuple[int, int], crop: int, rng: _Rng = random
                    ) -> tuple[slice, slice, slice, slice]:
    """(dst_rows, dst_cols, src_rows, src_cols) of a random ``crop`` x ``crop`` window.

    Along an axis longer than ``crop`` the window starts at a random offset in the image; along
    a shorter one the whole image is kept and placed at a random offset in the crop.
    """
    def axis(n: int) -> tuple[slice, slice]:
        keep = min(crop, n)
        space = n - crop
        if space > 0:
            src = rng.randrange(space + 1)
            return slice(0, keep), slice(src, src + keep)
        dst = rng.randrange(-space + 1)
        return slice(dst, dst + keep), slice(0, keep)

    dr, sr = axis(size[0])
    dc, sc = axis(size[1])
    return dr, dc, sr, sc


def random_crop(arrays: Sequence[np.ndarray], crop: int, fill_values: Sequence[float],
                rng: _Rng = random) -> list[np.ndarray]:
    """Crop all arrays (HxW or HxWxC, same H, W) with the same random box; pad with fill_values."""
    if len(arrays) != len(fill_values):
        raise ValueError("one fill value per array")
    dr, dc, sr, sc = random_crop_box(arrays[0].shape[:2], crop, rng)
    out = []
    for a, fill in zip(arrays, fill_values, strict=True):
        canvas = np.full((crop, crop, *a.shape[2:]), fill, dtype=a.dtype)
        canvas[dr, dc] = a[sr, sc]
        out.append(canvas)
    return out


class TrainAugment:
    """The training transform: uint8 HxWx3 RGB -> float32 3 x crop x crop (ImageNet-normalised).

    ``TrainAugment()(img)`` is the authors' VOC setting (long side 320..640, flip, 512 crop).
    ``label`` (HxW uint8, optional) goes through the same resize (nearest), flip and crop, padded
    with 255; it is returned as a second value when given.
    """

    def __init__(self, resize_long: tuple[int, int] | None = (320, 640), hflip: bool = True,
                 crop_size: int | None = 512, img_fill: float = 0.0, label_fill: int = 255
                 ) -> None:
        self.resize_long = resize_long
        self.hflip = hflip
        self.crop_size = crop_size
        self.img_fill = img_fill
        self.label_fill = label_fill

    def __call__(self, img: np.ndarray, label: np.ndarray | None = None,
                 rng: _Rng = random) -> Any:
        if self.resize_long is not None:
            h, w = img.shape[:2]
            target = rng.randint(*self.resize_long)
            scale = target / max(h, w)
            img = pil_rescale(img, scale, order=3)
            if label is not None:
                label = pil_resize(label, img.shape[:2], order=0)
        arrays = [normalize_imagenet(img)] + ([label] if label is not None else [])
        fills: list[float] = [self.img_fill] + ([self.label_fill] if label is not None else [])
        if self.hflip:
            arrays = random_hflip(arrays, rng)
        if self.crop_size is not None:
            arrays = random_crop(arrays, self.crop_size, fills, rng)
        chw = np.ascontiguousarray(arrays[0].transpose(2, 0, 1))
        if label is None:
            return chw
        return chw, arrays[1]
