"""Is the RITC objective minimised at the true object masks? A diagnostic for the demo (#5).

    python benchmarks/probe_ritc_objective.py masks                  # ~10 s on 2 CPU cores
    python benchmarks/probe_ritc_objective.py content --images 64    # ~20 s
    python benchmarks/probe_ritc_objective.py gradient --images 64   # ~1 min
    python benchmarks/probe_ritc_objective.py classes --images 300   # ~1 min
    python benchmarks/probe_ritc_objective.py direct --grid 32       # ~2 min
    python benchmarks/probe_ritc_objective.py direct --init baseline --steps 120 --lr 0.3

Runs after the demo (``snakemake -c2``): it reads the demo's manifest, classes, QAPE corpus and
text features under ``results/synthetic/``, its baseline CAM network, and the toy CLIP under
``resources/weights/toy/demo/clip``. The first ``--images`` train images are resized to
``--size`` (the demo's crop); the RITC loss is :func:`qaclims.cam.losses.ritc_loss` with the
authors' weights, tau and omega, summed over pairs and reported per pair.

``masks``: the weighted loss ``10 * FRC + 8 * BRC`` per pair for CAMs made from the ground truth:
``P = a * GT + 0.02 * (1 - GT)`` for several ``a``, GT eroded / dilated, background leak, flat 0.5.
A CLIP the method can use gives its lowest value to the full-strength exact mask.

``content``: the same loss for the ground-truth CAM when the pixels under it are not the
image's own (images rolled by one in the batch, blank images), without the mask prompt, and for
the mask moved sideways. A CLIP that reads the content gives the real images clearly the lowest
value; one that read the mask prompt's shape would score blank images about as well.

``gradient``: is the loss's gradient a pointer to the object? For each (image, class) pair,
the gradient of FRC and of BRC with respect to the CAM logits (full resolution), averaged over
``--pool`` px cells, ranks the cells: AUC of -gradient for "cell mostly object" (0.5 = no
information, 1 = every object cell would rise before any other), at the baseline's CAM (its
own logits, where RITC starts), at the ground truth and at a flat 0.5 map. Training can only
follow what this gradient says. Where FAT keeps every pixel (``P >= omega * max`` everywhere, as
for the flat map) the background's mask prompt is empty, the CLIP sees none of its pixels and
BRC has no gradient at all: AUC exactly 0.5.

``classes``: per class, on the images (of the first ``--images``) that contain it, the same
weighted loss when that class's CAM is the ground truth, each experiment's exported CAM
(``cams/*.h5``, resized), empty or full, every other class at its ground truth. When the
exported CAM scores above the ground truth, the CLIP prefers what the CAM found; when below, the
objective is right and training did not get there.

``direct``: no network - the per-image CAM logits themselves are optimised (Adam) under the RITC
loss, starting from the ground truth pooled to a ``--grid`` cell grid (``+4`` inside, ``-4``
outside) or from the baseline CAM's logits (x ``--scale``); every few steps prints the losses and
the CAM mIoU of the current logits (ReLU, per-class max normalisation, best background
threshold). When the loss falls while the mIoU falls, the CLIP is satisfied by non-object
patterns.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_inputs(results: Path, clip_dir: Path, n_images: int, size: int,
                text_features: Path | None = None) -> dict[str, Any]:
    """Images (ImageNet-normalised [N,3,S,S]), GT [N,S,S], labels [N,K], texts and the CLIP."""
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from qaclims.cam.augment import normalize_imagenet
    from qaclims.cam.datasets import load_rgb, split_images
    from qaclims.cam.settings import RitcSettings
    from qaclims.cam.train_ritc import build_pair_texts
    from qaclims.data.manifest import read_classes, read_manifest
    from qaclims.qape.text_features import load_text_features
    from qaclims.store import read_label_png
    from qaclims.vlp.clip import load_clip

    classes = read_classes(results / "data/classes.json")
    n_cls = len(classes)
    clip = load_clip(str(clip_dir / "open_clip_config.json"), None,
                     mask_checkpoint=str(clip_dir / "ovseg_toy_clip.pth"), device="cpu")
    for p in clip.parameters():
        p.requires_grad_(False)
    tf = load_text_features(text_features or results / "qape/text_features.h5",
                            model_id=clip.model_id)
    images = split_images(results / "data/manifest.parquet", "train", n_cls)
    gt_paths = read_manifest(results / "data/manifest.parquet").set_index("image_id")["gt_path"]
    texts = build_pair_texts(images, pd.read_parquet(results / "qape/corpus.parquet"), tf,
                             classes, RitcSettings.from_dict({}), None)
    xs, gts = [], []
    for i in range(n_images):
        x = torch.from_numpy(normalize_imagenet(load_rgb(images.image_paths[i])).transpose(2, 0, 1))
        xs.append(F.interpolate(x[None], (size, size), mode="bilinear")[0])
        gt = torch.from_numpy(read_label_png(gt_paths[images.image_ids[i]]).astype(np.float32))
        gts.append(F.interpolate(gt[None, None], (size, size), mode="nearest")[0, 0].long())
    fg, bg, mask = texts.batch(torch.arange(n_images))
    return {"x": torch.stack(xs), "gt": torch.stack(gts), "n_classes": n_cls,
            "y": torch.from_numpy(images.labels[:n_images]).float(),
            "image_ids": list(images.image_ids[:n_images]),
            "class_names": [c.name for c in classes],
            "fg": fg, "bg": bg, "mask": mask, "clip": clip}


def ritc_loss_per_pair(P: Any, d: dict[str, Any], x: Any = None,
                       mask_prompt: bool | None = None) -> tuple[float, float, Any]:
    """``(FRC per pair, BRC per pair, RitcLoss)`` of sigmoid CAM ``P`` [N,K,h,w] on the images
    ``x`` (default: the probe's own) with or without the mask prompt (default: the code's)."""
    from qaclims.cam.losses import ritc_loss

    out = ritc_loss(P, d["x"] if x is None else x, d["y"], d["fg"], d["bg"], d["mask"],
                    d["clip"].encode_image, clip_size=d["clip"].image_size,
                    mask_prompt=mask_prompt)
    n = max(out.n_valid_pairs, 1)
    return float(out.frc.detach()) / n, float(out.brc.detach()) / n, out


def class_maps(gt: Any, n_classes: int) -> Any:
    import torch

    return torch.stack([(gt == k + 1).float() for k in range(n_classes)], 1)


def morph(maps: Any, r: int) -> Any:
    """Each binary map dilated (r > 0) or eroded (r < 0) by |r| 3x3 steps."""
    import cv2
    import torch

    out = maps.numpy().copy()
    kernel = np.ones((3, 3), np.uint8)
    op = cv2.dilate if r > 0 else cv2.erode
    for i in range(out.shape[0]):
        for k in range(out.shape[1]):
            out[i, k] = op(out[i, k].astype(np.uint8), kernel, iterations=abs(r))
    return torch.from_numpy(out.astype(np.float32))


def probe_content(d: dict[str, Any]) -> None:
    import torch

    gt = class_maps(d["gt"], d["n_classes"])
    P, x = 0.95 * gt + 0.02 * (1 - gt), d["x"]
    shift = x.shape[-1] // 8
    variants = [("GT, own images", P, x, None), ("GT, images rolled by one", P, x.roll(1, 0), None),
                ("GT, blank images", P, torch.zeros_like(x), None),
                ("GT, own images, no mask prompt", P, x, False),
                ("GT, blank images, no mask prompt", P, torch.zeros_like(x), False),
                (f"GT moved {shift} px right", P.roll(shift, -1), x, None)]
    for name, p, xx, prompt in variants:
        with torch.no_grad():
            frc, brc, _ = ritc_loss_per_pair(p, d, xx, prompt)
        print(f"{name:34s} FRC {frc:.4f}  BRC {brc:.4f}  10*FRC+8*BRC {10 * frc + 8 * brc:.3f}",
              flush=True)


def probe_masks(d: dict[str, Any]) -> None:
    import torch

    gt = class_maps(d["gt"], d["n_classes"])
    variants = {f"GT a={a}": a * gt + 0.02 * (1 - gt) for a in (1.0, 0.9, 0.5, 0.2, 0.05)}
    for r in (-6, -3, 3, 6, 12):
        m = morph(gt, r)
        variants[f"GT {'dilated' if r > 0 else 'eroded'} {abs(r)} px"] = 0.95 * m + 0.02 * (1 - m)
    variants["GT + 0.3 background"] = 0.95 * gt + 0.3 * (1 - gt)
    variants["flat 0.5"] = torch.full_like(gt, 0.5)
    for name, P in variants.items():
        with torch.no_grad():
            frc, brc, _ = ritc_loss_per_pair(P, d)
        print(f"{name:24s} FRC {frc:.4f}  BRC {brc:.4f}  10*FRC+8*BRC {10 * frc + 8 * brc:.3f}",
              flush=True)


def exported_cams(cam_files: list[Path], image_ids: list[str], n_classes: int, size: int
                  ) -> Any:
    """The exported full-size CAMs of ``image_ids`` as ``[N, K, size, size]`` (bilinear)."""
    import torch
    import torch.nn.functional as F

    from qaclims.cam.cam_store import CamStore

    out = torch.zeros(len(image_ids), n_classes, size, size)
    with CamStore(cam_files) as store:
        for i, image_id in enumerate(image_ids):
            keys, high_res = store.high_res(image_id)
            maps = F.interpolate(torch.from_numpy(high_res)[None], (size, size), mode="bilinear",
                                 align_corners=False)[0]
            out[i, torch.from_numpy(keys - 1)] = maps  # keys are 1-based class ids
    return out


def probe_classes(d: dict[str, Any], experiments: dict[str, Any]) -> None:
    import torch

    gt = class_maps(d["gt"], d["n_classes"])
    base = 0.98 * gt + 0.02 * (1 - gt)
    for c, name in enumerate(d["class_names"]):
        sel = torch.nonzero(d["y"][:, c] > 0)[:, 0]
        if len(sel) == 0:
            continue
        sub = {k: (v[sel] if k in ("x", "gt", "y", "fg", "bg", "mask") else v)
               for k, v in d.items()}
        maps = {"GT": base[sel, c], "empty": torch.full_like(base[sel, c], 0.02),
                "full": torch.full_like(base[sel, c], 0.98)}
        maps.update({exp: cams[sel, c].clamp(0.02, 0.98) for exp, cams in experiments.items()})
        parts = []
        for label, m in maps.items():
            P = base[sel].clone()
            P[:, c] = m
            with torch.no_grad():
                frc, brc, _ = ritc_loss_per_pair(P, sub)
            parts.append(f"{label} {10 * frc + 8 * brc:.3f}")
        print(f"{name:12s} ({len(sel):3d} images) 10*FRC+8*BRC: " + ", ".join(parts), flush=True)


def cam_miou(z: Any, d: dict[str, Any]) -> tuple[float, float, float]:
    """``(best mIoU, its threshold, share of positive pairs with a positive max logit)``."""
    import torch.nn.functional as F

    from qaclims.metrics import ConfusionMatrix

    size = d["gt"].shape[-1]
    up = F.interpolate(z.detach(), (size, size), mode="bilinear", align_corners=False)
    r = F.relu(up) * d["y"][:, :, None, None]
    r = r / (r.amax(dim=(2, 3), keepdim=True) + 1e-5)
    best, best_t = -1.0, 0.0
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        pad = r.new_full(r[:, :1].shape, float(t))
        pred = np.concatenate([pad.numpy(), r.numpy()], 1).argmax(1)
        miou = ConfusionMatrix(d["n_classes"] + 1).update(d["gt"].numpy(), pred).miou()
        if miou > best:
            best, best_t = miou, float(t)
    alive = float((z.detach().amax(dim=(2, 3))[d["y"].bool()] > 0).float().mean())
    return best, best_t, alive


def _quality(z: Any, d: dict[str, Any]) -> str:
    miou, threshold, alive = cam_miou(z, d)
    return f"CAM mIoU {miou:.3f} @ {threshold:.2f}, alive {alive:.2f}"


def baseline_logits(d: dict[str, Any], baseline: Path, scale: float) -> Any:
    """The baseline CAM network's class scores on the probe's images x ``scale`` [N,K,h,w]."""
    import torch

    from qaclims.cam.checkpoint import load_cam_network

    net, _ = load_cam_network(baseline, "ritc", d["n_classes"])
    with torch.no_grad():
        return net.eval().classifier(net.features(d["x"])) * scale


def probe_direct(d: dict[str, Any], *, init: str, grid: int, steps: int, lr: float,
                 scale: float, baseline: Path) -> None:
    import torch
    import torch.nn.functional as F

    if init == "gt":
        z0 = F.adaptive_avg_pool2d(class_maps(d["gt"], d["n_classes"]), grid) * 8 - 4
    else:
        z0 = baseline_logits(d, baseline, scale)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    print(f"start  {_quality(z, d)}", flush=True)
    for step in range(1, steps + 1):
        frc, brc, out = ritc_loss_per_pair(torch.sigmoid(z), d)
        opt.zero_grad()
        (out.loss / max(out.n_valid_pairs, 1)).backward()
        opt.step()
        if step % max(1, steps // 8) == 0:
            print(f"{step:5d}  FRC {frc:.3f} BRC {brc:.3f} REG {float(out.reg):.3f}  "
                  f"{_quality(z, d)}", flush=True)


def ranking_auc(score: Any, positive: Any) -> float | None:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney); None when one
    side is empty."""
    import torch

    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    # average ranks (1-based): a tied group shares the mean of the ranks it spans
    _, inverse, counts = torch.unique(torch.cat([pos, neg]).double(), return_inverse=True,
                                      return_counts=True)
    ranks = (counts.cumsum(0) - (counts - 1) / 2).double()[inverse]
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def probe_gradient(d: dict[str, Any], *, pool: int, baseline: Path) -> None:
    import torch
    import torch.nn.functional as F

    size = d["x"].shape[-1]
    gt = class_maps(d["gt"], d["n_classes"])
    # the baseline's own logits (scale 1): where RITC training starts
    starts = {"baseline CAM": F.interpolate(baseline_logits(d, baseline, 1.0), size,
                                            mode="bilinear", align_corners=False),
              "GT (0.95 / 0.02)": torch.logit(0.95 * gt + 0.02 * (1 - gt)),
              "flat 0.5": torch.zeros_like(gt)}
    for name, z0 in starts.items():
        for term in ("frc", "brc"):
            z = z0.clone().requires_grad_(True)
            _, _, out = ritc_loss_per_pair(torch.sigmoid(z), d)
            (g,) = torch.autograd.grad(getattr(out, term), z)
            aucs = []
            for i, k in torch.nonzero(d["y"]).tolist():
                obj = (d["gt"][i] == k + 1).float()[None, None]
                gi = -g[i, k][None, None]
                if pool > 1:
                    gi, obj = F.avg_pool2d(gi, pool), F.avg_pool2d(obj, pool)
                a = ranking_auc(gi.flatten(), obj.flatten() > 0.5)
                if a is not None:
                    aucs.append(a)
            print(f"{name:18s} {term.upper()}  AUC {np.mean(aucs):.3f} (median "
                  f"{np.median(aucs):.3f}, {len(aucs)} pairs)", flush=True)


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["masks", "content", "classes", "direct", "gradient"])
    p.add_argument("--results", type=Path, default=ROOT / "results/synthetic")
    p.add_argument("--clip", type=Path, default=ROOT / "resources/weights/toy/demo/clip")
    p.add_argument("--text-features", type=Path, default=None,
                   help="default: <results>/qape/text_features.h5 (must match --clip)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--init", choices=["gt", "baseline"], default="gt")
    p.add_argument("--grid", type=int, default=8, help="GT init: logit cells per side")
    p.add_argument("--scale", type=float, default=0.25, help="baseline init: logit scale")
    p.add_argument("--pool", type=int, default=16,
                   help="gradient: cell size (px) the gradient and the GT are averaged over")
    p.add_argument("--experiments", nargs="+", default=["baseline", "qa_clims"],
                   help="classes: experiments whose exported CAMs are scored")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = load_inputs(a.results, a.clip, a.images, a.size, a.text_features)
    if a.mode == "masks":
        probe_masks(d)
    elif a.mode == "content":
        probe_content(d)
    elif a.mode == "classes":
        cams = {e: exported_cams(sorted((a.results / e / "cams").glob("*.h5")), d["image_ids"],
                                 d["n_classes"], a.size) for e in a.experiments}
        probe_classes(d, cams)
    elif a.mode == "gradient":
        probe_gradient(d, pool=a.pool, baseline=a.results / "baseline/cam/model.pth")
    else:
        probe_direct(d, init=a.init, grid=a.grid, steps=a.steps, lr=a.lr, scale=a.scale,
                     baseline=a.results / "baseline/cam/model.pth")


if __name__ == "__main__":
    main()
