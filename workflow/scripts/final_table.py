"""Rule final_table: CAM, pseudo-mask and DeepLab mIoU of every experiment beside the paper's
numbers -> summary/miou_table.{tsv,md,json}."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.seg.summary import build_rows, write_tables

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
i = snakemake.input
try:
    rows, splits = build_rows(
        cam=dict(zip(p.cam_experiments, i.cam, strict=True)),
        pseudo_masks=dict(zip(p.cam_experiments, i.pseudo_masks, strict=True)),
        deeplab=dict(zip(p.seg_experiments, i.deeplab, strict=True)),
        gt_experiment=p.gt_experiment, dataset_source=p.dataset_source,
    )
    write_tables(rows, splits, tsv=snakemake.output.tsv, md=snakemake.output.md,
                 json_path=snakemake.output.json, title=p.title,
                 extra={"dataset_source": p.dataset_source, "gt_experiment": p.gt_experiment})
    logging.info("final_table: %d rows -> %s", len(rows), snakemake.output.md)
except Exception:
    logging.exception("final_table failed")
    raise
_srcpath.record_provenance(snakemake)
