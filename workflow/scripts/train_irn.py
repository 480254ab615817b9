"""Rule train_irn: IRN's edge + displacement network on the IR labels (method.md 9.2) -> model.pth
(mean shift set) + loss_curve.json.

Resumes from results/.../_resume/train_irn/<params hash>/ when a previous run was killed.
"""

import logging
import os

import _srcpath  # noqa: F401  (puts src/ on sys.path)

# Before torch starts OpenMP: spin-waiting threads make torch many times slower when other jobs
# share the cores; passive waiting changes no result, only speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qaclims.devices import job_device
from qaclims.irn.settings import IrnTrainSettings
from qaclims.irn.train_irn import train_irn


def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        settings = IrnTrainSettings.from_dict(p.settings)
        summary = train_irn(
            snakemake.input.manifest, snakemake.input.classes, list(snakemake.input.labels),
            snakemake.output.model, snakemake.output.curve, settings, split=p.split,
            resume_root=p.resume_root, device=job_device(snakemake),
        )
        logging.info("train_irn %s: %s", snakemake.wildcards.experiment, summary)
    except Exception:
        logging.exception("train_irn failed")
        raise
    _srcpath.record_provenance(snakemake)


# DataLoader workers may be spawned processes that re-import this file.
if __name__ == "__main__":
    main()
