"""Where does the random walk's background threshold put each experiment's pseudo masks?

    python benchmarks/probe_walk_threshold.py --results results/synthetic \
        --experiments baseline qa_clims --images 200

For ``--images`` images of the CAM evaluation split (with ground truth), the probe runs the same
boundary inference and random walk as rule ``random_walk`` (the experiment's CAMs and trained
IRN) and scores the pseudo masks at every background threshold of a grid, beside the CAMs'
own mIoU at their best threshold (``cam_eval/threshold.json``) and the threshold the pipeline
used (``irn/metrics/pseudo_masks.json``). It also reports the walk with the pipeline's
threshold without the global-max normalisation (per-class max instead), the other reading of
IRN's code. Diagnostic only: it writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qaclims.cam.augment import normalize_imagenet  # noqa: E402
from qaclims.cam.cam_store import CamStore  # noqa: E402
from qaclims.data.manifest import read_classes, read_manifest  # noqa: E402
from qaclims.irn.pipeline import _load_image, shard_rows  # noqa: E402
from qaclims.irn.random_walk import infer_edge, random_walk  # noqa: E402
from qaclims.irn.settings import RandomWalkSettings, resolve_thresholds  # noqa: E402
from qaclims.irn.train_irn import load_irn_network  # noqa: E402
from qaclims.metrics import ConfusionMatrix  # noqa: E402
from qaclims.store import read_label_png  # noqa: E402

GRID = np.round(np.arange(0.02, 0.62, 0.02), 2)


def upsampled(rw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(rw[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    return up[:, :size[0], :size[1]]


def masks_at(up: torch.Tensor, keys: np.ndarray, thresholds: np.ndarray) -> list[np.ndarray]:
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    out = []
    for t in thresholds:
        planes = torch.cat([torch.full((1, *up.shape[1:]), float(t)), up], dim=0)
        out.append(lut[torch.argmax(planes, dim=0).numpy()])
    return out


def probe(results: Path, experiment: str, n_images: int, split: str,
          reference: float | None = 0.15) -> dict:
    classes = read_classes(results / "data" / "classes.json")
    df = read_manifest(results / "data" / "manifest.parquet", num_classes=len(classes))
    rows = shard_rows(df, [split]).head(n_images)
    metrics_path = results / experiment / "irn" / "metrics" / "pseudo_masks.json"
    if metrics_path.is_file():  # the threshold the pipeline's masks were made with
        settings = json.loads(metrics_path.read_text())["settings"]
        rw_settings = RandomWalkSettings.from_dict(
            {k: v for k, v in settings.items() if k in RandomWalkSettings.__dataclass_fields__})
    else:  # before eval_pseudo_masks ran: the defaults, shifted as the demo config says
        rw_settings, _ = resolve_thresholds(RandomWalkSettings(), reference,
                                            results / experiment / "cam_eval" / "threshold.json")
    used = float(rw_settings.bg_threshold)
    cam_best = json.loads((results / experiment / "cam_eval" / "threshold.json").read_text())
    net, _ = load_irn_network(results / experiment / "irn" / "model.pth")
    net.eval()
    cams = CamStore(sorted((results / experiment / "cams").glob("*.h5")))
    grid = np.unique(np.concatenate([GRID, [used]]))
    global_cm = [ConfusionMatrix(len(classes) + 1) for _ in grid]
    per_class_cm = ConfusionMatrix(len(classes) + 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        for row in rows.itertuples(index=False):
            gt = read_label_png(row.gt_path)
            size = (int(row.height), int(row.width))
            if row.image_id not in cams:
                for cm in global_cm:
                    cm.update(gt, np.zeros(size, np.uint8))
                per_class_cm.update(gt, np.zeros(size, np.uint8))
                continue
            keys, strided, _ = cams.get(row.image_id)
            img = _load_image(row)
            x = torch.from_numpy(np.ascontiguousarray(normalize_imagenet(img).transpose(2, 0, 1)))
            edge = infer_edge(net, x).numpy()
            rw = random_walk(strided, edge, radius=rw_settings.radius, beta=rw_settings.beta,
                             exp_times=rw_settings.exp_times,
                             memory_budget_mb=rw_settings.memory_budget_mb,
                             method=rw_settings.method, device="cpu", image_id=row.image_id)
            up = upsampled(torch.as_tensor(np.asarray(rw), dtype=torch.float32), size)
            top = up.max()
            norm = up / top if top > 0 else up
            for cm, mask in zip(global_cm, masks_at(norm, keys, grid), strict=True):
                cm.update(gt, mask)
            per_class = up / up.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
            per_class_cm.update(gt, masks_at(per_class, keys, np.array([used]))[0])
    curve = {float(t): float(cm.miou()) for t, cm in zip(grid, global_cm, strict=True)}
    best_t = max(curve, key=curve.get)
    return {"experiment": experiment, "images": len(rows),
            "cam_best": (cam_best["best_miou"], cam_best["best_threshold"]),
            "pipeline_threshold": used, "miou_at_pipeline_threshold": curve[used],
            "best_threshold": best_t, "best_miou": curve[best_t],
            "per_class_max_at_pipeline_threshold": float(per_class_cm.miou()),
            "curve": curve, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results/synthetic"))
    parser.add_argument("--experiments", nargs="+", default=["baseline", "qa_clims"])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--split", default="train")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for experiment in args.experiments:
        r = probe(args.results, experiment, args.images, args.split)
        print(f"{experiment}: {r['images']} images, CAM {100 * r['cam_best'][0]:.1f} @ "
              f"{r['cam_best'][1]:.2f}; walk at the pipeline's bg threshold "
              f"{r['pipeline_threshold']:.2f}: {100 * r['miou_at_pipeline_threshold']:.1f}; "
              f"best {100 * r['best_miou']:.1f} @ {r['best_threshold']:.2f}; per-class max "
              f"normalisation at the pipeline's threshold: "
              f"{100 * r['per_class_max_at_pipeline_threshold']:.1f} ({r['seconds']} s)")
        print("  " + " ".join(f"{t:.2f}:{100 * v:.1f}" for t, v in r["curve"].items()))


if __name__ == "__main__":
    main()
