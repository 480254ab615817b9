"""Stage E: multi-scale CAMs of one shard of images into ``cams/{shard}.h5`` (method.md 7).

Per image of the export splits in the shard: the network's inference CAM (ReLU'd raw scores, no
sigmoid, BatchNorm with running statistics) at scales 1.0, 0.5, 1.5, 2.0, each with its flip,
summed at stride 4 and at full size, only the image's classes (1-based keys), each map divided by
its max + 1e-5 (:func:`qaclims.cam.inference.multiscale_cam`).

Shards: :func:`qaclims.qape.pairs.shard_of`, a stable hash of the image id (the same assignment
as the VQA shards), so adding images never moves others and every image lands in one shard.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from qaclims.cam.cam_store import CamShardWriter
from qaclims.cam.checkpoint import load_cam_network
from qaclims.cam.datasets import load_rgb
from qaclims.cam.settings import ExportSettings

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


def shard_rows(manifest: Any, splits: Sequence[str], shard: str | int, n_shards: int) -> Any:
    """Manifest rows in any of ``splits`` that fall in ``shard`` (image_id order)."""
    from qaclims.qape.pairs import shard_index, shard_of

    wanted = set(splits)
    i = shard_index(shard, n_shards)
    keep = [bool(wanted & set(s)) and shard_of(im, n_shards) == i
            for im, s in zip(manifest["image_id"], manifest["splits"], strict=True)]
    return manifest[keep].sort_values("image_id").reset_index(drop=True)


def export_cams(manifest: PathLike, classes: PathLike, model: PathLike, out_path: PathLike, *,
                splits: Sequence[str], shard: str | int, n_shards: int,
                settings: ExportSettings, device: str = "cpu") -> dict[str, Any]:
    """Write the CAMs of the images of ``splits`` in ``shard`` to ``out_path``; -> summary."""
    from qaclims.cam.inference import multiscale_cam
    from qaclims.data.manifest import read_classes, read_manifest
    from qaclims.determinism import configure_torch

    configure_torch(settings.threads)
    n_classes = len(read_classes(classes))
    df = read_manifest(manifest, num_classes=n_classes)
    unknown = sorted({s for s in splits} - {s for row in df["splits"] for s in row})
    if unknown:
        raise ValueError(f"split {unknown[0]!r} is not in {manifest}")
    rows = shard_rows(df, splits, shard, n_shards)
    net, info = load_cam_network(model, "ritc", n_classes)
    net.to(device).eval()
    attrs = {"model": str(model), "model_stage": info["stage"], "arch": info["arch"],
             "shard": str(shard), "n_shards": int(n_shards), "splits": ",".join(splits),
             "scales": ",".join(str(s) for s in settings.scales)}
    t0 = time.perf_counter()
    with CamShardWriter(out_path, settings.dtype, settings.compression,
                        settings.compression_level, attrs) as writer:
        for i, row in enumerate(rows.itertuples(index=False)):
            img = load_rgb(row.image_path)
            if img.shape[:2] != (row.height, row.width):
                raise ValueError(f"image {row.image_id}: {row.image_path} is "
                                 f"{img.shape[1]}x{img.shape[0]}, the manifest says "
                                 f"{row.width}x{row.height}")
            keys = sorted(int(k) for k in row.labels)
            strided, high = multiscale_cam(net, img, keys, settings.scales, device)
            writer.add(row.image_id, keys, strided, high)
            if (i + 1) % 200 == 0:
                log.info("%d/%d images (%.1f images/s)", i + 1, len(rows),
                         (i + 1) / (time.perf_counter() - t0))
    seconds = time.perf_counter() - t0
    summary = {"shard": str(shard), "n_images": len(rows), "seconds": round(seconds, 1),
               "bytes": os.path.getsize(out_path), "dtype": settings.dtype,
               "compression": settings.compression, "model_stage": info["stage"]}
    log.info("exported %s", summary)
    return summary
