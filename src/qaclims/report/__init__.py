"""Figures and tables of the Snakemake report (workflow/rules/report.smk).

Every function takes file paths (the stage artifacts) and writes one PNG, HTML or TSV file,
atomically; none imports Snakemake. Figures use matplotlib's Agg backend; HTML tables are
self-contained pages (inline CSS), as ``snakemake --report report.html`` embeds them.

* :mod:`qaclims.report.tables`   - stage metrics (mIoU per stage and experiment), top answers,
  toy-model quality, dataset statistics, runtimes from the benchmark TSVs;
* :mod:`qaclims.report.figures`  - per-class IoU bars, threshold curves, loss curves, runtimes;
* :mod:`qaclims.report.overlays` - CAM and pseudo-mask overlays of sample images with their VQA
  texts (the paper's Fig. 3 idea);
* :mod:`qaclims.report.snapshot` - the validated config as YAML.
"""
