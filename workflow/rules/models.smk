# Models stage: real weights are fetched (where the network allows) into resources/weights; the
# demo's toy models are trained here on the synthetic VLP corpus and saved in the same formats,
# so later stages load both through the same loaders.


if FETCH_ASSETS:

    # Downloads need the login node's network; everything else goes to the cluster.
    localrules:
        fetch_weights,

    rule fetch_weights:
        output:
            [
                directory(p) if is_dir else p
                for p, is_dir in (asset_output(n) for n in FETCH_ASSETS)
            ],
            # tensors-only copies of files that need a full unpickle (OVSeg), made after the
            # checksum is verified: the loaders read these, never the pickles
            converted=converted_outputs(FETCH_ASSETS),
        params:
            assets=FETCH_ASSETS,
            dest_root=WEIGHTS,
            offline=MODELS["fetch"]["offline"],
        log:
            f"{LOGS}/fetch_weights.log",
        conda:
            CONDA_ENV
        script:
            "../scripts/fetch_weights.py"


rule make_vlp_corpus:
    output:
        corpus=directory(f"{TOY}/corpus"),
    params:
        # The canonical template wording, not config["questions"]: editing a template must not
        # retrain the toy VQA (that would change its model id and invalidate the answer cache).
        spec=MODELS["toy"]["corpus"],
    log:
        f"{TOY}/logs/make_vlp_corpus.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime="30m",
    script:
        "../scripts/make_vlp_corpus.py"


rule train_toy_vqa:
    input:
        corpus=f"{TOY}/corpus",
    output:
        model=directory(f"{TOY}/blip_vqa"),
        metrics=f"{TOY}/blip_vqa_metrics.json",
    params:
        settings=MODELS["toy"]["vqa"],
        # resumable state outside the outputs (killed jobs continue), keyed by a settings hash
        resume_root=f"{TOY}/_resume/train_toy_vqa",
    log:
        f"{TOY}/logs/train_toy_vqa.log",
    benchmark:
        f"{TOY}/benchmarks/train_toy_vqa.tsv"
    conda:
        CONDA_ENV
    # Training always uses settings.threads (the weights depend on it); ask for exactly that.
    threads: MODELS["toy"]["vqa"]["threads"]
    resources:
        mem_mb=6000,
        runtime="1h",
    script:
        "../scripts/train_toy_vqa.py"


rule train_toy_clip:
    input:
        corpus=f"{TOY}/corpus",
    output:
        model=directory(f"{TOY}/clip"),
        metrics=f"{TOY}/clip_metrics.json",
    params:
        settings=MODELS["toy"]["clip"],
        resume_root=f"{TOY}/_resume/train_toy_clip",
    log:
        f"{TOY}/logs/train_toy_clip.log",
    benchmark:
        f"{TOY}/benchmarks/train_toy_clip.tsv"
    conda:
        CONDA_ENV
    threads: MODELS["toy"]["clip"]["threads"]
    resources:
        mem_mb=6000,
        runtime="1h",
    script:
        "../scripts/train_toy_clip.py"


# The demo's ImageNet substitute: a ResNet pretrained (multi-label objects and contexts) on the
# toy corpus, saved as a torchvision state dict without fc.* and loaded like ImageNet weights.
rule train_toy_backbone:
    input:
        corpus=f"{TOY}/corpus",
    output:
        weights=f"{TOY}/backbone/{{arch}}.pth",
        metrics=f"{TOY}/backbone/{{arch}}_metrics.json",
    params:
        settings=lambda wc: {**MODELS["toy"]["backbone"], "arch": wc.arch},
        # one folder for every arch: the arch is part of the settings hash that names the state
        resume_root=f"{TOY}/_resume/train_toy_backbone",
    log:
        f"{TOY}/logs/train_toy_backbone_{{arch}}.log",
    benchmark:
        f"{TOY}/benchmarks/train_toy_backbone_{{arch}}.tsv"
    conda:
        CONDA_ENV
    threads: MODELS["toy"]["backbone"]["threads"]
    resources:
        mem_mb=6000,
        runtime="1h",
    script:
        "../scripts/train_toy_backbone.py"
