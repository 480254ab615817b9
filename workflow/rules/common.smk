# Shared helpers: config validation, path builders, input functions.
from qaclims.config import validate_config

# Validate before any job runs: unknown keys, wrong types and missing dataset roots fail here,
# with the offending key named. The filled-in config (defaults included) replaces the raw one.
config.update(validate_config(config, base=Path.cwd()))

DATASET = config["dataset"]
RESULTS = f"results/{DATASET['name']}"
LOGS = f"{RESULTS}/logs"
# One pinned environment for every rule (same pins as envs/requirements.txt).
CONDA_ENV = str(Path(workflow.basedir) / "envs" / "qaclims.yaml")


MODELS = config["models"]
WEIGHTS = "resources/weights"
# Toy models live outside results/: they do not depend on the dataset, only on their settings.
TOY = f"{WEIGHTS}/toy/{MODELS['toy_name']}"
FETCH_ASSETS = list(MODELS["fetch"]["assets"])


def asset_output(name):
    """(path, is_directory) of a registered external asset under resources/weights."""
    from qaclims.vlp.weights import asset_path, get_asset

    return str(asset_path(name, WEIGHTS)), get_asset(name).kind == "hf_snapshot"


def converted_outputs(names):
    """The tensors-only copies fetch_weights writes beside assets that need a full unpickle."""
    from qaclims.vlp.weights import asset_outputs, get_asset

    return [str(p) for n in names for p in asset_outputs(get_asset(n), WEIGHTS)[1:]]


def repo_file(path):
    """A path from the config: relative to the working directory, else to the repository."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(Path(workflow.basedir) / p)


QAPE = config["qape"]
COMPUTE = config["compute"]
TORCH_THREADS = COMPUTE["torch_threads"]


def torch_threads(stage_threads=None):
    """A rule's torch threads: its stage's own ``threads`` key, else compute.torch_threads.
    They reach the script through params (results depend on them), and the rule asks the
    scheduler for the same number; never Snakemake's granted threads, which follow --cores."""
    return stage_threads or TORCH_THREADS


def qape_path(name):
    """A file of the QAPE stage (shared by every experiment of the dataset)."""
    return f"{RESULTS}/qape/{name}"


def qape_splits():
    return QAPE["splits"] or [DATASET["splits"]["train"]]


def _shards():
    from qaclims.qape.pairs import shard_names

    return shard_names(QAPE["n_shards"])


SHARDS = _shards()


# --- cluster resources that follow the run's size -------------------------------------------
# Runtimes are given at VOC scale (the authors' settings) and scaled by the number of images
# the config declares, per shard where a rule runs per shard; memory of the training rules
# follows batch x crop area. Both double on each retry (`retries` in the SLURM profile), so a
# job killed for time or memory gets more on its second attempt; runtimes stop at the partition's
# limit (compute.max_runtime_minutes), where the training rules resume from their checkpoints.
VOC_IMAGES = 12031  # train_aug + val


def dataset_images():
    """Images of the configured dataset (synthetic: as generated; real: the known split sizes)."""
    if DATASET["source"] == "synthetic":
        return DATASET["synthetic"]["n_train"] + DATASET["synthetic"]["n_val"]
    return {"voc12": VOC_IMAGES, "coco14": 123287}[DATASET["source"]]


def runtime_limit(minutes, attempt=1):
    """``minutes`` times the attempt, capped at compute.max_runtime_minutes, as a unit string."""
    from qaclims.cluster import retry_minutes

    return f"{retry_minutes(minutes, attempt, COMPUTE['max_runtime_minutes'])}m"


def scaled_runtime(voc_minutes, per_shard=False, floor=15):
    """Resource callable: ``voc_minutes`` scaled by dataset size (and 1/n_shards), at least
    ``floor`` minutes, times the attempt (capped) - as a unit string."""

    def runtime(wildcards, attempt):
        share = dataset_images() / VOC_IMAGES / (QAPE["n_shards"] if per_shard else 1)
        return runtime_limit(max(floor, int(voc_minutes * share)), attempt)

    return runtime


def training_mem_mb(base_mb, mb_per_512_crop, settings):
    """Resource callable: ``base_mb`` + batch x (crop / 512)^2 x ``mb_per_512_crop``, times the
    attempt. ``settings``: a dict with batch_size and crop_size, or a function of wildcards."""

    def mem_mb(wildcards, attempt):
        s = settings(wildcards) if callable(settings) else settings
        per_image = (s["crop_size"] / 512) ** 2 * mb_per_512_crop
        return int(base_mb + s["batch_size"] * per_image) * attempt

    return mem_mb


def gpus_for(rule_name):
    """GPUs a rule asks the scheduler for (config compute.gpus; 0 on the CPU demo)."""
    return COMPUTE["gpus"].get(rule_name, 0)


def vqa_model_path():
    """Where the VQA weights are: the toy model's folder, a local folder, or a hub id."""
    source = MODELS["vqa"]["source"]
    return f"{TOY}/blip_vqa" if source == "toy" else source


def weights_input(paths):
    """Weight files/folders that are rule outputs (toy, fetched) or exist; hub ids are not files."""
    fetched = {asset_output(n)[0] for n in FETCH_ASSETS}
    return [p for p in paths if p and (p.startswith(f"{TOY}/") or p in fetched or Path(p).exists())]


def vqa_model_input(wildcards):
    return weights_input([vqa_model_path()])


def clip_model_settings():
    """arch / pretrained / mask_checkpoint for load_clip; toy resolves to the trained files."""
    clip = dict(MODELS["clip"])
    if clip["arch"] == "toy":
        clip.update(arch=f"{TOY}/clip/open_clip_config.json", pretrained=None,
                    mask_checkpoint=f"{TOY}/clip/ovseg_toy_clip.pth")
    return clip


def clip_model_input(wildcards):
    if MODELS["clip"]["arch"] == "toy":
        return [f"{TOY}/clip"]
    return weights_input([MODELS["clip"]["pretrained"], MODELS["clip"]["mask_checkpoint"]])


def data_path(name):
    """A file of the dataset stage, e.g. data_path('manifest.parquet')."""
    return f"{RESULTS}/data/{name}"


def dataset_root_input(wildcards):
    """The generated tree for the synthetic source; real datasets are read in place."""
    if DATASET["source"] == "synthetic":
        return DATASET["root"]
    return []


def final_targets():
    targets = [data_path("manifest.parquet"), data_path("stats.json")]
    if MODELS["vqa"]["source"] == "toy":
        targets.append(f"{TOY}/blip_vqa_metrics.json")
    if MODELS["clip"]["arch"] == "toy":
        targets.append(f"{TOY}/clip_metrics.json")
    targets += [qape_path("corpus_stats.json"), qape_path("text_features.h5")]
    targets += [*cam_targets(), summary_path("cam_miou.md"), *irn_targets()]
    targets += seg_targets()
    return targets
