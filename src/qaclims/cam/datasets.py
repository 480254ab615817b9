"""Training data of the CAM stages: images of a split, their labels, and a step-indexed sampler.

Reproducibility is built into the sampling rather than into process state:

* the order of the images in epoch ``e`` is a permutation drawn from ``(seed, e)``;
* step ``s`` takes global batch ``s mod steps_per_epoch`` of epoch ``s // steps_per_epoch``
  (``drop_last``, as the authors); with several ranks, rank ``r`` takes the ``r``-th equal slice
  of that global batch, so the ranks together see exactly the single-process batch;
* each sample's augmentation (random resize, flip, crop) draws from a ``random.Random`` seeded by
  ``(seed, step, position in the global batch)``.

So a run resumed at step ``s`` sees the same data as one that never stopped, and 1 or N ranks
see the same global batches, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from qaclims.cam.augment import TrainAugment


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """uint8 HxWx3 RGB image (grey and palette images converted); a bad file raises
    :class:`~qaclims.data.images.ImageReadError` naming it."""
    from qaclims.data.images import read_image

    return read_image(path)


@dataclass
class SplitImages:
    """The images of one split: ids, files, sizes and multi-hot labels [N, K] (float32)."""

    image_ids: list[str]
    image_paths: list[str]
    sizes: list[tuple[int, int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)


def split_images(manifest: Any, split: str, n_classes: int, *,
                 require_labels: bool = True) -> SplitImages:
    """The rows of ``split`` from a manifest DataFrame (or its path), in image_id order."""
    from qaclims.data.manifest import multi_hot, read_manifest, split_view

    if not hasattr(manifest, "columns"):
        manifest = read_manifest(manifest, num_classes=n_classes)
    rows = split_view(manifest, split)
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no images in the manifest")
    labels = multi_hot(rows["labels"], n_classes)
    if require_labels and (labels.sum(1) == 0).any():
        bad = rows["image_id"][labels.sum(1) == 0].iloc[0]
        raise ValueError(f"image {bad} of split {split!r} has no labels; a CAM classifier needs "
                         "image-level labels")
    return SplitImages(rows["image_id"].tolist(), rows["image_path"].tolist(),
                       list(zip(rows["height"].astype(int), rows["width"].astype(int),
                                strict=True)), labels)


def augment_seed(seed: int, step: int, position: int) -> int:
    """The augmentation seed of one sample (see the module docstring)."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


class CamTrainDataset(Dataset):
    """Items are ``(index, aug_seed)`` pairs (from :class:`StepBatchSampler`); returns
    ``(image [3, crop, crop] float32, labels [K] float32, index)``."""

    def __init__(self, images: SplitImages, augment: TrainAugment) -> None:
        self.images = images
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, seed = item
        img = load_rgb(self.images.image_paths[index])
        x = self.augment(img, rng=random.Random(seed))
        return (torch.from_numpy(np.ascontiguousarray(x)),
                torch.from_numpy(self.images.labels[index]), int(index))


class StepBatchSampler:
    """Yields, for steps ``start_step .. total_steps - 1``, this rank's ``(index, aug_seed)``
    list (see the module docstring). ``global_batch`` must be divisible by ``world_size``."""

    def __init__(self, n_images: int, global_batch: int, total_steps: int, seed: int,
                 start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} ranks")
        self.per_epoch = n_images // global_batch
        if self.per_epoch < 1:
            raise ValueError(f"{n_images} images do not fill one batch of {global_batch}")
        self.n = n_images
        self.batch = global_batch
        self.local = global_batch // world_size
        self.total = total_steps
        self.start = start_step
        self.seed = seed
        self.rank = rank

    def permutation(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence(
            [self.seed, epoch, 0x5EED]).generate_state(1)[0]))
        return torch.randperm(self.n, generator=g).numpy()

    def global_batch(self, step: int) -> np.ndarray:
        epoch, b = divmod(step, self.per_epoch)
        return self.permutation(epoch)[b * self.batch:(b + 1) * self.batch]

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, perm = -1, None
        for step in range(self.start, self.total):
            e, b = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            assert perm is not None
            lo = b * self.batch + self.rank * self.local
            idx = perm[lo:lo + self.local]
            base = self.rank * self.local
            yield [(int(i), augment_seed(self.seed, step, base + j)) for j, i in enumerate(idx)]


def make_loader(images: SplitImages, augment: TrainAugment, sampler: StepBatchSampler,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over :class:`CamTrainDataset` driven by ``sampler``."""
    return torch.utils.data.DataLoader(
        CamTrainDataset(images, augment), batch_sampler=sampler, num_workers=num_workers,
        persistent_workers=False, pin_memory=False)


def train_augment(resize_long: Sequence[int] | None, crop_size: int, hflip: bool) -> TrainAugment:
    return TrainAugment(resize_long=tuple(resize_long) if resize_long is not None else None,
                        hflip=hflip, crop_size=crop_size)
