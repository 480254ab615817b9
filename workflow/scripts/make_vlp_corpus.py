"""Rule make_vlp_corpus: params.spec (config models.toy.corpus) -> the toy VLP corpus."""

import logging
from pathlib import Path

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.data.synthetic import VlpCorpusSpec, generate_vlp_corpus

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("make_vlp_corpus")
try:
    spec = VlpCorpusSpec.from_dict(snakemake.params.spec)
    log.info("VLP corpus -> %s with %s", snakemake.output.corpus, spec)
    log.info("done: %s", generate_vlp_corpus(Path(snakemake.output.corpus), spec, log=log.info))
except Exception:
    log.exception("make_vlp_corpus failed")
    raise
_srcpath.record_provenance(snakemake)
