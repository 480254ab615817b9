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


def repo_file(path):
    """A path from the config: relative to the working directory, else to the repository."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(Path(workflow.basedir) / p)


QAPE = config["qape"]
COMPUTE = config["compute"]


def qape_path(name):
    """A file of the QAPE stage (shared by every experiment of the dataset)."""
    return f"{RESULTS}/qape/{name}"


def qape_splits():
    return QAPE["splits"] or [DATASET["splits"]["train"]]


def _shards():
    from qaclims.qape.pairs import shard_names

    return shard_names(QAPE["n_shards"])


SHARDS = _shards()


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
    return targets
