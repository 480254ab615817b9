"""How to store exported CAMs: size, write/read time and mIoU change per dtype x compression.

For each storage option this writes the same CAMs through ``CamShardWriter``, reads them back
with ``CamStore`` and runs the threshold sweep (``sweep_thresholds``) against the ground truth;
everything is compared with float32 uncompressed, in one run:

    size %     file size / float32-uncompressed size
    write s    time to write all images;  read s: time to read them all back (get())
    dmIoU      best-threshold mIoU minus float32's (and at the fixed 0.15), in mIoU points

Inputs: real exported CAMs (``--cams`` shard files + ``--manifest``/``--classes``: the images of
``--split`` with ground truth), or, by default, realistic synthetic ones: per image 1-3 class
maps made like real CAMs (ReLU of a smooth random field at stride 16, bilinear up-sampling to a
VOC-like size, max-normalised), ground truth from a noisy threshold of the same maps.

    .venv/bin/python benchmarks/bench_cam_store.py                     # synthetic, 200 images
    .venv/bin/python benchmarks/bench_cam_store.py --cams results/synthetic/baseline/cams/*.h5 \\
        --manifest results/synthetic/data/manifest.parquet --classes \\
        results/synthetic/data/classes.json --split train
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qaclims.cam.cam_store import CamShardWriter, CamStore  # noqa: E402
from qaclims.cam.threshold import sweep_thresholds  # noqa: E402

OPTIONS = [("float32", "none"), ("float32", "gzip"), ("float16", "lzf"), ("float16", "gzip"),
           ("uint8", "none"), ("uint8", "lzf"), ("uint8", "gzip"), ("uint8", "gzip4")]
GRID = [round(0.01 * i, 2) for i in range(1, 96)]


def synthetic_cams(n: int, seed: int = 0, n_classes: int = 20):
    """[(image_id, keys, strided, high_res, gt)] made like real exported CAMs."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(300, 501)), int(rng.integers(300, 501))
        k = int(rng.integers(1, 4))
        keys = np.sort(rng.choice(np.arange(1, n_classes + 1), k, replace=False))
        gh, gw = (h - 1) // 16 + 1, (w - 1) // 16 + 1
        coarse = torch.from_numpy(rng.normal(size=(1, k, gh + 2, gw + 2)).astype(np.float32))
        coarse = F.avg_pool2d(coarse, 3, 1)  # smooth like a CAM of overlapping receptive fields
        bump = torch.zeros(1, k, gh, gw)
        for j in range(k):  # one object per class: a strong bump
            cy, cx = rng.integers(0, gh), rng.integers(0, gw)
            yy, xx = np.mgrid[0:gh, 0:gw]
            r = rng.uniform(1.5, max(2.0, min(gh, gw) / 3))
            bump[0, j] = torch.from_numpy(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
                                          .astype(np.float32)) * 3
        cam = F.relu(coarse[:, :, :gh, :gw] + bump)
        high = F.interpolate(cam, (gh * 16, gw * 16), mode="bilinear", align_corners=False)
        high = high[0, :, :h, :w]
        strided = F.interpolate(cam, ((h - 1) // 4 + 1, (w - 1) // 4 + 1), mode="bilinear",
                                align_corners=False)[0]
        high = (high / (high.amax(dim=(1, 2), keepdim=True) + 1e-5)).numpy()
        strided = (strided / (strided.amax(dim=(1, 2), keepdim=True) + 1e-5)).numpy()
        noisy = high + rng.normal(0, 0.05, high.shape).astype(np.float32)
        gt = np.where(noisy.max(0) > 0.35, keys[noisy.argmax(0)], 0).astype(np.uint8)
        out.append((f"img_{i:05d}", keys, strided, high, gt))
    return out, n_classes + 1


def real_cams(cam_files, manifest, classes, split, limit):
    from qaclims.data.manifest import read_classes, read_manifest, split_view
    from qaclims.store import read_label_png

    n_classes = len(read_classes(classes)) + 1
    rows = split_view(read_manifest(manifest), split)
    rows = rows[rows["has_gt"]].head(limit)
    out = []
    with CamStore(cam_files) as store:
        for image_id, gt_path in zip(rows["image_id"], rows["gt_path"], strict=True):
            keys, strided, high = store.get(image_id)
            out.append((image_id, keys, strided, high, read_label_png(gt_path)))
    return out, n_classes


def run(samples, n_classes, tmp: Path) -> list[dict]:
    results = []
    for dtype, comp in OPTIONS:
        level = 4 if comp == "gzip4" else 1
        compression = "gzip" if comp.startswith("gzip") else comp
        path = tmp / f"{dtype}_{comp}.h5"
        t0 = time.perf_counter()
        with CamShardWriter(path, dtype, compression, level) as w:
            for image_id, keys, strided, high, _ in samples:
                w.add(image_id, keys, strided, high)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        with CamStore(path) as store:
            maps = [store.get(s[0]) for s in samples]
        t_read = time.perf_counter() - t0
        sweep = sweep_thresholds(((m[2], m[0], s[4]) for m, s in zip(maps, samples, strict=True)),
                                 GRID, n_classes=n_classes)
        results.append({"option": f"{dtype}/{comp if comp != 'gzip' else 'gzip1'}",
                        "bytes": path.stat().st_size, "write_s": t_write, "read_s": t_read,
                        "best": sweep["best_miou"], "best_t": sweep["best_threshold"],
                        "fixed": sweep["miou_at_fixed"]})
        path.unlink()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cams", nargs="*", help="exported cams/{shard}.h5 files (default: synthetic)")
    ap.add_argument("--manifest")
    ap.add_argument("--classes")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=200, help="images (synthetic, or a limit for real)")
    args = ap.parse_args()
    if args.cams:
        samples, n_classes = real_cams(args.cams, args.manifest, args.classes, args.split, args.n)
        what = f"{len(samples)} real images of {args.split} from {len(args.cams)} file(s)"
    else:
        samples, n_classes = synthetic_cams(args.n)
        what = f"{len(samples)} synthetic images (300-500 px, 1-3 classes)"
    raw = sum(s[2].nbytes + s[3].nbytes for s in samples)
    print(f"CAM storage benchmark: {what}; float32 payload {raw / 2**20:.1f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        res = run(samples, n_classes, Path(tmp))
    ref = res[0]
    print(f"{'option':16s} {'size %':>7s} {'write s':>8s} {'read s':>7s} {'best mIoU':>9s} "
          f"{'@t':>5s} {'dbest':>7s} {'d@0.15':>7s}")
    for r in res:
        print(f"{r['option']:16s} {100 * r['bytes'] / ref['bytes']:7.1f} {r['write_s']:8.2f} "
              f"{r['read_s']:7.2f} {100 * r['best']:9.3f} {r['best_t']:5.2f} "
              f"{100 * (r['best'] - ref['best']):+7.3f} {100 * (r['fixed'] - ref['fixed']):+7.3f}")
    print("target: size <= 30 % of float32, |dmIoU| <= 0.1 points")


if __name__ == "__main__":
    main()
