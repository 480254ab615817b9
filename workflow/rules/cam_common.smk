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
# Seed offsets (config seeds): offset 0 is the configured run under the plain names; offset k
# runs every training stage with its seed + k as the run "{experiment}-seed{k}", sharing data,
# answers, corpus and toy models. A "run" below is such a name; its experiment is the plain one.
SEEDS = list(config["seeds"])
_SEED_RE = "|".join(str(s) for s in SEEDS if s)


def run_name(experiment, seed=0):
    """The run of ``experiment`` with seed offset ``seed``: qa_clims, qa_clims-seed2."""
    return experiment if seed == 0 else f"{experiment}-seed{seed}"


def split_run(run):
    """(experiment, seed offset) of a run name: 'qa_clims-seed2' -> ('qa_clims', 2)."""
    base, sep, seed = run.rpartition("-seed")
    if sep and seed.isdigit() and int(seed) in SEEDS and int(seed) != 0:
        return base, int(seed)
    return run, 0


def experiment_of(run):
    return split_run(run)[0]


def seed_of(run):
    return split_run(run)[1]


def baseline_of(run):
    """The baseline run a run starts from (the same seed offset)."""
    return run_name(BASELINE, seed_of(run))


def runs_re(names):
    """Wildcard constraint matching the runs (every seed offset) of ``names``."""
    alt = "|".join(re.escape(e) for e in names)
    if not alt:
        return "(?!)"
    return f"(?:{alt})(?:-seed(?:{_SEED_RE}))?" if _SEED_RE else f"(?:{alt})"


_EXPERIMENT_RE = runs_re([BASELINE, *RITC_RUNS])
_BASELINE_RE = runs_re([BASELINE])
_RITC_RE = runs_re(RITC_RUNS)
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


def train_cam_settings(seed=0):
    """cam.train_cam for params of the baseline run with seed offset ``seed``."""
    return {**CAM["train_cam"], "weights": cam_backbone_weights(),
            "threads": torch_threads(CAM["train_cam"].get("threads")),
            "seed": CAM["train_cam"].get("seed", 0) + seed}


def ritc_settings_of(run):
    """cam.ritc with the experiment's overrides, validated (unknown keys fail at parse time),
    the run's seed offset added."""
    from qaclims.cam.settings import ritc_settings

    experiment, seed = split_run(run)
    settings = ritc_settings(CAM["ritc"], RITC_RUNS[experiment].get("ritc", {}),
                             experiment=experiment).to_dict()
    return {**settings, "threads": torch_threads(settings["threads"]),
            "seed": settings["seed"] + seed}


def corpus_options_of(experiment):
    """qape.corpus with the experiment's corpus overrides."""
    return {**QAPE["corpus"], **RITC_RUNS[experiment].get("corpus", {})}


def experiment_texts(wildcards):
    """corpus.parquet and text_features.h5 an experiment's runs train with (seeds share them)."""
    experiment = experiment_of(wildcards.experiment)
    if RITC_RUNS[experiment].get("corpus"):
        return {"corpus": experiment_path(experiment, "qape/corpus.parquet"),
                "text_features": experiment_path(experiment, "qape/text_features.h5")}
    return {"corpus": qape_path("corpus.parquet"), "text_features": qape_path("text_features.h5")}


def baseline_imported():
    """True when cam.baseline_checkpoint names a checkpoint to start from (no train_cam)."""
    return bool(CAM["baseline_checkpoint"])


def baseline_model_path(run=BASELINE):
    """The baseline CAM network of a run's seed: trained by train_cam, or imported from
    cam.baseline_checkpoint (then one file for every seed)."""
    if baseline_imported():
        return experiment_path(BASELINE, "cam/imported_model.pth")
    return experiment_path(baseline_of(run), "cam/model.pth")


def cam_model(wildcards):
    if experiment_of(wildcards.experiment) == BASELINE:
        return baseline_model_path(wildcards.experiment)
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


def seed_runs(experiments):
    """Every seed offset's run of each experiment, offset by offset."""
    return [run_name(e, s) for s in SEEDS for e in experiments]


def summary_path(name):
    return f"{RESULTS}/summary/{name}"
