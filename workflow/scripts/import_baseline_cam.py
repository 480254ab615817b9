"""Rule import_baseline_cam: cam.baseline_checkpoint (e.g. the authors' res50_cam.pth) -> the
baseline CAM model file, checked against the dataset's classes (qaclims.cam.checkpoint)."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.cam.checkpoint import import_cam_model
from qaclims.data.manifest import read_classes

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
try:
    n_classes = len(read_classes(snakemake.input.classes))
    import_cam_model(snakemake.input.checkpoint, snakemake.output.model, n_classes)
except Exception:
    logging.exception("import_baseline_cam failed")
    raise
_srcpath.record_provenance(snakemake)
