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
               "models": {"toy": {"clip": {"max_minutes": 60.0, "lr": 0.002}}}}
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


# -- issue 21 item 6: plain names, minimums, splits and questions checked before any job -------
def _minimal(**sections) -> dict:
    return {"dataset": {"name": "x", "source": "synthetic", "root": "r"}, **sections}


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"dataset": {"name": "..", "source": "synthetic", "root": "r"}}, "dataset.name"),
        ({"dataset": {"name": ".hidden", "source": "synthetic", "root": "r"}}, "dataset.name"),
        (_minimal(models={"toy_name": "../../elsewhere"}), "models.toy_name"),
        (_minimal(models={"toy_name": "a/b"}), "models.toy_name"),
        (_minimal(experiments={"../escape": {}}), "experiments"),
        (_minimal(ablations={"a/b": {}}), "ablations"),
        (_minimal(seg={"gt_experiment": ".."}), "seg.gt_experiment"),
    ],
)
def test_names_that_become_folders_must_be_plain(config, key) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}': expected a string matching"):
        validate_config(config, base=ROOT)


def _numeric_without_minimum(node, path=()):
    if not isinstance(node, dict):
        return
    types = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
    if {"integer", "number"} & set(types) and not {"minimum", "exclusiveMinimum"} & set(node):
        yield ".".join(path)
    for key, sub in node.get("properties", {}).items():
        yield from _numeric_without_minimum(sub, (*path, key))
    yield from _numeric_without_minimum(node.get("items"), (*path, "[]"))
    for key, sub in node.get("$defs", {}).items():
        yield from _numeric_without_minimum(sub, ("$defs", key))


def test_every_numeric_key_has_a_minimum() -> None:
    schema = load_yaml(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    assert list(_numeric_without_minimum(schema)) == []


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"cam": {"train_cam": {"batch_size": 0}}}, "'cam.train_cam.batch_size': expected a "
                                                    "number >= 1, got 0"),
        ({"cam": {"ritc": {"lr": 0}}}, "'cam.ritc.lr': expected a number > 0, got 0"),
        ({"irn": {"train": {"weight_decay": -1e-4}}}, "'irn.train.weight_decay': expected a "
                                                      "number >= 0"),
        ({"models": {"toy": {"vqa": {"max_minutes": 0}}}}, "'models.toy.vqa.max_minutes'"),
    ],
)
def test_numbers_below_their_minimum_are_named(section, expected) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        validate_config(_minimal(**section), base=ROOT)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ({"dataset": {"name": "x", "source": "synthetic", "root": "r",
                      "splits": {"cam_eval": "trian"}}}, "dataset.splits.cam_eval", "trian"),
        ({"qape": {"splits": ["train_aug", "vla"]}}, r"qape.splits\[1\]", "vla"),
        ({"seg": {"predict": {"test_split": "test"}}}, "seg.predict.test_split", "test"),
    ],
)
def test_split_names_are_checked_against_the_dataset(section, key, value) -> None:
    config = {**_minimal(), **section}
    with pytest.raises(ConfigError, match=rf"'{key}': expected a split of the synthetic dataset "
                       rf"at 'r' \(\['train', 'train_aug', 'val'\]\), got '{value}'"):
        validate_config(config, base=ROOT)


def test_voc_splits_follow_the_lists_on_disk(tmp_path) -> None:
    config = load_yaml(ROOT / "config" / "voc12.yaml")
    lists = tmp_path / config["dataset"]["root"] / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    config.setdefault("seg", {}).setdefault("predict", {})["test_split"] = "test"
    with pytest.raises(ConfigError, match="'seg.predict.test_split'.*got 'test'"):
        validate_config(config, base=tmp_path)
    (lists / "test.txt").write_text("2008_000001\n")
    assert validate_config(config, base=tmp_path)["seg"]["predict"]["test_split"] == "test"


def test_questions_file_is_checked_when_the_config_is(tmp_path) -> None:
    bad = tmp_path / "questions.yaml"
    text = (ROOT / "config" / "questions.yaml").read_text()
    bad.write_text(text.replace("kind of {} is", "kind of thing is"))  # no placeholder
    with pytest.raises(ConfigError, match=rf"(?s){bad}.*fg_kind.*placeholder"):
        validate_config(_minimal(questions=str(bad)), base=ROOT)
    with pytest.raises(ConfigError, match="not found.*nope.yaml"):
        validate_config(_minimal(questions="nope.yaml"), base=tmp_path)
