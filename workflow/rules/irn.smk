# IRN stage (method.md 9): confident IR labels from the CAMs and a dense CRF (ir_labels, per
# shard), the edge + displacement network trained on them (train_irn), the random walk of the
# CAMs on its boundary maps (random_walk, per shard), the pseudo-mask mIoU of every background
# threshold on the split with ground truth (walk_threshold), the pseudo masks at the configured
# or (irn.walk_threshold_search) the searched threshold (pseudo_masks, per shard), and their
# scores (eval_ir_labels, eval_pseudo_masks). Every experiment of cam.smk (baseline included)
# gets its own branch.
#
#   results/{dataset}/{experiment}/irn/ir_labels/{shard}/<image_id>.png      0 bg, 1..K, 255
#   results/{dataset}/{experiment}/irn/model.pth, irn/loss_curve.json
#   results/{dataset}/{experiment}/irn/walk/{shard}.h5                       walked maps
#   results/{dataset}/{experiment}/irn/walk_threshold.json                   the sweep
#   results/{dataset}/{experiment}/irn/pseudo_masks/{shard}/<image_id>.png   VOC palette, 0..K
#   results/{dataset}/{experiment}/irn/metrics/{ir_labels,pseudo_masks}.json
#
# Shards are the CAM export's (qaclims.qape.pairs.shard_of, qape.n_shards): ir_labels and
# random_walk of shard s read cams/{s}.h5 only. Needs cam.smk (cam_common.smk) included first.
# Resumable training state: results/{dataset}/{experiment}/_resume/train_irn/<params hash>/.

include: "irn_common.smk"


rule ir_labels:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        cams=experiment_path("{experiment}", "cams/{shard}.h5"),
        cam_eval=irn_cam_eval_input,
    output:
        labels=directory(irn_path("{experiment}", "ir_labels/{shard}")),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
        shard=r"\d+",
    params:
        reference_cam_threshold=IRN_REFERENCE,
        settings=irn_params(IRN_LABELS),
        splits=irn_splits(),
        shard="{shard}",
        n_shards=QAPE["n_shards"],
    log:
        f"{LOGS}/{{experiment}}/irn/ir_labels/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/irn/ir_labels/{{shard}}.tsv"
    conda:
        CONDA_ENV
    # one dense-CRF process per thread (the authors ran 12)
    threads: IRN_LABELS.workers or 8
    resources:
        mem_mb=lambda wc, threads: 2000 + 1000 * threads,
        runtime=scaled_runtime(2 * 60, per_shard=True),
    script:
        "../scripts/ir_labels.py"


rule train_irn:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        labels=irn_shard_dirs("ir_labels"),
        backbone=irn_backbone_input,
    output:
        model=irn_path("{experiment}", "model.pth"),
        curve=irn_path("{experiment}", "loss_curve.json"),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
    params:
        settings=lambda wc: irn_train_settings(seed_of(wc.experiment)),
        split=DATASET["splits"]["train"],
        resume_root=lambda wc: experiment_path(wc.experiment, "_resume/train_irn"),
        device=COMPUTE["device"],
    log:
        f"{LOGS}/{{experiment}}/irn/train_irn.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/irn/train_irn.tsv"
    conda:
        CONDA_ENV
    threads: torch_threads(IRN_TRAIN.threads)
    resources:
        mem_mb=training_mem_mb(4000, 600, IRN_TRAIN.to_dict()),
        runtime=scaled_runtime(4 * 60),
        gpu=gpus_for("train_irn"),
    script:
        "../scripts/train_irn.py"


rule random_walk:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        cams=experiment_path("{experiment}", "cams/{shard}.h5"),
        model=irn_path("{experiment}", "model.pth"),
    output:
        walks=irn_path("{experiment}", "walk/{shard}.h5"),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
        shard=r"\d+",
    params:
        settings=irn_walk_params(),
        splits=irn_splits(),
        shard="{shard}",
        n_shards=QAPE["n_shards"],
        device=COMPUTE["device"],
        torch_threads=TORCH_THREADS,
    log:
        f"{LOGS}/{{experiment}}/irn/random_walk/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/irn/random_walk/{{shard}}.tsv"
    conda:
        CONDA_ENV
    # one single-thread walk process per thread (CPU); each bounded by memory_budget_mb
    threads: IRN_WALK.workers or 8
    resources:
        mem_mb=lambda wc, threads: int(4000 + threads * (IRN_WALK.memory_budget_mb + 512)),
        runtime=scaled_runtime(6 * 60, per_shard=True),
        gpu=gpus_for("random_walk"),
    script:
        "../scripts/random_walk.py"


# The pseudo-mask mIoU of every background threshold on the CAM evaluation split, from the
# walked maps (the CAM threshold search's protocol); chooses the masks' threshold when
# irn.walk_threshold_search is on.
rule walk_threshold:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        walks=irn_shard_files("walk", ".h5"),
        cam_eval=irn_cam_eval_input,
    output:
        threshold=irn_path("{experiment}", "walk_threshold.json"),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
    params:
        reference_cam_threshold=IRN_REFERENCE,
        settings=irn_params(IRN_WALK),
        split=DATASET["splits"]["cam_eval"],
        grid=CAM["threshold"],
    log:
        f"{LOGS}/{{experiment}}/irn/walk_threshold.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/irn/walk_threshold.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="1h",
    script:
        "../scripts/walk_threshold.py"


rule pseudo_masks:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        walks=irn_path("{experiment}", "walk/{shard}.h5"),
        cam_eval=irn_cam_eval_input,
        walk_threshold=irn_walk_threshold_input,
    output:
        masks=directory(irn_path("{experiment}", "pseudo_masks/{shard}")),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
        shard=r"\d+",
    params:
        reference_cam_threshold=IRN_REFERENCE,
        settings=irn_params(IRN_WALK),
        splits=irn_splits(),
        shard="{shard}",
        n_shards=QAPE["n_shards"],
    log:
        f"{LOGS}/{{experiment}}/irn/pseudo_masks/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/irn/pseudo_masks/{{shard}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=scaled_runtime(60, per_shard=True),
    script:
        "../scripts/pseudo_masks.py"


rule eval_ir_labels:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        labels=irn_shard_dirs("ir_labels"),
        cam_eval=irn_cam_eval_input,
    output:
        metrics=irn_path("{experiment}", "metrics/ir_labels.json"),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
    params:
        reference_cam_threshold=IRN_REFERENCE,
        kind="ir_labels",
        split=DATASET["splits"]["cam_eval"],
        settings=irn_params(IRN_LABELS),
    log:
        f"{LOGS}/{{experiment}}/irn/eval_ir_labels.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/irn/eval_ir_labels.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="1h",
    script:
        "../scripts/eval_irn.py"


rule eval_pseudo_masks:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        labels=irn_shard_dirs("pseudo_masks"),
        cam_eval=irn_cam_eval_input,
        walk_threshold=irn_walk_threshold_input,
    output:
        metrics=irn_path("{experiment}", "metrics/pseudo_masks.json"),
    wildcard_constraints:
        experiment=_EXPERIMENT_RE,
    params:
        reference_cam_threshold=IRN_REFERENCE,
        kind="pseudo_masks",
        split=DATASET["splits"]["cam_eval"],
        settings=irn_params(IRN_WALK),
    log:
        f"{LOGS}/{{experiment}}/irn/eval_pseudo_masks.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/irn/eval_pseudo_masks.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="1h",
    script:
        "../scripts/eval_irn.py"
