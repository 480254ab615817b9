"""Rule train_ritc: RITC training of one experiment (method.md 6) -> model.pth + loss curve.

Starts from the baseline CAM model (strict load); resumes from
results/.../{experiment}/_resume/train_ritc/<params hash>/ when a previous run was killed.
With more than one GPU it runs that many DDP ranks (SyncBN) inside this job.
"""

import logging
import os

import _srcpath  # noqa: F401  (puts src/ on sys.path)

# Before torch starts OpenMP: spin-waiting threads make torch many times slower when other jobs
# share the cores; passive waiting changes no result, only speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qaclims.cam.settings import RitcSettings
from qaclims.cam.train_ritc import train_ritc
from qaclims.devices import job_device


# Spawned DDP ranks re-import this file as __mp_main__: only the parent trains here.
def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        device = job_device(snakemake)
        settings = RitcSettings.from_dict(p.settings)
        summary = train_ritc(
            snakemake.input.manifest, snakemake.input.classes, snakemake.input.corpus,
            snakemake.input.text_features, snakemake.input.init, p.clip, snakemake.output.model,
            snakemake.output.curve, settings, split=p.split,
            resume_root=p.resume_root, device=device,
            world_size=p.world_size if device == "cuda" else 1,
        )
        logging.info("train_ritc %s: %s", snakemake.wildcards.experiment, summary)
    except Exception:
        logging.exception("train_ritc failed")
        raise
    _srcpath.record_provenance(snakemake)


if __name__ == "__main__":
    main()
