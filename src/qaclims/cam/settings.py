"""Every knob of the CAM stages as frozen dataclasses, built from config sections.

Config layout (the lead's schema mirrors these fields one to one)::

    cam:
      train_cam:  {<CamTrainSettings fields>}     # stage D0, the baseline CAM network
      ritc:       {<RitcSettings fields>}         # stage D, defaults of every experiment
      export:     {<ExportSettings fields>}       # stage E, cams/{shard}.h5
      threshold:  {<ThresholdSettings fields>}    # stage F, threshold.json
    experiments:
      <name>: {<RitcSettings fields to override>} # e.g. frc_only: {loss_weights: [10, 0, 0]}

``from_dict`` rejects unknown keys (naming them) and checks values, so a typo in a config fails
before any training starts. ``to_dict`` gives the JSON-ready form that travels through Snakemake
``params`` and into the resume hash.

Defaults are the authors' VOC settings (method.md 5, 6, 7, 8); the demo config overrides sizes,
steps and the backbone. Where the paper and the authors' code differ, the default is the code's
behaviour and the paper's wording is an option (method.md 12):

======================= ================== ==================================================
knob                    default (code)     paper option
======================= ================== ==================================================
fg_mix                  "code": 0.5 label  "paper": equal-weight mean of label + answers;
                        + 0.5 mean(answers) "label_only": the label text alone (ablation)
brc_variant             "code": mean of    "paper": exp of the mean similarity (Eq. 8)
                        exponentials
mask_mode               "code": pixels x P "paper": pixels x P*b (Eq. 10), plain CLIP
momentum                1e-4 (authors'     0.9 is what "SGD" usually means; set explicitly
                        effective value)
======================= ================== ==================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from qaclims.cam.networks import OUTPUT_STRIDES
from qaclims.cam.optim import AUTHORS_MOMENTUM

FG_MIXES = ("code", "paper", "label_only")
BRC_VARIANTS = ("code", "paper")
MASK_MODES = ("code", "paper")
CLIP_INPUT_NORMS = ("imagenet", "clip")
CAM_DTYPES = ("uint8", "float16", "float32")
COMPRESSIONS = ("gzip", "lzf", "none")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")


def _fail(prefix: str, key: str, expected: str, value: Any) -> None:
    raise ValueError(f"{prefix}.{key}: expected {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


class _Settings:
    """from_dict / to_dict / replace for the frozen settings dataclasses."""

    _prefix: ClassVar[str] = ""
    _tuple_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, prefix: str | None = None):
        """Build from a config section; unknown keys raise ``ValueError`` naming them."""
        prefix = prefix if prefix is not None else cls._prefix
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{prefix}.{unknown[0]}: unknown key (known: {sorted(names)})")
        for key in cls._tuple_fields:
            if key in data and isinstance(data[key], list):
                data[key] = tuple(data[key])
        obj = cls(**data)
        obj.check(prefix)
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def replace(self, **changes: Any):
        return self.from_dict({**self.to_dict(), **changes})

    def check(self, prefix: str) -> None:  # overridden
        pass


@dataclass(frozen=True)
class TrainSettings(_Settings):
    """What every CAM training shares: data augmentation, the poly SGD, the loop."""

    batch_size: int = 16          # global batch (all ranks together)
    epochs: int = 5
    max_steps: int | None = None  # None: (n_images // batch_size) * epochs, as the authors
    lr: float = 0.1               # backbone lr; the classifier gets classifier_lr_mult x lr
    classifier_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = AUTHORS_MOMENTUM   # the authors' effective SGD momentum (optim.py)
    poly_power: float = 0.9
    resize_long: tuple[int, int] = (320, 640)
    crop_size: int = 512
    hflip: bool = True
    seed: int = 0
    num_workers: int = 0          # DataLoader workers per rank
    threads: int | None = None    # torch intra-op threads per rank (None: leave torch's choice)
    log_every: int = 20           # steps between progress lines
    checkpoint_every: int = 200   # steps between resumable checkpoints (0: only at the end)

    _tuple_fields: ClassVar[tuple[str, ...]] = ("resize_long",)

    def check(self, prefix: str) -> None:
        for key in ("batch_size", "epochs", "crop_size", "log_every"):
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
        for key in ("lr", "classifier_lr_mult", "poly_power"):
            v = getattr(self, key)
            if not _is_num(v) or v <= 0:
                _fail(prefix, key, "a number > 0", v)
        for key in ("weight_decay", "momentum"):
            v = getattr(self, key)
            if not _is_num(v) or v < 0:
                _fail(prefix, key, "a number >= 0", v)
        r = self.resize_long
        if r is not None and (len(r) != 2 or not all(_is_int(x) and x >= 8 for x in r)
                              or r[0] > r[1]):
            _fail(prefix, "resize_long", "null or [min, max] integers >= 8, min <= max", r)
        if not isinstance(self.hflip, bool):
            _fail(prefix, "hflip", "true or false", self.hflip)

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
class CamTrainSettings(TrainSettings):
    """Stage D0, the baseline multi-label CAM network (method.md 5). Config ``cam.train_cam``."""

    arch: str = "resnet50"
    weights: str | None = "imagenet"   # "imagenet", a state-dict file, or null (random init)
    # 16: the authors'. 8 for small images (the demo's), see qaclims.cam.networks; RITC and the
    # CAM export take it from the baseline's model file.
    output_stride: int = 16
    # Re-estimate the (then frozen) BatchNorm statistics on this many training batches before
    # training: a randomly initialised backbone has running stats 0/1, which under
    # FixedBatchNorm means no normalisation at all and diverges. 0: keep the loaded statistics
    # (the authors' setting, ImageNet statistics).
    bn_calibration_batches: int = 0

    _prefix: ClassVar[str] = "cam.train_cam"

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.arch not in ARCHS:
            _fail(prefix, "arch", f"one of {list(ARCHS)}", self.arch)
        if self.weights is not None and not isinstance(self.weights, str):
            _fail(prefix, "weights", "null, 'imagenet' or a file path", self.weights)
        if not _is_int(self.output_stride) or self.output_stride not in OUTPUT_STRIDES:
            _fail(prefix, "output_stride", f"one of {list(OUTPUT_STRIDES)}", self.output_stride)
        if not _is_int(self.bn_calibration_batches) or self.bn_calibration_batches < 0:
            _fail(prefix, "bn_calibration_batches", "an integer >= 0",
                  self.bn_calibration_batches)


@dataclass(frozen=True)
class RitcSettings(TrainSettings):
    """Stage D, RITC training (method.md 6). Config ``cam.ritc``, overridden per experiment.

    ``batch_size`` is the global batch: the authors ran 2 GPUs x 4. ``reference_gpus`` is the
    number of ranks whose loss scale is reproduced: the FRC/BRC sums of each rank are multiplied
    by ``world_size / reference_gpus`` so the gradient is always ``(1 / reference_gpus) x`` the
    sum over the global batch (one GPU with batch 8: x 0.5, method.md 6.6).
    """

    batch_size: int = 8
    epochs: int = 15
    lr: float = 3.5e-4
    loss_weights: tuple[float, float, float] = (10.0, 8.0, 0.2)   # FRC, BRC, REG (COCO 30,24,0.2)
    tau: float = 0.7
    omega: float = 0.1             # FAT filter ratio
    fat: bool = True               # False: no thresholding, the mask prompts are all ones
    brc_variant: str = "code"
    mask_mode: str = "code"
    fg_mix: str = "code"
    use_bg_text: bool = True       # False: the paper's "no {class}" as the only background text
    reference_gpus: int = 2
    clip_input_norm: str = "imagenet"  # authors: ImageNet-normalised pixels into CLIP

    _prefix: ClassVar[str] = "cam.ritc"
    _tuple_fields: ClassVar[tuple[str, ...]] = ("resize_long", "loss_weights")

    def check(self, prefix: str) -> None:
        super().check(prefix)
        w = self.loss_weights
        if len(w) != 3 or not all(_is_num(x) and x >= 0 for x in w):
            _fail(prefix, "loss_weights", "[w_frc, w_brc, w_reg], numbers >= 0", w)
        if not _is_num(self.tau) or self.tau <= 0:
            _fail(prefix, "tau", "a number > 0", self.tau)
        if not _is_num(self.omega) or not 0 <= self.omega <= 1:
            _fail(prefix, "omega", "a number in [0, 1]", self.omega)
        for key in ("fat", "use_bg_text"):
            if not isinstance(getattr(self, key), bool):
                _fail(prefix, key, "true or false", getattr(self, key))
        for key, allowed in (("brc_variant", BRC_VARIANTS), ("mask_mode", MASK_MODES),
                             ("fg_mix", FG_MIXES), ("clip_input_norm", CLIP_INPUT_NORMS)):
            if getattr(self, key) not in allowed:
                _fail(prefix, key, f"one of {list(allowed)}", getattr(self, key))
        if not _is_int(self.reference_gpus) or self.reference_gpus < 1:
            _fail(prefix, "reference_gpus", "an integer >= 1", self.reference_gpus)

    def pair_scale(self, world_size: int) -> float:
        """Per-rank factor on the FRC/BRC sums (see the class docstring)."""
        return world_size / self.reference_gpus


def ritc_settings(base: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None,
                  experiment: str | None = None) -> RitcSettings:
    """``cam.ritc`` with an experiment's overrides applied (unknown keys named with their
    source: ``experiments.<name>.<key>``)."""
    RitcSettings.from_dict(base)  # errors in the base section name cam.ritc
    prefix = f"experiments.{experiment}" if experiment else RitcSettings._prefix
    return RitcSettings.from_dict({**dict(base or {}), **dict(overrides or {})}, prefix=prefix)


@dataclass(frozen=True)
class ExportSettings(_Settings):
    """Stage E, CAM export (method.md 7). Config ``cam.export``.

    ``dtype``/``compression`` of the stored CAMs were chosen by measurement
    (benchmarks/bench_cam_store.py): uint8 (200 levels, threshold-exact on the 0.005 grid, see
    qaclims.cam.cam_store) with gzip level 1.
    """

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    dtype: str = "uint8"
    compression: str = "gzip"
    compression_level: int = 1
    threads: int | None = None

    _prefix: ClassVar[str] = "cam.export"
    _tuple_fields: ClassVar[tuple[str, ...]] = ("scales",)

    def check(self, prefix: str) -> None:
        if not self.scales or not all(_is_num(s) and s > 0 for s in self.scales):
            _fail(prefix, "scales", "a non-empty list of numbers > 0", self.scales)
        if self.dtype not in CAM_DTYPES:
            _fail(prefix, "dtype", f"one of {list(CAM_DTYPES)}", self.dtype)
        if self.compression not in COMPRESSIONS:
            _fail(prefix, "compression", f"one of {list(COMPRESSIONS)}", self.compression)
        if not _is_int(self.compression_level) or not 0 <= self.compression_level <= 9:
            _fail(prefix, "compression_level", "an integer in 0..9", self.compression_level)
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            _fail(prefix, "threads", "null or an integer >= 1", self.threads)


@dataclass(frozen=True)
class ThresholdSettings(_Settings):
    """Stage F, background-threshold search (method.md 8). Config ``cam.threshold``.

    The full grid ``start, start + step, ..., <= stop`` is evaluated (no early stop, unlike the
    authors' optional greedy sweep over 0.05..0.59); ``fixed`` is the authors' 0.15.
    """

    start: float = 0.01
    stop: float = 0.95
    step: float = 0.01
    fixed: float = 0.15

    _prefix: ClassVar[str] = "cam.threshold"

    def check(self, prefix: str) -> None:
        for key in ("start", "stop", "fixed"):
            v = getattr(self, key)
            if not _is_num(v) or not 0 <= v <= 1:
                _fail(prefix, key, "a number in [0, 1]", v)
        if not _is_num(self.step) or self.step <= 0:
            _fail(prefix, "step", "a number > 0", self.step)
        if self.stop < self.start:
            _fail(prefix, "stop", f"a number >= start ({self.start})", self.stop)

    def grid(self) -> list[float]:
        n = int(math.floor((self.stop - self.start) / self.step + 1e-9)) + 1
        return [round(self.start + i * self.step, 6) for i in range(n)]
