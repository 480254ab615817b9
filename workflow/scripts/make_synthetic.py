"""Rules make_synthetic / make_vlp_corpus: snakemake object -> qaclims.data.synthetic generators.

Whichever outputs the rule declares are generated, so one script serves both rules:
output.root (directory) <- params.spec (dict, config dataset.synthetic): the VOC-style tree;
output.vlp (directory)  <- params.vlp (dict, config models.toy.corpus) and optional
                           params.questions (dict template id -> text): the toy VLP corpus.
"""

import logging
from pathlib import Path

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.data.synthetic import (
    SyntheticSpec,
    VlpCorpusSpec,
    generate_segmentation_dataset,
    generate_vlp_corpus,
)

logging.basicConfig(
    filename=snakemake.log[0],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("make_synthetic")
outputs = snakemake.output.keys()  # names; `in` on the Namedlist itself tests its values

try:
    if "root" in outputs:
        spec = SyntheticSpec.from_dict(snakemake.params.spec)
        log.info("segmentation dataset -> %s with %s", snakemake.output.root, spec)
        summary = generate_segmentation_dataset(Path(snakemake.output.root), spec, log=log.info)
        log.info("done: %s", summary)
    if "vlp" in outputs:
        vlp = VlpCorpusSpec.from_dict(snakemake.params.get("vlp", {}))
        questions = snakemake.params.get("questions", None)
        log.info("VLP corpus -> %s with %s", snakemake.output.vlp, vlp)
        summary = generate_vlp_corpus(Path(snakemake.output.vlp), vlp, questions, log=log.info)
        log.info("done: %s", summary)
except Exception:
    log.exception("make_synthetic failed")
    raise
_srcpath.record_provenance(snakemake)
