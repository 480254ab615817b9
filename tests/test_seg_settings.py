"""The seg config section: schema <-> settings dataclasses <-> DeepLabSettings stay in step,
bad values fail naming the dotted key, experiment names are checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qaclims.config import SCHEMA_DIR, ConfigError, load_yaml, validate
from qaclims.seg.predict import CrfParams
from qaclims.seg.settings import (
    TRAIN_ONLY_KEYS,
    SegPredictSettings,
    SegTrainSettings,
    seg_settings,
    voc_test_split,
)
from qaclims.seg.train import DeepLabSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_yaml(SCHEMA_DIR / "config.schema.yaml")


def _defaults(section: dict) -> dict:
    return {k: v.get("default") for k, v in section["properties"].items()}


def _norm(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def test_schema_mirrors_the_settings_and_deeplab_defaults(schema: dict) -> None:
    seg = schema["properties"]["seg"]["properties"]
    train_fields = [f.name for f in dataclasses.fields(SegTrainSettings)]
    assert list(seg["train"]["properties"]) == train_fields
    assert _defaults(seg["train"]) == SegTrainSettings().to_dict()
    # seg.train = DeepLabSettings (paper defaults) minus what the workflow resolves
    deeplab = {f.name: f.default for f in dataclasses.fields(DeepLabSettings)
               if f.name not in ("n_classes", "init", "device")}
    ours = {k: v for k, v in SegTrainSettings().to_dict().items() if k not in TRAIN_ONLY_KEYS}
    assert ours == _norm(deeplab)
    predict_fields = [f.name for f in dataclasses.fields(SegPredictSettings)]
    assert list(seg["predict"]["properties"]) == predict_fields
    crf = seg["predict"]["properties"]["crf_params"]
    assert _defaults(crf) == dataclasses.asdict(CrfParams())
    assert SegPredictSettings.from_dict({}).crf_params == dataclasses.asdict(CrfParams())
    gpus = schema["properties"]["compute"]["properties"]["gpus"]["properties"]
    assert {"train_deeplab", "predict_deeplab"} <= set(gpus)


def test_schema_defaults_parse_and_bad_values_name_the_key(schema: dict) -> None:
    seg_schema = schema["properties"]["seg"]
    filled = validate({}, seg_schema, what="seg")
    s = seg_settings(filled, ["qa_clims"])
    assert s.experiments == ("qa_clims",) and s.gt_experiment == "gt"
    assert s.train == SegTrainSettings() and s.predict.crf and s.predict.test_split == "auto"
    with pytest.raises(ConfigError, match="train.loss"):
        validate({"train": {"loss": "dice"}}, seg_schema, what="seg")
    with pytest.raises(ConfigError, match="predict.crf_params"):
        validate({"predict": {"crf_params": {"iters": 3}}}, seg_schema, what="seg")


@pytest.mark.parametrize(("section", "message"), [
    ({"train": {"crop": 0}}, r"seg\.train\.crop: expected an integer >= 1, got 0"),
    ({"train": {"iters": 5}}, r"seg\.train\.iters: unknown key"),
    ({"train": {"arch": "vgg16"}}, r"seg\.train\.arch: expected one of"),
    ({"train": {"scales": []}}, r"seg\.train\.scales: expected a list of at least 1"),
    ({"train": {"mean_bgr": [1, 2]}}, r"seg\.train\.mean_bgr"),
    ({"train": {"loss": "dice"}}, r"seg\.train\.loss: expected one of \['ce', 'balanced'\]"),
    ({"train": {"lr": 0}}, r"seg\.train\.lr: expected a number > 0"),
    ({"predict": {"crf_params": {"iters": 3}}}, r"seg\.predict\.crf_params\.iters: unknown"),
    ({"predict": {"crf_params": {"iterations": 0}}}, r"seg\.predict\.crf_params: CRF iter"),
    ({"predict": {"competition": "comp4"}}, r"seg\.predict\.competition"),
    ({"predict": {"flip": "yes"}}, r"seg\.predict\.flip: expected true or false"),
    ({"predict": {"test_split": "a b"}}, r"seg\.predict\.test_split"),
    ({"bogus": 1}, r"seg\.bogus: unknown key"),
    ({"experiments": ["nope"]}, r"seg\.experiments: expected names from"),
    ({"experiments": ["gt", "gt"]}, r"seg\.experiments: expected names without repeats"),
    ({"gt_experiment": "qa_clims"}, r"seg\.gt_experiment: expected a name that is not"),
    ({"gt_experiment": "frc_only"}, r"seg\.gt_experiment: expected a name that is not"),
])
def test_bad_section_names_the_dotted_key(section: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seg_settings(section, ["qa_clims"], ["frc_only"])


def test_experiments_default_and_allowed_names() -> None:
    s = seg_settings({}, ["qa_clims", "other"], ["frc_only"])
    assert s.experiments == ("qa_clims", "other")  # not the baseline, not the ablations
    s = seg_settings({"experiments": ["baseline", "frc_only", "upper"],
                      "gt_experiment": "upper"}, ["qa_clims"], ["frc_only"])
    assert s.experiments == ("baseline", "frc_only", "upper")
    assert s.trains_on_gt("upper") and not s.trains_on_gt("baseline")


def test_train_settings_become_deeplab_settings() -> None:
    t = SegTrainSettings.from_dict({"arch": "resnet18", "weights": "toy", "scales": [1.0],
                                    "threads": 3, "iterations": 7})
    d = t.deeplab_settings(7, "resources/x.pth", "cpu")
    assert isinstance(d, DeepLabSettings)
    assert (d.n_classes, d.init, d.device, d.arch, d.iterations) == (
        7, "resources/x.pth", "cpu", "resnet18", 7)
    assert d.scales == (1.0,) and d.crop == 321 and d.loss == "balanced"
    assert t.to_dict()["scales"] == [1.0]  # JSON-ready for params
    assert t.replace(crop=65).crop == 65


def test_predict_crf_config() -> None:
    p = SegPredictSettings.from_dict({"crf_params": {"iterations": 3}})
    assert p.crf_config() == CrfParams(iterations=3)
    assert p.to_dict()["crf_params"]["bi_xy_std"] == 67.0
    assert SegPredictSettings.from_dict({"crf": False}).crf_config() is None


def test_voc_test_split(tmp_path: Path) -> None:
    assert voc_test_split("auto", "voc12", tmp_path) is None
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_000001\n")
    assert voc_test_split("auto", "voc12", tmp_path) == "test"
    assert voc_test_split("auto", "synthetic", tmp_path) is None
    assert voc_test_split("auto", "coco14", tmp_path) is None
    assert voc_test_split(None, "voc12", tmp_path) is None
    assert voc_test_split("mytest", "synthetic", tmp_path) == "mytest"


@pytest.mark.parametrize("name", ["config.yaml", "tiny.yaml", "voc12.yaml", "coco14.yaml"])
def test_config_files_seg_sections_parse(schema: dict, name: str) -> None:
    config = load_yaml(ROOT / "config" / name)
    filled = validate(config.get("seg") or {}, schema["properties"]["seg"], what="seg")
    experiments = list(config.get("experiments") or {"qa_clims": {}})
    ablations = list(schema["properties"]["ablations"]["default"])
    s = seg_settings(filled, experiments, ablations)
    assert s.experiments
