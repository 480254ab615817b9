"""Every knob of the IRN refinement stage (method.md 9) as frozen dataclasses.

Config layout (the lead's schema mirrors these fields one to one)::

    irn:
      ir_labels:   {<IrLabelSettings fields>}     # G1: CAMs + dense CRF -> ir_labels/{shard}/
      train:       {<IrnTrainSettings fields>}    # G2: edge + displacement network
      random_walk: {<RandomWalkSettings fields>}  # G3: pseudo_masks/{shard}/

Defaults are the authors' (QA-CLIMS ``parser.py``, which differs from the original IRN in two
thresholds, method.md 9 and 12 #17). ``from_dict`` rejects unknown keys naming them, ``to_dict``
is the JSON-ready form that travels through Snakemake ``params`` (and into the resume hash).

============================= ============ ============ ========================================
key                           default      demo         note
                              (paper/code) (CPU, toy)
============================= ============ ============ ========================================
ir_labels.fg_threshold        0.30         0.30         IRN 0.30
ir_labels.bg_threshold        0.10         0.10         IRN 0.05
ir_labels.crf                 t=10, ...    t=10, ...    ``crf_inference_label`` of misc/imutils
train.arch / weights          resnet50 /   resnet18 /   ImageNet backbone, **not** the CAM net
                              imagenet     toy
train.batch_size              32           8
train.epochs                  3            1            demo: 125 steps, ~1.7 s each on 2 cores
train.crop_size               512          128          multiple of 4, >= 4 (2 radius - 1)
train.lr                      0.1          0.1          edge branch; displacement x10
train.weight_decay            1e-4         1e-4
train.momentum                1e-4         1e-4         the authors' PolyOptimizer quirk (optim.py)
train.scale_range             [0.5, 1.5]   [0.5, 1.5]
train.radius                  10           10           pairs for the affinity loss (stride 4)
random_walk.beta              10           10
random_walk.exp_times         8            8            T ** (2 ** 8)
random_walk.radius            5            5
random_walk.bg_threshold      0.20         0.20         IRN 0.25
random_walk.memory_budget_mb  2048         512          per walk process
============================= ============ ============ ========================================

Speed knobs change no result: ``workers`` (processes of the CRF and random-walk pools; None:
the rule's threads) stay out of the rules' params, so changing them reruns nothing;
``threads`` (torch threads of training), ``num_workers`` (DataLoader), ``log_every`` and
``checkpoint_every`` stay out of the resume hash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qaclims.cam.optim import AUTHORS_MOMENTUM
from qaclims.cam.settings import ARCHS, _fail, _is_int, _is_num, _Settings
from qaclims.irn.ir_labels import CrfParams

__all__ = ["IrLabelSettings", "IrnTrainSettings", "RandomWalkSettings", "cam_threshold_shift",
           "irn_reference_threshold", "irn_settings", "resolve_thresholds", "shift_thresholds"]

RW_METHODS = ("auto", "sparse", "dense")


def _check_workers(prefix: str, value: Any) -> None:
    if value is not None and (not _is_int(value) or value < 1):
        _fail(prefix, "workers", "null or an integer >= 1", value)


@dataclass(frozen=True)
class IrLabelSettings(_Settings):
    """Stage G1, confident labels from CAMs and a dense CRF (method.md 9.1). ``irn.ir_labels``.

    ``crf`` holds :class:`~qaclims.irn.ir_labels.CrfParams` fields; ``from_dict`` fills in the
    missing ones, so ``to_dict`` always lists every CRF value (a changed default reruns).
    """

    fg_threshold: float = 0.30
    bg_threshold: float = 0.10
    crf: dict[str, Any] = field(default_factory=lambda: CrfParams().to_dict())
    workers: int | None = None

    _prefix: ClassVar[str] = "irn.ir_labels"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, prefix: str | None = None):
        data = dict(data or {})
        try:
            data["crf"] = CrfParams.from_dict(data.get("crf")).to_dict()
        except (TypeError, ValueError) as err:
            raise ValueError(f"{prefix or cls._prefix}.crf: {err}") from None
        return super().from_dict(data, prefix)

    def check(self, prefix: str) -> None:
        for key in ("fg_threshold", "bg_threshold"):
            v = getattr(self, key)
            if not _is_num(v) or not 0 <= v <= 1:
                _fail(prefix, key, "a number in [0, 1]", v)
        if self.fg_threshold < self.bg_threshold:
            _fail(prefix, "fg_threshold", f"a number >= bg_threshold ({self.bg_threshold})",
                  self.fg_threshold)
        _check_workers(prefix, self.workers)

    def crf_params(self) -> CrfParams:
        return CrfParams.from_dict(self.crf)


@dataclass(frozen=True)
class IrnTrainSettings(_Settings):
    """Stage G2, the edge + displacement network (method.md 9.2). ``irn.train``.

    ``max_steps`` None: ``(n_images // batch_size) * epochs`` (VOC train_aug: 330 * 3 = 990).
    ``crop_size`` must be a multiple of 4 (the label is reduced x0.25 to the network's stride-4
    output) with ``crop_size / 4 > 2 (radius - 1)`` (the pair grid must not be empty; 76 px for
    radius 10).
    """

    arch: str = "resnet50"
    weights: str | None = "imagenet"   # "imagenet", a state-dict file, or null (random init)
    batch_size: int = 32
    epochs: int = 3
    max_steps: int | None = None
    lr: float = 0.1                    # edge branch; the displacement branch gets x mult
    displacement_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = AUTHORS_MOMENTUM
    poly_power: float = 0.9
    scale_range: tuple[float, float] = (0.5, 1.5)
    crop_size: int = 512
    hflip: bool = True
    radius: int = 10
    seed: int = 0
    num_workers: int = 0               # DataLoader workers
    threads: int | None = None         # torch intra-op threads (None: torch's choice)
    log_every: int = 20
    checkpoint_every: int = 100        # steps between resumable checkpoints (0: only on SIGTERM)

    _prefix: ClassVar[str] = "irn.train"
    _tuple_fields: ClassVar[tuple[str, ...]] = ("scale_range",)

    def check(self, prefix: str) -> None:
        if self.arch not in ARCHS:
            _fail(prefix, "arch", f"one of {list(ARCHS)}", self.arch)
        if self.weights is not None and not isinstance(self.weights, str):
            _fail(prefix, "weights", "null, 'imagenet' or a file path", self.weights)
        for key in ("batch_size", "epochs", "log_every"):
            v = getattr(self, key)
            if not _is_int(v) or v < 1:
                _fail(prefix, key, "an integer >= 1", v)
        for key in ("num_workers", "checkpoint_every", "seed"):
            v = getattr(self, key)
            if not _is_int(v) or v < 0:
                _fail(prefix, key, "an integer >= 0", v)
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            _fail(prefix, "max_steps", "null or an integer >= 1", self.max_steps)
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            _fail(prefix, "threads", "null or an integer >= 1", self.threads)
        for key in ("lr", "displacement_lr_mult", "poly_power"):
            v = getattr(self, key)
            if not _is_num(v) or v <= 0:
                _fail(prefix, key, "a number > 0", v)
        for key in ("weight_decay", "momentum"):
            v = getattr(self, key)
            if not _is_num(v) or v < 0:
                _fail(prefix, key, "a number >= 0", v)
        r = self.scale_range
        if len(r) != 2 or not all(_is_num(x) and x > 0 for x in r) or r[0] > r[1]:
            _fail(prefix, "scale_range", "[min, max] numbers > 0, min <= max", r)
        if not isinstance(self.hflip, bool):
            _fail(prefix, "hflip", "true or false", self.hflip)
        if not _is_int(self.radius) or self.radius < 2:
            _fail(prefix, "radius", "an integer >= 2", self.radius)
            return
        min_crop = 4 * (2 * (self.radius - 1) + 1)
        if not _is_int(self.crop_size) or self.crop_size % 4 or self.crop_size < min_crop:
            _fail(prefix, "crop_size", f"a multiple of 4 >= {min_crop} (radius {self.radius})",
                  self.crop_size)

    def total_steps(self, n_images: int) -> int:
        """``max_steps`` or, as the authors, ``(n_images // batch_size) * epochs``."""
        if self.max_steps is not None:
            return self.max_steps
        per_epoch = n_images // self.batch_size
        if per_epoch < 1:
            raise ValueError(f"{n_images} training images do not fill one batch of "
                             f"{self.batch_size}")
        return per_epoch * self.epochs


@dataclass(frozen=True)
class RandomWalkSettings(_Settings):
    """Stage G3, random walk and pseudo masks (method.md 9.3). ``irn.random_walk``.

    ``memory_budget_mb`` bounds one image's walk (per worker process; see
    :func:`qaclims.irn.random_walk.plan_random_walk`): the formulation and class chunking are
    chosen to fit it, an image that cannot fit fails naming its size.
    """

    beta: float = 10.0
    exp_times: int = 8
    radius: int = 5
    bg_threshold: float = 0.20
    memory_budget_mb: float = 2048.0
    method: str = "auto"
    workers: int | None = None

    _prefix: ClassVar[str] = "irn.random_walk"

    def check(self, prefix: str) -> None:
        if not _is_num(self.beta) or self.beta <= 0:
            _fail(prefix, "beta", "a number > 0", self.beta)
        if not _is_int(self.exp_times) or not 0 <= self.exp_times <= 16:
            _fail(prefix, "exp_times", "an integer in 0..16", self.exp_times)
        if not _is_int(self.radius) or self.radius < 2:
            _fail(prefix, "radius", "an integer >= 2", self.radius)
        if not _is_num(self.bg_threshold) or not 0 <= self.bg_threshold <= 1:
            _fail(prefix, "bg_threshold", "a number in [0, 1]", self.bg_threshold)
        if not _is_num(self.memory_budget_mb) or self.memory_budget_mb <= 0:
            _fail(prefix, "memory_budget_mb", "a number > 0", self.memory_budget_mb)
        if self.method not in RW_METHODS:
            _fail(prefix, "method", f"one of {list(RW_METHODS)}", self.method)
        _check_workers(prefix, self.workers)


def irn_settings(section: Mapping[str, Any] | None
                 ) -> tuple[IrLabelSettings, IrnTrainSettings, RandomWalkSettings]:
    """The three settings of a config ``irn`` section (missing parts default)."""
    section = dict(section or {})
    known = {"ir_labels", "train", "random_walk", "reference_cam_threshold",
             "walk_threshold_search"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"irn.{unknown[0]}: unknown key (known: {sorted(known)})")
    irn_reference_threshold(section)
    return (IrLabelSettings.from_dict(section.get("ir_labels")),
            IrnTrainSettings.from_dict(section.get("train")),
            RandomWalkSettings.from_dict(section.get("random_walk")))


# ---------------------------------------------------------------------------- adapted thresholds
#
# The authors' IR-label (0.30 / 0.10) and random-walk (0.20) thresholds suit CAMs whose best
# background threshold is about 0.15 (their fixed CAM evaluation threshold). CAMs whose best
# threshold lies elsewhere (the demo's baseline: 0.73) get almost everything as confident
# foreground. ``irn.reference_cam_threshold: r`` shifts every one of those thresholds by
# ``best - r``, ``best`` being the experiment's own best threshold from search_threshold;
# null (the default) keeps them as configured.

THRESHOLD_BOUNDS = (0.01, 0.99)


def irn_reference_threshold(section: Mapping[str, Any] | None) -> float | None:
    """``irn.reference_cam_threshold`` of a config ``irn`` section (None: not set)."""
    v = dict(section or {}).get("reference_cam_threshold")
    if v is not None and (not _is_num(v) or not 0 < v < 1):
        _fail("irn", "reference_cam_threshold", "null or a number in (0, 1)", v)
    return None if v is None else float(v)


def read_best_threshold(threshold_json: str | Any) -> float:
    """``best_threshold`` of a threshold search's JSON (CAM or walk), checked to lie in [0, 1]."""
    import json
    from pathlib import Path

    path = Path(threshold_json)
    try:
        best = json.loads(path.read_text())["best_threshold"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot read best_threshold ({err})") from None
    if not _is_num(best) or not 0 <= best <= 1:
        raise ValueError(f"{path}: best_threshold must be a number in [0, 1], got {best!r}")
    return float(best)


def cam_threshold_shift(threshold_json: str | Any, reference: float) -> tuple[float, float]:
    """``(shift, best)``: the experiment's best CAM threshold (``threshold.json`` of
    search_threshold) minus ``reference``."""
    best = read_best_threshold(threshold_json)
    return best - reference, best


def shift_thresholds(settings: Any, shift: float) -> Any:
    """``settings`` (:class:`IrLabelSettings` or :class:`RandomWalkSettings`) with every
    threshold moved by ``shift`` and clipped to [0.01, 0.99] (the order fg >= bg is kept)."""
    lo, hi = THRESHOLD_BOUNDS
    keys = [k for k in ("fg_threshold", "bg_threshold") if hasattr(settings, k)]
    return settings.replace(**{k: round(min(hi, max(lo, getattr(settings, k) + shift)), 4)
                               for k in keys})


def resolve_thresholds(settings: Any, reference: float | None,
                       threshold_json: str | Any | Sequence[Any] | None = None
                       ) -> tuple[Any, dict[str, Any]]:
    """The thresholds a rule uses: ``settings`` unchanged when ``reference`` is None, else
    shifted by the experiment's best CAM threshold (``threshold_json``: a path, or a rule's
    input list of none or one) minus ``reference``, and the shift logged.
    Returns ``(settings, info)``; ``info`` records reference, best and shift for the metrics."""
    if reference is None:
        return settings, {}
    if isinstance(threshold_json, Sequence) and not isinstance(threshold_json, str):
        threshold_json = next(iter(threshold_json), None)
    if not threshold_json:
        raise ValueError("irn.reference_cam_threshold is set but no cam_eval/threshold.json "
                         "was given")
    shift, best = cam_threshold_shift(threshold_json, reference)
    shifted = shift_thresholds(settings, shift)
    info = {"reference_cam_threshold": reference, "best_cam_threshold": best,
            "threshold_shift": round(shift, 4)}
    logging.getLogger(__name__).info("thresholds shifted by the CAM threshold search: %s -> %s",
                                     info, shifted.to_dict())
    return shifted, info


def walk_bg_threshold(settings: RandomWalkSettings, reference: float | None,
                      cam_eval: str | Any | Sequence[Any] | None = None,
                      walk_threshold_json: str | Any | Sequence[Any] | None = None
                      ) -> tuple[float, dict[str, Any]]:
    """The background threshold of the pseudo masks and how it was chosen: the best one of the
    walk-threshold search (``walk_threshold_json``, a path or a rule's input list of none or
    one: ``irn.walk_threshold_search``), else ``settings.bg_threshold`` shifted as
    :func:`resolve_thresholds` says."""
    if isinstance(walk_threshold_json, Sequence) and not isinstance(walk_threshold_json, str):
        walk_threshold_json = next(iter(walk_threshold_json), None)
    if walk_threshold_json:
        best = read_best_threshold(walk_threshold_json)
        return best, {"walk_threshold_search": True, "bg_threshold": best}
    shifted, info = resolve_thresholds(settings, reference, cam_eval)
    return float(shifted.bg_threshold), {"walk_threshold_search": False,
                                         "bg_threshold": float(shifted.bg_threshold), **info}
