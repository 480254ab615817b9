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


def data_path(name):
    """A file of the dataset stage, e.g. data_path('manifest.parquet')."""
    return f"{RESULTS}/data/{name}"


def dataset_root_input(wildcards):
    """The generated tree for the synthetic source; real datasets are read in place."""
    if DATASET["source"] == "synthetic":
        return DATASET["root"]
    return []


def final_targets():
    return [
        data_path("manifest.parquet"),
        data_path("stats.json"),
    ]
