# CAM stage: the baseline CAM network (train_cam), RITC training per experiment (train_ritc),
# multi-scale CAM export per shard (export_cams) and the background-threshold search on the split
# with ground truth (search_threshold). The baseline is the experiment named "baseline": its CAMs
# come from train_cam directly, every other experiment's from its own train_ritc.
#
#   results/{dataset}/baseline/cam/model.pth        results/{dataset}/{experiment}/ritc/model.pth
#   results/{dataset}/{experiment}/cams/{shard}.h5  results/{dataset}/{experiment}/cam_eval/...
#
# Resumable training state lives outside the declared outputs, in
# results/{dataset}/{experiment}/_resume/<stage>/<params hash>/ (removed once the model is written).


include: "cam_common.smk"


rule train_cam:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        backbone=cam_backbone_input,
    output:
        model=experiment_path("{baseline}", "cam/model.pth"),
        curve=experiment_path("{baseline}", "cam/loss_curve.tsv"),
    wildcard_constraints:
        baseline=_BASELINE_RE,
    params:
        settings=lambda wc: train_cam_settings(seed_of(wc.baseline)),
        split=DATASET["splits"]["train"],
        resume_root=lambda wc: experiment_path(wc.baseline, "_resume/train_cam"),
        device=COMPUTE["device"],
        world_size=world_size_of("train_cam"),
    log:
        f"{LOGS}/{{baseline}}/train_cam.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{baseline}}/train_cam.tsv"
    conda:
        CONDA_ENV
    threads: torch_threads(CAM["train_cam"].get("threads"))
    resources:
        mem_mb=training_mem_mb(4000, 700, CAM["train_cam"]),
        runtime=scaled_runtime(8 * 60),
        gpu=gpus_for("train_cam"),
    script:
        "../scripts/train_cam.py"


# cam.baseline_checkpoint: start from a given baseline (the authors' released res50_cam.pth)
# instead of training one; train_cam is then not needed by any target.
rule import_baseline_cam:
    input:
        checkpoint=CAM["baseline_checkpoint"] or [],
        classes=data_path("classes.json"),
    output:
        model=experiment_path(BASELINE, "cam/imported_model.pth"),
    log:
        f"{LOGS}/import_baseline_cam.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="15m",
    script:
        "../scripts/import_baseline_cam.py"


rule train_ritc:
    input:
        unpack(experiment_texts),
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        init=lambda wc: baseline_model_path(wc.experiment),
        clip=clip_model_input,
    output:
        model=experiment_path("{experiment}", "ritc/model.pth"),
        curve=experiment_path("{experiment}", "ritc/loss_curve.tsv"),
    wildcard_constraints:
        experiment=_RITC_RE,
    params:
        settings=lambda wc: ritc_settings_of(wc.experiment),
        clip=clip_model_settings(),
        split=DATASET["splits"]["train"],
        resume_root=lambda wc: experiment_path(wc.experiment, "_resume/train_ritc"),
        device=COMPUTE["device"],
        world_size=world_size_of("train_ritc"),
    log:
        f"{LOGS}/{{experiment}}/train_ritc.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/train_ritc.tsv"
    conda:
        CONDA_ENV
    threads: torch_threads(CAM["ritc"].get("threads"))
    resources:
        # the CLIP image tower's activations (gradients flow through its inputs) dominate
        mem_mb=training_mem_mb(8000, 3000, lambda wc: ritc_settings_of(wc.experiment)),
        runtime=scaled_runtime(12 * 60),
        gpu=gpus_for("train_ritc"),
    script:
        "../scripts/train_ritc.py"


rule export_cams:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        model=cam_model,
    output:
        cams=experiment_path("{experiment}", "cams/{shard}.h5"),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
    params:
        settings={**CAM["export"], "threads": torch_threads(CAM["export"].get("threads"))},
        splits=cam_export_splits(),
        shard="{shard}",
        n_shards=QAPE["n_shards"],
        device=COMPUTE["device"],
    log:
        f"{LOGS}/{{experiment}}/export_cams/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/export_cams/{{shard}}.tsv"
    conda:
        CONDA_ENV
    threads: torch_threads(CAM["export"].get("threads"))
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(4 * 60, per_shard=True),
        gpu=gpus_for("export_cams"),
    script:
        "../scripts/export_cams.py"


rule search_threshold:
    input:
        cams=lambda wc: expand(experiment_path(wc.experiment, "cams/{shard}.h5"), shard=SHARDS),
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
    output:
        threshold=experiment_path("{experiment}", "cam_eval/threshold.json"),
        plot=experiment_path("{experiment}", "cam_eval/threshold.png"),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
    params:
        settings=CAM["threshold"],
        split=DATASET["splits"]["cam_eval"],
        title=lambda wc: f"{DATASET['name']} / {wc.experiment}: CAM mIoU on "
        f"{DATASET['splits']['cam_eval']}",
    log:
        f"{LOGS}/{{experiment}}/search_threshold.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/search_threshold.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="1h",
    script:
        "../scripts/search_threshold.py"


# An experiment with corpus overrides (e.g. background texts from one question group) gets its
# own corpus and text features from the shared answers: no VQA job reruns for it.
rule experiment_corpus:
    input:
        answers=expand(qape_path("answers/{shard}.parquet"), shard=SHARDS),
        classes=data_path("classes.json"),
    output:
        corpus=experiment_path("{experiment}", "qape/corpus.parquet"),
        stats=experiment_path("{experiment}", "qape/corpus_stats.json"),
    wildcard_constraints:
        experiment=_OWN_CORPUS_RE,
    params:
        options=lambda wc: corpus_options_of(wc.experiment),
    log:
        f"{LOGS}/{{experiment}}/corpus.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="30m",
    script:
        "../scripts/corpus.py"


rule experiment_text_features:
    input:
        corpus=experiment_path("{experiment}", "qape/corpus.parquet"),
        model=clip_model_input,
    output:
        features=experiment_path("{experiment}", "qape/text_features.h5"),
    wildcard_constraints:
        experiment=_OWN_CORPUS_RE,
    params:
        clip=clip_model_settings(),
        prompt=lambda wc: corpus_options_of(wc.experiment)["prompt"],
        batch_size=QAPE["text_batch_size"],
        device=COMPUTE["device"],
        threads=TORCH_THREADS,
    log:
        f"{LOGS}/{{experiment}}/text_features.log",
    conda:
        CONDA_ENV
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        runtime="1h",
        gpu=gpus_for("text_features"),
    script:
        "../scripts/text_features.py"


localrules:
    cam_table,
    ablation_table,


rule cam_table:
    input:
        thresholds=[experiment_path(e, "cam_eval/threshold.json") for e in CAM_EXPERIMENTS],
    output:
        tsv=summary_path("cam_miou.tsv"),
        md=summary_path("cam_miou.md"),
        json=summary_path("cam_miou.json"),
    params:
        rows=[(e, RITC_RUNS.get(e, {})) for e in CAM_EXPERIMENTS],
        title=f"{DATASET['name']}: CAM mIoU on {DATASET['splits']['cam_eval']}",
    log:
        f"{LOGS}/cam_table.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/compare_cams.py"


rule ablation_table:
    input:
        thresholds=[experiment_path(e, "cam_eval/threshold.json")
                    for e in [BASELINE, *EXPERIMENTS, *ABLATIONS]],
    output:
        tsv=summary_path("ablations.tsv"),
        md=summary_path("ablations.md"),
        json=summary_path("ablations.json"),
    params:
        rows=[(e, RITC_RUNS.get(e, {})) for e in [BASELINE, *EXPERIMENTS, *ABLATIONS]],
        title=f"{DATASET['name']}: CAM mIoU of the ablations on {DATASET['splits']['cam_eval']}",
    log:
        f"{LOGS}/ablation_table.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/compare_cams.py"


# The ablations run on request: `snakemake ablations` (one target).
rule ablations:
    input:
        rules.ablation_table.output,
