"""Rule eval_deeplab: mIoU and per-class IoU of the DeepLab predictions on the segmentation
evaluation split (with ground truth) -> metrics.json (method.md 10)."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.seg.pipeline import evaluate_deeplab

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
try:
    out = evaluate_deeplab(snakemake.input.manifest, snakemake.input.classes,
                           snakemake.input.predictions, snakemake.output.metrics,
                           split=p.split, settings=p.settings)
    logging.info("eval_deeplab %s: mIoU %s on %d images of %s", snakemake.wildcards.experiment,
                 out["miou"], out["n_images"], p.split)
except Exception:
    logging.exception("eval_deeplab failed")
    raise
_srcpath.record_provenance(snakemake)
