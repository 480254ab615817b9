"""Rule export_cams: multi-scale CAMs of one shard of images -> cams/{shard}.h5 (method.md 7)."""

import logging
import os

import _srcpath  # noqa: F401  (puts src/ on sys.path)

# Before torch starts OpenMP: spin-waiting threads make torch many times slower when other jobs
# share the cores; passive waiting changes no result, only speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qaclims.cam.export import export_cams
from qaclims.cam.settings import ExportSettings
from qaclims.devices import job_device


# Spawned DDP ranks re-import this file as __mp_main__: only the parent trains here.
def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        settings = ExportSettings.from_dict(p.settings)
        summary = export_cams(
            snakemake.input.manifest, snakemake.input.classes, snakemake.input.model,
            snakemake.output.cams, splits=p.splits, shard=p.shard, n_shards=p.n_shards,
            settings=settings, device=job_device(snakemake),
        )
        logging.info("export_cams %s: %s", snakemake.wildcards.experiment, summary)
    except Exception:
        logging.exception("export_cams failed")
        raise
    _srcpath.record_provenance(snakemake)


if __name__ == "__main__":
    main()
