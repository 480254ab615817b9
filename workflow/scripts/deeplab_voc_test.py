"""Rule deeplab_voc_test: the test-split predictions in the PASCAL VOC evaluation-server layout
(results/VOC2012/Segmentation/{comp}_test_cls/) + results.tar.gz to upload (method.md 10)."""

import logging
from pathlib import Path

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.seg.pipeline import run_voc_test_submission

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
try:
    # output.folder is <root>/results: the layout goes under its parent
    out_root = Path(snakemake.output.folder).parent
    dest = run_voc_test_submission(snakemake.input.manifest, p.split,
                                   snakemake.input.predictions, out_root,
                                   snakemake.output.archive, competition=p.competition)
    logging.info("deeplab_voc_test %s: %s, %s", snakemake.wildcards.experiment, dest,
                 snakemake.output.archive)
except Exception:
    logging.exception("deeplab_voc_test failed")
    raise
_srcpath.record_provenance(snakemake)
