"""Rule seed_table: every stage's mIoU over the seed offsets, and the gains over the baseline
seed by seed -> summary/seeds.{tsv,md,json}."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.seed_table import seed_summary, write_seed_tables
from qaclims.seg.summary import build_rows

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
i = snakemake.input
try:
    n_cam, n_seg = len(p.cam_experiments), len(p.seg_experiments)
    per_seed, splits = {}, {}
    # inputs are seed by seed, experiment by experiment (seed_runs in cam_common.smk)
    for k, seed in enumerate(p.seeds):
        cam = slice(k * n_cam, (k + 1) * n_cam)
        seg = slice(k * n_seg, (k + 1) * n_seg)
        per_seed[seed], splits = build_rows(
            cam=dict(zip(p.cam_experiments, i.cam[cam], strict=True)),
            pseudo_masks=dict(zip(p.cam_experiments, i.pseudo_masks[cam], strict=True)),
            deeplab=dict(zip(p.seg_experiments, i.deeplab[seg], strict=True)),
            gt_experiment=p.gt_experiment,
        )
    summary = seed_summary(per_seed, baseline=p.baseline)
    write_seed_tables(summary, splits, tsv_path=snakemake.output.tsv,
                      md_path=snakemake.output.md, json_path=snakemake.output.json,
                      title=p.title)
    logging.info("seed_table: seeds %s -> %s", p.seeds, snakemake.output.md)
except Exception:
    logging.exception("seed_table failed")
    raise
_srcpath.record_provenance(snakemake)
