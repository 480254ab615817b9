# Helpers of the CAM stage (cam.smk includes this file; they may move into common.smk).
import re

CAM = config["cam"]
# An experiment: {"ritc": {cam.ritc overrides}, "corpus": {qape.corpus overrides}, "paper": x};
# one without corpus overrides shares the dataset's corpus and text features. Experiments run
# by default; ablations (the paper's Tables 4 and 5) only through the target "ablations".
# validate_config has already built every one of them, so a bad key failed before this line.
EXPERIMENTS = {name: spec or {} for name, spec in config["experiments"].items()}
ABLATIONS = {name: spec or {} for name, spec in config["ablations"].items()}
RITC_RUNS = {**EXPERIMENTS, **ABLATIONS}
BASELINE = "baseline"
CAM_EXPERIMENTS = [BASELINE, *EXPERIMENTS]
_EXPERIMENT_RE = "|".join(re.escape(e) for e in [BASELINE, *RITC_RUNS])
_RITC_RE = "|".join(re.escape(e) for e in RITC_RUNS) or "(?!)"
_OWN_CORPUS_RE = "|".join(re.escape(e) for e, spec in RITC_RUNS.items()
                          if spec.get("corpus")) or "(?!)"


def experiment_path(experiment, name):
    return f"{RESULTS}/{experiment}/{name}"


def cam_backbone_weights():
    """What load_resnet gets: "imagenet", a local file, the toy backbone, or None (random)."""
    weights = CAM["train_cam"].get("weights", "imagenet")
    if weights == "toy":
        return f"{TOY}/backbone/{CAM['train_cam'].get('arch', 'resnet50')}.pth"
    return weights


def cam_backbone_input(wildcards):
    w = cam_backbone_weights()
    return [] if w in (None, "imagenet") else weights_input([w])


def train_cam_settings():
    return {**CAM["train_cam"], "weights": cam_backbone_weights()}


def ritc_settings_of(experiment):
    """cam.ritc with the experiment's overrides, validated (unknown keys fail at parse time)."""
    from qaclims.cam.settings import ritc_settings

    return ritc_settings(CAM["ritc"], RITC_RUNS[experiment].get("ritc", {}),
                         experiment=experiment).to_dict()


def corpus_options_of(experiment):
    """qape.corpus with the experiment's corpus overrides."""
    return {**QAPE["corpus"], **RITC_RUNS[experiment].get("corpus", {})}


def experiment_texts(wildcards):
    """corpus.parquet and text_features.h5 an experiment trains with."""
    if RITC_RUNS[wildcards.experiment].get("corpus"):
        return {"corpus": experiment_path(wildcards.experiment, "qape/corpus.parquet"),
                "text_features": experiment_path(wildcards.experiment, "qape/text_features.h5")}
    return {"corpus": qape_path("corpus.parquet"), "text_features": qape_path("text_features.h5")}


def baseline_imported():
    """True when cam.baseline_checkpoint names a checkpoint to start from (no train_cam)."""
    return bool(CAM["baseline_checkpoint"])


def baseline_model_path():
    """The baseline CAM network: trained by train_cam, or imported from cam.baseline_checkpoint."""
    if baseline_imported():
        return experiment_path(BASELINE, "cam/imported_model.pth")
    return experiment_path(BASELINE, "cam/model.pth")


def cam_model(wildcards):
    if wildcards.experiment == BASELINE:
        return baseline_model_path()
    return experiment_path(wildcards.experiment, "ritc/model.pth")


def cam_export_splits():
    """CAMs are needed for the training split (IRN) and the evaluation split (this stage)."""
    splits = DATASET["splits"]
    return sorted({splits["train"], splits["cam_eval"]})


def world_size_of(rule_name):
    """DDP ranks of a training rule: its GPUs (1 without GPUs)."""
    return max(1, gpus_for(rule_name))


def cam_targets():
    """threshold.json of the baseline and of every experiment (ablations: target ablations)."""
    return [experiment_path(e, "cam_eval/threshold.json") for e in CAM_EXPERIMENTS]


def summary_path(name):
    return f"{RESULTS}/summary/{name}"
