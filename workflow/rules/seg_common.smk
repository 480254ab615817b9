# Helpers of the DeepLab stage (seg.smk includes this file; they may move into common.smk).
from qaclims.seg.settings import seg_settings, voc_test_split

# Validated when the workflow is parsed: a wrong key, value or experiment name fails before any
# job runs, naming the dotted key.
SEG = seg_settings(config.get("seg"), list(EXPERIMENTS), list(ABLATIONS), BASELINE)
SEG_EXPERIMENTS = list(SEG.experiments)
# Rows of the mIoU table: the CAM experiments, and ablations that got a DeepLab too.
TABLE_EXPERIMENTS = CAM_EXPERIMENTS + [e for e in SEG_EXPERIMENTS if e in ABLATIONS]
_SEG_RE = runs_re(SEG_EXPERIMENTS)
SEG_EVAL_SPLIT = DATASET["splits"]["seg_eval"]
SEG_TEST_SPLIT = voc_test_split(SEG.predict.test_split, DATASET["source"], DATASET["root"])
SEG_PREDICT_SPLITS = list(dict.fromkeys(s for s in (SEG_EVAL_SPLIT, SEG_TEST_SPLIT) if s))
_SEG_SPLIT_RE = "|".join(re.escape(s) for s in SEG_PREDICT_SPLITS)
# DDP splits every micro-batch over the GPUs: say so now, not after the job has started.
if SEG.train.batch_size % world_size_of("train_deeplab"):
    raise ValueError(
        f"seg.train.batch_size: expected a multiple of compute.gpus.train_deeplab "
        f"({world_size_of('train_deeplab')}), got {SEG.train.batch_size}")


def deeplab_path(experiment, name):
    return experiment_path(experiment, f"deeplab/{name}")


def deeplab_label_sources(wildcards):
    """The IRN pseudo-mask shard folders of an experiment; nothing for the ground truth (the
    manifest names the GT files)."""
    if SEG.trains_on_gt(experiment_of(wildcards.experiment)):
        return []
    return [irn_path(wildcards.experiment, f"pseudo_masks/{s}") for s in SHARDS]


def deeplab_backbone_weights():
    """What build_deeplab gets: "imagenet", a weights file, the toy backbone, or None (random)."""
    if SEG.train.weights == "toy":
        return f"{TOY}/backbone/{SEG.train.arch}.pth"
    return SEG.train.weights


def deeplab_backbone_input(wildcards):
    w = deeplab_backbone_weights()
    return [] if w in (None, "imagenet") else weights_input([w])


def seg_train_params(seed=0):
    """seg.train for params of a run with seed offset ``seed``, threads resolved (torch's
    thread count changes the weights)."""
    return {**SEG.train.to_dict(), "threads": torch_threads(SEG.train.threads),
            "seed": SEG.train.seed + seed}


def seg_predict_params():
    """seg.predict for params; the CRF pool size changes no result (it sets the threads)."""
    return {k: v for k, v in SEG.predict.to_dict().items() if k != "crf_workers"}


def seg_predict_threads():
    """CRF processes of predict_deeplab (1: the CRF runs in the predicting process)."""
    workers = SEG.predict.crf_workers
    return 4 if workers is None else max(1, workers)


def seg_targets():
    """The results table of the dataset, every DeepLab's metrics and, where the dataset has a
    VOC test split, the evaluation-server archives."""
    targets = [summary_path(f"miou_table.{ext}") for ext in ("tsv", "md", "json")]
    targets += [deeplab_path(e, "metrics.json") for e in SEG_EXPERIMENTS]
    if SEG_TEST_SPLIT:
        targets += [deeplab_path(e, "voc_test/results.tar.gz") for e in SEG_EXPERIMENTS]
    return targets
