"""Rules cam_table / ablation_table: threshold.json of several experiments -> one table."""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.cam.compare import compare_experiments, write_comparison

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
try:
    rows = [(name, spec, path) for (name, spec), path
            in zip(snakemake.params.rows, snakemake.input.thresholds, strict=True)]
    table = compare_experiments(rows)
    write_comparison(table, snakemake.output.tsv, snakemake.output.md, snakemake.output.json,
                     title=snakemake.params.title)
    for row in table:
        logging.info("%s", row)
except Exception:
    logging.exception("comparison table failed")
    raise
_srcpath.record_provenance(snakemake)
