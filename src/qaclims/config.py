"""Config loading: JSON-schema validation (draft 2020-12) with defaults filled in.

The Snakefile validates the merged config before any job runs. Errors name the offending key by
its dotted path and say what was expected, e.g.::

    config key 'dataset.on_bad_image': expected one of ['error', 'skip'], got 'ignore'

Defaults come from the schema (every key has a ``description`` and, where optional, a
``default``), so the schema is the single place that documents the configuration.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the expected value."""


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def fill_defaults(instance: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``instance`` with schema defaults filled in, recursively.

    A missing object-valued key is created when its sub-schema has properties with defaults,
    so nested defaults apply even when the user omits the whole section.
    """
    out = copy.deepcopy(instance)
    _fill(out, schema)
    return out


def _fill(node: Any, schema: Mapping[str, Any]) -> None:
    if not isinstance(node, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in node:
            if "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            elif sub.get("type") == "object" and "properties" in sub:
                node[key] = {}
            else:
                continue
        _fill(node[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for key, value in node.items():
            if key not in schema.get("properties", {}):
                _fill(value, extra)


def canonical_order(node: Any, schema: Mapping[str, Any]) -> Any:
    """Mappings rebuilt in schema property order (then other keys sorted), recursively.

    Rule params are compared by their text: without this, writing out a default in the config
    (or reordering keys) would look like a change and rerun a rule whose inputs did not change.
    """
    if not isinstance(node, dict):
        return node
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    keys = [k for k in props if k in node] + sorted(k for k in node if k not in props)
    return {k: canonical_order(node[k], props.get(k, extra if isinstance(extra, Mapping) else {}))
            for k in keys}


def _dotted(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<root>"


def _expected(error: Any) -> str:
    validator, value = error.validator, error.validator_value
    if validator == "enum":
        return f"one of {list(value)}"
    if validator == "type":
        return f"a value of type {value}"
    if validator in ("minimum", "exclusiveMinimum"):
        return f"a number {'>=' if validator == 'minimum' else '>'} {value}"
    if validator in ("maximum", "exclusiveMaximum"):
        return f"a number {'<=' if validator == 'maximum' else '<'} {value}"
    if validator == "minItems":
        return f"at least {value} item(s)"
    if validator == "pattern":
        return f"a string matching {value!r}"
    return f"{validator} {value!r}"


def validate(instance: dict[str, Any], schema: Mapping[str, Any], what: str = "config") -> dict:
    """Fill defaults, then validate; raise :class:`ConfigError` listing every problem."""
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema)
    filled = fill_defaults(instance or {}, schema)
    errors = sorted(
        Draft202012Validator(schema).iter_errors(filled), key=lambda e: list(e.absolute_path)
    )
    if not errors:
        return canonical_order(filled, schema)
    lines = []
    for err in errors:
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            unknown = sorted(set(err.instance) - set(allowed))
            for key in unknown:
                where = _dotted([*err.absolute_path, key])
                lines.append(f"{what} key '{where}': unknown key; allowed here: {allowed}")
        elif err.validator == "required":
            missing = [k for k in err.validator_value if k not in err.instance]
            for key in missing:
                where = _dotted([*err.absolute_path, key])
                lines.append(f"{what} key '{where}': required but missing")
        else:
            lines.append(
                f"{what} key '{_dotted(err.absolute_path)}': expected {_expected(err)}, "
                f"got {err.instance!r}"
            )
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def check_consistency(config: Mapping[str, Any], base: Path) -> None:
    """Checks a schema cannot express: related values agree, real dataset roots exist."""
    dataset = config["dataset"]
    syn = dataset["synthetic"]
    if syn["min_size"] > syn["max_size"]:
        raise ConfigError(
            f"config key 'dataset.synthetic.min_size': expected a value <= "
            f"dataset.synthetic.max_size ({syn['max_size']}), got {syn['min_size']}"
        )
    if dataset["source"] != "synthetic":
        root = base / dataset["root"]
        if not root.is_dir():
            raise ConfigError(
                f"config key 'dataset.root': expected an existing {dataset['source']} directory, "
                f"got {dataset['root']!r} ({root} does not exist). See README 'Real datasets'."
            )


#: Experiment names the workflow uses for itself (result folders next to the experiments').
RESERVED_EXPERIMENTS = ("baseline", "gt", "summary", "data", "qape", "logs", "benchmarks")


def check_stage_settings(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Build every stage's settings object (their checks name the dotted key), including each
    experiment's and ablation's overrides, so a bad value fails before any job runs."""
    from qaclims.cam.settings import (
        CamTrainSettings,
        ExportSettings,
        RitcSettings,
        ThresholdSettings,
    )
    from qaclims.irn.settings import irn_settings

    cam = config["cam"]
    try:
        CamTrainSettings.from_dict(cam["train_cam"])
        RitcSettings.from_dict(cam["ritc"])
        ExportSettings.from_dict(cam["export"])
        ThresholdSettings.from_dict(cam["threshold"])
        irn_settings(config["irn"])
        seen: dict[str, str] = {}
        corpus_schema = schema["properties"]["qape"]["properties"]["corpus"]
        for section in ("experiments", "ablations"):
            for name, spec in (config.get(section) or {}).items():
                where = f"{section}.{name}"
                if name in RESERVED_EXPERIMENTS:
                    raise ValueError(f"{where}: the name {name!r} is reserved "
                                     f"({list(RESERVED_EXPERIMENTS)})")
                if name in seen:
                    raise ValueError(f"{where}: also defined in {seen[name]}.{name}")
                seen[name] = section
                spec = spec or {}
                RitcSettings.from_dict({**cam["ritc"], **spec.get("ritc", {})},
                                       prefix=f"{where}.ritc")
                validate({**config["qape"]["corpus"], **spec.get("corpus", {})}, corpus_schema,
                         what=f"{where}.corpus")
        check_seeds(config)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"invalid configuration: {err}") from None


SEED_SUFFIX = re.compile(r"-seed\d+$")
"""How a run of an experiment with a seed offset > 0 is named: ``qa_clims-seed2``."""


def check_seeds(config: Mapping[str, Any]) -> None:
    """``seeds`` holds 0 (the configured run), and no experiment name looks like a seeded run."""
    seeds = list(config.get("seeds") or [0])
    if 0 not in seeds:
        raise ValueError(f"seeds: expected a list holding 0 (the configured run under the plain "
                         f"experiment names), got {seeds}")
    for section in ("experiments", "ablations"):
        for name in config.get(section) or {}:
            if SEED_SUFFIX.search(name):
                raise ValueError(f"{section}.{name}: names ending in '-seed<N>' are the seeded "
                                 f"runs' (seeds); rename the experiment")
def dataset_splits(source: str, root: Path) -> set[str]:
    """The split names ``prepare_dataset`` writes for this dataset (labelled ones; an image
    without labels goes to ``{split}_unlabelled``), known before the dataset is read."""
    if source == "coco14":
        from qaclims.data.coco import COCO_SPLITS

        return set(COCO_SPLITS)
    from qaclims.data.voc import SPLIT_FILES

    # train_aug is derived from train when the tree has no list for it; test only where listed
    # (the synthetic generator writes train and val)
    lists = root / "ImageSets" / "Segmentation"
    listed = {n for n in SPLIT_FILES if (lists / f"{n}.txt").is_file()}
    return {"train", "val", "train_aug"} | (listed if source == "voc12" else set())


def check_splits(config: Mapping[str, Any], base: Path) -> None:
    """Every split a rule will select must be one the dataset has: a typo would otherwise
    surface as an empty selection in a job hours into the run."""
    dataset = config["dataset"]
    known = dataset_splits(dataset["source"], base / dataset["root"])
    allowed = known | {f"{s}_unlabelled" for s in known}
    named = [(f"dataset.splits.{k}", v) for k, v in dataset["splits"].items()]
    named += [(f"qape.splits[{i}]", v) for i, v in enumerate(config["qape"].get("splits") or [])]
    test_split = ((config.get("seg") or {}).get("predict") or {}).get("test_split")
    if test_split not in (None, "auto"):
        named.append(("seg.predict.test_split", test_split))
    for key, split in named:
        if split not in allowed:
            raise ConfigError(
                f"config key '{key}': expected a split of the {dataset['source']} dataset at "
                f"{dataset['root']!r} ({sorted(known)}), got {split!r}"
            )


def resolve_path(path: str | Path, base: Path) -> Path:
    """A path from the config: relative to ``base`` (the working directory) when it exists
    there, else to the repository (as the workflow's ``repo_file``)."""
    p = Path(path)
    if p.is_absolute():
        return p
    return base / p if (base / p).exists() else SCHEMA_DIR.parents[1] / p


def check_questions(config: Mapping[str, Any], base: Path) -> None:
    """Load and check the questions file now (a template without its placeholder must stop
    ``snakemake -n``, not a VQA job an hour in); :class:`QuestionsError` names the file."""
    from qaclims.qape.questions import load_questions

    load_questions(resolve_path(config["questions"], base))


def validate_config(config: dict[str, Any], base: str | Path = ".") -> dict[str, Any]:
    """Validate the pipeline config against workflow/schemas/config.schema.yaml, then what a
    schema cannot say: related values, dataset roots and splits, the questions file, and every
    stage's settings."""
    schema = load_yaml(SCHEMA_DIR / "config.schema.yaml")
    filled = validate(config, schema)
    check_consistency(filled, Path(base))
    check_splits(filled, Path(base))
    check_questions(filled, Path(base))
    check_stage_settings(filled, schema)
    return filled
