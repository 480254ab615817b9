"""Rule train_toy_vqa: snakemake object -> qaclims.vlp.train_toy_vqa.train_toy_vqa.

input.corpus (directory): the toy VLP corpus (rule make_vlp_corpus).
params.settings (dict): config models.toy.vqa (ToyVqaSettings fields; missing keys -> defaults).
params.resume_root (directory): resumable training state (<root>/<settings hash>/), outside
the outputs; a rerun after a kill or SIGTERM continues from it; removed once the outputs exist.
output.model (directory): save_pretrained BLIP VQA (model + processor) for load_blip_vqa.
output.metrics (JSON): held-out exact match (overall, per group/template/class), training time,
steps, parameter count, model size.
threads: should equal settings.threads; training always uses settings.threads (the weights
depend on the thread count through floating-point reduction order, not on the cores Snakemake
happens to grant).
log: progress lines (step, loss, lr, examples/s).
"""

import logging
import os

# Before torch loads: OpenMP's default spin-waiting makes multi-threaded torch many times slower
# when other jobs share the cores (measured: ~20 s vs 0.6 s per step); results are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _srcpath  # noqa: F401, E402  (puts src/ on sys.path)

from qaclims.vlp.train_toy_vqa import ToyVqaSettings, train_toy_vqa  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("train_toy_vqa")

try:
    settings = ToyVqaSettings.from_dict(dict(snakemake.params.get("settings", {}) or {}))
    if int(snakemake.threads) != settings.threads:
        log.warning("rule threads %s != settings.threads %s: training uses %s threads",
                    snakemake.threads, settings.threads, settings.threads)
    log.info("settings: %s", settings)
    train_toy_vqa(snakemake.input.corpus, snakemake.output.model, snakemake.output.metrics,
                  settings=settings, log=log.info, resume_root=snakemake.params.resume_root)
except Exception:
    log.exception("train_toy_vqa failed")
    raise
_srcpath.record_provenance(snakemake)
