"""Confident foreground / background labels from CAMs and a dense CRF (method.md 9.1).

Per image, with the full-resolution CAMs ``high_res [K', H, W]`` (values in [0, 1]) and their
1-based class ids ``keys [K']``:

1. foreground pass: prepend a background plane of ``fg_threshold`` (0.30), argmax, refine the
   label map with the dense CRF, map plane indices to class ids through ``[0, *keys]``;
2. background pass: the same with ``bg_threshold`` (0.10);
3. combine: ``conf = fg``; pixels the foreground pass calls background become 255 (uncertain);
   pixels *both* passes call background become 0 (confident background).

The authors write step 3 as ``conf[bg + fg == 0] = 0``. With class ids >= 1 a sum of two ids is 0
only when both are 0, but only in a wide integer type: in uint8, ids 128 + 128 wrap to 0. It is
written here as ``(fg == 0) & (bg == 0)``. Where the two passes disagree on a class, the
foreground pass wins, as in the authors' code.

The CRF is pydensecrf's ``DenseCRF2D`` with ``unary_from_labels(labels, K'+1, gt_prob,
zero_unsure=False)`` (label 0 is the background plane, a real label), a Gaussian kernel
(``sxy=3, compat=3``), a bilateral kernel on the raw RGB image (``sxy=50, srgb=5, compat=10``)
and 10 mean-field iterations (``crf_inference_label`` of the authors' ``misc/imutils.py``).

An image with no class (``K' = 0``, COCO images without labels) is confident background
everywhere; the CRF is not run (pydensecrf's unary divides by ``n_labels - 1``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "CrfParams",
    "IrLabelItem",
    "crf_inference_label",
    "make_ir_label",
    "make_ir_labels",
]

IGNORE = 255


@dataclass(frozen=True)
class CrfParams:
    """Dense-CRF settings of ``crf_inference_label`` (the authors' values are the defaults)."""

    t: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    gt_prob: float = 0.7

    def __post_init__(self) -> None:
        if int(self.t) != self.t or self.t < 0:
            raise ValueError(f"CRF iterations t must be a non-negative integer, got {self.t}")
        if not 0.0 < self.gt_prob < 1.0:
            raise ValueError(f"CRF gt_prob must be in (0, 1), got {self.gt_prob}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CRF {name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CrfParams:
        """Build from a config mapping (unknown keys are an error, missing keys default)."""
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown CRF parameters {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IrLabelItem:
    """One image's inputs for :func:`make_ir_labels`."""

    image_id: str
    image: np.ndarray  # uint8 [H, W, 3] RGB
    high_res: np.ndarray  # float [K', H, W]
    keys: Sequence[int]  # 1-based class ids [K']


def crf_inference_label(image: np.ndarray, labels: np.ndarray, n_labels: int,
                        crf: CrfParams = CrfParams()) -> np.ndarray:
    """Dense-CRF refinement of a hard label map ``labels [H, W]`` (values ``0..n_labels-1``)
    on the uint8 RGB ``image [H, W, 3]``; returns the int64 argmax of the CRF marginals."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = labels.shape
    if n_labels < 2:
        raise ValueError(f"the CRF needs at least 2 labels, got {n_labels}")
    d = dcrf.DenseCRF2D(w, h, n_labels)
    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=crf.gt_prob,
                              zero_unsure=False)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=crf.gaussian_sxy, compat=crf.gaussian_compat)
    # pydensecrf reads the image buffer directly: it must be C-contiguous uint8 [H, W, 3], and
    # writeable (its typed memoryview rejects a read-only buffer, e.g. np.asarray of a PIL image)
    rgb = np.ascontiguousarray(image, dtype=np.uint8)
    if not rgb.flags.writeable:
        rgb = rgb.copy()
    d.addPairwiseBilateral(sxy=crf.bilateral_sxy, srgb=crf.bilateral_srgb, rgbim=rgb,
                           compat=crf.bilateral_compat)
    q = np.asarray(d.inference(int(crf.t)), dtype=np.float32)
    return np.argmax(q.reshape(n_labels, h, w), axis=0)


def _validate(image_id: str, image: Any, high_res: Any, keys: Any
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image {image_id!r}: expected an RGB image [H, W, 3], got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image {image_id!r}: expected a uint8 image, got dtype {img.dtype}")
    cams = np.asarray(high_res)
    if cams.ndim != 3:
        raise ValueError(f"image {image_id!r}: expected CAMs [K', H, W], got shape {cams.shape}")
    if cams.shape[1:] != img.shape[:2]:
        raise ValueError(f"image {image_id!r}: CAM size {cams.shape[1:]} != image size "
                         f"{img.shape[:2]}")
    if not np.issubdtype(cams.dtype, np.floating):
        raise ValueError(f"image {image_id!r}: CAMs must be floating point, got {cams.dtype}")
    if not np.isfinite(cams).all():
        raise ValueError(f"image {image_id!r}: CAMs hold NaN or infinite values")
    k = np.asarray(keys).reshape(-1)
    if len(k) != cams.shape[0]:
        raise ValueError(f"image {image_id!r}: {len(k)} keys for {cams.shape[0]} CAM planes")
    if len(k):
        if not np.issubdtype(k.dtype, np.integer) and not np.array_equal(k, np.round(k)):
            raise ValueError(f"image {image_id!r}: keys must be integers, got {k.tolist()}")
        k = k.astype(np.int64)
        if k.min() < 1 or k.max() > 254 or len(np.unique(k)) != len(k):
            raise ValueError(f"image {image_id!r}: keys must be distinct class ids in 1..254, "
                             f"got {k.tolist()}")
    return img, cams, k.astype(np.int64)


def make_ir_label(
    image: np.ndarray,
    high_res: np.ndarray,
    keys: Sequence[int],
    *,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.10,
    crf: CrfParams = CrfParams(),
    image_id: str = "?",
) -> np.ndarray:
    """The IR label of one image: uint8 ``[H, W]``, 0 confident background, class id (1..K)
    confident foreground, 255 uncertain. See the module docstring.

    Raises ValueError (naming ``image_id``) on a malformed image, CAM or keys, or when
    ``fg_threshold < bg_threshold`` (the foreground pass must be the stricter one).
    """
    if not fg_threshold >= bg_threshold:
        raise ValueError(f"fg_threshold {fg_threshold} must be >= bg_threshold {bg_threshold} "
                         "(the foreground pass is the stricter one)")
    img, cams, k = _validate(image_id, image, high_res, keys)
    h, w = img.shape[:2]
    if len(k) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    plane_to_id = np.concatenate([[0], k]).astype(np.int64)

    def one_pass(threshold: float) -> np.ndarray:
        # the background plane in the CAMs' own dtype, as np.pad(constant_values=thr) does
        bg = np.full((1, h, w), threshold, dtype=cams.dtype)
        labels = np.argmax(np.concatenate([bg, cams], axis=0), axis=0)
        return plane_to_id[crf_inference_label(img, labels, len(plane_to_id), crf)]

    fg = one_pass(fg_threshold)
    bg = one_pass(bg_threshold)
    conf = fg.copy()
    conf[fg == 0] = IGNORE
    conf[(fg == 0) & (bg == 0)] = 0
    return conf.astype(np.uint8)


def _work(item: IrLabelItem, fg_threshold: float, bg_threshold: float,
          crf: CrfParams) -> tuple[str, np.ndarray]:
    return item.image_id, make_ir_label(
        item.image, item.high_res, item.keys, fg_threshold=fg_threshold,
        bg_threshold=bg_threshold, crf=crf, image_id=item.image_id,
    )


def make_ir_labels(
    items: Iterable[IrLabelItem],
    n_workers: int = 1,
    *,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.10,
    crf: CrfParams = CrfParams(),
    max_pending: int | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """:func:`make_ir_label` over many images; yields ``(image_id, label)`` in input order.

    ``n_workers <= 1`` runs in this process. Otherwise a pool of ``n_workers`` spawned processes
    does the CRFs; at most ``max_pending`` (default ``4 * n_workers``) images are in flight, so
    ``items`` may be a lazy generator over a large dataset without filling the memory. An error
    in any image is re-raised here (it names the image).
    """
    if n_workers <= 1:
        for item in items:
            yield _work(item, fg_threshold, bg_threshold, crf)
        return
    import multiprocessing as mp

    limit = max(1, max_pending if max_pending is not None else 4 * n_workers)
    # spawn, not fork: the parent may hold torch/OpenMP threads that a fork would break
    with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque[Future[tuple[str, np.ndarray]]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(_work, item, fg_threshold, bg_threshold, crf))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
