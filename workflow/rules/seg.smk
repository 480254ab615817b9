# DeepLab stage (method.md 10): per experiment of seg.experiments, the training labels gathered
# into one folder (deeplab_labels: the experiment's IRN pseudo masks, or the ground truth for the
# upper bound seg.gt_experiment), DeepLab-v2 trained on them (train_deeplab, DDP with several
# GPUs), palette-PNG predictions of the evaluation split and, for VOC, the test split
# (predict_deeplab), their mIoU (eval_deeplab), the test predictions in the VOC server layout
# (deeplab_voc_test), and one table of CAM / pseudo-mask / DeepLab mIoU per dataset next to the
# paper's numbers (final_table).
#
#   results/{dataset}/{experiment}/deeplab/train_labels/<image_id>.png
#   results/{dataset}/{experiment}/deeplab/model.pth, deeplab/loss_curve.tsv
#   results/{dataset}/{experiment}/deeplab/predictions/{split}/<image_id>.png   VOC palette
#   results/{dataset}/{experiment}/deeplab/metrics.json
#   results/{dataset}/{experiment}/deeplab/voc_test/results/VOC2012/..., results.tar.gz
#   results/{dataset}/summary/miou_table.{tsv,md,json}
#
# Needs cam.smk and irn.smk included first. Resumable training state:
# results/{dataset}/{experiment}/_resume/train_deeplab/ (removed once the model is written).

include: "seg_common.smk"


rule deeplab_labels:
    input:
        manifest=data_path("manifest.parquet"),
        masks=deeplab_label_sources,
    output:
        labels=directory(deeplab_path("{experiment}", "train_labels")),
    wildcard_constraints:
        experiment=_SEG_RE,
    params:
        split=DATASET["splits"]["train"],
        ground_truth=lambda wc: SEG.trains_on_gt(experiment_of(wc.experiment)),
    log:
        f"{LOGS}/{{experiment}}/deeplab/deeplab_labels.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/deeplab/deeplab_labels.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime="1h",
    script:
        "../scripts/deeplab_labels.py"


rule train_deeplab:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        labels=deeplab_path("{experiment}", "train_labels"),
        backbone=deeplab_backbone_input,
    output:
        model=deeplab_path("{experiment}", "model.pth"),
        curve=deeplab_path("{experiment}", "loss_curve.tsv"),
    wildcard_constraints:
        experiment=_SEG_RE,
    params:
        settings=lambda wc: seg_train_params(seed_of(wc.experiment)),
        init=deeplab_backbone_weights(),
        split=DATASET["splits"]["train"],
        resume_dir=lambda wc: experiment_path(wc.experiment, "_resume/train_deeplab"),
        device=COMPUTE["device"],
        world_size=world_size_of("train_deeplab"),
    log:
        f"{LOGS}/{{experiment}}/deeplab/train_deeplab.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/deeplab/train_deeplab.tsv"
    conda:
        CONDA_ENV
    threads: torch_threads(SEG.train.threads)
    resources:
        # VOC (10 crops of 321, ResNet-101 with MSC) ~20 GB; the demo's and tiny's far less.
        mem_mb=training_mem_mb(4000, 5000, {"batch_size": SEG.train.batch_size,
                                            "crop_size": SEG.train.crop}),
        # 24 h for the paper's 30k iterations, in proportion for fewer.
        runtime=lambda wc, attempt: runtime_limit(
            max(15, 24 * 60 * SEG.train.iterations // 30000), attempt
        ),
        gpu=gpus_for("train_deeplab"),
    script:
        "../scripts/train_deeplab.py"


rule predict_deeplab:
    input:
        manifest=data_path("manifest.parquet"),
        model=deeplab_path("{experiment}", "model.pth"),
    output:
        predictions=directory(deeplab_path("{experiment}", "predictions/{split}")),
    wildcard_constraints:
        experiment=_SEG_RE,
        split=_SEG_SPLIT_RE,
    params:
        settings=seg_predict_params(),
        split="{split}",
        device=COMPUTE["device"],
        torch_threads=TORCH_THREADS,
    log:
        f"{LOGS}/{{experiment}}/deeplab/predict_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/deeplab/predict_{{split}}.tsv"
    conda:
        CONDA_ENV
    # one dense-CRF process per thread while the network goes on
    threads: seg_predict_threads()
    resources:
        mem_mb=lambda wc, threads: 8000 + 1000 * threads,
        # resumable: a retry after a time-out continues where it stopped
        runtime=lambda wc, attempt: runtime_limit(6 * 60, attempt),
        gpu=gpus_for("predict_deeplab"),
    script:
        "../scripts/predict_deeplab.py"


rule eval_deeplab:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        predictions=deeplab_path("{experiment}", f"predictions/{SEG_EVAL_SPLIT}"),
    output:
        metrics=deeplab_path("{experiment}", "metrics.json"),
    wildcard_constraints:
        experiment=_SEG_RE,
    params:
        split=SEG_EVAL_SPLIT,
        settings=seg_predict_params(),
    log:
        f"{LOGS}/{{experiment}}/deeplab/eval_deeplab.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/deeplab/eval_deeplab.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="1h",
    script:
        "../scripts/eval_deeplab.py"


# Only where the dataset has a VOC test split (seg.predict.test_split); scored by the server.
if SEG_TEST_SPLIT:

    rule deeplab_voc_test:
        input:
            manifest=data_path("manifest.parquet"),
            predictions=deeplab_path("{experiment}", f"predictions/{SEG_TEST_SPLIT}"),
        output:
            folder=directory(deeplab_path("{experiment}", "voc_test/results")),
            archive=deeplab_path("{experiment}", "voc_test/results.tar.gz"),
        wildcard_constraints:
            experiment=_SEG_RE,
        params:
            split=SEG_TEST_SPLIT,
            competition=SEG.predict.competition,
        log:
            f"{LOGS}/{{experiment}}/deeplab/deeplab_voc_test.log",
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=2000,
            runtime="1h",
        script:
            "../scripts/deeplab_voc_test.py"


rule final_table:
    input:
        cam=[experiment_path(e, "cam_eval/threshold.json") for e in TABLE_EXPERIMENTS],
        pseudo_masks=[irn_path(e, "metrics/pseudo_masks.json") for e in TABLE_EXPERIMENTS],
        deeplab=[deeplab_path(e, "metrics.json") for e in SEG_EXPERIMENTS],
    output:
        tsv=summary_path("miou_table.tsv"),
        md=summary_path("miou_table.md"),
        json=summary_path("miou_table.json"),
    params:
        cam_experiments=TABLE_EXPERIMENTS,
        seg_experiments=SEG_EXPERIMENTS,
        gt_experiment=SEG.gt_experiment,
        dataset_source=DATASET["source"],
        title=f"{DATASET['name']}: mIoU (%) per experiment",
    log:
        f"{LOGS}/final_table.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime="10m",
    script:
        "../scripts/final_table.py"


# Every seed offset (config seeds) of the table's experiments: mean +- std per stage and the
# gain over the baseline seed by seed. Only on request: `snakemake seeds`.
rule seed_table:
    input:
        cam=[experiment_path(r, "cam_eval/threshold.json") for r in seed_runs(TABLE_EXPERIMENTS)],
        pseudo_masks=[irn_path(r, "metrics/pseudo_masks.json")
                      for r in seed_runs(TABLE_EXPERIMENTS)],
        deeplab=[deeplab_path(r, "metrics.json") for r in seed_runs(SEG_EXPERIMENTS)],
    output:
        tsv=summary_path("seeds.tsv"),
        md=summary_path("seeds.md"),
        json=summary_path("seeds.json"),
    params:
        seeds=SEEDS,
        cam_experiments=TABLE_EXPERIMENTS,
        seg_experiments=SEG_EXPERIMENTS,
        gt_experiment=SEG.gt_experiment,
        baseline=BASELINE,
        title=f"{DATASET['name']}: mIoU (%) over seeds",
    log:
        f"{LOGS}/seed_table.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime="10m",
    script:
        "../scripts/seed_table.py"


rule seeds:
    input:
        rules.seed_table.output,
