"""Rule random_walk: boundary maps of the trained IRN and the random walk of the stride-4 CAMs
of one shard of images -> the walked maps, walk/{shard}.h5 (method.md 9.3); rule pseudo_masks
turns them into VOC-palette PNGs at the background threshold.

On CPU the walks run in single-thread worker processes, one per rule thread; on a GPU in this
process.
"""

import logging
import os

import _srcpath  # noqa: F401  (puts src/ on sys.path)

# Before torch starts OpenMP: spin-waiting threads make torch many times slower when other jobs
# share the cores; passive waiting changes no result, only speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qaclims.devices import job_device
from qaclims.irn.pipeline import random_walk_shard
from qaclims.irn.settings import RandomWalkSettings


def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        settings = RandomWalkSettings.from_dict(p.settings)
        summary = random_walk_shard(
            snakemake.input.manifest, snakemake.input.classes, snakemake.input.cams,
            snakemake.input.model, None, splits=p.splits, shard=p.shard,
            n_shards=p.n_shards, settings=settings, device=job_device(snakemake),
            workers=settings.workers or snakemake.threads, torch_threads=p.torch_threads,
            walk_out=snakemake.output.walks,
        )
        logging.info("random_walk %s: %s", snakemake.wildcards.experiment, summary)
    except Exception:
        logging.exception("random_walk failed")
        raise
    _srcpath.record_provenance(snakemake)


# The walk pool spawns processes that re-import this file: only the parent may run main().
if __name__ == "__main__":
    main()
