"""Rule deeplab_labels: the label PNG of every training image in one folder - the experiment's
IRN pseudo masks (input.masks, the shard folders) or, for the ground-truth experiment, the
manifest's ground truth (method.md 10)."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.seg.pipeline import gather_training_labels

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
try:
    summary = gather_training_labels(
        snakemake.input.manifest, p.split, snakemake.output.labels,
        source_dirs=list(snakemake.input.masks), ground_truth=bool(p.ground_truth))
    logging.info("deeplab_labels %s: %s", snakemake.wildcards.experiment, summary)
except Exception:
    logging.exception("deeplab_labels failed")
    raise
_srcpath.record_provenance(snakemake)
