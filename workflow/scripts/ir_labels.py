"""Rule ir_labels: confident labels (CAMs + dense CRF) of one shard of images -> a folder of PNGs
(method.md 9.1). The CRFs run in a pool of the rule's threads processes.
"""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.irn.pipeline import ir_labels_shard
from qaclims.irn.settings import IrLabelSettings, resolve_thresholds


def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        settings, _ = resolve_thresholds(IrLabelSettings.from_dict(p.settings),
                                         p.reference_cam_threshold, snakemake.input.cam_eval)
        summary = ir_labels_shard(
            snakemake.input.manifest, snakemake.input.classes, snakemake.input.cams,
            snakemake.output.labels, splits=p.splits, shard=p.shard, n_shards=p.n_shards,
            settings=settings, workers=settings.workers or snakemake.threads,
        )
        logging.info("ir_labels %s: %s", snakemake.wildcards.experiment, summary)
    except Exception:
        logging.exception("ir_labels failed")
        raise
    _srcpath.record_provenance(snakemake)


# The CRF pool spawns processes that re-import this file: only the parent may run main().
if __name__ == "__main__":
    main()
