"""Rules eval_ir_labels and eval_pseudo_masks: IR-label precision/coverage or pseudo-mask mIoU on
the split with ground truth -> a metrics JSON (method.md 9.4). ``params.kind`` picks which.
"""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.irn.pipeline import evaluate_ir_labels, evaluate_pseudo_masks
from qaclims.irn.settings import (
    IrLabelSettings,
    RandomWalkSettings,
    resolve_thresholds,
    walk_bg_threshold,
)

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
evaluate = {"ir_labels": evaluate_ir_labels, "pseudo_masks": evaluate_pseudo_masks}[p.kind]
try:
    # the metrics record the thresholds the labels were made with (shifted ones included)
    cls = {"ir_labels": IrLabelSettings, "pseudo_masks": RandomWalkSettings}[p.kind]
    used, shifted = resolve_thresholds(cls.from_dict(p.settings), p.reference_cam_threshold,
                                       snakemake.input.cam_eval)
    if p.kind == "pseudo_masks":  # the threshold the walk search chose, where it chose one
        threshold, shifted = walk_bg_threshold(
            cls.from_dict(p.settings), p.reference_cam_threshold, snakemake.input.cam_eval,
            getattr(snakemake.input, "walk_threshold", None))
        used = used.replace(bg_threshold=threshold)
    out = evaluate(snakemake.input.manifest, snakemake.input.classes, list(snakemake.input.labels),
                   snakemake.output.metrics, split=p.split,
                   settings={**{k: v for k, v in used.to_dict().items() if k != "workers"},
                             **shifted})
    summary = {k: out.get(k) for k in ("split", "n_images", "miou", "fg_precision", "coverage")}
    logging.info("%s %s: %s", p.kind, snakemake.wildcards.experiment, summary)
except Exception:
    logging.exception("eval %s failed", p.kind)
    raise
_srcpath.record_provenance(snakemake)
