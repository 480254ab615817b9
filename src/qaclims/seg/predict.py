"""DeepLab inference: MSC max logits -> full-size softmax -> [flip] -> [dense CRF] -> label PNGs.

As the authors test (method.md 10; CLIMS ``main_v2.py test`` / ``crf`` / ``eval.py``): the whole
image (no crop, batch 1) goes through the eval-mode MSC model, whose output is the pixel-wise max
of the logits at scales 1, 0.5, 0.75; the logits are upsampled bilinearly (align_corners=False) to
the image size, softmax-ed, optionally refined by a dense CRF, and arg-maxed.

* ``flip=True`` (not in the authors' DeepLab test) averages the softmax of the image and of its
  mirror image (mirrored back).
* ``crf=CrfParams()`` - pydensecrf's ``unary_from_softmax`` + ``addPairwiseGaussian(sxy=1,
  compat=3)`` + ``addPairwiseBilateral(sxy=67, srgb=3, compat=4)``, 10 mean-field iterations
  (deeplab-pytorch ``DenseCRF``). The bilateral term looks at the uint8 image. Released-code quirk:
  the authors pass their *mean-subtracted* BGR float image cast to uint8 (negative values wrap
  around), so their bilateral kernel sees a distorted image; ``CrfParams(authors_image=True)``
  reproduces that (the truncate-and-wrap an x86 float->uint8 cast does), the default uses the
  real image.

Outputs are VOC palette PNGs ``{image_id}.png`` written atomically (:func:`predict_split`);
:func:`write_voc_test_layout` arranges test-split PNGs as the PASCAL VOC evaluation server wants
them (``results/VOC2012/Segmentation/comp{5,6}_test_cls/{id}.png``, optionally as a tar.gz), and
:func:`score_split` scores a prediction directory against the ground truth.

torch is imported inside the functions: the CRF worker processes import only numpy and pydensecrf.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.store import atomic_path, read_label_png, write_label_png

MEAN_BGR: tuple[float, float, float] = (104.008, 116.669, 122.675)
VOC_COMPETITIONS = ("comp5", "comp6")


@dataclass(frozen=True)
class CrfParams:
    """Dense-CRF settings; defaults = the authors' ``CRF`` config block."""

    iterations: int = 10
    pos_xy_std: float = 1.0
    pos_w: float = 3.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    bi_w: float = 4.0
    authors_image: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"CRF iterations must be >= 1, got {self.iterations}")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    return image


def crf_image(image_rgb: np.ndarray, params: CrfParams,
              mean_bgr: Sequence[float] = MEAN_BGR) -> np.ndarray:
    """The uint8 image the bilateral kernel sees (the real one, or the authors' quirk)."""
    if not params.authors_image:
        return np.ascontiguousarray(image_rgb)
    bgr = image_rgb[:, :, ::-1].astype(np.float32) - np.asarray(mean_bgr, np.float32)
    return np.ascontiguousarray((np.trunc(bgr).astype(np.int64) & 0xFF).astype(np.uint8))


def dense_crf(image_rgb: np.ndarray, probs: np.ndarray, params: CrfParams = CrfParams(),
              mean_bgr: Sequence[float] = MEAN_BGR) -> np.ndarray:
    """Refine class probabilities [C, H, W] with a dense CRF over ``image_rgb`` [H, W, 3]."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    image_rgb = _as_rgb(image_rgb)
    c, h, w = probs.shape
    if (h, w) != image_rgb.shape[:2]:
        raise ValueError(f"probabilities {probs.shape} do not match image {image_rgb.shape}")
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=crf_image(image_rgb, params, mean_bgr), compat=params.bi_w)
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _to_input(image_rgb: np.ndarray, mean_bgr: Sequence[float], device: Any,
              input_norm: str = "caffe") -> Any:
    import torch

    from qaclims.seg.data import network_input

    x = network_input(image_rgb[:, :, ::-1].astype(np.float32), input_norm, mean_bgr)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)


def predict_probs(model: Any, image_rgb: np.ndarray, *, flip: bool = False,
                  mean_bgr: Sequence[float] = MEAN_BGR, input_norm: str = "caffe") -> Any:
    """Softmax [C, H, W] (a torch tensor on the model's device) of an RGB uint8 image."""
    import torch
    import torch.nn.functional as F

    image_rgb = _as_rgb(image_rgb)
    device = next(model.parameters()).device
    model.eval()
    h, w = image_rgb.shape[:2]
    with torch.inference_mode():
        x = _to_input(image_rgb, mean_bgr, device, input_norm)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        logits = model(batch)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        probs = F.softmax(logits, dim=1)
        if flip:
            return (probs[0] + probs[1].flip(-1)) / 2
        return probs[0]


def predict_image(model: Any, image_uint8: np.ndarray, *, flip: bool = False,
                  crf: CrfParams | None = None,
                  mean_bgr: Sequence[float] = MEAN_BGR, input_norm: str = "caffe") -> np.ndarray:
    """Label map (uint8 [H, W], 0 = background) of one RGB uint8 image [H, W, 3] (or grey)."""
    import torch

    image_rgb = _as_rgb(image_uint8)
    probs = predict_probs(model, image_rgb, flip=flip, mean_bgr=mean_bgr, input_norm=input_norm)
    if crf is None:
        return probs.argmax(0).to(torch.uint8).cpu().numpy()
    refined = dense_crf(image_rgb, probs.float().cpu().numpy(), crf, mean_bgr)
    return refined.argmax(0).astype(np.uint8)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as uint8 RGB (the reader training uses; a bad file raises
    :class:`~qaclims.data.images.ImageReadError` naming it)."""
    from qaclims.data.images import read_image

    return read_image(path)


def _crf_and_write(image_rgb: np.ndarray, probs: np.ndarray, params: CrfParams,
                   mean_bgr: Sequence[float], out: str) -> str:
    label = dense_crf(image_rgb, probs, params, mean_bgr).argmax(0).astype(np.uint8)
    write_label_png(label, out)
    return out


def predict_split(
    model: Any,
    manifest: Any,
    split: str,
    out_dir: str | os.PathLike[str],
    *,
    flip: bool = False,
    crf: CrfParams | None = None,
    mean_bgr: Sequence[float] = MEAN_BGR,
    input_norm: str = "caffe",
    image_ids: Iterable[str] | None = None,
    crf_workers: int = 0,
    skip_existing: bool = False,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Write ``{out_dir}/{image_id}.png`` for every image of ``split`` (or of ``image_ids``, a
    subset of it - one shard of a parallel job). Returns counts and timings.

    ``crf_workers > 0`` runs the CRF in that many processes while the model goes on.
    ``skip_existing``: images whose PNG is already in ``out_dir`` are not predicted again (each
    PNG is written atomically, so one that exists is complete): an interrupted run resumes.
    """
    from qaclims.seg.data import rows_for_split

    log = log or logging.getLogger(__name__)
    rows = rows_for_split(manifest, split)
    if image_ids is not None:
        wanted = list(image_ids)
        known = set(rows["image_id"])
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ValueError(f"image ids not in split {split!r}: {unknown[:5]}")
        rows = rows[rows["image_id"].isin(set(wanted))].reset_index(drop=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_total = len(rows)
    if skip_existing:
        done = rows["image_id"].map(lambda i: (out_dir / f"{i}.png").is_file())
        if done.any():
            log.info("%d of %d predictions already in %s: resuming", int(done.sum()), n_total,
                     out_dir)
        rows = rows[~done].reset_index(drop=True)
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(crf_workers) if crf is not None and crf_workers > 0 else None
    pending: set[Future] = set()
    try:
        for n, (image_id, path, h, w) in enumerate(zip(
                rows["image_id"], rows["image_path"], rows["height"], rows["width"],
                strict=True)):
            image = read_rgb(path)
            if image.shape[:2] != (int(h), int(w)):
                raise ValueError(f"{path}: image size {image.shape[:2]} != manifest {(h, w)}")
            target = str(out_dir / f"{image_id}.png")
            if pool is None:
                write_label_png(predict_image(model, image, flip=flip, crf=crf,
                                              mean_bgr=mean_bgr, input_norm=input_norm),
                                target)
            else:
                probs = predict_probs(model, image, flip=flip, mean_bgr=mean_bgr,
                                      input_norm=input_norm)
                pending.add(pool.submit(_crf_and_write, image, probs.float().cpu().numpy(),
                                        crf, tuple(mean_bgr), target))
                if len(pending) >= 2 * crf_workers:  # bound the memory held by queued maps
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
            if (n + 1) % 100 == 0:
                log.info("predicted %d/%d images", n + 1, len(rows))
        for f in pending:
            f.result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - t0
    log.info("wrote %d label PNGs to %s in %.1f s", len(rows), out_dir, seconds)
    return {"n_images": n_total, "n_predicted": len(rows), "seconds": seconds, "flip": flip,
            "crf": None if crf is None else vars(crf)}


def score_split(manifest: Any, split: str, pred_dir: str | os.PathLike[str], num_classes: int,
                image_ids: Iterable[str] | None = None) -> Any:
    """Confusion matrix of ``{pred_dir}/{id}.png`` against the ground truth of ``split``.

    Only images with ground truth count; a missing prediction raises (naming it).
    """
    from qaclims.metrics import ConfusionMatrix
    from qaclims.seg.data import rows_for_split

    rows = rows_for_split(manifest, split)
    if image_ids is not None:
        rows = rows[rows["image_id"].isin(set(image_ids))]
    rows = rows[rows["has_gt"]]
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no image with ground truth to score")
    pred_dir = Path(pred_dir)
    missing = [i for i in rows["image_id"] if not (pred_dir / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} predictions missing in {pred_dir}, e.g. "
                                f"{', '.join(missing[:5])}.png")
    cm = ConfusionMatrix(num_classes)
    for image_id, gt_path in zip(rows["image_id"], rows["gt_path"], strict=True):
        pred_file = pred_dir / f"{image_id}.png"
        gt, pred = read_label_png(gt_path), read_label_png(pred_file)
        if gt.shape != pred.shape:
            raise ValueError(f"{pred_file}: size {pred.shape} != ground truth {gt_path} "
                             f"{gt.shape}")
        cm.update(gt, pred)
    return cm


def write_voc_test_layout(
    pred_dir: str | os.PathLike[str],
    image_ids: Iterable[str],
    out_root: str | os.PathLike[str],
    *,
    competition: str = "comp6",
    archive: str | os.PathLike[str] | None = None,
) -> Path:
    """Copy the test predictions to ``{out_root}/results/VOC2012/Segmentation/
    {competition}_test_cls/{id}.png`` (the PASCAL VOC server layout) and optionally pack
    ``results/`` into the tar.gz ``archive`` to upload. Returns the PNG folder.

    ``comp6`` = trained with data beyond VOC (ImageNet, CLIP, BLIP: this method); the CLIMS code
    writes ``comp5``. Every id must have a palette PNG in ``pred_dir``.
    """
    import tarfile

    if competition not in VOC_COMPETITIONS:
        raise ValueError(f"competition must be one of {VOC_COMPETITIONS}, got {competition!r}")
    ids = list(image_ids)
    if not ids:
        raise ValueError("no test image ids given")
    pred_dir, out_root = Path(pred_dir), Path(out_root)
    missing = [i for i in ids if not (pred_dir / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(ids)} test predictions missing in "
                                f"{pred_dir}, e.g. {', '.join(missing[:5])}.png")
    rel = Path("results", "VOC2012", "Segmentation", f"{competition}_test_cls")
    dest = out_root / rel
    dest.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        src = pred_dir / f"{image_id}.png"
        read_label_png(src)  # raises unless a palette/grey PNG
        with atomic_path(dest / f"{image_id}.png") as tmp:
            shutil.copyfile(src, tmp)
    if archive is not None:
        with atomic_path(archive, suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
            for image_id in ids:
                tar.add(dest / f"{image_id}.png", arcname=str(rel / f"{image_id}.png"))
    return dest
