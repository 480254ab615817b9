# Helpers of the IRN stage (irn.smk includes this file; they may move into common.smk).
from qaclims.irn.settings import irn_reference_threshold, irn_settings

IRN = config.get("irn") or {}
# Validated when the workflow is parsed: a wrong key or value fails before any job runs.
IRN_LABELS, IRN_TRAIN, IRN_WALK = irn_settings(IRN)
# Thresholds relative to each experiment's best CAM threshold (None: as configured).
IRN_REFERENCE = irn_reference_threshold(IRN)
# Pseudo masks at the walk threshold chosen on the CAM evaluation split (rule walk_threshold).
IRN_WALK_SEARCH = bool(IRN.get("walk_threshold_search", False))
# Pool sizes change speed, not results: they set the rules' threads and stay out of params.
_POOL_KEYS = ("workers",)


def irn_path(experiment, name):
    return experiment_path(experiment, f"irn/{name}")


def irn_params(settings):
    """A settings dict for params: the result-neutral pool size left out (no rerun on change)."""
    return {k: v for k, v in settings.to_dict().items() if k not in _POOL_KEYS}


def irn_walk_params():
    """random_walk's settings for params: the walked maps depend on neither the pool size nor
    the background threshold (applied later, by rule pseudo_masks)."""
    return {k: v for k, v in irn_params(IRN_WALK).items() if k != "bg_threshold"}


def irn_walk_threshold_input(wildcards):
    """The experiment's walk-threshold search, when it chooses the masks' threshold."""
    return [irn_path(wildcards.experiment, "walk_threshold.json")] if IRN_WALK_SEARCH else []


def irn_shard_files(kind, suffix):
    """Input function: the per-shard files of one experiment's IRN stage (walk/{s}.h5)."""
    return lambda wc: [irn_path(wc.experiment, f"{kind}/{s}{suffix}") for s in SHARDS]


def irn_cam_eval_input(wildcards):
    """The experiment's threshold search, when the IRN thresholds follow it."""
    if IRN_REFERENCE is None:
        return []
    return [experiment_path(wildcards.experiment, "cam_eval/threshold.json")]


def irn_backbone_weights():
    """What load_resnet gets for the IRN backbone: "imagenet", a file, the toy backbone, None."""
    if IRN_TRAIN.weights == "toy":
        return f"{TOY}/backbone/{IRN_TRAIN.arch}.pth"
    return IRN_TRAIN.weights


def irn_backbone_input(wildcards):
    w = irn_backbone_weights()
    return [] if w in (None, "imagenet") else weights_input([w])


def irn_train_settings(seed=0):
    """irn.train for params of a run with seed offset ``seed``."""
    return {**IRN_TRAIN.to_dict(), "weights": irn_backbone_weights(),
            "threads": torch_threads(IRN_TRAIN.threads), "seed": IRN_TRAIN.seed + seed}


def irn_splits():
    """Images that get IR labels and pseudo masks: the training split and the evaluation split
    (the splits whose CAMs cam.smk exports)."""
    return cam_export_splits()


def irn_shard_dirs(kind):
    """Input function: the shard folders of one experiment's IR labels or pseudo masks."""
    return lambda wc: [irn_path(wc.experiment, f"{kind}/{s}") for s in SHARDS]


def irn_targets():
    """The IR-label and pseudo-mask metrics of every experiment (baseline included)."""
    return [
        irn_path(e, f"metrics/{kind}.json")
        for e in CAM_EXPERIMENTS
        for kind in ("ir_labels", "pseudo_masks")
    ] + [irn_path(e, "walk_threshold.json") for e in CAM_EXPERIMENTS]
