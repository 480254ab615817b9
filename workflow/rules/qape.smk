# QAPE: the VQA model answers every question template about every (image, class) pair of the
# training split, one job per shard; the answers become the corpus of foreground/background texts,
# whose distinct texts are encoded once by the CLIP text tower.


rule vqa:
    input:
        manifest=data_path("manifest.parquet"),
        classes=data_path("classes.json"),
        questions=repo_file(config["questions"]),
        model=vqa_model_input,
    output:
        answers=qape_path("answers/{shard}.parquet"),
    params:
        shard="{shard}",
        n_shards=QAPE["n_shards"],
        splits=qape_splits(),
        lemmatizer=QAPE["lemmatizer"],
        on_bad_image=DATASET["on_bad_image"],
        cache_dir=QAPE["cache_dir"],
        vqa_source=vqa_model_path(),
        vqa=MODELS["vqa"],
        device=COMPUTE["device"],
        threads=TORCH_THREADS,
    log:
        f"{LOGS}/vqa/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/vqa/{{shard}}.tsv"
    conda:
        CONDA_ENV
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(4 * 60, per_shard=True),
        gpu=gpus_for("vqa"),
    script:
        "../scripts/vqa.py"


rule corpus:
    input:
        answers=expand(qape_path("answers/{shard}.parquet"), shard=SHARDS),
        classes=data_path("classes.json"),
    output:
        corpus=qape_path("corpus.parquet"),
        stats=qape_path("corpus_stats.json"),
    params:
        options=QAPE["corpus"],
    log:
        f"{LOGS}/corpus.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="30m",
    script:
        "../scripts/corpus.py"


rule text_features:
    input:
        corpus=qape_path("corpus.parquet"),
        model=clip_model_input,
    output:
        features=qape_path("text_features.h5"),
    params:
        clip=clip_model_settings(),
        prompt=QAPE["corpus"]["prompt"],
        batch_size=QAPE["text_batch_size"],
        device=COMPUTE["device"],
        threads=TORCH_THREADS,
    log:
        f"{LOGS}/text_features.log",
    benchmark:
        f"{RESULTS}/benchmarks/text_features.tsv"
    conda:
        CONDA_ENV
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        runtime="1h",
        gpu=gpus_for("text_features"),
    script:
        "../scripts/text_features.py"
