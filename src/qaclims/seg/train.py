"""Resumable DeepLab-v2 training (method.md 10): :func:`train_deeplab`.

One iteration = ``iter_size`` micro-batches of ``batch_size`` crops, each forward through the
MSC model, loss summed over its 4 outputs and divided by ``iter_size``, gradients accumulated,
then one SGD step; the lr follows the step-wise poly schedule of :mod:`qaclims.seg.optim`.

Resuming. Every ``save_every`` iterations the model, the optimiser (momentum buffers), the
iteration, the loss curve and the torch/numpy/python RNG states go to ``{resume_dir}/state.pt``
(beside the previous one, then renamed; the previous is kept as ``state.pt.prev`` and resumed
when the newer cannot be read - none readable is an error naming the files, not a silent restart),
tagged with a hash of every setting that changes the result plus the init weights' and the
training labels' checksums. A later call with the same hash continues from there; the
data stream is a function of the iteration (:class:`~qaclims.seg.data.DrawBatchSampler`) and the
lr a function of the iteration, so an interrupted and resumed run ends with the same weights as an
uninterrupted one. A different hash starts from scratch, says so in the log, and replaces the
old state at its first save. The state is left in place after the final checkpoint is written (a
rerun of a finished run returns at once); delete ``resume_dir`` to reclaim the disk.

DDP. If ``torch.distributed`` is initialised (torchrun), each rank trains on
``batch_size / world_size`` crops of every micro-batch (the global batch is ``batch_size``), the
model is wrapped in ``DistributedDataParallel``, the logged loss is averaged over ranks, and only
rank 0 writes files. The tests cover the single-process path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from qaclims.seg import losses
from qaclims.seg.data import (
    INPUT_NORMS,
    MEAN_BGR,
    VOC_TRAIN_SCALES,
    DrawBatchSampler,
    SegTrainDataset,
    rows_for_split,
    training_data_fingerprint,
)
from qaclims.seg.networks import (
    ASPP_RATES,
    MSC_SCALES,
    build_deeplab,
    calibrate_batchnorm,
    save_deeplab_checkpoint,
)
from qaclims.seg.optim import make_optimizer, set_poly_lr
from qaclims.torch_io import load_resumable, rng_state, save_resumable, set_rng_state

STATE_FILE = "state.pt"
STATE_FORMAT = "qaclims.deeplab.resume/2"  # 2: RNG states in weights-only types


@dataclass(frozen=True)
class DeepLabSettings:
    """Everything :func:`train_deeplab` needs besides its files. Defaults = the paper setting
    (CLIMS ``voc12_imagenet_pretrained.yaml``) except ``n_classes`` (required).

    ``init``: ``None`` (random), ``"imagenet"`` or a weights file (torchvision or caffe format,
    see :func:`~qaclims.seg.networks.build_deeplab`). ``caffe_layout``: ``None`` = follow the init
    file. ``bn_calibration_batches`` > 0 sets the frozen BN statistics from that many training
    micro-batches before the first iteration (:func:`~qaclims.seg.networks.calibrate_batchnorm`;
    for random init, where the untouched statistics make SGD diverge). The last group of fields
    changes how the run is carried out, not its result, and is left out of the resume hash.
    """

    n_classes: int
    arch: str = "resnet101"
    init: str | None = "imagenet"
    caffe_layout: bool | None = None
    aspp_rates: tuple[int, ...] = ASPP_RATES
    msc_scales: tuple[float, ...] = MSC_SCALES
    batch_size: int = 10
    iter_size: int = 2
    iterations: int = 30000
    crop: int = 321
    scales: tuple[float, ...] = VOC_TRAIN_SCALES
    flip: bool = True
    mean_bgr: tuple[float, float, float] = MEAN_BGR
    # Network input (qaclims.seg.data.network_input): "caffe" (BGR minus mean_bgr, the authors'
    # converted init), "imagenet" (torchvision's RGB mean/std) or "auto" - caffe exactly when
    # the init weights are in the caffe layout. The resolved value is saved with the model.
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
    # -- operational (not part of the resume hash) --
    save_every: int = 1000
    log_every: int = 20
    num_workers: int = 0
    device: str = "auto"

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("save_every", "log_every", "num_workers", "device")

    def __post_init__(self) -> None:
        for name in ("aspp_rates", "msc_scales", "scales", "mean_bgr"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        for name in ("n_classes", "batch_size", "iter_size", "iterations", "crop",
                     "lr_decay_every", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_classes < 2:
            problems.append(f"n_classes counts the background, must be >= 2, got {self.n_classes}")
        if self.loss not in losses.LOSS_KINDS:
            problems.append(f"loss must be one of {list(losses.LOSS_KINDS)}, got {self.loss!r}")
        if not self.scales or any(s <= 0 for s in self.scales):
            problems.append(f"scales must be positive, got {list(self.scales)}")
        if len(self.mean_bgr) != 3:
            problems.append(f"mean_bgr needs 3 values, got {list(self.mean_bgr)}")
        if self.input_norm not in ("auto", *INPUT_NORMS):
            problems.append(f"input_norm must be one of {['auto', *INPUT_NORMS]}, "
                            f"got {self.input_norm!r}")
        if self.bn_calibration_batches < 0:
            problems.append("bn_calibration_batches must be >= 0, "
                            f"got {self.bn_calibration_batches}")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
        if problems:
            raise ValueError("invalid DeepLab settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DeepLabSettings:
        """Build from a dict (a rule's ``params``); unknown keys raise, naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DeepLab settings {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The settings that change the trained weights (hashed for the resume guard)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.OPERATIONAL}


def resolve_input_norm(input_norm: str, model: torch.nn.Module) -> str:
    """``input_norm`` with "auto" resolved: "caffe" when the built model has the caffe layout
    (the authors' converted init), else "imagenet" (torchvision-format or random weights)."""
    if input_norm != "auto":
        return input_norm
    caffe = any(getattr(m, "caffe_layout", False) for m in model.modules())
    return "caffe" if caffe else "imagenet"


def settings_hash(settings: DeepLabSettings, init_fingerprint: str, data_fingerprint: str) -> str:
    """SHA-256 of the result-relevant settings, the init weights and the training data.

    The init *path* is left out: the weights enter through their checksum, so a moved file
    still resumes and a replaced one does not.
    """
    hashed = {k: v for k, v in settings.result_dict().items() if k != "init"}
    payload = {"settings": hashed, "init": init_fingerprint,
               "data": data_fingerprint, "format": STATE_FORMAT}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def init_fingerprint(settings: DeepLabSettings) -> str:
    """Identity of the init weights: ``random``, or the SHA-256 of the file used."""
    from qaclims.vlp.backbones import resolve_resnet_weights
    from qaclims.vlp.weights import file_sha256

    if settings.init is None:
        return "random"
    if settings.init == "imagenet":
        path = resolve_resnet_weights(settings.arch, "imagenet")  # type: ignore[arg-type]
    else:
        path = Path(settings.init)
        if not path.is_file():
            return f"missing:{path}"  # build_deeplab raises the helpful error
    return file_sha256(path)


# -- distributed helpers ------------------------------------------------------------------------
def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local)
        return torch.device("cpu")
    return torch.device(name)


# -- resume state -------------------------------------------------------------------------------
def _save_state(resume_dir: Path, *, digest: str, iteration: int, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, curve: Sequence[float],
                settings: DeepLabSettings) -> None:
    from qaclims.seg.networks import unwrap
    from qaclims.store import write_json

    payload = {
        "format": STATE_FORMAT, "hash": digest, "iteration": iteration,
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "loss_curve": list(curve), "rng": rng_state(),
    }
    save_resumable(payload, resume_dir / STATE_FILE)
    write_json({"hash": digest, "iteration": iteration, "settings": settings.to_dict()},
               resume_dir / "state.json")


def _load_state(resume_dir: Path, digest: str, log: logging.Logger) -> dict[str, Any] | None:
    # An unreadable state falls back to the previous one; when none can be read the error names
    # the files (a silent restart from zero would throw away hours of training unnoticed).
    found = load_resumable(resume_dir / STATE_FILE, "DeepLab resume state")
    if found is None:
        return None
    state, path = found
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        log.warning("resume state %s has an unknown format: starting fresh", path)
        return None
    if state.get("hash") != digest:
        log.warning("resume state %s was made with other settings/init/labels (hash %s, now "
                    "%s): starting fresh", path, str(state.get("hash"))[:12], digest[:12])
        return None
    return state


def _calibration_batches(dataset: SegTrainDataset, n_batches: int, batch_size: int, seed: int,
                         device: torch.device) -> Iterator[torch.Tensor]:
    """Augmented image batches for BN calibration, identical on every DDP rank. Negative draw
    numbers keep them apart from the training stream, which stays what it is without them."""
    order = np.random.default_rng([seed, 1 << 30]).permutation(len(dataset))
    for b in range(n_batches):
        draws = range(b * batch_size, (b + 1) * batch_size)
        images = [dataset[(int(order[d % len(dataset)]), -1 - d)][0] for d in draws]
        yield torch.stack(images).to(device)


# -- training -----------------------------------------------------------------------------------
def train_deeplab(
    settings: DeepLabSettings,
    manifest: Any,
    split: str,
    label_dir: str | os.PathLike[str],
    out_checkpoint: str | os.PathLike[str],
    *,
    resume_dir: str | os.PathLike[str] | None = None,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Train an MSC DeepLab-v2 on ``split`` of ``manifest`` (path or DataFrame) with the label
    PNGs in ``label_dir``; write the model to ``out_checkpoint`` (atomic).

    Returns ``{"loss_curve": [loss per iteration], "iterations", "start_iteration",
    "settings_hash", "seconds", "images_per_s", "checkpoint"}``.
    """
    log = log or logging.getLogger(__name__)
    rank, world = _dist()
    if settings.batch_size % world:
        raise ValueError(f"batch_size {settings.batch_size} is not divisible by the "
                         f"{world} DDP processes")
    device = _device(settings.device)
    per_rank = settings.batch_size // world
    rows = rows_for_split(manifest, split)
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed % 2**32)
    random.seed(settings.seed)
    model = build_deeplab(settings.arch, settings.n_classes, settings.init,
                          caffe_layout=settings.caffe_layout, rates=settings.aspp_rates,
                          msc_scales=settings.msc_scales).to(device)
    input_norm = resolve_input_norm(settings.input_norm, model)
    dataset = SegTrainDataset(rows, label_dir, crop=settings.crop, scales=settings.scales,
                              mean_bgr=settings.mean_bgr, flip=settings.flip, seed=settings.seed,
                              input_norm=input_norm)
    digest = settings_hash(settings, init_fingerprint(settings),
                           training_data_fingerprint(dataset))
    log.info("DeepLab %s: %d images of %r, labels %s, %d iterations x %d x %d crops, %s input, "
             "hash %s", settings.arch, len(dataset), split, label_dir, settings.iterations,
             settings.iter_size, settings.batch_size, input_norm, digest[:12])
    model.train()
    optimizer = make_optimizer(model, settings.lr, settings.momentum, settings.weight_decay,
                               settings.aspp_weight_lr_mult, settings.aspp_bias_lr_mult)

    start, curve = 0, []
    state_dir = Path(resume_dir) if resume_dir is not None else None
    if state_dir is not None:
        state = _load_state(state_dir, digest, log)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, curve = int(state["iteration"]), list(state["loss_curve"])
            set_rng_state(state["rng"])
            log.info("resumed from %s at iteration %d", state_dir / STATE_FILE, start)
            del state

    if start == 0 and settings.init is None and settings.bn_calibration_batches == 0:
        log.warning("random initialisation with untouched BatchNorm statistics: training is "
                    "likely to diverge; set bn_calibration_batches (e.g. 4)")
    if start == 0 and settings.bn_calibration_batches > 0:
        n_cal = calibrate_batchnorm(model, _calibration_batches(
            dataset, settings.bn_calibration_batches, per_rank, settings.seed, device))
        log.info("calibrated the BatchNorm statistics on %d batches of %d crops", n_cal, per_rank)

    train_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = DrawBatchSampler(len(dataset), per_rank, seed=settings.seed,
                               start_batch=start * settings.iter_size, rank=rank,
                               world_size=world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=settings.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False)
    batches = iter(loader)

    t_start = t_log = time.perf_counter()
    images_since_log = 0
    for iteration in range(start, settings.iterations):
        lrs = set_poly_lr(optimizer, iteration, settings.iterations, settings.poly_power,
                          settings.lr_decay_every)
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for _ in range(settings.iter_size):
            images, labels = next(batches)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            outputs = train_model(images)
            loss = losses.msc_loss(outputs, labels, settings.loss) / settings.iter_size
            loss.backward()
            total += loss.detach()
            images_since_log += images.shape[0] * world
        optimizer.step()
        if world > 1:
            torch.distributed.all_reduce(total)
            total /= world
        curve.append(float(total))
        if not np.isfinite(curve[-1]):
            raise FloatingPointError(f"DeepLab loss is {curve[-1]} at iteration {iteration + 1}")

        done = iteration + 1
        if done % settings.log_every == 0 or done == settings.iterations or done == start + 1:
            now = time.perf_counter()
            log.info("iter %d/%d loss %.4f lr %.3e img/s %.2f", done, settings.iterations,
                     curve[-1], lrs[0], images_since_log / max(now - t_log, 1e-9))
            t_log, images_since_log = now, 0
        if state_dir is not None and (done % settings.save_every == 0
                                      or done == settings.iterations):
            if rank == 0:
                _save_state(state_dir, digest=digest, iteration=done, model=model,
                            optimizer=optimizer, curve=curve, settings=settings)
            _barrier()

    seconds = time.perf_counter() - t_start
    n_images = (settings.iterations - start) * settings.iter_size * settings.batch_size
    if rank == 0:
        save_deeplab_checkpoint(model, out_checkpoint, settings.arch, meta={
            "settings": settings.to_dict(), "settings_hash": digest, "split": split,
            "input_norm": input_norm,
            "label_dir": str(label_dir), "iterations": settings.iterations,
            "final_loss": curve[-1] if curve else None,
        })
        log.info("wrote %s (%d iterations, %.1f s this run)", out_checkpoint,
                 settings.iterations, seconds)
    _barrier()
    return {
        "loss_curve": curve,
        "iterations": settings.iterations,
        "start_iteration": start,
        "settings_hash": digest,
        "seconds": seconds,
        "images_per_s": n_images / seconds if seconds > 0 and n_images else None,
        "checkpoint": str(out_checkpoint),
    }
