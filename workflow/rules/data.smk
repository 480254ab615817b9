# Dataset stage: the synthetic generator and prepare_dataset, which turns any source into the one
# contract later stages read (manifest.parquet + classes.json).


# Only the synthetic source is generated; real datasets are read where they are.
if DATASET["source"] == "synthetic":

    rule make_synthetic:
        output:
            root=directory(DATASET["root"]),
        params:
            spec=DATASET["synthetic"],
        log:
            f"{LOGS}/make_synthetic.log",
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=2000,
            runtime="20m",
        script:
            "../scripts/make_synthetic.py"


rule prepare_dataset:
    input:
        root=dataset_root_input,
    output:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        stats=data_path("stats.json"),
        cooccurrence=data_path("cooccurrence.tsv"),
    params:
        source=DATASET["source"],
        root=DATASET["root"],
        on_bad_image=DATASET["on_bad_image"],
        check_images=DATASET["check_images"],
        gt_dir=DATASET["gt_dir"] or f"resources/data/{DATASET['name']}_masks",
        train_aug_fallback=DATASET["train_aug_fallback"],
        required_splits=sorted({*DATASET["splits"].values(), *qape_splits()}),
    log:
        f"{LOGS}/prepare_dataset.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="2h",
    script:
        "../scripts/prepare_dataset.py"
