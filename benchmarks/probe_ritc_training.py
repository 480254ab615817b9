"""How does RITC training move the CAM mIoU? A fast in-process loop for the demo (#5).

    python benchmarks/probe_ritc_training.py --steps 500 --eval-every 100        # ~12 min, 2 cores
    python benchmarks/probe_ritc_training.py --set classifier_lr_mult=10 --steps 300
    python benchmarks/probe_ritc_training.py --oracle-clip --oracle-salience 8 --oracle-blank 0.05

Runs after the demo's CAM stage (``snakemake -c2 results/synthetic/summary/cam_miou.md``): it
reads the demo's manifest, classes, QAPE corpus and text features, the baseline CAM network and
the toy CLIP, and trains the RITC network as ``train_ritc`` does (the demo config's
``cam.ritc``, each ``--set key=value`` overriding one key; same data order, loss and
optimiser). Every ``--eval-every`` steps, and before the first, the inference CAMs (ReLU'd
scores at ``--eval-scales`` + flip, per-class max normalisation) of the first
``--eval-images`` images of the CAM-evaluation split are scored against their ground truth at
the best background threshold of a 0.01 grid; printed with the per-class IoUs, the mean sigmoid
value of each image's present / absent classes, and the mean FRC / BRC per pair and REG since
the last line. The export uses three scales, so the numbers sit a little below
``search_threshold``'s; what matters is their direction. ``--clip`` / ``--text-features`` /
``--corpus`` try another toy CLIP (its text features must come from its own text tower);
``--baseline`` starts from another CAM network file (e.g. one trained at other crop sizes).

``--oracle-clip`` is a positive control for everything but the CLIP: the same loss code, FAT,
optimiser, schedule and CAM network, with the CLIP image tower replaced by an idealised one that
reads the crop's ground truth. The "image" handed to the loss is the one-hot ground truth
(background + K classes); the region embedding is the ``P``-weighted mix of what it covers - each
class's label text, the background as the mean of the pair's background texts - so a region
looks like what is visible in it, as web-scale CLIP roughly does. It answers from ground truth,
so it is a diagnostic of the training recipe only: if RITC cannot improve the CAM with it, the
toy CLIP is not the (only) thing to fix.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def evaluate(net: Any, images: Any, gts: list[np.ndarray], n_classes: int, class_names: list[str],
             scales: tuple[float, ...] = (1.0,)) -> dict[str, Any]:
    import torch

    from qaclims.cam.augment import normalize_imagenet
    from qaclims.cam.datasets import load_rgb
    from qaclims.cam.inference import multiscale_cam
    from qaclims.cam.threshold import sweep_thresholds

    net.eval()
    samples = []
    on, off = [], []
    with torch.inference_mode():
        for i, gt in enumerate(gts):
            img = load_rgb(images.image_paths[i])
            keys = np.nonzero(images.labels[i] > 0)[0] + 1
            _, high = multiscale_cam(net, img, keys, scales=scales)
            samples.append((high.numpy(), keys, gt))
            x = torch.from_numpy(np.ascontiguousarray(
                normalize_imagenet(img).transpose(2, 0, 1)))[None]
            p = net(x)[0].mean(dim=(1, 2)).numpy()
            on.append(p[keys - 1].mean())
            off.append(np.delete(p, keys - 1).mean())
    net.train()
    res = sweep_thresholds(samples, [round(t, 2) for t in np.arange(0.01, 0.96, 0.01)],
                           n_classes=n_classes + 1)
    res["iou_at_best"] = dict(zip(["background", *class_names], res["iou_at_best"], strict=True))
    res["mean_p_present"] = float(np.mean(on))
    res["mean_p_absent"] = float(np.mean(off))
    return res


def show(step: int, res: dict[str, Any], extra: str = "") -> None:
    per = " ".join(f"{k[:5]} {100 * (v or 0):.1f}" for k, v in res["iou_at_best"].items())
    print(f"step {step:5d}  mIoU {100 * res['best_miou']:.1f} @ {res['best_threshold']:.2f}  "
          f"(@0.15 {100 * res['miou_at_fixed']:.1f})  P present {res['mean_p_present']:.3f} "
          f"absent {res['mean_p_absent']:.4f}  | {per} {extra}", flush=True)


def oracle_inputs(gt: Any, n_classes: int) -> Any:
    """One-hot ``[N, 1 + K, H, W]`` float maps of ground-truth crops (255 = no channel)."""
    import torch

    g = gt.long()
    onehot = torch.zeros(g.shape[0], n_classes + 1, *g.shape[1:], dtype=torch.float32)
    valid = g <= n_classes
    onehot.scatter_(1, torch.where(valid, g, 0).unsqueeze(1), valid.unsqueeze(1).float())
    return onehot


def oracle_encoder(class_vecs: Any, bg_vecs: Any, blank_vec: Any, salience: float = 1.0,
                   blank: float = 0.0) -> Any:
    """``encode_image`` of the oracle: the region's channel masses, as fractions, mix the
    background vector of its pair (``bg_vecs`` [P, D], pairs in the loss's order) and the label
    vectors (``class_vecs`` [K, D]). Object masses count ``salience`` times (web CLIP names the
    horse on the beach, not the beach); ``blank`` x the image area is a constant mass of
    "nothing" (``blank_vec``), so a faint region reads as blank instead of as its content."""
    import torch

    def encode(region: Any, masks: Any = None) -> Any:
        mass = region.sum(dim=(2, 3))                                   # [P, 1 + K]
        mass = torch.cat([mass[:, :1], salience * mass[:, 1:]], 1)
        nothing = blank * region.shape[2] * region.shape[3]
        frac = mass / (mass.sum(1, keepdim=True) + nothing).clamp(min=1e-6)
        rest = 1 - frac.sum(1, keepdim=True)
        return frac[:, :1] * bg_vecs + frac[:, 1:] @ class_vecs + rest * blank_vec

    return encode


def gt_crop_dataset(images: Any, augment: Any, gt_paths: list[str]) -> Any:
    """:class:`CamTrainDataset` whose items also carry the ground-truth crop (same augmentation)."""
    from qaclims.cam.datasets import CamTrainDataset

    class GtCropDataset(CamTrainDataset):
        def __getitem__(self, item: tuple[int, int]) -> Any:
            import random

            import torch

            from qaclims.cam.datasets import load_rgb
            from qaclims.store import read_label_png

            index, seed = item
            img = load_rgb(self.images.image_paths[index])
            x, gt = self.augment(img, read_label_png(gt_paths[index]), rng=random.Random(seed))
            return (torch.from_numpy(np.ascontiguousarray(x)),
                    torch.from_numpy(self.images.labels[index]), int(index),
                    torch.from_numpy(np.ascontiguousarray(gt)))

    return GtCropDataset(images, augment)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results/synthetic")
    ap.add_argument("--clip", type=Path, default=ROOT / "resources/weights/toy/demo/clip")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="initial CAM network; default: <results>/baseline/cam/model.pth")
    ap.add_argument("--text-features", type=Path, default=None,
                    help="default: <results>/qape/text_features.h5 (must match --clip)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="default: <results>/qape/corpus.parquet")
    ap.add_argument("--config", type=Path, default=ROOT / "config/config.yaml")
    ap.add_argument("--set", action="append", default=[], help="cam.ritc key=value (YAML value)")
    ap.add_argument("--steps", type=int, default=None, help="default: the settings' step count")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-images", type=int, default=150)
    ap.add_argument("--eval-split", default=None, help="default: the config's cam_eval split")
    ap.add_argument("--eval-scales", type=float, nargs="+", default=[1.0],
                    help="inference scales of the evaluation CAMs (the export's: 1.0 0.5 1.5)")
    ap.add_argument("--oracle-clip", action="store_true",
                    help="positive control: a CLIP that reads the ground truth (see the doc)")
    ap.add_argument("--oracle-salience", type=float, default=1.0,
                    help="weight of object pixels against background pixels in the oracle")
    ap.add_argument("--oracle-blank", type=float, default=0.0,
                    help="the oracle's constant mass of 'nothing', as a share of the image area")
    ap.add_argument("--save", type=Path, default=None, help="write the trained state dict here")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from qaclims.cam.checkpoint import load_cam_network
    from qaclims.cam.datasets import StepBatchSampler, make_loader, split_images, train_augment
    from qaclims.cam.settings import RitcSettings
    from qaclims.cam.train_cam import set_threads
    from qaclims.cam.train_ritc import build_pair_texts, ritc_batch_loss, ritc_optimizer
    from qaclims.config import validate_config
    from qaclims.data.manifest import read_classes, read_manifest
    from qaclims.qape.text_features import load_text_features
    from qaclims.store import read_label_png
    from qaclims.vlp.clip import load_clip

    cfg = validate_config(yaml.safe_load(args.config.read_text()), base=ROOT)
    settings = RitcSettings.from_dict({**cfg["cam"]["ritc"], **parse_sets(args.set)})
    set_threads(settings.threads)
    torch.manual_seed(settings.seed)
    res_dir = args.results
    classes = read_classes(res_dir / "data/classes.json")
    names = [c.name for c in classes]
    K = len(classes)
    images = split_images(res_dir / "data/manifest.parquet", cfg["dataset"]["splits"]["train"], K)
    total = args.steps or settings.total_steps(len(images))

    net, _ = load_cam_network(args.baseline or res_dir / "baseline/cam/model.pth", "ritc", K)
    clip = load_clip(str(args.clip / "open_clip_config.json"), None,
                     mask_checkpoint=str(args.clip / "ovseg_toy_clip.pth"))
    for p in clip.parameters():
        p.requires_grad_(False)
    tf = load_text_features(args.text_features or res_dir / "qape/text_features.h5",
                            model_id=clip.model_id)

    def encode_text(texts: list[str]) -> Any:
        with torch.no_grad():
            return clip.encode_text(texts).float().cpu().numpy()

    corpus = pd.read_parquet(args.corpus or res_dir / "qape/corpus.parquet")
    texts = build_pair_texts(images, corpus, tf, classes, settings, encode_text)

    manifest = read_manifest(res_dir / "data/manifest.parquet")
    ev = split_images(manifest, args.eval_split or cfg["dataset"]["splits"]["cam_eval"], K)
    gt_of = manifest.set_index("image_id")["gt_path"]
    n_ev = min(args.eval_images, len(ev))
    scales = tuple(args.eval_scales)
    gts = [read_label_png(gt_of[i]) for i in ev.image_ids[:n_ev]]

    optimizer = ritc_optimizer(net, settings, total)
    sampler = StepBatchSampler(len(images), settings.batch_size, total, settings.seed, 0, 0, 1)
    augment = train_augment(settings.resize_long, settings.crop_size, settings.hflip)
    if args.oracle_clip:
        from qaclims.cam.losses import ritc_loss

        loader: Any = torch.utils.data.DataLoader(
            gt_crop_dataset(images, augment, [gt_of[i] for i in images.image_ids]),
            batch_sampler=sampler, num_workers=0)
        class_vecs = torch.from_numpy(np.stack([tf[f"a photo of {c.text}."] for c in classes]))
        # "nothing": orthogonal to every label text (the bank's mean removed as well)
        q, _ = torch.linalg.qr(torch.cat([class_vecs, torch.from_numpy(tf.feats).mean(0)[None],
                                          torch.randn(1, class_vecs.shape[1],
                                                      generator=torch.Generator().manual_seed(0))]).T)
        blank_vec = q[:, -1]
    else:
        loader = make_loader(images, augment, sampler, 0)
    pair_scale = settings.pair_scale(1)
    print(f"settings: {settings.to_dict()}\n{total} steps, texts {texts.stats}", flush=True)
    net.train()
    show(0, evaluate(net, ev, gts, K, names, scales))
    sums, since = np.zeros(3), 0
    t0 = time.perf_counter()
    for step, (x, y, idx, *rest) in enumerate(loader, start=1):
        if args.oracle_clip:
            fg, bg, bg_mask = texts.batch(idx)
            n, k = torch.nonzero((y == 1) & bg_mask.any(-1), as_tuple=True)
            w = bg_mask[n, k].float().unsqueeze(-1)
            bg_vecs = (bg[n, k] * w).sum(1) / w.sum(1)
            encode = oracle_encoder(class_vecs, bg_vecs, blank_vec, args.oracle_salience,
                                    args.oracle_blank)
            out = ritc_loss(net(x), oracle_inputs(rest[0], K), y, fg, bg, bg_mask, encode,
                            weights=settings.loss_weights,
                            tau=settings.tau, omega=settings.omega if settings.fat else 0.0,
                            brc_variant=settings.brc_variant, mask_mode=settings.mask_mode,
                            pair_scale=pair_scale, clip_size=clip.image_size)
        else:
            out = ritc_batch_loss(net(x), x, y, idx, texts, clip, settings, pair_scale)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        n = max(out.n_valid_pairs, 1)
        sums += [float(out.frc.detach()) / n, float(out.brc.detach()) / n,
                 float(out.reg.detach())]
        since += 1
        if step % args.eval_every == 0 or step == total:
            m = sums / since
            sums[:], since = 0, 0
            show(step, evaluate(net, ev, gts, K, names, scales),
                 f"| frc/pair {m[0]:.3f} brc/pair {m[1]:.3f} reg {m[2]:.4f} "
                 f"{time.perf_counter() - t0:.0f}s")
    if args.save:
        torch.save(net.state_dict(), args.save)


if __name__ == "__main__":
    main()
