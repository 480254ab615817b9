"""IRNet's affinity + displacement loss (method.md 9.2, the authors' ``train_irn`` step).

With ``aff = 1 - max(sigmoid(edge) along the path)`` of every pair (:class:`PathIndex`) and the
pair labels ``bg_pos, fg_pos, neg`` from the IR labels:

* ``L_pos = 1/2 mean_bg_pos(-log(aff + eps)) + 1/2 mean_fg_pos(-log(aff + eps))``
* ``L_neg = mean_neg(-log(1 + eps - aff))``
* ``dp_fg = sum(|disp[src] - disp[dst] - (dy, dx)| * fg_pos) / (2 sum(fg_pos))``
* ``dp_bg = sum(|disp[src] - disp[dst]| * bg_pos) / (2 sum(bg_pos))``
* ``total = (L_pos + L_neg) / 2 + (dp_fg + dp_bg) / 2``

``eps = 1e-5``. Each "mean" is ``sum / (count + eps)`` over the whole batch, as the authors
compute it: an empty pair set contributes 0 rather than NaN. The factor 2 in the displacement
terms averages the two (dy, dx) channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qaclims.irn.path_index import PathIndex

__all__ = ["AffinityDisplacementLoss", "IrnLosses"]


@dataclass
class IrnLosses:
    """The terms of one loss evaluation (scalars); ``total`` is what to backpropagate."""

    pos_aff: Tensor
    neg_aff: Tensor
    dp_fg: Tensor
    dp_bg: Tensor
    total: Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items()}


class AffinityDisplacementLoss(nn.Module):
    """The loss of :mod:`qaclims.irn.losses` for one :class:`PathIndex` (crop size and radius).

    ``forward(edge_logits [N, 1, h, w], displacement [N, 2, h, w], bg_pos, fg_pos, neg)`` with
    the pair labels ``[N, D, n_src]`` (bool or float, from ``PathIndex.affinity_labels``).
    """

    def __init__(self, path_index: PathIndex, eps: float = 1e-5) -> None:
        super().__init__()
        self.path_index = path_index
        self.eps = float(eps)
        self.register_buffer("disp_target", path_index.displacement_target(), persistent=False)

    def affinity(self, edge_logits: Tensor) -> Tensor:
        """``[N, D, n_src]`` pair affinities from edge logits ``[N, 1, h, w]``."""
        return self.path_index.edge_to_affinity(torch.sigmoid(edge_logits))

    def forward(self, edge_logits: Tensor, displacement: Tensor, bg_pos: Tensor,
                fg_pos: Tensor, neg: Tensor) -> IrnLosses:
        eps = self.eps
        aff = self.affinity(edge_logits)
        shape = tuple(aff.shape)
        for name, lab in (("bg_pos", bg_pos), ("fg_pos", fg_pos), ("neg", neg)):
            if tuple(lab.shape) != shape:
                raise ValueError(f"{name} labels of shape {tuple(lab.shape)}, affinities {shape}")
        bg_pos, fg_pos, neg = (t.to(aff.dtype) for t in (bg_pos, fg_pos, neg))

        bg_pos_loss = (-bg_pos * torch.log(aff + eps)).sum() / (bg_pos.sum() + eps)
        fg_pos_loss = (-fg_pos * torch.log(aff + eps)).sum() / (fg_pos.sum() + eps)
        pos_aff = bg_pos_loss / 2 + fg_pos_loss / 2
        neg_aff = (-neg * torch.log(1.0 + eps - aff)).sum() / (neg.sum() + eps)

        dp = self.path_index.to_displacement(displacement)  # [N, 2, D, n_src]
        target = self.disp_target.to(dp)
        dp_fg = ((dp - target).abs() * fg_pos.unsqueeze(1)).sum() / (2 * fg_pos.sum() + eps)
        dp_bg = (dp.abs() * bg_pos.unsqueeze(1)).sum() / (2 * bg_pos.sum() + eps)

        total = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2
        return IrnLosses(pos_aff=pos_aff, neg_aff=neg_aff, dp_fg=dp_fg, dp_bg=dp_bg, total=total)
