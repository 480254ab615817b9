"""Stage D0: the baseline multi-label CAM network (method.md 5), and the training loop that the
RITC stage shares.

Recipe (authors' defaults, :class:`~qaclims.cam.settings.CamTrainSettings`): torchvision ResNet
(ImageNet weights), output stride 16, FixedBatchNorm, conv1/bn1 frozen, GAP + bias-free 1x1
classifier, ``multilabel_soft_margin_loss``, poly SGD (backbone lr 0.1, classifier 10x, weight
decay 1e-4, the authors' effective momentum 1e-4), batch 16, 5 epochs, random long-side resize
320..640 + flip + 512 crop.

:func:`fit` is the loop: resumable state every ``checkpoint_every`` steps and on SIGTERM
(``checkpoint.ResumeState``), a progress line every ``log_every`` steps (step, losses, lr,
images/s), a per-step loss curve. Several ranks run DDP (``distributed.run_ranks``); the losses in
the curve and the log are the mean over ranks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaclims.cam.checkpoint import ResumeState, save_model, write_curve_tsv
from qaclims.cam.datasets import StepBatchSampler, make_loader, split_images, train_augment
from qaclims.cam.distributed import (
    DistEnv,
    all_reduce_mean,
    any_rank,
    barrier,
    run_ranks,
    wrap_ddp,
)
from qaclims.cam.optim import PolyOptimizer
from qaclims.cam.settings import CamTrainSettings, TrainSettings

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
StepFn = Callable[[Any], tuple[Tensor, Mapping[str, Tensor | float]]]

#: Settings that do not change what is computed: left out of the resume hash, so changing them
#: (another node with more cores) does not restart a run.
RESULT_NEUTRAL = ("threads", "num_workers", "log_every", "checkpoint_every")


class TrainingPreempted(RuntimeError):
    """Raised after SIGTERM once the state is saved; rerunning the job resumes."""


def hashed_params(settings: TrainSettings, **extra: Any) -> dict[str, Any]:
    """The params of a run as they enter the resume hash (result-neutral settings removed)."""
    d = {k: v for k, v in settings.to_dict().items() if k not in RESULT_NEUTRAL}
    return {**d, **extra}


@contextlib.contextmanager
def sigterm_flag() -> Any:
    """A one-element list set to True when SIGTERM arrives (main thread only)."""
    flag = [False]
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__(0, True))
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def restore(resume: ResumeState | None, model: nn.Module, optimizer: torch.optim.Optimizer
            ) -> tuple[int, list[dict[str, Any]]]:
    """Load the saved state into ``model``/``optimizer``: ``(start_step, curve so far)``."""
    state = resume.load() if resume is not None else None
    if state is None:
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["curve"])


def _save_state(resume: ResumeState | None, env: DistEnv, model: nn.Module,
                optimizer: torch.optim.Optimizer, step: int, curve: list[dict[str, Any]]) -> None:
    if resume is not None and env.is_main:
        resume.save({"step": step, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "curve": curve})
        log.info("saved resumable state at step %d (%s)", step, resume.path)
    barrier(env)


def fit(env: DistEnv, model: nn.Module, optimizer: PolyOptimizer, batches: Iterable[Any],
        step_fn: StepFn, *, start_step: int, total_steps: int, curve: list[dict[str, Any]],
        settings: TrainSettings, resume: ResumeState | None,
        images_per_step: int) -> list[dict[str, Any]]:
    """Run steps ``start_step .. total_steps - 1``; returns the whole curve (one row per step).

    ``model`` is the unwrapped network (what is saved); ``step_fn(batch) -> (loss, parts)`` runs
    the (DDP-wrapped) forward and returns the loss to back-propagate and the values to record.
    """
    t0 = time.perf_counter()
    t_log, step_log = t0, start_step
    it = iter(batches)
    with sigterm_flag() as stop:
        for step in range(start_step, total_steps):
            batch = next(it)
            loss, parts = step_fn(batch)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"step {step}: loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            names = list(parts)
            vals = torch.stack([torch.as_tensor(parts[k], dtype=torch.float64).detach().cpu()
                                for k in names])
            vals = all_reduce_mean(vals.to(env.device), env).cpu()
            row: dict[str, Any] = {"step": step + 1}
            row.update({k: float(v) for k, v in zip(names, vals.tolist(), strict=True)})
            row["lr"] = float(optimizer.param_groups[0]["lr"])
            row["seconds"] = round(time.perf_counter() - t0, 3)
            curve.append(row)
            done = step + 1
            if env.is_main and (done % settings.log_every == 0 or done == total_steps):
                now = time.perf_counter()
                ips = images_per_step * (done - step_log) / max(now - t_log, 1e-9)
                t_log, step_log = now, done
                losses = " ".join(f"{k} {row[k]:.4f}" for k in names)
                log.info("step %d/%d %s lr %.3g %.1f images/s", done, total_steps, losses,
                         row["lr"], ips)
            preempted = any_rank(stop[0], env)
            if preempted or (settings.checkpoint_every and done % settings.checkpoint_every == 0
                             and done < total_steps):
                _save_state(resume, env, model, optimizer, done, curve)
            if preempted:
                raise TrainingPreempted(f"SIGTERM at step {done}: state saved, rerun to resume")
    return curve


def set_threads(threads: int | None) -> None:
    """Pin torch's threads and pick deterministic kernels (qaclims.determinism)."""
    from qaclims.determinism import configure_torch

    configure_torch(threads)


def input_files(*paths: PathLike | None) -> list[str]:
    """Existing files among ``paths`` (directories contribute their files), for the hash."""
    out: list[str] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_dir():
            out += [str(f) for f in sorted(p.rglob("*")) if f.is_file()]
        elif p.is_file():
            out.append(str(p))
    return out


# ---------------------------------------------------------------------------- train_cam


@torch.no_grad()
def calibrate_batchnorm(net: nn.Module, batches: Iterable[Any], device: str) -> int:
    """Re-estimate every FixedBatchNorm's running statistics on ``batches`` (cumulative
    average of batch statistics, in a forward pass in training mode); returns the batch count.

    Each layer is normalised with its batch statistics during the pass, so deeper layers see
    normalised inputs, as they will once the estimated statistics are frozen again.
    """
    from qaclims.cam.networks import FixedBatchNorm, _replace_batchnorm

    fixed = [m for m in net.modules() if isinstance(m, FixedBatchNorm)]
    if not fixed:
        return 0
    _replace_batchnorm(net, fixed=False)  # new modules: build optimisers after this
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    was_training = net.training
    net.train()
    n = 0
    for x, _, _ in batches:
        net(x.to(device))
        n += 1
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    _replace_batchnorm(net, fixed=True)
    net.train(was_training)
    return n


# ---------------------------------------------------------------------------- train_cam


def _train_cam_rank(env: DistEnv, manifest: str, classes: str, split: str,
                    settings: CamTrainSettings, out_model: str, out_curve: str,
                    resume_root: str | None) -> dict[str, Any]:
    from qaclims.cam.networks import CamNet
    from qaclims.data.manifest import read_classes
    from qaclims.vlp.backbones import load_resnet, resolve_resnet_weights

    set_threads(settings.threads)
    n_classes = len(read_classes(classes))
    images = split_images(manifest, split, n_classes)
    total = settings.total_steps(len(images))
    torch.manual_seed(settings.seed)  # random-init backbones and the classifier
    net = CamNet(load_resnet(settings.arch, settings.weights), n_classes,  # type: ignore[arg-type]
                 settings.output_stride).to(env.device)
    weights_file = resolve_resnet_weights(settings.arch, settings.weights)  # type: ignore[arg-type]
    resume = None
    if resume_root is not None:
        resume = ResumeState(resume_root, hashed_params(settings, split=split, stage="train_cam"),
                             input_files(manifest, classes, weights_file))
    augment = train_augment(settings.resize_long, settings.crop_size, settings.hflip)
    if settings.bn_calibration_batches and not (resume is not None and resume.exists()):
        # every rank sees the same batches (a 1-rank sampler): identical statistics
        n_cal = min(settings.bn_calibration_batches, len(images) // settings.batch_size)
        cal = StepBatchSampler(len(images), settings.batch_size, n_cal, settings.seed + 1)
        n_cal = calibrate_batchnorm(net, make_loader(images, augment, cal, settings.num_workers),
                                    env.device)
        if env.is_main:
            log.info("BatchNorm statistics re-estimated on %d batches", n_cal)
    optimizer = PolyOptimizer(
        net.trainable_parameter_groups(settings.lr, settings.weight_decay,
                                       settings.classifier_lr_mult),
        lr=settings.lr, max_step=total, weight_decay=settings.weight_decay,
        power=settings.poly_power, momentum=settings.momentum)
    start, curve = restore(resume, net, optimizer)
    if env.is_main:
        log.info("train_cam: %s, %d classes, %d images of %s, %d steps of %d (%d rank(s)), "
                 "start at step %d", settings.arch, n_classes, len(images), split, total,
                 settings.batch_size, env.world_size, start)
    ddp = wrap_ddp(net, env)
    sampler = StepBatchSampler(len(images), settings.batch_size, total, settings.seed, start,
                               env.rank, env.world_size)
    loader = make_loader(images, augment, sampler, settings.num_workers)
    dev = env.device

    def step_fn(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        x, y, _ = batch
        loss = F.multilabel_soft_margin_loss(ddp(x.to(dev)), y.to(dev))
        return loss, {"loss": loss.detach()}

    t0 = time.perf_counter()
    ddp.train()
    curve = fit(env, net, optimizer, loader, step_fn, start_step=start, total_steps=total,
                curve=curve, settings=settings, resume=resume,
                images_per_step=settings.batch_size)
    seconds = time.perf_counter() - t0
    summary = {"stage": "train_cam", "arch": settings.arch, "n_classes": n_classes,
               "output_stride": settings.output_stride, "split": split, "n_images": len(images),
               "steps": total, "resumed_from": start,
               "world_size": env.world_size, "train_seconds": round(seconds, 1),
               "final_loss": curve[-1]["loss"] if curve else None}
    if env.is_main:
        save_model(out_model, net.state_dict(), arch=settings.arch, n_classes=n_classes,
                   output_stride=settings.output_stride, stage="train_cam",
                   meta={**summary, "settings": settings.to_dict()})
        write_curve_tsv(curve, out_curve)
        if resume is not None:
            resume.clear()
        log.info("train_cam done: %s", summary)
    barrier(env)
    return summary


def train_cam(manifest: PathLike, classes: PathLike, out_model: PathLike, out_curve: PathLike,
              settings: CamTrainSettings, *, split: str, resume_root: PathLike | None = None,
              device: str = "cpu", world_size: int = 1) -> dict[str, Any]:
    """Train the baseline CAM network on ``split``; write the model file and the loss curve TSV.

    ``world_size > 1`` runs that many DDP ranks (GPUs on CUDA, gloo processes on CPU);
    ``resume_root`` holds the resumable state (``<root>/<params hash>/``), None disables it.
    Returns a summary dict (steps, time, final loss).
    """
    check_world(settings, world_size)
    return run_ranks(_train_cam_rank, world_size, device, str(manifest), str(classes), split,
                     settings, str(out_model), str(out_curve),
                     None if resume_root is None else str(resume_root))


def check_world(settings: TrainSettings, world_size: int) -> None:
    """The global batch must split evenly over the ranks."""
    if settings.batch_size % world_size:
        raise ValueError(f"batch_size {settings.batch_size} is not divisible by "
                         f"{world_size} ranks")


__all__: Sequence[str] = ["TrainingPreempted", "calibrate_batchnorm", "fit", "hashed_params",
                          "restore", "sigterm_flag", "train_cam"]
