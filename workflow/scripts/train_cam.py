"""Rule train_cam: the baseline multi-label CAM network (method.md 5) -> model.pth + loss curve.

Resumes from results/.../_resume/train_cam/<params hash>/ when a previous run was killed.
With more than one GPU it runs that many DDP ranks inside this job.
"""

import logging
import os

import _srcpath  # noqa: F401  (puts src/ on sys.path)

# Before torch starts OpenMP: spin-waiting threads make torch many times slower when other jobs
# share the cores; passive waiting changes no result, only speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qaclims.cam.settings import CamTrainSettings
from qaclims.cam.train_cam import train_cam
from qaclims.devices import job_device


# Spawned DDP ranks re-import this file as __mp_main__: only the parent trains here.
def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        device = job_device(snakemake)
        settings = CamTrainSettings.from_dict(p.settings)
        summary = train_cam(
            snakemake.input.manifest, snakemake.input.classes, snakemake.output.model,
            snakemake.output.curve, settings, split=p.split,
            resume_root=p.resume_root, device=device,
            world_size=p.world_size if device == "cuda" else 1,
        )
        logging.info("train_cam: %s", summary)
    except Exception:
        logging.exception("train_cam failed")
        raise
    _srcpath.record_provenance(snakemake)


if __name__ == "__main__":
    main()
