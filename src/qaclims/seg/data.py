"""DeepLab training data: the authors' augmentation over manifest rows + a label directory.

:class:`SegTrainDataset` serves the images of one manifest split with their label PNGs
``{label_dir}/{image_id}.png`` (pseudo masks from the IRN stage, or ground truth), augmented
exactly as CLIMS ``segmentation/deeplabv2/libs/datasets/base.py`` does (method.md 10):

1. read the image (fully decoded by :func:`qaclims.data.images.read_image`; the authors use
   cv2) as float32 **BGR** (grey images become 3-channel);
2. pick a scale from ``scales``; resize to ``(int(h*s), int(w*s))`` - image cv2 bilinear, label
   PIL nearest;
3. pad bottom/right up to ``crop`` - image with the mean BGR colour, label with 255 (ignore);
4. random ``crop`` x ``crop`` window (``random.randint`` offsets, both ends inclusive);
5. horizontal flip with probability 1/2;
6. subtract the mean BGR ``(104.008, 116.669, 122.675)``; no division by a std; HWC -> CHW.
   That is the input of the authors' caffe-converted init. Torchvision-format weights (ImageNet
   files, the demo's toy backbone) were trained on RGB in [0, 1] normalised by the ImageNet
   mean/std instead: ``input_norm="imagenet"`` (:func:`network_input`).

The random draws (scale, row offset, column offset, flip - in that order) come from a
``random.Random`` seeded by ``(seed, draw)``, where ``draw`` is the sample's position in the
training stream. :class:`DrawBatchSampler` produces that stream - epoch ``e`` visits the images in
the order ``numpy.random.default_rng([seed, e]).permutation(n)``, epochs follow each other without
gaps - and hands out ``(index, draw)`` pairs. So a batch is a pure function of its number: a run
resumed at iteration ``t`` sees exactly the batches an uninterrupted run sees, with any number of
DataLoader workers, and under DDP rank ``r`` of ``w`` takes every ``w``-th sample of each global
batch (what ``DistributedSampler`` does per epoch, but resumable mid-epoch).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from qaclims.store import read_label_png

MEAN_BGR: tuple[float, float, float] = (104.008, 116.669, 122.675)
IGNORE_INDEX = 255
VOC_TRAIN_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
INPUT_NORMS = ("caffe", "imagenet")
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def network_input(bgr: np.ndarray, input_norm: str = "caffe",
                  mean_bgr: Sequence[float] = MEAN_BGR) -> np.ndarray:
    """A float32 BGR 0-255 image [H, W, 3] as the network's input [H, W, 3] (still HWC).

    ``caffe``: BGR minus ``mean_bgr`` (the authors' caffe-converted init); ``imagenet``: RGB in
    [0, 1] minus the ImageNet mean, divided by its std (torchvision-format weights). A pixel of
    the mean colour (the padding) maps to ~0 either way.
    """
    if input_norm == "caffe":
        return bgr - np.asarray(mean_bgr, dtype=np.float32)
    if input_norm == "imagenet":
        rgb = bgr[:, :, ::-1] / np.float32(255.0)
        return ((rgb - np.asarray(IMAGENET_MEAN_RGB, np.float32))
                / np.asarray(IMAGENET_STD_RGB, np.float32)).astype(np.float32)
    raise ValueError(f"input_norm must be one of {list(INPUT_NORMS)}, got {input_norm!r}")


def rows_for_split(manifest: Any, split: str) -> Any:
    """Rows of ``split`` from a manifest path or DataFrame; raises if the split is empty."""
    from qaclims.data.manifest import read_manifest, split_view

    df = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else manifest
    rows = split_view(df, split)
    if len(rows) == 0:
        known = sorted({s for ss in df["splits"] for s in ss})
        raise ValueError(f"manifest has no image in split {split!r}; splits: {known}")
    return rows


def read_bgr(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as float32 BGR [H, W, 3] (the authors' channel order). Decoded by the
    project's one reader, not ``cv2.imread``: that fills a truncated JPEG with grey and goes on;
    this raises :class:`~qaclims.data.images.ImageReadError` naming the file."""
    from qaclims.data.images import read_image

    return read_image(path)[:, :, ::-1].astype(np.float32)


def augment(
    image: np.ndarray,
    label: np.ndarray,
    *,
    scales: Sequence[float],
    crop: int,
    mean_bgr: Sequence[float] = MEAN_BGR,
    flip: bool = True,
    rng: random.Random,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-5 of the module doc on a float32 BGR image and a uint8 label of the same size.

    Returns (float32 [crop, crop, 3] BGR, not mean-subtracted; uint8 [crop, crop]).
    """
    import cv2
    from PIL import Image

    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    h, w = label.shape
    s = rng.choice(list(scales))
    h, w = int(h * s), int(w * s)
    if h < 1 or w < 1:
        raise ValueError(f"scale {s} shrinks a {label.shape} image to nothing")
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    label = np.asarray(Image.fromarray(label).resize((w, h), resample=Image.Resampling.NEAREST))

    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    if pad_h or pad_w:
        padded = np.empty((h + pad_h, w + pad_w, 3), dtype=np.float32)
        padded[:] = np.asarray(mean_bgr, dtype=np.float32)
        padded[:h, :w] = image
        image = padded
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_index)

    h, w = label.shape
    top = rng.randint(0, h - crop)
    left = rng.randint(0, w - crop)
    image = image[top:top + crop, left:left + crop]
    label = label[top:top + crop, left:left + crop]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class SegTrainDataset(Dataset):
    """Augmented (image, label) crops of manifest ``rows`` with labels from ``label_dir``.

    ``dataset[(index, draw)]`` -> (float32 [3, crop, crop] mean-subtracted BGR, int64
    [crop, crop]); ``dataset[index]`` uses ``draw = index``. Every label file must exist and
    have its image's size (checked up front / on load; errors name the file).
    """

    def __init__(
        self,
        rows: Any,
        label_dir: str | os.PathLike[str],
        *,
        crop: int = 321,
        scales: Sequence[float] = VOC_TRAIN_SCALES,
        mean_bgr: Sequence[float] = MEAN_BGR,
        flip: bool = True,
        seed: int = 0,
        ignore_index: int = IGNORE_INDEX,
        input_norm: str = "caffe",
    ) -> None:
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {list(INPUT_NORMS)}, got {input_norm!r}")
        self.input_norm = input_norm
        self.label_dir = Path(label_dir)
        if not self.label_dir.is_dir():
            raise FileNotFoundError(f"label directory {self.label_dir} does not exist")
        if crop < 1 or not scales or any(float(s) <= 0 for s in scales):
            raise ValueError(f"bad augmentation: crop={crop}, scales={list(scales)}")
        self.image_ids = [str(i) for i in rows["image_id"]]
        self.image_paths = [str(p) for p in rows["image_path"]]
        self.sizes = [(int(h), int(w)) for h, w in zip(rows["height"], rows["width"], strict=True)]
        missing = [i for i in self.image_ids if not self.label_path(i).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.image_ids)} label PNGs missing in "
                f"{self.label_dir}, e.g. {', '.join(missing[:5])}.png")
        self.crop = int(crop)
        self.scales = tuple(float(s) for s in scales)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)
        self.flip = bool(flip)
        self.seed = int(seed)
        self.ignore_index = int(ignore_index)

    def __len__(self) -> int:
        return len(self.image_ids)

    def label_path(self, image_id: str) -> Path:
        return self.label_dir / f"{image_id}.png"

    def rng(self, draw: int) -> random.Random:
        """The augmentation RNG of stream position ``draw`` (str seeds hash stably)."""
        return random.Random(f"qaclims.seg/{self.seed}/{int(draw)}")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 BGR image, uint8 label) of ``index``, sizes checked against the manifest."""
        image = read_bgr(self.image_paths[index])
        label_file = self.label_path(self.image_ids[index])
        label = read_label_png(label_file)
        if label.shape != image.shape[:2] or label.shape != self.sizes[index]:
            raise ValueError(
                f"{label_file}: label size {label.shape} != image {self.image_paths[index]} size "
                f"{image.shape[:2]} (manifest says {self.sizes[index]})")
        return image, label

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, draw = key if isinstance(key, tuple) else (key, key)
        image, label = self.load(int(index))
        image, label = augment(image, label, scales=self.scales, crop=self.crop,
                               mean_bgr=self.mean_bgr, flip=self.flip, rng=self.rng(draw),
                               ignore_index=self.ignore_index)
        image = network_input(image, self.input_norm, self.mean_bgr)
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(label.astype(np.int64)))


class DrawBatchSampler(Sampler):
    """Endless batches of ``(index, draw)`` pairs from the seeded stream of the module doc.

    ``batch_size`` is per process; the global batch is ``batch_size * world_size``. Iteration
    starts at micro-batch ``start_batch`` (``iteration * iter_size`` when resuming).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if n < 1 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler: n={n}, batch_size={batch_size}, "
                             f"rank={rank}, world_size={world_size}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.start_batch, self.rank, self.world_size = int(start_batch), int(rank), int(world_size)
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def batch(self, number: int) -> list[tuple[int, int]]:
        """Micro-batch ``number``: this rank's ``(index, draw)`` pairs."""
        g = self.batch_size * self.world_size
        draws = range(number * g + self.rank, (number + 1) * g, self.world_size)
        return [(int(self.permutation(d // self.n)[d % self.n]), d) for d in draws]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        number = self.start_batch
        while True:
            yield self.batch(number)
            number += 1


def training_data_fingerprint(dataset: SegTrainDataset) -> str:
    """SHA-256 over (image id, image file name, label file content) of every training image.

    Part of the resume guard: regenerated pseudo masks under the same names change it. The
    image's folder is left out: the same data in another clone or mount gives the same hash
    (it is recorded in the model file, which two runs of one commit must write identically).
    """
    h = hashlib.sha256()
    for image_id, path in zip(dataset.image_ids, dataset.image_paths, strict=True):
        digest = hashlib.sha256(dataset.label_path(image_id).read_bytes()).hexdigest()
        h.update(f"{image_id}\t{Path(path).name}\t{digest}\n".encode())
    return h.hexdigest()
