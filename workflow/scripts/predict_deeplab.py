"""Rule predict_deeplab: VOC palette PNGs of one split from a trained DeepLab (MSC max logits,
optional flip, optional dense CRF in `threads` processes; method.md 10)."""

import logging
import os

import _srcpath  # noqa: F401  (puts src/ on sys.path)

# Before torch starts OpenMP (see train_deeplab.py): changes speed only.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qaclims.devices import job_device
from qaclims.seg.pipeline import run_predict_deeplab


def main() -> None:
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = snakemake.params
    try:
        summary = run_predict_deeplab(
            snakemake.input.model, snakemake.input.manifest, p.split,
            snakemake.output.predictions, predict=p.settings, device=job_device(snakemake),
            threads=snakemake.threads, torch_threads=p.torch_threads,
        )
        logging.info("predict_deeplab %s/%s: %s", snakemake.wildcards.experiment, p.split,
                     summary)
    except Exception:
        logging.exception("predict_deeplab failed")
        raise
    _srcpath.record_provenance(snakemake)


# The CRF pool's worker processes may be spawned and re-import this file.
if __name__ == "__main__":
    main()
