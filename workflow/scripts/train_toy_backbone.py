"""Rule train_toy_backbone (optional): snakemake object -> train_toy_backbone.

input.corpus (directory): the toy VLP corpus (rule make_vlp_corpus).
params.settings (dict): config models.toy.backbone (ToyBackboneSettings fields).
params.resume_root (directory): resumable training state (<root>/<settings hash>/), outside
the outputs; a rerun after a kill or SIGTERM continues from it; removed once the outputs exist.
output.weights (file): torchvision resnet state dict WITHOUT fc.* - load it with
qaclims.vlp.backbones.load_resnet(arch, path), exactly like ImageNet weights.
output.metrics (JSON): held-out multi-label mAP, training time, steps, parameter count, size.
threads: should equal settings.threads (training always uses settings.threads).
"""

import logging
import os

# Before torch loads: passive OpenMP waiting (see train_toy_vqa.py); results are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _srcpath  # noqa: F401, E402  (puts src/ on sys.path)

from qaclims.vlp.train_toy_backbone import (  # noqa: E402
    ToyBackboneSettings,
    train_toy_backbone,
)

logging.basicConfig(
    filename=snakemake.log[0],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("train_toy_backbone")

try:
    settings = ToyBackboneSettings.from_dict(dict(snakemake.params.get("settings", {}) or {}))
    if int(snakemake.threads) != settings.threads:
        log.warning("rule threads %s != settings.threads %s: training uses %s threads",
                    snakemake.threads, settings.threads, settings.threads)
    log.info("settings: %s", settings)
    train_toy_backbone(snakemake.input.corpus, snakemake.output.weights,
                       snakemake.output.metrics, settings=settings, log=log.info,
                       resume_root=snakemake.params.resume_root)
except Exception:
    log.exception("train_toy_backbone failed")
    raise
_srcpath.record_provenance(snakemake)
