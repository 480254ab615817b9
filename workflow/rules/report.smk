# Report: the figures and tables of `snakemake --report report.html`, each registered with
# report() and captioned from workflow/report/*.rst, plus the config snapshot. Stage inputs come
# from the stage rule files that are included (cam_targets(), irn_targets(), seg_targets()); a
# stage whose file is not included is left out of the report. Include this file last.
#
#   results/{dataset}/config.snapshot.yaml              the validated, filled-in config
#   results/{dataset}/report/{miou_table,top_answers,toy_models,dataset,runtimes}.html
#   results/{dataset}/report/{class_iou,threshold_curves,loss_curves,runtimes}.png
#   results/{dataset}/report/overlays/{experiment}.png  CAM / pseudo-mask overlays, VQA answers

include: "report_common.smk"


rule config_snapshot:
    output:
        report(
            f"{RESULTS}/config.snapshot.yaml",
            caption="../report/config_snapshot.rst",
            category="Configuration",
        ),
    params:
        config=config,
    log:
        f"{LOGS}/report/config_snapshot.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


rule report_dataset:
    input:
        stats=data_path("stats.json"),
    output:
        html=report(f"{REPORT}/dataset.html", caption="../report/dataset.rst", category="Data"),
    log:
        f"{LOGS}/report/report_dataset.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


rule report_top_answers:
    input:
        stats=qape_path("corpus_stats.json"),
    output:
        html=report(
            f"{REPORT}/top_answers.html", caption="../report/top_answers.rst", category="QAPE"
        ),
    params:
        n=5,
    log:
        f"{LOGS}/report/report_top_answers.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


rule report_toy_models:
    input:
        unpack(toy_metric_files),
    output:
        html=report(
            f"{REPORT}/toy_models.html", caption="../report/toy_models.rst", category="Data"
        ),
    params:
        titles={"vqa": "BLIP VQA (toy)", "clip": "CLIP with mask prompts (toy)"},
    log:
        f"{LOGS}/report/report_toy_models.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


rule report_miou_table:
    input:
        metrics=stage_metric_files,
    output:
        html=report(
            f"{REPORT}/miou_table.html", caption="../report/miou_table.rst", category="Results"
        ),
        tsv=f"{REPORT}/miou_table.tsv",
    params:
        experiments=report_experiments(),
    log:
        f"{LOGS}/report/report_miou_table.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


rule report_class_iou:
    input:
        metrics=stage_metric_files,
    output:
        png=report(
            f"{REPORT}/class_iou.png", caption="../report/class_iou.rst", category="Results"
        ),
    params:
        experiments=report_experiments(),
    log:
        f"{LOGS}/report/report_class_iou.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


rule report_loss_curves:
    input:
        curves=loss_curve_files,
    output:
        png=report(
            f"{REPORT}/loss_curves.png", caption="../report/loss_curves.rst", category="Training"
        ),
    log:
        f"{LOGS}/report/report_loss_curves.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


rule report_runtimes:
    input:
        # the results whose jobs wrote the benchmark files: this rule runs after all of them
        stages=stage_metric_files,
        data=data_path("stats.json"),
        qape=qape_path("corpus_stats.json"),
        toy=lambda wc: list(toy_metric_files().values()),
    output:
        png=report(f"{REPORT}/runtimes.png", caption="../report/runtimes.rst", category="Runtime"),
        html=report(
            f"{REPORT}/runtimes.html", caption="../report/runtimes.rst", category="Runtime"
        ),
    params:
        roots=benchmark_roots(),
        rules=sorted(r.name for r in workflow.rules),
        experiments=report_experiments(),
    log:
        f"{LOGS}/report/report_runtimes.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"


if stage_included("cam_targets"):

    rule report_threshold_curves:
        input:
            thresholds=[experiment_path(e, "cam_eval/threshold.json") for e in CAM_EXPERIMENTS],
        output:
            png=report(
                f"{REPORT}/threshold_curves.png",
                caption="../report/threshold_curves.rst",
                category="CAM",
            ),
        params:
            experiments=CAM_EXPERIMENTS,
        log:
            f"{LOGS}/report/report_threshold_curves.log",
        localrule: True
        conda:
            CONDA_ENV
        script:
            "../scripts/report.py"

    rule report_overlays:
        input:
            unpack(overlay_inputs),
        output:
            png=report(
                f"{REPORT}/overlays/{{experiment}}.png",
                caption="../report/overlays.rst",
                category="CAM",
                subcategory="Examples",
            ),
        wildcard_constraints:
            experiment=_EXPERIMENT_RE,
        params:
            split=DATASET["splits"]["cam_eval"],
            n_images=REPORT_SAMPLES,
        log:
            f"{LOGS}/report/report_overlays/{{experiment}}.log",
        localrule: True
        conda:
            CONDA_ENV
        script:
            "../scripts/report.py"
