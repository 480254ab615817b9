"""Training data of the IRN stage: images, their IR labels and the pair labels (method.md 9.2).

Per sample, as the authors' ``VOC12AffinityDataset`` (on ``VOC12SegmentationDataset``):

1. random scale ``s ~ U(scale_range)`` (0.5, 1.5): image PIL-bicubic, IR label PIL-nearest,
   target size ``(round(H s), round(W s))``;
2. ImageNet normalisation of the image;
3. horizontal flip of both with probability 1/2;
4. random ``crop_size`` crop (512), the image padded with 0 (the mean colour), the label with 255;
5. the label reduced x0.25 (PIL nearest) to the network's stride-4 output (128 x 128);
6. pair labels ``bg_pos, fg_pos, neg`` ``[D, n_src]`` from :meth:`PathIndex.affinity_labels`
   (radius 10).

Randomness comes from one ``random.Random`` per sample, seeded by ``(seed, step, position)``
through :class:`qaclims.cam.datasets.StepBatchSampler`, so a resumed run sees the same batches.

The mean displacement after training is taken over the training images at scale 1, no flip,
top-left ``crop_size`` crop padded with 0 (:class:`TopLeftCropDataset`), as the authors do.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from qaclims.cam.augment import normalize_imagenet, pil_rescale, random_crop, random_hflip
from qaclims.cam.datasets import load_rgb
from qaclims.irn.path_index import PathIndex
from qaclims.store import read_label_png

__all__ = ["AffinityDataset", "TopLeftCropDataset", "top_left_crop"]

PathLike = str | os.PathLike[str]
IGNORE = 255


def top_left_crop(img: np.ndarray, crop: int, fill: float = 0.0) -> np.ndarray:
    """The top-left ``crop x crop`` window of an HxW[xC] array, padded with ``fill``."""
    out = np.full((crop, crop, *img.shape[2:]), fill, dtype=img.dtype)
    h, w = min(crop, img.shape[0]), min(crop, img.shape[1])
    out[:h, :w] = img[:h, :w]
    return out


class AffinityDataset(Dataset):
    """Items are ``(index, aug_seed)`` pairs (from :class:`~qaclims.cam.datasets.StepBatchSampler`);
    returns ``(image [3, crop, crop] float32, bg_pos, fg_pos, neg)`` with bool pair labels
    ``[D, n_src]`` of :class:`PathIndex` ``(radius, (crop/4, crop/4))``.

    ``labels`` maps every image id to its IR-label PNG (0 background, 1..``n_classes``, 255
    uncertain). A missing label, a label whose size differs from the image, or a value outside
    ``{0..n_classes, 255}`` raises ValueError naming the image.
    """

    def __init__(self, image_ids: Sequence[str], image_paths: Sequence[PathLike],
                 labels: Mapping[str, PathLike], n_classes: int, *, crop_size: int = 512,
                 scale_range: tuple[float, float] = (0.5, 1.5), hflip: bool = True,
                 radius: int = 10) -> None:
        if len(image_ids) != len(image_paths):
            raise ValueError(f"{len(image_ids)} image ids for {len(image_paths)} image paths")
        missing = [i for i in image_ids if i not in labels]
        if missing:
            raise ValueError(f"image {missing[0]}: no IR label PNG ({len(missing)} of "
                             f"{len(image_ids)} training images have none)")
        if crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4, got {crop_size}")
        self.image_ids = list(image_ids)
        self.image_paths = [str(p) for p in image_paths]
        self.label_paths = [str(labels[i]) for i in self.image_ids]
        self.n_classes = int(n_classes)
        self.crop_size = int(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = bool(hflip)
        self.path_index = PathIndex(radius=radius, size=(crop_size // 4, crop_size // 4))

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 RGB image and its checked IR label."""
        image_id = self.image_ids[index]
        img = load_rgb(self.image_paths[index])
        label = read_label_png(self.label_paths[index])
        if label.shape != img.shape[:2]:
            raise ValueError(f"image {image_id}: IR label {self.label_paths[index]} is "
                             f"{label.shape[1]}x{label.shape[0]}, the image "
                             f"{img.shape[1]}x{img.shape[0]}")
        bad = (label > self.n_classes) & (label != IGNORE)
        if bad.any():
            raise ValueError(f"image {image_id}: IR label {self.label_paths[index]} holds "
                             f"{int(label[bad][0])}, expected 0..{self.n_classes} or {IGNORE}")
        return img, label

    def augment(self, img: np.ndarray, label: np.ndarray, rng: random.Random
                ) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-5 of the module docstring: ``(image [3, c, c] float32, label [c/4, c/4])``."""
        lo, hi = self.scale_range
        scale = lo + rng.random() * (hi - lo)
        img = pil_rescale(img, scale, order=3)
        label = pil_rescale(label, scale, order=0)
        arrays = [normalize_imagenet(img), label]
        if self.hflip:
            arrays = random_hflip(arrays, rng)
        x, lab = random_crop(arrays, self.crop_size, (0.0, IGNORE), rng)
        reduced = pil_rescale(lab, 0.25, order=0)
        return np.ascontiguousarray(x.transpose(2, 0, 1)), reduced

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item
        img, label = self.load(index)
        x, reduced = self.augment(img, label, random.Random(seed))
        bg_pos, fg_pos, neg = self.path_index.affinity_labels(reduced, ignore_index=IGNORE)
        return (torch.from_numpy(x), torch.from_numpy(bg_pos), torch.from_numpy(fg_pos),
                torch.from_numpy(neg))


class TopLeftCropDataset(Dataset):
    """Normalised images, top-left ``crop_size`` crop padded with 0 (the mean-shift pass)."""

    def __init__(self, image_paths: Sequence[PathLike], crop_size: int = 512) -> None:
        self.image_paths = [str(p) for p in image_paths]
        self.crop_size = int(crop_size)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = top_left_crop(normalize_imagenet(load_rgb(self.image_paths[index])), self.crop_size)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

