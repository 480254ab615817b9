"""RITC losses: hand-computed values, masking, variants, gradients, FAT region inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from qaclims.cam.losses import (
    adaptive_threshold,
    area_loss,
    brc_loss,
    frc_loss,
    ritc_loss,
    ritc_region_inputs,
    valid_pairs,
)

E = math.e


def _example():
    """One pair, D=2: region along x; fg text (0.5, 0.5) un-normalised; bg texts x, y, padding."""
    region = torch.tensor([[3.0, 0.0]], dtype=torch.float64)        # normalised -> (1, 0)
    fg = torch.tensor([[0.5, 0.5]], dtype=torch.float64)            # s_ff = s_bf = 0.5
    bg = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])                      # s = 1, 0, (masked -1)
    return region, fg, bg, mask


def test_frc_hand_computed():
    region, fg, bg, mask = _example()
    # tau 0.5: -log(e^1 / (e^1 + e^2 + e^0))
    expected = math.log(E + E**2 + 1) - 1
    out = frc_loss(region, fg, bg, mask, tau=0.5)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.4076059644, rel=1e-9)


def test_brc_hand_computed_both_variants():
    region, fg, bg, mask = _example()
    # code: pos = (e^2 + e^0) / 2 ; L = -log(pos / (pos + e^1))
    pos = (E**2 + 1) / 2
    code = -math.log(pos / (pos + E))
    # paper: pos = e^{mean(1, 0) / 0.5} = e ; L = -log(e / (e + e)) = log 2
    paper = math.log(2)
    assert brc_loss(region, fg, bg, mask, 0.5, "code").item() == pytest.approx(code, rel=1e-12)
    assert brc_loss(region, fg, bg, mask, 0.5, "paper").item() == pytest.approx(paper, rel=1e-12)
    assert code == pytest.approx(0.4995954, rel=1e-6)


def test_masked_entries_are_ignored():
    region, fg, bg, mask = _example()
    bg2 = bg.clone()
    bg2[0, 2] = torch.tensor([1.0, 0.0])  # a padding entry that would dominate if counted
    for fn in (frc_loss, lambda *a: brc_loss(*a, variant="code"),
               lambda *a: brc_loss(*a, variant="paper")):
        assert torch.allclose(fn(region, fg, bg, mask, 0.5), fn(region, fg, bg2, mask, 0.5))
        full = fn(region, fg, bg2, torch.ones_like(mask), 0.5)
        assert not torch.allclose(fn(region, fg, bg, mask, 0.5), full)


def _naive(region, fg, bg, mask, tau):
    frc, brc_c, brc_p = [], [], []
    for i in range(region.shape[0]):
        f = region[i] / region[i].norm()
        v = mask[i]
        s_ff = f @ fg[i]
        s_b = bg[i][v] @ f
        frc.append(-torch.log(torch.exp(s_ff / tau) / (torch.exp(s_ff / tau)
                                                        + torch.exp(s_b / tau).sum())))
        pos_c = torch.exp(s_b / tau).mean()
        pos_p = torch.exp(s_b.mean() / tau)
        brc_c.append(-torch.log(pos_c / (pos_c + torch.exp(s_ff / tau))))
        brc_p.append(-torch.log(pos_p / (pos_p + torch.exp(s_ff / tau))))
    return torch.stack(frc), torch.stack(brc_c), torch.stack(brc_p)


def test_matches_naive_formula_on_random_pairs():
    g = torch.Generator().manual_seed(0)
    p, n, d = 6, 5, 8
    region = torch.randn(p, d, generator=g, dtype=torch.float64) * 4
    fg = torch.randn(p, d, generator=g, dtype=torch.float64)
    bg = F.normalize(torch.randn(p, n, d, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.rand(p, n, generator=g) > 0.4
    mask[:, 0] = True
    frc, brc_c, brc_p = _naive(region, fg, bg, mask, 0.7)
    assert torch.allclose(frc_loss(region, fg, bg, mask, 0.7), frc)
    assert torch.allclose(brc_loss(region, fg, bg, mask, 0.7, "code"), brc_c)
    assert torch.allclose(brc_loss(region, fg, bg, mask, 0.7, "paper"), brc_p)
    # the variants differ whenever a pair has >= 2 different bg similarities (Jensen)
    several = mask.sum(1) >= 2
    assert (brc_c[several] < brc_p[several]).all()


def test_paper_equals_code_with_one_bg_text():
    g = torch.Generator().manual_seed(1)
    region, fg = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    bg = F.normalize(torch.randn(4, 3, 6, generator=g), dim=-1)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[torch.arange(4), torch.tensor([0, 1, 2, 0])] = True
    assert torch.allclose(brc_loss(region, fg, bg, mask, 0.7, "code"),
                          brc_loss(region, fg, bg, mask, 0.7, "paper"), atol=1e-6)


def test_no_valid_bg_gives_zero_loss_and_zero_grad():
    region = torch.randn(3, 4, requires_grad=True)
    fg, bg = torch.randn(3, 4), F.normalize(torch.randn(3, 2, 4), dim=-1)
    mask = torch.tensor([[True, False], [False, False], [True, True]])
    assert valid_pairs(mask).tolist() == [True, False, True]
    for variant in ("code", "paper"):
        f = frc_loss(region, fg, bg, mask, 0.7)
        b = brc_loss(region, fg, bg, mask, 0.7, variant)
        assert f[1].item() == 0.0 and b[1].item() == 0.0
        region.grad = None
        (f.sum() + b.sum()).backward()
        assert torch.isfinite(region.grad).all()
        assert region.grad[1].abs().sum().item() == 0.0
        assert region.grad[0].abs().sum().item() > 0.0


def test_gradients_reach_region_embedding_and_stay_finite_at_extremes():
    region = torch.randn(2, 5, requires_grad=True)
    fg = torch.randn(2, 5) * 1e3             # un-normalised text with a large norm
    bg = F.normalize(torch.randn(2, 4, 5), dim=-1)
    mask = torch.ones(2, 4, dtype=torch.bool)
    total = (frc_loss(region, fg, bg, mask, 0.01).sum()
             + brc_loss(region, fg, bg, mask, 0.01, "code").sum()
             + brc_loss(region, fg, bg, mask, 0.01, "paper").sum())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(region.grad).all() and region.grad.abs().sum() > 0


def test_brc_rejects_unknown_variant():
    region, fg, bg, mask = _example()
    with pytest.raises(ValueError):
        brc_loss(region, fg, bg, mask, 0.5, "other")


def test_area_loss_and_adaptive_threshold():
    cam = torch.tensor([[[0.2, 1.0], [0.5, 0.05]], [[0.01, 0.02], [0.04, 0.002]]],
                       requires_grad=True)
    assert area_loss(cam).item() == pytest.approx(cam.detach().mean().item())
    b = adaptive_threshold(cam, 0.5)
    assert b.dtype == torch.bool and not b.requires_grad
    # map 0: >= 0.5 * 1.0 ; map 1: >= 0.5 * 0.04 (ties count as foreground)
    assert b.tolist() == [[[False, True], [True, False]], [[False, True], [True, False]]]


def _region_setup():
    g = torch.Generator().manual_seed(2)
    cam = torch.rand(2, 3, 4, 4, generator=g)
    images = torch.randn(2, 3, 16, 16, generator=g)
    labels = torch.tensor([[0, 1, 1], [1, 0, 0]])
    return cam, images, labels


def test_region_inputs_follow_fat_in_code_mode():
    cam, images, labels = _region_setup()
    cam.requires_grad_(True)
    fg_in, fg_mask, bg_in, bg_mask, pairs = ritc_region_inputs(cam, images, labels, clip_size=8,
                                                               omega=0.3)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 0]]     # row-major order of labels == 1
    assert fg_in.shape == bg_in.shape == (3, 3, 8, 8)
    assert fg_mask.shape == bg_mask.shape == (3, 1, 8, 8)
    cam8 = F.interpolate(cam.detach(), (8, 8), mode="bilinear", align_corners=True)
    img8 = F.interpolate(images, (8, 8), mode="bilinear", align_corners=True)
    for i, (n, k) in enumerate(pairs.tolist()):
        p = cam8[n, k]
        b = (p >= 0.3 * p.max()).float()
        assert torch.allclose(fg_in[i], p * img8[n])
        assert torch.allclose(bg_in[i], (1 - p) * img8[n])
        assert torch.equal(fg_mask[i, 0], b) and torch.equal(bg_mask[i, 0], 1 - b)
    fg_in.sum().backward()
    assert cam.grad is not None and cam.grad[0, 1].abs().sum() > 0
    assert cam.grad[0, 0].abs().sum() == 0                 # absent class gets no gradient


def test_region_inputs_paper_mode_multiplies_by_the_binary_mask():
    cam, images, labels = _region_setup()
    code = ritc_region_inputs(cam, images, labels, clip_size=8, omega=0.3, mask_mode="code")
    paper = ritc_region_inputs(cam, images, labels, clip_size=8, omega=0.3, mask_mode="paper")
    assert torch.allclose(paper.fg_in, code.fg_in * code.fg_mask)
    assert torch.allclose(paper.bg_in, code.bg_in * code.bg_mask)
    assert torch.equal(paper.fg_mask, code.fg_mask)


class _FakeClip:
    """encode_image stand-in: mean colour per channel (D = 3), records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, masks):
        self.calls.append((images.shape[0], None if masks is None else masks.shape))
        return images.mean(dim=(2, 3)) + 0.1


def test_ritc_loss_combines_weights_skips_pairs_without_bg_and_scales_pairs():
    cam, images, labels = _region_setup()
    cam.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    fg_text = torch.randn(2, 3, 3, generator=g)
    bg_text = F.normalize(torch.randn(2, 3, 2, 3, generator=g), dim=-1)
    bg_mask = torch.ones(2, 3, 2, dtype=torch.bool)
    bg_mask[0, 2] = False                        # pair (0, 2) has no bg text -> skipped
    clip = _FakeClip()
    out = ritc_loss(cam, images, labels, fg_text, bg_text, bg_mask, clip, tau=0.7, omega=0.1,
                    clip_size=8, pair_scale=0.5)
    assert out.n_pairs == 3 and out.n_valid_pairs == 2
    assert clip.calls == [(2, (2, 1, 8, 8)), (2, (2, 1, 8, 8))]
    # recompute by hand from the region inputs of the two valid pairs
    usable = torch.tensor([[0, 1, 0], [1, 0, 0]])
    r = ritc_region_inputs(cam, images, usable, clip_size=8, omega=0.1)
    n, k = r.pair_index[:, 0], r.pair_index[:, 1]
    v_fg = r.fg_in.mean(dim=(2, 3)) + 0.1
    v_bg = r.bg_in.mean(dim=(2, 3)) + 0.1
    frc = frc_loss(v_fg, fg_text[n, k], bg_text[n, k], bg_mask[n, k], 0.7).sum()
    brc = brc_loss(v_bg, fg_text[n, k], bg_text[n, k], bg_mask[n, k], 0.7).sum()
    reg = cam.mean()
    assert torch.allclose(out.frc, frc) and torch.allclose(out.brc, brc)
    assert torch.allclose(out.loss, 0.5 * (10 * frc + 8 * brc) + 0.2 * reg)
    out.loss.backward()
    assert torch.isfinite(cam.grad).all()


def test_ritc_loss_paper_mode_passes_no_mask_prompt_and_handles_no_valid_pair():
    cam, images, labels = _region_setup()
    fg_text = torch.randn(2, 3, 3)
    bg_text = F.normalize(torch.randn(2, 3, 2, 3), dim=-1)
    clip = _FakeClip()
    ritc_loss(cam, images, labels, fg_text, bg_text, torch.ones(2, 3, 2, dtype=torch.bool), clip,
              clip_size=8, mask_mode="paper", brc_variant="paper")
    assert clip.calls == [(3, None), (3, None)]
    cam.requires_grad_(True)
    out = ritc_loss(cam, images, labels, fg_text, bg_text, torch.zeros(2, 3, 2, dtype=torch.bool),
                    _FakeClip(), clip_size=8)
    assert out.n_valid_pairs == 0 and out.frc.item() == 0 and out.brc.item() == 0
    assert torch.allclose(out.loss, 0.2 * cam.mean())
    out.loss.backward()


def test_half_precision_embeddings_are_promoted():
    region, fg, bg, mask = _example()
    out = frc_loss(region.half(), fg.half(), bg.half(), mask, 0.5)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(math.log(E + E**2 + 1) - 1, rel=1e-3)
