"""Rule train_toy_clip: snakemake object -> qaclims.vlp.train_toy_clip.train_toy_clip.

input.corpus (directory): the toy VLP corpus (rule make_vlp_corpus).
params.settings (dict): config models.toy.clip (ToyClipSettings fields; missing keys -> defaults).
params.resume_root (directory): resumable training state (<root>/<settings hash>/), outside
the outputs; a rerun after a kill or SIGTERM continues from it; removed once the outputs exist.
output.model (directory): open_clip_config.json (load_clip's `arch`), tokenizer.json and
ovseg_toy_clip.pth (load_clip's `mask_checkpoint`, pretrained=None), written by save_toy_clip.
output.metrics (JSON): held-out masked-region retrieval (object class, sub-type, context, object
vs co-occurring context), training time, steps, parameter count, model size.
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

from qaclims.vlp.train_toy_clip import ToyClipSettings, train_toy_clip  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("train_toy_clip")

try:
    settings = ToyClipSettings.from_dict(dict(snakemake.params.get("settings", {}) or {}))
    if int(snakemake.threads) != settings.threads:
        log.warning("rule threads %s != settings.threads %s: training uses %s threads",
                    snakemake.threads, settings.threads, settings.threads)
    log.info("settings: %s", settings)
    train_toy_clip(snakemake.input.corpus, snakemake.output.model, snakemake.output.metrics,
                   settings=settings, log=log.info, resume_root=snakemake.params.resume_root)
except Exception:
    log.exception("train_toy_clip failed")
    raise
_srcpath.record_provenance(snakemake)
