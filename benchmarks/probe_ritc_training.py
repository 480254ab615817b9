"""How does RITC training move the CAM mIoU? A fast in-process loop for the demo (#5).

    python benchmarks/probe_ritc_training.py --steps 500 --eval-every 100        # ~12 min, 2 cores
    python benchmarks/probe_ritc_training.py --set classifier_lr_mult=10 --steps 300

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
    loader = make_loader(images, train_augment(settings.resize_long, settings.crop_size,
                                               settings.hflip), sampler, 0)
    pair_scale = settings.pair_scale(1)
    print(f"settings: {settings.to_dict()}\n{total} steps, texts {texts.stats}", flush=True)
    net.train()
    show(0, evaluate(net, ev, gts, K, names, scales))
    sums, since = np.zeros(3), 0
    t0 = time.perf_counter()
    for step, (x, y, idx) in enumerate(loader, start=1):
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
