"""The DeepLab stage's steps as the workflow runs them (method.md 10), one function per rule.

* :func:`gather_training_labels` (rule ``deeplab_labels``): one folder ``{image_id}.png`` per
  training image - an experiment's pseudo masks (spread over the IRN shard folders) or the
  ground truth (the upper-bound experiment) - what :class:`~qaclims.seg.data.SegTrainDataset`
  reads. Missing labels fail here, naming them, instead of an hour into training.
* :func:`run_train_deeplab` (``train_deeplab``): :func:`~qaclims.seg.train.train_deeplab` on one
  process or on DDP ranks (one per GPU), then the loss curve as TSV; the resume state is
  removed once the model is written.
* :func:`run_predict_deeplab` (``predict_deeplab``): palette PNGs of a split (MSC max logits,
  optional flip and dense CRF).
* :func:`run_voc_test_submission` (``deeplab_voc_test``): the test predictions in the PASCAL VOC
  server layout + the archive to upload.
* :func:`evaluate_deeplab` (``eval_deeplab``): mIoU and per-class IoU on the split with ground
  truth -> ``metrics.json``.

torch is imported inside the functions, so reading this module is cheap.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from qaclims.store import atomic_path, temp_dir, write_json

PathLike = str | os.PathLike[str]
log = logging.getLogger(__name__)

__all__ = ["evaluate_deeplab", "gather_training_labels", "run_predict_deeplab",
           "run_train_deeplab", "run_voc_test_submission", "write_loss_curve"]


# -- training labels ------------------------------------------------------------------------
def gather_training_labels(manifest: PathLike | Any, split: str, out_dir: PathLike, *,
                           source_dirs: Sequence[PathLike] = (), ground_truth: bool = False
                           ) -> dict[str, Any]:
    """Copy the label PNG of every image of ``split`` into ``out_dir/{image_id}.png``.

    ``ground_truth=False``: from the first of ``source_dirs`` (the IRN pseudo-mask shard
    folders) that holds ``{image_id}.png``; ``True``: from the manifest's ``gt_path``. Every
    image must have one, or ``FileNotFoundError`` names the missing ones and nothing is written.
    The folder appears complete or not at all (built beside, then renamed). Copies, not links:
    the files get fresh times, so the output is newer than its inputs for Snakemake.
    """
    from qaclims.seg.data import rows_for_split

    rows = rows_for_split(manifest, split)
    ids = [str(i) for i in rows["image_id"]]
    sources: dict[str, Path] = {}
    if ground_truth:
        if source_dirs:
            raise ValueError("ground-truth labels come from the manifest, not from folders")
        for image_id, has_gt, gt in zip(ids, rows["has_gt"], rows["gt_path"], strict=True):
            if has_gt and gt and Path(gt).is_file():
                sources[image_id] = Path(gt)
        what = "ground-truth masks (manifest gt_path)"
    else:
        if not source_dirs:
            raise ValueError("no pseudo-mask folders given")
        for d in source_dirs:
            if not Path(d).is_dir():
                raise FileNotFoundError(f"pseudo-mask folder {d} does not exist")
            for png in Path(d).glob("*.png"):
                sources.setdefault(png.stem, png)
        what = f"pseudo masks in {len(source_dirs)} folder(s) ({', '.join(map(str, source_dirs))})"
    missing = [i for i in ids if i not in sources]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(ids)} images of split {split!r} have no "
                                f"{what}, e.g. {', '.join(missing[:5])}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out_dir.parent, prefix=f".{out_dir.name}.")
    try:
        for image_id in ids:
            shutil.copyfile(sources[image_id], tmp / f"{image_id}.png")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"split": split, "n_images": len(ids),
            "source": "ground_truth" if ground_truth else "pseudo_masks"}


# -- training -------------------------------------------------------------------------------
def _train_rank(env: Any, settings: Any, manifest: str, split: str, label_dir: str,
                out_model: str, resume_dir: str | None) -> dict[str, Any]:
    """One rank of :func:`run_train_deeplab` (module level: spawned ranks pickle it)."""
    from qaclims.seg.train import train_deeplab

    return train_deeplab(replace(settings, device=env.device), manifest, split, label_dir,
                         out_model, resume_dir=resume_dir, log=log)


def write_loss_curve(losses: Sequence[float], settings: Any, path: PathLike) -> None:
    """``iteration  loss  lr`` per iteration (1-based; lr = the backbone group's, the ASPP
    groups get their multiples), atomically."""
    from qaclims.seg.optim import poly_lr

    lines = ["iteration\tloss\tlr"]
    for t, loss in enumerate(losses):
        lr = poly_lr(settings.lr, t, settings.iterations, settings.poly_power,
                     settings.lr_decay_every)
        lines.append(f"{t + 1}\t{loss:.6g}\t{lr:.6g}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def run_train_deeplab(manifest: PathLike, classes: PathLike, label_dir: PathLike,
                      out_model: PathLike, out_curve: PathLike, *, train: Mapping[str, Any],
                      split: str, init: str | None, resume_dir: PathLike | None = None,
                      device: str = "cpu", world_size: int = 1, threads: int | None = None
                      ) -> dict[str, Any]:
    """Train DeepLab on ``split`` with the labels in ``label_dir`` (``seg.train`` settings
    ``train``, init weights ``init``); write the model and the loss curve. ``world_size`` > 1
    on CUDA runs that many DDP ranks. Returns the training summary (without the curve)."""

    from qaclims.cam.distributed import run_ranks
    from qaclims.data.manifest import read_classes
    from qaclims.determinism import configure_torch
    from qaclims.seg.settings import SegTrainSettings

    train_settings = SegTrainSettings.from_dict(train)
    n_classes = len(read_classes(classes)) + 1
    settings = train_settings.deeplab_settings(n_classes, init, device)
    configure_torch(train_settings.threads or threads)
    ranks = int(world_size) if device.startswith("cuda") else 1
    result = run_ranks(_train_rank, ranks, device, settings, str(manifest), split,
                       str(label_dir), str(out_model),
                       None if resume_dir is None else str(resume_dir))
    write_loss_curve(result["loss_curve"], settings, out_curve)
    if resume_dir is not None:  # the model is written: the state only takes disk now
        shutil.rmtree(resume_dir, ignore_errors=True)
    summary = {k: v for k, v in result.items() if k != "loss_curve"}
    summary["final_loss"] = result["loss_curve"][-1] if result["loss_curve"] else None
    summary["world_size"] = ranks
    log.info("train_deeplab: %s", summary)
    return summary


# -- prediction -----------------------------------------------------------------------------
def checkpoint_input(path: PathLike) -> tuple[tuple[float, float, float], str]:
    """``(mean_bgr, input_norm)`` the model was trained with (its checkpoint's meta; files
    without them: the authors' mean and caffe-style input)."""
    from qaclims.seg.predict import MEAN_BGR
    from qaclims.torch_io import safe_load

    payload = safe_load(path, "DeepLab checkpoint")
    meta = (payload.get("meta") if isinstance(payload, dict) else None) or {}
    mean = (meta.get("settings") or {}).get("mean_bgr")
    mean_bgr = tuple(float(m) for m in mean) if mean else MEAN_BGR
    return mean_bgr, str(meta.get("input_norm", "caffe"))  # type: ignore[return-value]


def run_predict_deeplab(model_path: PathLike, manifest: PathLike, split: str,
                        out_dir: PathLike, *, predict: Mapping[str, Any], device: str = "cpu",
                        threads: int = 1, torch_threads: int | None = None) -> dict[str, Any]:
    """Label PNGs of every image of ``split`` with the trained model (``seg.predict``
    settings ``predict``). The CRF runs in ``crf_workers`` processes (None: ``threads``; one
    thread: in this process); the network with ``torch_threads`` (None: ``threads``).

    Resumable: the PNGs go to ``.{out_dir name}.partial/<hash>/`` beside ``out_dir`` (not a
    declared output, so Snakemake does not delete it when a job is killed or preempted), where
    ``hash`` covers the model file's bytes, the split and the settings; a rerun predicts only
    the images not there yet, and the finished folder is renamed to ``out_dir``.
    """
    import hashlib
    import json

    from qaclims.determinism import configure_torch
    from qaclims.provenance import file_sha256
    from qaclims.seg.networks import load_deeplab_checkpoint
    from qaclims.seg.predict import predict_split
    from qaclims.seg.settings import SegPredictSettings

    s = SegPredictSettings.from_dict(predict)
    configure_torch(max(1, int(torch_threads or threads)))
    model = load_deeplab_checkpoint(model_path, map_location=device)
    if s.scales is not None:
        model.scales = tuple(s.scales)
    workers = s.crf_workers if s.crf_workers is not None else (threads if threads > 1 else 0)
    log.info("predicting %r with %s (MSC scales 1 + %s, flip %s, CRF %s)", split, model_path,
             list(model.scales), s.flip, s.crf_params if s.crf else "off")
    mean_bgr, input_norm = checkpoint_input(model_path)
    out_dir = Path(out_dir)
    key = json.dumps({"model": file_sha256(model_path), "split": split,
                      "predict": dict(predict)}, sort_keys=True, default=str)
    partial_root = out_dir.parent / f".{out_dir.name}.partial"
    partial = partial_root / hashlib.sha256(key.encode()).hexdigest()[:16]
    summary = predict_split(model, manifest, split, partial, flip=s.flip, crf=s.crf_config(),
                            mean_bgr=mean_bgr, input_norm=input_norm, crf_workers=workers,
                            skip_existing=True, log=log)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    shutil.rmtree(partial_root, ignore_errors=True)  # states of other settings are stale now
    return summary


def run_voc_test_submission(manifest: PathLike, split: str, pred_dir: PathLike,
                            out_root: PathLike, archive: PathLike, *,
                            competition: str = "comp6") -> Path:
    """``{out_root}/results/VOC2012/Segmentation/{competition}_test_cls/*.png`` + ``archive``
    (tar.gz of ``results/``) for the PASCAL VOC server, from the predictions of ``split``."""
    from qaclims.seg.data import rows_for_split
    from qaclims.seg.predict import write_voc_test_layout

    ids = [str(i) for i in rows_for_split(manifest, split)["image_id"]]
    return write_voc_test_layout(pred_dir, ids, out_root, competition=competition,
                                 archive=archive)


# -- evaluation -----------------------------------------------------------------------------
def evaluate_deeplab(manifest: PathLike, classes: PathLike, pred_dir: PathLike,
                     out_json: PathLike, *, split: str,
                     settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """mIoU of the predictions in ``pred_dir`` on ``split`` (images with ground truth; GT 255
    ignored) -> ``out_json``: ``ConfusionMatrix.to_dict`` (``miou``, per-class ``iou`` by
    name, ...) + stage, split, n_images and the prediction settings. Returns the dict."""
    from qaclims.data.manifest import class_names, read_classes
    from qaclims.seg.data import rows_for_split
    from qaclims.seg.predict import score_split

    names = class_names(read_classes(classes))
    cm = score_split(manifest, split, pred_dir, len(names))
    n_images = int(rows_for_split(manifest, split)["has_gt"].sum())
    out = {"stage": "deeplab", "split": split, "n_images": n_images,
           "settings": dict(settings or {}), **cm.to_dict(names)}
    write_json(out, out_json)
    log.info("DeepLab mIoU on %s (%d images): %.4f", split, n_images,
             out["miou"] if out["miou"] is not None else float("nan"))
    return out
