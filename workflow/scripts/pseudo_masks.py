"""Rule pseudo_masks: VOC-palette PNGs of one shard from the walked maps (method.md 9.3), at the
configured background threshold (shifted as irn.reference_cam_threshold says) or, with
irn.walk_threshold_search, at the one rule walk_threshold chose."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.irn.pipeline import pseudo_masks_from_walks
from qaclims.irn.settings import RandomWalkSettings, walk_bg_threshold

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
try:
    threshold, info = walk_bg_threshold(RandomWalkSettings.from_dict(p.settings),
                                        p.reference_cam_threshold, snakemake.input.cam_eval,
                                        snakemake.input.walk_threshold)
    summary = pseudo_masks_from_walks(
        snakemake.input.manifest, snakemake.input.classes, snakemake.input.walks,
        snakemake.output.masks, splits=p.splits, bg_threshold=threshold, shard=p.shard,
        n_shards=p.n_shards)
    logging.info("pseudo_masks %s: %s (%s)", snakemake.wildcards.experiment, summary, info)
except Exception:
    logging.exception("pseudo_masks failed")
    raise
_srcpath.record_provenance(snakemake)
