"""RITC losses (method.md 6.4-6.5): FRC, BRC, the area regulariser, and the FAT region inputs.

Conventions for all pair losses (P pairs, N background texts per pair, D embedding dims):

* ``region_emb`` [P, D] is the CLIP image embedding as it leaves the encoder; it is
  L2-normalised here.
* ``fg_text`` [P, D] and ``bg_text`` [P, N, D] are used as stored: the foreground text is the
  authors' un-normalised mix ``0.5 * label + 0.5 * mean(answers)``; background texts are
  L2-normalised CLIP text embeddings. Nothing is re-normalised here.
* ``bg_mask`` [P, N] (bool) marks the real background texts; padding entries are ignored
  (they must be finite: pad with zeros).
* Losses are computed in log space (logsumexp/softplus): ``tau`` = 0.7 keeps the exponentials
  small for unit vectors, but the un-normalised foreground text can have a larger norm.

Pairs without any valid background text: the authors skip them entirely (method.md 12 #4). Here
both losses return exactly 0 for such pairs, with zero gradient (FRC is then ``-log 1``; BRC has
no positive at all), so summing without filtering is harmless; :func:`valid_pairs` gives the
selection the training loop uses to skip them (and not encode them at all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

BrcVariant = Literal["code", "paper"]
MaskMode = Literal["code", "paper"]
EncodeImage = Callable[[Tensor, Tensor | None], Tensor]


def valid_pairs(bg_mask: Tensor) -> Tensor:
    """bool [P]: pairs with at least one valid background text (the ones that get a loss)."""
    return bg_mask.bool().any(dim=-1)


def _similarities(region_emb: Tensor, fg_text: Tensor, bg_text: Tensor) -> tuple[Tensor, Tensor]:
    # at least float32: a half-precision CLIP output is promoted before the exponentials
    f = F.normalize(region_emb.to(torch.promote_types(region_emb.dtype, torch.float32)), dim=-1)
    s_fg = (f * fg_text.to(f.dtype)).sum(-1)                       # [P]
    s_bg = torch.einsum("pd,pnd->pn", f, bg_text.to(f.dtype))      # [P, N]
    return s_fg, s_bg


def frc_loss(region_emb: Tensor, fg_text: Tensor, bg_text: Tensor, bg_mask: Tensor,
             tau: float) -> Tensor:
    """Foreground region contrast per pair [P].

    ``-log( e^{s_ff/tau} / (e^{s_ff/tau} + sum_{valid n} e^{s_fb,n/tau}) )`` with ``s_ff`` the
    cosine between the foreground region and its foreground text (text un-normalised) and
    ``s_fb,n`` the cosines with the background texts.
    """
    s_ff, s_fb = _similarities(region_emb, fg_text, bg_text)
    mask = bg_mask.bool()
    neg = (s_fb / tau).masked_fill(~mask, float("-inf"))
    logits = torch.cat([(s_ff / tau).unsqueeze(-1), neg], dim=-1)
    return torch.logsumexp(logits, dim=-1) - s_ff / tau


def brc_loss(region_emb: Tensor, fg_text: Tensor, bg_text: Tensor, bg_mask: Tensor,
             tau: float, variant: BrcVariant = "code") -> Tensor:
    """Background region contrast per pair [P]: ``-log( pos / (pos + e^{s_bf/tau}) )``.

    ``variant="code"`` (authors' code): ``pos = mean_{valid n} e^{s_bb,n/tau}``;
    ``variant="paper"`` (paper Eq. 8): ``pos = e^{mean_{valid n} s_bb,n / tau}``.
    Both agree when a pair has one valid background text. Pairs without any give 0.
    """
    if variant not in ("code", "paper"):
        raise ValueError(f"variant must be 'code' or 'paper', got {variant!r}")
    s_bf, s_bb = _similarities(region_emb, fg_text, bg_text)
    mask = bg_mask.bool()
    n_valid = mask.sum(-1)
    has_bg = n_valid > 0
    # Rows without a valid text get dummy zeros so no -inf/NaN enters the graph; their loss is
    # replaced by 0 below.
    safe_mask = mask | ~has_bg.unsqueeze(-1)
    n_safe = safe_mask.sum(-1).to(s_bb.dtype)
    scaled = s_bb / tau
    if variant == "code":
        log_pos = torch.logsumexp(scaled.masked_fill(~safe_mask, float("-inf")), dim=-1)
        log_pos = log_pos - torch.log(n_safe)
    else:
        log_pos = scaled.masked_fill(~safe_mask, 0.0).sum(-1) / n_safe
    loss = F.softplus(s_bf / tau - log_pos)
    return torch.where(has_bg, loss, torch.zeros_like(loss))


def area_loss(cam: Tensor) -> Tensor:
    """L_REG: the mean of the sigmoid CAM over every element (absent classes included)."""
    return cam.mean()


@torch.no_grad()
def adaptive_threshold(cam: Tensor, omega: float) -> Tensor:
    """Foreground adaptive threshold: ``cam >= omega * max_{H,W}(cam)`` per map; bool, no grad.

    ``cam`` is [..., H, W]; each map is thresholded against its own maximum.
    """
    peak = cam.detach().amax(dim=(-2, -1), keepdim=True)
    return cam.detach() >= omega * peak


@dataclass
class RegionInputs:
    """What :func:`ritc_region_inputs` returns (it unpacks like a 5-tuple)."""

    fg_in: Tensor        # [P, 3, S, S] foreground-weighted image (carries the CAM gradient)
    fg_mask: Tensor      # [P, 1, S, S] float {0, 1}: b, the mask prompt of the foreground region
    bg_in: Tensor        # [P, 3, S, S]
    bg_mask: Tensor      # [P, 1, S, S] float {0, 1}: 1 - b
    pair_index: Tensor   # [P, 2] long (image n, class channel k), row-major order of labels == 1

    def __iter__(self):
        return iter((self.fg_in, self.fg_mask, self.bg_in, self.bg_mask, self.pair_index))


def ritc_region_inputs(cam_sigmoid: Tensor, images: Tensor, labels: Tensor, clip_size: int = 224,
                       omega: float = 0.1, mask_mode: MaskMode = "code") -> RegionInputs:
    """Foreground/background CLIP inputs for every positive (image, class) pair.

    ``cam_sigmoid`` [N, K, h, w] is the RITC output P, ``images`` [N, 3, H, W] the ImageNet-
    normalised crops, ``labels`` [N, K] multi-hot. Both are resized to ``clip_size`` (bilinear,
    align_corners=True); the images stay ImageNet-normalised (the authors feed them to CLIP so).
    ``b = adaptive_threshold(P_224, omega)``.

    ``mask_mode="code"``: pixels x ``P`` / ``(1 - P)``, masks ``b`` / ``1 - b`` (the masks are
    only the CLIP mask prompt). ``mask_mode="paper"`` (Eq. 10): pixels x ``P*b`` /
    ``(1 - P)(1 - b)``; the masks are returned all the same.
    """
    if mask_mode not in ("code", "paper"):
        raise ValueError(f"mask_mode must be 'code' or 'paper', got {mask_mode!r}")
    size = (clip_size, clip_size)
    pair_index = torch.nonzero(labels == 1, as_tuple=False)
    n, k = pair_index[:, 0], pair_index[:, 1]
    # interpolation is per map, so resizing only the positive maps equals resizing all of them
    p = F.interpolate(cam_sigmoid[n, k].unsqueeze(1), size, mode="bilinear",
                      align_corners=True)                            # [P, 1, S, S]
    img = F.interpolate(images, size, mode="bilinear", align_corners=True)[n]
    b = adaptive_threshold(p, omega).to(p.dtype)
    if mask_mode == "code":
        fg_in, bg_in = p * img, (1 - p) * img
    else:
        fg_in, bg_in = (p * b) * img, ((1 - p) * (1 - b)) * img
    return RegionInputs(fg_in, b, bg_in, 1 - b, pair_index)


@dataclass
class RitcLoss:
    """Total loss and its parts. ``frc``/``brc`` are the plain sums over the valid pairs."""

    loss: Tensor
    frc: Tensor
    brc: Tensor
    reg: Tensor
    n_pairs: int          # positive (image, class) pairs in the batch
    n_valid_pairs: int    # of which had background texts (got FRC/BRC terms)


def ritc_loss(cam_sigmoid: Tensor, images: Tensor, labels: Tensor, fg_text: Tensor,
              bg_text: Tensor, bg_text_mask: Tensor, encode_image: EncodeImage, *,
              weights: Sequence[float] = (10.0, 8.0, 0.2), tau: float = 0.7, omega: float = 0.1,
              brc_variant: BrcVariant = "code", mask_mode: MaskMode = "code",
              mask_prompt: bool | None = None, pair_scale: float = 1.0,
              clip_size: int = 224) -> RitcLoss:
    """``w_frc * pair_scale * sum FRC + w_brc * pair_scale * sum BRC + w_reg * mean(P)``.

    Texts are dense per (image, class channel): ``fg_text`` [N, K, D], ``bg_text``
    [N, K, Nb, D], ``bg_text_mask`` [N, K, Nb] bool (rows of absent classes are never read).
    Pairs are the positive labels whose class has at least one valid background text, in
    row-major order; only those are encoded. ``encode_image(images [n, 3, S, S], masks
    [n, 1, S, S] or None) -> [n, D]`` is the frozen CLIP image tower; it gets the masks when
    ``mask_prompt`` is true (default: ``mask_mode == "code"``, the authors' mask-adapted CLIP;
    the paper variant used plain CLIP, so None is passed).

    FRC/BRC are summed over the local batch's pairs as in the authors' code. Under DDP the
    gradient is the average of the ranks' sums, so one GPU with the 2-GPU global batch matches
    the official run with ``pair_scale=0.5`` (method.md 6.6).
    """
    w_frc, w_brc, w_reg = (float(w) for w in weights)
    if mask_prompt is None:
        mask_prompt = mask_mode == "code"
    n_pairs = int((labels == 1).sum())
    has_bg = bg_text_mask.bool().any(dim=-1).to(labels.device)       # [N, K]
    usable = (labels == 1) & has_bg
    reg = area_loss(cam_sigmoid)
    zero = cam_sigmoid.new_zeros(())
    n_valid = int(usable.sum())
    if n_valid == 0:
        frc = brc = zero
    else:
        fg_in, fg_mask, bg_in, bg_mask, pair_index = ritc_region_inputs(
            cam_sigmoid, images, usable.long(), clip_size=clip_size, omega=omega,
            mask_mode=mask_mode)
        device = cam_sigmoid.device
        n, k = (i.to(fg_text.device) for i in pair_index.unbind(1))
        fg_t = fg_text[n, k].to(device)
        bg_t = bg_text[n, k].to(device)
        bg_m = bg_text_mask.to(fg_text.device)[n, k].to(device)
        v_fg = encode_image(fg_in, fg_mask if mask_prompt else None)
        v_bg = encode_image(bg_in, bg_mask if mask_prompt else None)
        frc = frc_loss(v_fg, fg_t, bg_t, bg_m, tau).sum()
        brc = brc_loss(v_bg, fg_t, bg_t, bg_m, tau, variant=brc_variant).sum()
    loss = pair_scale * (w_frc * frc + w_brc * brc) + w_reg * reg
    return RitcLoss(loss=loss, frc=frc, brc=brc, reg=reg, n_pairs=n_pairs, n_valid_pairs=n_valid)

