# Helpers of the report (report.smk includes this file; it must come after the stage rule files,
# whose cam_targets() / irn_targets() / seg_targets() it looks up by name).

REPORT = f"{RESULTS}/report"
REPORT_SAMPLES = 4  # sample images per overlay figure


def stage_included(name):
    """Whether the stage rule file defining `name()` (e.g. cam_targets) is included."""
    return name in globals()


def stage_targets(name):
    return list(globals()[name]()) if stage_included(name) else []


def report_experiments():
    """Row order of the report's tables: the CAM experiments, then DeepLab-only ones (gt)."""
    exps = list(CAM_EXPERIMENTS) if stage_included("cam_targets") else []
    if stage_included("seg_targets"):
        exps += [e for e in SEG_EXPERIMENTS if e not in exps]
    return exps


def stage_metric_files(wildcards=None):
    """Metrics JSONs of every included stage (seg.smk's summary tables left out)."""
    files = stage_targets("cam_targets") + stage_targets("irn_targets")
    files += stage_targets("seg_targets")
    return [f for f in files if f.endswith(".json") and not f.startswith(f"{RESULTS}/summary/")]


def loss_curve_files(wildcards=None):
    files = []
    if stage_included("cam_targets"):
        if not baseline_imported():  # an imported baseline has no training curve
            files.append(experiment_path(BASELINE, "cam/loss_curve.tsv"))
        files += [experiment_path(e, "ritc/loss_curve.tsv") for e in EXPERIMENTS]
    if stage_included("irn_targets"):
        files += [irn_path(e, "loss_curve.json") for e in CAM_EXPERIMENTS]
    files += [
        str(Path(f).with_name("loss_curve.tsv"))
        for f in stage_targets("seg_targets")
        if Path(f).parts[-2:] == ("deeplab", "metrics.json")
    ]
    return files


def toy_metric_files(wildcards=None):
    files = {}
    if MODELS["vqa"]["source"] == "toy":
        files["vqa"] = f"{TOY}/blip_vqa_metrics.json"
    if MODELS["clip"]["arch"] == "toy":
        files["clip"] = f"{TOY}/clip_metrics.json"
    return files


def benchmark_roots():
    roots = [f"{RESULTS}/benchmarks"]
    return roots + ([f"{TOY}/benchmarks"] if toy_metric_files() else [])


def overlay_inputs(wildcards):
    e = wildcards.experiment
    inputs = {
        "manifest": data_path("manifest.parquet"),
        "classes": data_path("classes.json"),
        "corpus": (
            experiment_texts(wildcards)["corpus"]
            if e != BASELINE
            else qape_path("corpus.parquet")
        ),
        "cams": [experiment_path(e, f"cams/{s}.h5") for s in SHARDS],
    }
    if e != BASELINE:
        inputs["baseline"] = [experiment_path(BASELINE, f"cams/{s}.h5") for s in SHARDS]
    if stage_included("irn_targets"):
        inputs["masks"] = [irn_path(e, f"pseudo_masks/{s}") for s in SHARDS]
    return inputs


def report_targets():
    """Every report figure and table of the included stages (for rule all)."""
    targets = [
        f"{RESULTS}/config.snapshot.yaml",
        f"{REPORT}/dataset.html",
        f"{REPORT}/top_answers.html",
        f"{REPORT}/runtimes.html",
        f"{REPORT}/runtimes.png",
    ]
    if toy_metric_files():
        targets.append(f"{REPORT}/toy_models.html")
    if stage_metric_files():
        targets += [f"{REPORT}/miou_table.html", f"{REPORT}/class_iou.png"]
    if stage_included("cam_targets"):
        targets += [f"{REPORT}/threshold_curves.png", f"{REPORT}/loss_curves.png"]
        targets += [f"{REPORT}/overlays/{e}.png" for e in CAM_EXPERIMENTS]
    return targets
