"""Rule walk_threshold: pseudo-mask mIoU of every background threshold on the CAM evaluation
split, from the walked maps -> irn/walk_threshold.json (best threshold, curve, and the mIoU at
the configured one)."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.cam.settings import ThresholdSettings
from qaclims.irn.pipeline import search_walk_threshold
from qaclims.irn.settings import RandomWalkSettings, resolve_thresholds

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
try:
    configured, _ = resolve_thresholds(RandomWalkSettings.from_dict(p.settings),
                                       p.reference_cam_threshold, snakemake.input.cam_eval)
    out = search_walk_threshold(
        snakemake.input.manifest, snakemake.input.classes, list(snakemake.input.walks),
        snakemake.output.threshold, split=p.split,
        thresholds=ThresholdSettings.from_dict(p.grid).grid(),
        fixed_threshold=configured.bg_threshold)
    logging.info("walk_threshold %s: best %s (mIoU %s), configured %s (mIoU %s)",
                 snakemake.wildcards.experiment, out["best_threshold"], out["best_miou"],
                 configured.bg_threshold, out["miou_at_fixed"])
except Exception:
    logging.exception("walk_threshold failed")
    raise
_srcpath.record_provenance(snakemake)
