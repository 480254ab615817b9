"""Every knob of the DeepLab stage (method.md 10) as frozen dataclasses, built from ``seg:``.

Config layout (workflow/schemas/config.schema.yaml mirrors these fields one to one)::

    seg:
      experiments: [qa_clims, gt]   # what DeepLab trains on: CAM experiments' pseudo masks, or
      gt_experiment: gt             #   the ground truth (the upper bound) under this name
      train:   {<SegTrainSettings fields>}    # train_deeplab
      predict: {<SegPredictSettings fields>}  # predict_deeplab

``from_dict`` rejects unknown keys and bad values naming the dotted key (``seg.train.crop:
expected an integer >= 1, got 0``), so a typo fails when the workflow is parsed, before any job.
``to_dict`` is the JSON-ready form that travels through the rules' ``params``.

Defaults are the paper setting (CLIMS ``voc12_imagenet_pretrained.yaml`` + ``main_v2.py``, i.e.
:class:`qaclims.seg.train.DeepLabSettings`'s defaults; ``tests/test_seg_settings.py`` keeps them
equal); the demo config trains a small network on CPU.

=========================== ================= =================================================
key                         default (paper)   note
=========================== ================= =================================================
train.arch / weights        resnet101 /       the authors init from the caffe-format
                            imagenet          ``deeplabv1_resnet101-imagenet.pth`` (a file path)
train.batch_size, iter_size 10, 2             gradient accumulation; global batch under DDP
train.iterations            30000             the paper's VOC setting (COCO: 100k)
train.crop / scales         321 / 0.5..2.0    random scale, pad with the mean, random crop
train.loss                  balanced          ``criterion_balance``; ``ce`` = COCO-init config
train.lr, momentum, wd      2.5e-4, 0.9, 5e-4 ASPP weights 10x, ASPP biases 20x (wd 0)
train.poly_power            0.9               lr recomputed every ``lr_decay_every`` (10) its
predict.flip                false             not in the authors' test; averages the softmax
predict.crf                 true              10 its, gaussian 1/3, bilateral 67/3/4
predict.scales              null              the MSC scales the model trained with (0.5, 0.75)
=========================== ================= =================================================

Result-neutral knobs: ``train.threads`` (torch threads; None: the rule's), ``save_every``,
``log_every``, ``num_workers`` (left out of the resume hash by ``train_deeplab``) and
``predict.crf_workers`` (CRF processes; None: the rule's threads).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qaclims.cam.settings import ARCHS, _fail, _is_int, _is_num, _Settings

__all__ = ["SegPredictSettings", "SegSettings", "SegTrainSettings", "seg_settings",
           "voc_test_split"]

LOSSES = ("ce", "balanced")
COMPETITIONS = ("comp5", "comp6")
#: seg.train keys that are not DeepLabSettings fields (resolved by the workflow / the rule).
TRAIN_ONLY_KEYS = ("weights", "threads")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_numbers(prefix: str, key: str, values: Any, *, positive: bool = True,
                   integers: bool = False, min_len: int = 1) -> None:
    kind = "integers" if integers else "numbers"
    ok = isinstance(values, list | tuple) and len(values) >= min_len and all(
        (_is_int(v) if integers else _is_num(v)) and (v > 0 or not positive) for v in values)
    if not ok:
        _fail(prefix, key, f"a list of at least {min_len} {'positive ' if positive else ''}"
              f"{kind}", values)


@dataclass(frozen=True)
class SegTrainSettings(_Settings):
    """``seg.train``: :class:`~qaclims.seg.train.DeepLabSettings` without ``n_classes`` (from
    classes.json), ``init`` (from ``weights``) and ``device`` (``compute.device``), plus
    ``weights`` and ``threads``.

    ``weights``: ``imagenet`` (torchvision's ImageNet file), ``toy`` (the demo's toy backbone of
    ``arch``), a weights file (torchvision or caffe format, e.g. the authors'
    ``deeplabv1_resnet101-imagenet.pth``) or null (random init; set ``bn_calibration_batches``).
    """

    arch: str = "resnet101"
    weights: str | None = "imagenet"
    caffe_layout: bool | None = None
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)
    msc_scales: tuple[float, ...] = (0.5, 0.75)
    batch_size: int = 10
    iter_size: int = 2
    iterations: int = 30000
    crop: int = 321
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    flip: bool = True
    mean_bgr: tuple[float, float, float] = (104.008, 116.669, 122.675)
    input_norm: str = "auto"
    loss: str = "balanced"
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aspp_weight_lr_mult: float = 10.0
    aspp_bias_lr_mult: float = 20.0
    poly_power: float = 0.9
    lr_decay_every: int = 10
    bn_calibration_batches: int = 0
    seed: int = 0
    save_every: int = 1000
    log_every: int = 20
    num_workers: int = 0
    threads: int | None = None

    _prefix: ClassVar[str] = "seg.train"
    _tuple_fields: ClassVar[tuple[str, ...]] = ("aspp_rates", "msc_scales", "scales", "mean_bgr")

    def check(self, prefix: str) -> None:
        if self.arch not in ARCHS:
            _fail(prefix, "arch", f"one of {list(ARCHS)}", self.arch)
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            _fail(prefix, "weights", "'imagenet', 'toy', a weights file or null", self.weights)
        if self.caffe_layout is not None and not isinstance(self.caffe_layout, bool):
            _fail(prefix, "caffe_layout", "true, false or null", self.caffe_layout)
        for key in ("batch_size", "iter_size", "iterations", "crop", "lr_decay_every",
                    "save_every", "log_every"):
            v = getattr(self, key)
            if not _is_int(v) or v < 1:
                _fail(prefix, key, "an integer >= 1", v)
        for key in ("bn_calibration_batches", "seed", "num_workers"):
            v = getattr(self, key)
            if not _is_int(v) or v < 0:
                _fail(prefix, key, "an integer >= 0", v)
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            _fail(prefix, "threads", "null or an integer >= 1", self.threads)
        _check_numbers(prefix, "aspp_rates", self.aspp_rates, integers=True)
        _check_numbers(prefix, "msc_scales", self.msc_scales, min_len=0)
        _check_numbers(prefix, "scales", self.scales)
        _check_numbers(prefix, "mean_bgr", self.mean_bgr, positive=False, min_len=3)
        if len(self.mean_bgr) != 3:
            _fail(prefix, "mean_bgr", "3 numbers (B, G, R)", list(self.mean_bgr))
        if self.input_norm not in ("auto", "caffe", "imagenet"):
            _fail(prefix, "input_norm", "'auto', 'caffe' or 'imagenet'", self.input_norm)
        if not isinstance(self.flip, bool):
            _fail(prefix, "flip", "true or false", self.flip)
        if self.loss not in LOSSES:
            _fail(prefix, "loss", f"one of {list(LOSSES)}", self.loss)
        for key in ("lr", "aspp_weight_lr_mult", "aspp_bias_lr_mult", "poly_power"):
            v = getattr(self, key)
            if not _is_num(v) or v <= 0:
                _fail(prefix, key, "a number > 0", v)
        for key in ("momentum", "weight_decay"):
            v = getattr(self, key)
            if not _is_num(v) or v < 0:
                _fail(prefix, key, "a number >= 0", v)

    def deeplab_settings(self, n_classes: int, init: str | None, device: str = "auto") -> Any:
        """The :class:`~qaclims.seg.train.DeepLabSettings` of this section for a dataset of
        ``n_classes`` (background included) and the resolved init weights."""
        from qaclims.seg.train import DeepLabSettings

        values = {k: v for k, v in self.to_dict().items() if k not in TRAIN_ONLY_KEYS}
        return DeepLabSettings.from_mapping(
            {**values, "n_classes": int(n_classes), "init": init, "device": device})


@dataclass(frozen=True)
class SegPredictSettings(_Settings):
    """``seg.predict``: how predict_deeplab labels the images (method.md 10, Test/CRF).

    ``crf_params`` holds :class:`qaclims.seg.predict.CrfParams` fields (missing ones default, so
    ``to_dict`` always lists every value). ``test_split``: a manifest split without ground truth
    that is also predicted and arranged for the PASCAL VOC evaluation server; ``auto`` = ``test``
    for a VOC dataset whose ``ImageSets/Segmentation/test.txt`` exists, else none; null = none.
    """

    scales: tuple[float, ...] | None = None
    flip: bool = False
    crf: bool = True
    crf_params: dict[str, Any] = field(default_factory=dict)
    crf_workers: int | None = None
    test_split: str | None = "auto"
    competition: str = "comp6"

    _prefix: ClassVar[str] = "seg.predict"
    _tuple_fields: ClassVar[tuple[str, ...]] = ("scales",)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, prefix: str | None = None):
        from dataclasses import asdict

        from qaclims.seg.predict import CrfParams

        prefix = prefix if prefix is not None else cls._prefix
        data = dict(data or {})
        crf = data.get("crf_params") or {}
        if not isinstance(crf, Mapping):
            _fail(prefix, "crf_params", "a mapping of CRF parameters", crf)
        known = list(CrfParams.__dataclass_fields__)
        unknown = sorted(set(crf) - set(known))
        if unknown:
            raise ValueError(f"{prefix}.crf_params.{unknown[0]}: unknown key (known: "
                             f"{sorted(known)})")
        try:
            data["crf_params"] = asdict(CrfParams(**crf))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{prefix}.crf_params: {err}") from None
        return super().from_dict(data, prefix)

    def check(self, prefix: str) -> None:
        if self.scales is not None:
            _check_numbers(prefix, "scales", self.scales, min_len=0)
        for key in ("flip", "crf"):
            if not isinstance(getattr(self, key), bool):
                _fail(prefix, key, "true or false", getattr(self, key))
        if self.crf_workers is not None and (not _is_int(self.crf_workers)
                                             or self.crf_workers < 0):
            _fail(prefix, "crf_workers", "null or an integer >= 0", self.crf_workers)
        if self.test_split is not None and (not isinstance(self.test_split, str)
                                            or not _NAME.match(self.test_split)):
            _fail(prefix, "test_split", "'auto', a split name or null", self.test_split)
        if self.competition not in COMPETITIONS:
            _fail(prefix, "competition", f"one of {list(COMPETITIONS)}", self.competition)

    def crf_config(self) -> Any:
        """The :class:`~qaclims.seg.predict.CrfParams` to apply, or None without the CRF."""
        from qaclims.seg.predict import CrfParams

        return CrfParams(**self.crf_params) if self.crf else None


@dataclass(frozen=True)
class SegSettings:
    """The whole ``seg`` section. ``experiments`` are validated against the CAM experiments by
    :func:`seg_settings`."""

    experiments: tuple[str, ...]
    gt_experiment: str
    train: SegTrainSettings
    predict: SegPredictSettings

    def trains_on_gt(self, experiment: str) -> bool:
        return experiment == self.gt_experiment


def seg_settings(section: Mapping[str, Any] | None, experiments: Sequence[str],
                 ablations: Sequence[str] = (), baseline: str = "baseline") -> SegSettings:
    """Parse a config ``seg`` section.

    ``experiments`` / ``ablations``: the names of the config's RITC experiments and ablations.
    ``seg.experiments`` null = every experiment (not the baseline, not the ablations); each name
    must be the baseline, an experiment, an ablation (trains on its pseudo masks) or
    ``gt_experiment`` (trains on the ground truth), which must not shadow any of them.
    """
    section = dict(section or {})
    known = ["experiments", "gt_experiment", "predict", "train"]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"seg.{unknown[0]}: unknown key (known: {known})")
    cam_names = [baseline, *experiments, *ablations]
    gt = section.get("gt_experiment", "gt")
    if not isinstance(gt, str) or not _NAME.match(gt):
        _fail("seg", "gt_experiment", "a name of letters, digits, '_', '.', '-'", gt)
    if gt in cam_names:
        _fail("seg", "gt_experiment", f"a name that is not a CAM experiment's ({cam_names})", gt)
    names = section.get("experiments")
    if names is None:
        names = list(experiments)
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        _fail("seg", "experiments", "a list of experiment names or null", names)
    allowed = [*cam_names, gt]
    for n in names:
        if n not in allowed:
            _fail("seg", "experiments", f"names from {allowed}", n)
    if len(set(names)) != len(names):
        _fail("seg", "experiments", "names without repeats", list(names))
    return SegSettings(tuple(names), gt, SegTrainSettings.from_dict(section.get("train")),
                       SegPredictSettings.from_dict(section.get("predict")))


def voc_test_split(test_split: str | None, dataset_source: str, dataset_root: str | Path
                   ) -> str | None:
    """Resolve ``seg.predict.test_split``: ``auto`` -> ``test`` for a VOC dataset whose
    ``ImageSets/Segmentation/test.txt`` exists (the test images are there), else None."""
    if test_split != "auto":
        return test_split
    if dataset_source == "voc12" and (
            Path(dataset_root) / "ImageSets" / "Segmentation" / "test.txt").is_file():
        return "test"
    return None
