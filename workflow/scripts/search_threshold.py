"""Rule search_threshold: background-threshold sweep of the exported CAMs on the split with
ground truth -> threshold.json (curve, best, mIoU at 0.15, per-class IoU) + threshold.png."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.cam.evaluate import search_threshold
from qaclims.cam.settings import ThresholdSettings

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
try:
    search_threshold(
        list(snakemake.input.cams), snakemake.input.manifest, snakemake.input.classes,
        snakemake.output.threshold, split=p.split, settings=ThresholdSettings.from_dict(p.settings),
        out_plot=snakemake.output.plot, title=p.title,
    )
except Exception:
    logging.exception("search_threshold failed")
    raise
_srcpath.record_provenance(snakemake)
