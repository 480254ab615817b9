"""Rule train_deeplab: DeepLab-v2 (MSC) on an experiment's training labels (method.md 10) ->
model.pth + loss_curve.tsv.

Resumes from results/.../_resume/train_deeplab/ when a previous run was killed (the state is
guarded by a hash of the settings, the init weights and the labels). With more than one GPU it
runs that many DDP ranks inside this job.
"""

import logging
import os

import _srcpath  # noqa: F401  (puts src/ on sys.path)

# Before torch starts OpenMP: spin-waiting threads make torch many times slower when other jobs
# share the cores; passive waiting changes no result, only speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qaclims.devices import job_device
from qaclims.seg.pipeline import run_train_deeplab


def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        summary = run_train_deeplab(
            snakemake.input.manifest, snakemake.input.classes, snakemake.input.labels,
            snakemake.output.model, snakemake.output.curve, train=p.settings, split=p.split,
            init=p.init, resume_dir=p.resume_dir, device=job_device(snakemake),
            world_size=p.world_size,
        )
        logging.info("train_deeplab %s: %s", snakemake.wildcards.experiment, summary)
    except Exception:
        logging.exception("train_deeplab failed")
        raise
    _srcpath.record_provenance(snakemake)


# DataLoader workers and DDP ranks may be spawned processes that re-import this file.
if __name__ == "__main__":
    main()
