"""Rules of report.smk (config_snapshot, report_*): snakemake object -> one qaclims.report call
per rule, picked by the rule name."""

import logging

import _srcpath  # puts src/ on sys.path; records provenance

from qaclims.report import figures, overlays, tables
from qaclims.report.snapshot import write_config_snapshot

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
i, o, p = snakemake.input, snakemake.output, snakemake.params


def config_snapshot():
    write_config_snapshot(p.config, o[0])


def report_dataset():
    tables.dataset_html(i.stats, o.html)


def report_top_answers():
    tables.top_answers_html(i.stats, o.html, n=p.n)


def report_toy_models():
    tables.toy_models_html({p.titles[k]: v for k, v in i.items()}, o.html)


def report_miou_table():
    rows = tables.write_stage_table(list(i.metrics), o.html, o.tsv, experiments=p.experiments)
    logging.info("%d stage metrics", len(rows))


def report_class_iou():
    figures.plot_class_iou(tables.per_class_iou(list(i.metrics), p.experiments), o.png)


def report_threshold_curves():
    figures.plot_threshold_curves(dict(zip(p.experiments, i.thresholds, strict=True)), o.png)


def report_loss_curves():
    figures.plot_loss_curves({figures.stage_label(f): f for f in i.curves}, o.png)


def report_runtimes():
    bench = tables.read_benchmarks(p.roots, p.rules, p.experiments)
    summary = tables.runtimes_html(bench, o.html)
    figures.plot_runtimes(summary, o.png)
    logging.info("%d benchmark files, %d rules", len(bench), len(summary))


def report_overlays():
    ids = overlays.plot_overlays(
        i.manifest, i.classes, list(i.cams), o.png, split=p.split, corpus=i.corpus,
        baseline_cam_files=list(i.get("baseline", [])) or None,
        mask_dirs=list(i.get("masks", [])) or None, n_images=p.n_images,
        experiment=snakemake.wildcards.experiment,
    )
    logging.info("overlays of %s", ids)


try:
    globals()[snakemake.rule]()
except Exception:
    logging.exception("%s failed", snakemake.rule)
    raise
_srcpath.record_provenance(snakemake)
