"""Rule corpus: answer shards + classes.json -> corpus.parquet (+ statistics for the report)."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.qape.corpus import build_corpus_files

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
try:
    stats = build_corpus_files(list(snakemake.input.answers), snakemake.input.classes,
                               snakemake.output.corpus, snakemake.output.stats,
                               **snakemake.params.options)
    logging.info("corpus: %s", {k: v for k, v in stats.items() if not isinstance(v, dict)})
except Exception:
    logging.exception("corpus failed")
    raise
_srcpath.record_provenance(snakemake)
