"""Rule prepare_dataset: snakemake object -> qaclims.data.prepare.prepare_dataset.

params: source, root, on_bad_image, check_images, gt_dir (COCO mask cache; ignored otherwise),
train_aug_fallback and required_splits (VOC train_aug; see qaclims.data.voc).
output: manifest, classes, stats, cooccurrence - all in one directory (that of output.manifest).
threads: used for the image checks and COCO mask rendering.
"""

import logging
from pathlib import Path

import _srcpath  # noqa: F401

from qaclims.data.prepare import OUTPUT_FILES, prepare_dataset

logging.basicConfig(
    filename=snakemake.log[0],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
logging.captureWarnings(True)  # one BadImageWarning per skipped image goes to the log

# prepare_dataset writes fixed names into one folder: the rule's outputs must be exactly those
out_dir = Path(snakemake.output.manifest).parent
for key, name in zip(("manifest", "classes", "stats", "cooccurrence"), OUTPUT_FILES, strict=True):
    declared = getattr(snakemake.output, key)
    if Path(declared) != out_dir / name:
        raise ValueError(f"output.{key} must be {out_dir / name}, got {declared}")

try:
    prepare_dataset(
        snakemake.params.source,
        Path(snakemake.params.root),
        out_dir,
        on_bad_image=snakemake.params.on_bad_image,
        gt_dir=Path(snakemake.params.gt_dir) if snakemake.params.gt_dir else None,
        check_images=bool(snakemake.params.check_images),
        workers=snakemake.threads,
        train_aug_fallback=snakemake.params.train_aug_fallback,
        required_splits=snakemake.params.required_splits,
    )
except Exception:
    logging.getLogger("prepare_dataset").exception("prepare_dataset failed")
    raise
_srcpath.record_provenance(snakemake)
