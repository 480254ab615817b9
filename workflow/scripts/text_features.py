"""Rule text_features: every distinct corpus text encoded once by the CLIP text tower."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.determinism import configure_torch
from qaclims.devices import job_device
from qaclims.qape.text_features import build_text_features_file
from qaclims.vlp.clip import load_clip

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
p = snakemake.params
try:
    configure_torch(p.threads)
    clip = load_clip(p.clip["arch"], p.clip["pretrained"],
                     mask_checkpoint=p.clip["mask_checkpoint"], device=job_device(snakemake))
    counts = build_text_features_file(snakemake.input.corpus, snakemake.output.features,
                                      lambda texts: clip.encode_text(texts).float().cpu().numpy(),
                                      model_id=clip.model_id, prompt=p.prompt,
                                      batch_size=p.batch_size)
    logging.info("text features: %s", counts)
except Exception:
    logging.exception("text_features failed")
    raise
_srcpath.record_provenance(snakemake)
