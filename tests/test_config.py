"""Config validation: defaults filled from the schema, errors name the key and the expectation."""

import copy
from pathlib import Path

import pytest

from qaclims.config import ConfigError, fill_defaults, load_yaml, validate, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_config() -> dict:
    return load_yaml(ROOT / "config" / "config.yaml")


def test_default_config_is_valid_and_filled(default_config: dict) -> None:
    config = validate_config(default_config, base=ROOT)
    assert config["dataset"]["check_images"] is True  # filled from the schema
    assert config["questions"] == "config/questions.yaml"


def test_minimal_config_gets_every_default() -> None:
    minimal = {"dataset": {"name": "x", "source": "synthetic", "root": "r"}}
    config = validate_config(minimal, base=ROOT)
    assert config["dataset"]["synthetic"]["n_train"] == 1000
    assert config["dataset"]["splits"] == {"train": "train_aug", "cam_eval": "train",
                                           "seg_eval": "val"}


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("dataset", "on_bad_image"), "ignore", "'dataset.on_bad_image': expected one of"),
        (("dataset", "synthetic", "n_train"), "many", "'dataset.synthetic.n_train': expected a "
                                                      "value of type integer"),
        (("dataset", "synthetic", "n_val"), 0, "'dataset.synthetic.n_val': expected a number >= 1"),
        (("dataset", "name"), "a/b", "'dataset.name': expected a string matching"),
        (("dataset", "colour"), "red", "'dataset.colour': unknown key"),
        (("datset",), {}, "'datset': unknown key"),
    ],
)
def test_bad_values_name_the_key(default_config, path, value, expected) -> None:
    config = copy.deepcopy(default_config)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_config(config, base=ROOT)


def test_missing_required_key(default_config) -> None:
    del default_config["dataset"]["source"]
    with pytest.raises(ConfigError, match="'dataset.source': required but missing"):
        validate_config(default_config, base=ROOT)


def test_missing_real_dataset_root_is_named(tmp_path) -> None:
    config = load_yaml(ROOT / "config" / "voc12.yaml")
    config["dataset"]["root"] = "no/such/VOC2012"
    with pytest.raises(ConfigError, match="'dataset.root'.*no/such/VOC2012"):
        validate_config(config, base=tmp_path)
    (tmp_path / "no/such/VOC2012").mkdir(parents=True)
    assert validate_config(config, base=tmp_path)["dataset"]["source"] == "voc12"


@pytest.mark.parametrize("name", ["voc12", "coco14"])
def test_real_configs_are_schema_valid(name, tmp_path) -> None:
    config = load_yaml(ROOT / "config" / f"{name}.yaml")
    (tmp_path / config["dataset"]["root"]).mkdir(parents=True)
    validate_config(config, base=tmp_path)


def test_every_schema_key_is_described() -> None:
    schema = load_yaml(ROOT / "workflow" / "schemas" / "config.schema.yaml")

    def walk(node, where):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"schema key {where}{key} has no description"
            walk(sub, f"{where}{key}.")

    walk(schema, "")


def test_fill_defaults_does_not_mutate_and_keeps_user_values() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "integer", "default": 1},
        "b": {"type": "object", "properties": {"c": {"type": "string", "default": "x"}}},
    }}
    user = {"b": {"c": "mine"}}
    filled = fill_defaults(user, schema)
    assert filled == {"a": 1, "b": {"c": "mine"}}
    assert user == {"b": {"c": "mine"}}
    assert validate({}, schema) == {"a": 1, "b": {"c": "x"}}


def test_inconsistent_sizes_are_named(default_config) -> None:
    default_config["dataset"]["synthetic"].update(min_size=200, max_size=150)
    with pytest.raises(ConfigError, match="'dataset.synthetic.min_size'.*<= .*150"):
        validate_config(default_config, base=ROOT)


@pytest.mark.parametrize(("key", "module", "cls"), [
    ("vqa", "qaclims.vlp.train_toy_vqa", "ToyVqaSettings"),
    ("clip", "qaclims.vlp.train_toy_clip", "ToyClipSettings"),
    ("backbone", "qaclims.vlp.train_toy_backbone", "ToyBackboneSettings"),
])
def test_toy_schema_matches_training_settings(key, module, cls) -> None:
    """The schema documents every toy-training knob with the same default the code uses."""
    import dataclasses
    import importlib

    settings = getattr(importlib.import_module(module), cls)
    schema = load_yaml(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    props = schema["properties"]["models"]["properties"]["toy"]["properties"][key]["properties"]
    fields = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
              for f in dataclasses.fields(settings)}
    assert set(props) == set(fields)
    for name, default in fields.items():
        expected = list(default) if isinstance(default, tuple) else default
        assert props[name]["default"] == expected, name


def test_key_order_and_spelled_out_defaults_do_not_change_the_config() -> None:
    """Rule params compare by text: the same values must give the same filled config."""
    base = {"dataset": {"name": "x", "source": "synthetic", "root": "r"}}
    spelled = {"dataset": {"root": "r", "source": "synthetic", "name": "x",
                           "synthetic": {"n_val": 250, "seed": 0}},
               "models": {"toy": {"clip": {"max_minutes": 15.0, "lr": 0.002}}}}
    a, b = validate_config(base, base=ROOT), validate_config(spelled, base=ROOT)
    assert a == b and repr(a) == repr(b)


@pytest.mark.parametrize(("path", "module", "cls"), [
    (("cam", "train_cam"), "qaclims.cam.settings", "CamTrainSettings"),
    (("cam", "ritc"), "qaclims.cam.settings", "RitcSettings"),
    (("cam", "export"), "qaclims.cam.settings", "ExportSettings"),
    (("cam", "threshold"), "qaclims.cam.settings", "ThresholdSettings"),
    (("irn", "ir_labels"), "qaclims.irn.settings", "IrLabelSettings"),
    (("irn", "train"), "qaclims.irn.settings", "IrnTrainSettings"),
    (("irn", "random_walk"), "qaclims.irn.settings", "RandomWalkSettings"),
])
def test_stage_schema_matches_settings(path, module, cls) -> None:
    """Every CAM/IRN knob is in the schema with the code's default, and the filled config
    section builds the settings object unchanged (defaults agree end to end)."""
    import dataclasses
    import importlib

    settings = getattr(importlib.import_module(module), cls)
    schema = load_yaml(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    props = schema["properties"][path[0]]["properties"][path[1]]["properties"]
    fields = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
              for f in dataclasses.fields(settings)}
    assert set(props) == set(fields)
    filled = validate_config({"dataset": {"name": "x", "source": "synthetic", "root": "r"}},
                             base=ROOT)[path[0]][path[1]]
    assert settings.from_dict(filled) == settings()


def test_bad_stage_values_are_named() -> None:
    cfg = {"dataset": {"name": "x", "source": "synthetic", "root": "r"},
           "cam": {"ritc": {"brc_variant": "papr"}}}
    with pytest.raises(ConfigError, match="cam.ritc.brc_variant"):
        validate_config(cfg, base=ROOT)
    cfg = {"dataset": {"name": "x", "source": "synthetic", "root": "r"},
           "experiments": {"mine": {"ritc": {"tua": 0.5}}}}
    with pytest.raises(ConfigError, match="experiments.mine.ritc.tua"):
        validate_config(cfg, base=ROOT)
