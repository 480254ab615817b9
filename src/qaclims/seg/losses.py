"""DeepLab training losses (method.md 10; CLIMS ``segmentation/deeplabv2/main*.py``).

* ``"ce"``: plain cross-entropy over the non-ignored pixels (``ignore_index`` 255), the
  COCO-pretrained config.
* ``"balanced"``: the authors' ``criterion_balance`` (ImageNet config, the paper's number): the
  per-pixel CE is averaged separately over background pixels (label 0) and foreground pixels
  (1..K), then ``(bg + fg) / 2``. The sums run over the whole batch.

Labels are resized to every MSC output with nearest-neighbour sampling at pixel centres
(``F.interpolate(mode="nearest-exact")``, what ``PIL.Image.resize(NEAREST)`` in the authors'
``resize_labels`` does; plain ``"nearest"`` samples corners and shifts the labels), and the loss is
summed over the four MSC outputs.

Empty groups. The authors divide by the pixel count of each group, so a batch without a single
foreground (or background) pixel gives 0/0 = NaN and poisons the weights. Here an empty group
contributes 0, i.e. such a batch costs ``bg / 2`` (or ``fg / 2``): the same weight per pixel as
when both groups are present. A batch with no valid pixel at all costs 0 (still differentiable).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
LossKind = Literal["ce", "balanced"]
LOSS_KINDS: tuple[str, ...] = ("ce", "balanced")


def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour (pixel-centre) resize of int labels [N, H, W] to [N, *size]."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].round().long()


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean CE over pixels whose label is not ``ignore_index`` (0 if there is none)."""
    per_pixel = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore_index)
    valid = labels != ignore_index
    return per_pixel.sum() / valid.sum().clamp(min=1)


def balanced_cross_entropy(logits: Tensor, labels: Tensor,
                           ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The authors' ``criterion_balance``: ``(mean CE over bg + mean CE over fg) / 2``.

    An empty group contributes 0 instead of NaN (see the module doc).
    """
    per_pixel = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore_index)
    bg = labels == 0
    fg = (labels != 0) & (labels != ignore_index)
    loss_bg = (per_pixel * bg).sum() / bg.sum().clamp(min=1)
    loss_fg = (per_pixel * fg).sum() / fg.sum().clamp(min=1)
    return (loss_bg + loss_fg) / 2


def criterion(kind: str):
    """The per-output loss function for ``kind`` (``"ce"`` or ``"balanced"``)."""
    if kind == "ce":
        return cross_entropy
    if kind == "balanced":
        return balanced_cross_entropy
    raise ValueError(f"unknown DeepLab loss {kind!r}; one of {list(LOSS_KINDS)}")


def msc_loss(outputs: Tensor | Sequence[Tensor], labels: Tensor, kind: str = "balanced",
             ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Sum over the MSC outputs of the loss against labels resized to each output's size.

    ``outputs``: the list a training-mode :class:`~qaclims.seg.networks.MSC` returns (or a single
    logit tensor); ``labels``: int64 [N, H, W] at crop size, 255 = ignore.
    """
    fn = criterion(kind)
    if isinstance(outputs, Tensor):
        outputs = [outputs]
    total = outputs[0].new_zeros(())
    for logits in outputs:
        target = resize_labels(labels, logits.shape[-2:])
        total = total + fn(logits, target, ignore_index)
    return total


__all__ = ["IGNORE_INDEX", "LOSS_KINDS", "balanced_cross_entropy", "criterion", "cross_entropy",
           "msc_loss", "resize_labels"]
