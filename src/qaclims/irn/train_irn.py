"""Stage G2: train IRN's edge + displacement network on the IR labels (method.md 9.2).

Recipe (authors' defaults, :class:`~qaclims.irn.settings.IrnTrainSettings`): an ImageNet ResNet
(ResNet-50), **frozen**, under the edge and displacement branches of
:class:`~qaclims.irn.networks.EdgeDisplacementNet`; the affinity + displacement loss of
:class:`~qaclims.irn.losses.AffinityDisplacementLoss` on radius-10 pairs of the stride-4 output;
poly SGD with the edge branch at lr 0.1 and the displacement branch at 10x, weight decay 1e-4
(the authors' effective momentum 1e-4, see qaclims.cam.optim); batch 32, crop 512, 3 epochs ->
``(n_images // 32) * 3`` steps (990 on VOC train_aug).

After training, the displacement mean over the training images (scale 1, top-left crop padded
with 0, batches of ``batch_size``, mean of the batch means, as the authors) becomes the network's
``MeanShift``, subtracted at inference.

The loop is the CAM stages' :func:`qaclims.cam.train_cam.fit`: resumable state every
``checkpoint_every`` steps and on SIGTERM under ``<resume_root>/<params hash>/``
(:class:`qaclims.cam.checkpoint.ResumeState`, the hash covers the settings and the input files'
contents), a progress line every ``log_every`` steps (step, losses, lr, images/s), one curve row
per step. A resumed run ends with the same weights as one that never stopped: the batches and
their augmentation come from the step number (:class:`qaclims.cam.datasets.StepBatchSampler`).
One process on one device (the backbone is frozen: the authors' DataParallel over 2 GPUs only
split the batch).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qaclims.cam.checkpoint import ResumeState, save_model
from qaclims.cam.datasets import StepBatchSampler
from qaclims.cam.distributed import DistEnv
from qaclims.cam.optim import PolyOptimizer
from qaclims.cam.train_cam import RESULT_NEUTRAL, fit, input_files, restore
from qaclims.irn.datasets import AffinityDataset, TopLeftCropDataset
from qaclims.irn.losses import AffinityDisplacementLoss
from qaclims.irn.networks import EdgeDisplacementNet, from_authors_state_dict
from qaclims.irn.pipeline import label_files, shard_rows
from qaclims.irn.settings import IrnTrainSettings
from qaclims.store import write_json

__all__ = ["build_irn_network", "load_irn_network", "mean_displacement", "train_irn"]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
STAGE = "train_irn"


def build_irn_network(arch: str, weights: str | None) -> EdgeDisplacementNet:
    """An :class:`EdgeDisplacementNet` on ``load_resnet(arch, weights)`` (branches from the
    current torch seed)."""
    from qaclims.vlp.backbones import load_resnet

    return EdgeDisplacementNet(load_resnet(arch, weights))  # type: ignore[arg-type]


def load_irn_network(path: PathLike) -> tuple[EdgeDisplacementNet, dict[str, Any]]:
    """The network in an IRN model file, loaded strictly: this stage's files, or the authors'
    ``res50_irn.pth`` (a plain state dict on ResNet-50). Returns ``(net, info)``."""
    import torchvision

    from qaclims.torch_io import safe_load

    path = Path(path)
    obj = safe_load(path, "IRN model file")
    if isinstance(obj, Mapping) and "state_dict" in obj and "arch" in obj:
        if obj.get("stage") != STAGE:
            raise ValueError(f"{path}: a model of stage {obj.get('stage')!r}, expected an IRN "
                             f"model ({STAGE!r})")
        sd, arch = dict(obj["state_dict"]), str(obj["arch"])
        info = {"arch": arch, "stage": STAGE, "meta": dict(obj.get("meta", {}))}
    elif isinstance(obj, Mapping):
        sd, arch = from_authors_state_dict(obj), "resnet50"
        if not any(k.startswith("fc_edge") for k in sd):
            raise ValueError(f"{path}: neither a qaclims IRN model nor an IRN state dict "
                             "(no fc_edge* keys)")
        info = {"arch": arch, "stage": "external", "meta": {}}
    else:
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    # a shell: every weight comes from the file
    net = EdgeDisplacementNet(getattr(torchvision.models, arch)(weights=None))
    net.load_state_dict(sd, strict=True)
    return net, info


@torch.no_grad()
def mean_displacement(net: EdgeDisplacementNet, image_paths: Sequence[PathLike], *,
                      crop_size: int, batch_size: int, device: str = "cpu",
                      num_workers: int = 0) -> Tensor:
    """Mean raw displacement ``[2]`` over the images (top-left crop, as the authors: batches
    of ``batch_size`` without the last partial one, mean of the batch means; one partial batch
    when there are fewer images than ``batch_size``)."""
    was_training = net.training
    saved = net.mean_shift.running_mean.clone()
    net.set_mean_shift(torch.zeros(2))  # the raw displacements
    net.eval()
    drop_last = len(image_paths) >= batch_size
    loader = torch.utils.data.DataLoader(TopLeftCropDataset(image_paths, crop_size),
                                         batch_size=batch_size, shuffle=False,
                                         drop_last=drop_last, num_workers=num_workers)
    means = [net(x.to(device))[1].mean(dim=(0, 2, 3)).double().cpu() for x in loader]
    net.set_mean_shift(saved)
    net.train(was_training)
    if not means:
        raise ValueError("no images for the mean displacement")
    return torch.stack(means).mean(dim=0).float()


def _hashed_params(settings: IrnTrainSettings, **extra: Any) -> dict[str, Any]:
    d = {k: v for k, v in settings.to_dict().items() if k not in RESULT_NEUTRAL}
    return {**d, **extra}


def train_irn(manifest: PathLike, classes: PathLike, label_dirs: Sequence[PathLike],
              out_model: PathLike, out_curve: PathLike, settings: IrnTrainSettings, *,
              split: str, resume_root: PathLike | None = None,
              device: str = "cpu") -> dict[str, Any]:
    """Train on the images of ``split`` with their IR labels (PNG files in ``label_dirs``);
    write the model file (mean shift set) and the loss curve JSON. ``resume_root`` holds the
    resumable state (None disables it). Returns a summary dict."""
    from qaclims.data.manifest import read_classes, read_manifest
    from qaclims.determinism import configure_torch
    from qaclims.vlp.backbones import resolve_resnet_weights

    configure_torch(settings.threads)
    n_classes = len(read_classes(classes))
    rows = shard_rows(read_manifest(manifest, num_classes=n_classes), [split])
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no images in {manifest}")
    dataset = AffinityDataset(
        rows["image_id"].tolist(), rows["image_path"].tolist(), label_files(label_dirs),
        n_classes, crop_size=settings.crop_size, scale_range=settings.scale_range,
        hflip=settings.hflip, radius=settings.radius)
    total = settings.total_steps(len(dataset))

    torch.manual_seed(settings.seed)  # random-init backbones and the branches
    net = build_irn_network(settings.arch, settings.weights).to(device)
    weights_file = resolve_resnet_weights(settings.arch, settings.weights)  # type: ignore[arg-type]
    resume = None
    if resume_root is not None:
        resume = ResumeState(resume_root, _hashed_params(settings, split=split, stage=STAGE),
                             input_files(manifest, classes, weights_file, *label_dirs))
    optimizer = PolyOptimizer(
        net.trainable_parameter_groups(settings.lr, settings.weight_decay,
                                       settings.displacement_lr_mult),
        lr=settings.lr, max_step=total, weight_decay=settings.weight_decay,
        power=settings.poly_power, momentum=settings.momentum)
    start, curve = restore(resume, net, optimizer)
    log.info("train_irn: %s, %d images of %s, %d steps of %d (crop %d, radius %d), start at "
             "step %d, device %s", settings.arch, len(dataset), split, total,
             settings.batch_size, settings.crop_size, settings.radius, start, device)
    sampler = StepBatchSampler(len(dataset), settings.batch_size, total, settings.seed, start)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                         num_workers=settings.num_workers)
    loss_fn = AffinityDisplacementLoss(dataset.path_index).to(device)

    def step_fn(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        x, bg_pos, fg_pos, neg = (t.to(device) for t in batch)
        edge, disp = net(x)
        losses = loss_fn(edge, disp, bg_pos, fg_pos, neg)
        parts = {"loss": losses.total.detach()}
        parts.update({k: getattr(losses, k).detach()
                      for k in ("pos_aff", "neg_aff", "dp_fg", "dp_bg")})
        return losses.total, parts

    t0 = time.perf_counter()
    net.train()
    curve = fit(DistEnv(device=device), net, optimizer, loader, step_fn, start_step=start,
                total_steps=total, curve=curve, settings=settings,  # type: ignore[arg-type]
                resume=resume, images_per_step=settings.batch_size)
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    mean = mean_displacement(net, rows["image_path"].tolist(), crop_size=settings.crop_size,
                             batch_size=settings.batch_size, device=device,
                             num_workers=settings.num_workers)
    net.set_mean_shift(mean)
    log.info("mean displacement %s (%.1f s)", [round(v, 5) for v in mean.tolist()],
             time.perf_counter() - t1)
    summary = {"stage": STAGE, "arch": settings.arch, "split": split,
               "n_images": len(dataset), "steps": total, "resumed_from": start,
               "device": str(device), "train_seconds": round(train_seconds, 1),
               "final_loss": curve[-1]["loss"] if curve else None,
               "mean_shift": [float(v) for v in mean.tolist()]}
    save_model(out_model, net.state_dict(), arch=settings.arch, n_classes=n_classes,
               stage=STAGE, meta={**summary, "settings": settings.to_dict()})
    write_json({**summary, "settings": settings.to_dict(), "curve": curve}, out_curve)
    if resume is not None:
        resume.clear()
    log.info("train_irn done: %s", summary)
    return summary
