"""Random walk of the stride-4 CAMs on IRN's boundary map, and the pseudo masks (method.md 9.3).

The authors (IRN ``misc/indexing.propagate_to_edge``) build, per image with a stride-4 map of
``n = h * w`` pixels:

* the affinity ``A[i, j] = 1 - max(edge on the path i -> j)`` for every pair closer than
  ``radius`` (5), ``A[i, i] = 1``, else 0 (edge padded with 1, which never changes a pair of
  real pixels: a path stays inside the bounding box of its two ends);
* ``T = A**beta / column sums`` (beta 10) as a dense ``n x n`` matrix, squared ``exp_times``
  (8) times: ``T**(2**8)``;
* ``rw = (cam * (1 - edge)) @ T**256``, ``[K', n]``.

That is O(n^2) memory (0.55 GB per matrix for a 125x94 VOC map, 1.5 GB for a 160x120 COCO map,
several live at once) and ``2 * 8 * n**3`` flops (~26 TFLOP per VOC image).

Here the same product is computed as 256 applications of the sparse ``T`` to the ``K'``
vectors: ``x @ T**256 == (...((x @ T) @ T) ...) @ T`` exactly (matrix products are
associative), only the floating-point rounding differs. ``T`` has ``2 * D + 1`` non-zeros per
column (D = 34 directions for radius 5, so at most 69), so the cost is
``2 * 256 * nnz * K'`` flops (~0.8 GFLOP for a 2-class VOC map) and the memory O(nnz + K' n)
(~60 MB for a VOC map, ~110 MB for a COCO map with 20 classes). With
``M = T.T = diag(1/deg) A`` (A is symmetric, ``deg`` its column sums) one step is the CSR
product ``Y <- M @ Y`` for ``Y = x.T``.

Precision: the sparse walk runs in float64 (the inputs are first rounded to float32, as the
authors' are). 256 float32 steps would drift by ~1e-4 relative where a region is nearly cut
off by the boundary map (an eigenvalue close to 1 keeps the rounding of every step); in float64
the result is within ~1e-8 of the exact value, closer than the authors' own float32 squarings
(~3e-5). The rows of ``M`` are normalised in float64 for the same reason.

Threads: one step is a few hundred thousand multiply-adds, too little to share between threads;
with several torch threads on a busy machine the walk gets many times slower. Run it with
``torch.set_num_threads(1)`` and process images in parallel jobs instead.

:func:`random_walk` picks the formulation by a small cost model (:func:`plan_random_walk`):
among the formulations whose estimated peak memory fits ``memory_budget_mb``, the one with
fewer flops (the dense matrix power wins only for maps of a few dozen pixels); the sparse one
processes the classes in chunks if the budget requires. :func:`random_walk_dense_reference`
follows the authors' construction literally (index gather, padded dense matrix, crop, matrix
power), for tests and the benchmark.

The pseudo mask (:func:`pseudo_mask`): bilinear x4 upsampling of ``rw``, crop to the image,
division by the **global** maximum over all classes, a background plane of ``bg_threshold``
(0.20) in front, argmax, plane -> class id through ``[0, *keys]``. An image whose random walk is
zero everywhere (no CAM at all) becomes background; the authors' division by 0 would give NaN.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaclims.irn.path_index import PathIndex, search_paths

__all__ = [
    "RandomWalkPlan",
    "infer_edge",
    "plan_random_walk",
    "pseudo_mask",
    "random_walk",
    "random_walk_dense_reference",
    "transition_operator",
]

DEFAULT_MEMORY_BUDGET_MB = 2048.0
_METHODS = ("auto", "sparse", "dense")


# -- edge inference -------------------------------------------------------------------------------
@torch.no_grad()
def infer_edge(model: nn.Module, image: Tensor) -> Tensor:
    """Boundary probabilities ``[ceil(H/4), ceil(W/4)]`` of one normalised image ``[3, H, W]``.

    The image and its horizontal flip go through ``model`` (an
    :class:`~qaclims.irn.networks.EdgeDisplacementNet`, which should be in eval mode) as one
    batch; ``edge = sigmoid(logits[0] / 2 + flip(logits[1]) / 2)``, cropped to
    ``((H - 1) // 4 + 1, (W - 1) // 4 + 1)``. Returned as float32 on the CPU.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one normalised image [3, H, W], got {tuple(image.shape)}")
    device = next(model.parameters()).device
    x = image.to(device=device, dtype=torch.float32)
    logits, _ = model(torch.stack([x, x.flip(-1)]))
    edge = torch.sigmoid(logits[0, 0] / 2 + logits[1, 0].flip(-1) / 2)
    h, w = (image.shape[1] - 1) // 4 + 1, (image.shape[2] - 1) // 4 + 1
    return edge[:h, :w].float().cpu()


# -- the sparse transition operator -------------------------------------------------------------
@dataclass(frozen=True)
class _PairStructure:
    """Index structure of ``M = diag(1/deg) A`` for one (radius, h, w), independent of the edge."""

    path_index: PathIndex  # on the padded map (h + r, w + 2r)
    sel: Tensor  # positions of the real-pixel pairs in the flattened [D, n_src] affinities
    src: Tensor  # [E] unpadded flat index of each pair's source
    dst: Tensor  # [E] unpadded flat index of each pair's destination
    perm: Tensor  # order of [pairs s->d, pairs d->s, diagonal] that sorts them by (row, col)
    crow: Tensor  # CSR row pointers [n + 1]
    col: Tensor  # CSR column indices [nnz]


@functools.lru_cache(maxsize=8)
def _pair_structure(radius: int, h: int, w: int) -> _PairStructure:
    r = radius
    pi = PathIndex(radius=r, size=(h + r, w + 2 * r))
    wp = w + 2 * r

    def unpad(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        row, col = np.divmod(flat, wp)
        col = col - r
        ok = (row < h) & (col >= 0) & (col < w)
        return row * w + col, ok

    s, ok_s = unpad(pi.src_indices)
    d, ok_d = unpad(pi.dst_indices)
    ok = ok_s[None, :] & ok_d
    sel = np.flatnonzero(ok)
    src = np.broadcast_to(s[None, :], d.shape).reshape(-1)[sel]
    dst = d.reshape(-1)[sel]
    n = h * w
    diag = np.arange(n, dtype=np.int64)
    rows = np.concatenate([src, dst, diag])
    cols = np.concatenate([dst, src, diag])
    perm = np.lexsort((cols, rows))  # by row, then column: CSR order
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    t = torch.from_numpy
    return _PairStructure(pi, t(sel), t(src), t(dst), t(perm), t(crow), t(cols[perm]))


def _n_pairs_upper_bound(radius: int, n: int) -> int:
    return len(search_paths(radius)) * n


def transition_operator(edge: Tensor, radius: int = 5, beta: float = 10.0,
                        dtype: torch.dtype = torch.float64) -> Tensor:
    """The CSR matrix ``M = T.T`` (``n x n``, ``dtype``, on ``edge``'s device) of one step.

    ``x @ T == (M @ x.T).T``; row ``j`` of ``M`` holds ``A[j, i]**beta / deg_j`` for the
    neighbours ``i`` of ``j`` (itself included), ``deg_j = sum_i A[i, j]**beta``.
    """
    h, w = edge.shape
    st = _pair_structure(int(radius), int(h), int(w))
    dev = edge.device
    padded = F.pad(edge[None, None], (radius, radius, 0, radius), value=1.0)[0]
    aff = st.path_index.edge_to_affinity(padded)[0].reshape(-1)[st.sel.to(dev)]
    # Normalise in float64: each row of M must sum to 1 to the last bit the storage type
    # allows. A float32 degree summed over up to 69 terms is off by ~1e-6, and 256 steps turn
    # a row-sum error d into a factor (1 + d)**256 (3e-4 where a region is nearly cut off).
    a = aff.double().clamp(0.0, 1.0) ** beta
    src, dst = st.src.to(dev), st.dst.to(dev)
    n = h * w
    deg = torch.ones(n, device=dev, dtype=torch.float64)  # A[i, i] = 1 -> 1**beta
    deg.index_add_(0, src, a)
    deg.index_add_(0, dst, a)
    inv = 1.0 / deg
    values = torch.cat([a * inv[src], a * inv[dst], inv])[st.perm.to(dev)].to(dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        # indices come from _pair_structure, valid by construction: skip the O(nnz) check
        return torch.sparse_csr_tensor(st.crow.to(dev), st.col.to(dev), values, (n, n),
                                       check_invariants=False)


# -- planning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandomWalkPlan:
    """How :func:`random_walk` runs one image: ``method`` ("sparse" or "dense"), the number of
    classes propagated at once (``class_chunk``), estimated peak bytes and flops."""

    method: str
    class_chunk: int
    est_bytes: int
    flops: float


_RUNTIME_OVERHEAD = 16 * 2**20
"""Kernels' workspaces and lazily loaded library code: a first call's resident set grows by
about 8 MB beyond the tensors counted below (measured with benchmarks/bench_random_walk.py)."""


def _sparse_bytes(n: int, n_classes: int, chunk: int, radius: int) -> int:
    e = _n_pairs_upper_bound(radius, n)  # pairs (upper bound: border pixels have fewer)
    nnz = 2 * e + n
    # construction: padded affinities + index arrays + COO values/permutation + CSR (generous)
    build = 64 * e + 48 * nnz + 16 * n
    # propagation (float64): input, output and one temporary per chunk; the float32 result
    walk = 3 * 8 * chunk * n + 4 * n_classes * n
    return _RUNTIME_OVERHEAD + build + walk


def _dense_bytes(n: int, n_classes: int, radius: int) -> int:
    # the operator's construction, then its dense float32 copy and one product alive at once
    return _sparse_bytes(n, n_classes, 0, radius) + 2 * 4 * n * n


def plan_random_walk(
    h: int, w: int, n_classes: int, *, radius: int = 5, exp_times: int = 8,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, method: str = "auto",
) -> RandomWalkPlan:
    """Choose the formulation and class chunk for a ``[n_classes, h, w]`` walk.

    ``method="auto"``: the cheaper (in flops) of the formulations that fit the budget;
    "sparse"/"dense" force one. Raises MemoryError when nothing fits ``memory_budget_mb``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    n = int(h) * int(w)
    k = max(int(n_classes), 1)
    budget = float(memory_budget_mb) * 2**20
    nnz = 2 * _n_pairs_upper_bound(radius, n) + n
    steps = 2 ** int(exp_times)
    candidates: list[RandomWalkPlan] = []
    if method in ("auto", "sparse"):
        fixed = _sparse_bytes(n, k, 0, radius)
        chunk = min(k, int((budget - fixed) // (24 * n))) if budget > fixed else 0
        if chunk >= 1:
            candidates.append(RandomWalkPlan(
                "sparse", chunk, _sparse_bytes(n, k, chunk, radius), 2.0 * steps * nnz * k))
    if method in ("auto", "dense"):
        need = _dense_bytes(n, k, radius)
        if need <= budget:
            candidates.append(RandomWalkPlan(
                "dense", k, need, 2.0 * exp_times * n**3 + 2.0 * k * n * n))
    if not candidates:
        need_mb = min(_sparse_bytes(n, k, 1, radius) if method != "dense" else math.inf,
                      _dense_bytes(n, k, radius) if method != "sparse" else math.inf) / 2**20
        raise MemoryError(
            f"random walk on a {h}x{w} map with {n_classes} classes (method {method!r}) needs "
            f"about {need_mb:.1f} MB, memory budget is {memory_budget_mb} MB"
        )
    return min(candidates, key=lambda p: (p.flops, p.method != "sparse"))


# -- the walk -----------------------------------------------------------------------------------
def _as_tensor(a: Any, dtype: torch.dtype = torch.float32) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().to(dtype)
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


def _validate(cam: Tensor, edge: Tensor, image_id: str) -> None:
    if cam.dim() != 3:
        raise ValueError(f"image {image_id!r}: expected CAMs [K', h, w], got {tuple(cam.shape)}")
    if edge.dim() != 2:
        raise ValueError(f"image {image_id!r}: expected an edge map [h, w], got "
                         f"{tuple(edge.shape)}")
    if tuple(cam.shape[1:]) != tuple(edge.shape):
        raise ValueError(f"image {image_id!r}: CAM size {tuple(cam.shape[1:])} != edge size "
                         f"{tuple(edge.shape)}")
    if not torch.isfinite(cam).all():
        raise ValueError(f"image {image_id!r}: CAMs hold NaN or infinite values")
    if not torch.isfinite(edge).all() or edge.min() < 0 or edge.max() > 1:
        raise ValueError(f"image {image_id!r}: edge map must hold probabilities in [0, 1]")


def random_walk(
    cam_strided: Any,
    edge: Any,
    *,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    device: str | torch.device = "cpu",
    method: str = "auto",
    dtype: torch.dtype = torch.float32,
    image_id: str = "?",
) -> np.ndarray:
    """``(cam * (1 - edge)) @ T**(2**exp_times)`` for the stride-4 CAMs ``[K', h, w]`` and the
    boundary map ``[h, w]``; returns ``[K', h, w]`` (numpy, ``dtype``: float32 by default).

    Same values as the authors' dense formulation up to rounding (see the module docstring);
    the formulation and class chunking come from :func:`plan_random_walk`. The sparse walk
    always runs in float64: 256 float32 steps accumulate ~1e-4 relative error, more than the
    authors' 8 float32 squarings (~3e-5); in float64 it costs about the same on a CPU, and the
    vectors are small. The dense formulation runs in ``dtype`` (float32 like the authors').
    Raises ValueError naming ``image_id`` on malformed inputs, MemoryError if the budget is too
    small.
    """
    _check_dtype(dtype)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    cam = _as_tensor(cam_strided, torch.float64)
    e = _as_tensor(edge, torch.float64)
    _validate(cam, e, image_id)
    k, h, w = cam.shape
    if k == 0:
        return np.zeros((0, h, w), dtype=np_dtype)
    plan = plan_random_walk(h, w, k, radius=radius, exp_times=exp_times,
                            memory_budget_mb=memory_budget_mb, method=method)
    dev = torch.device(device)
    # the authors' inputs are float32: round them first so both formulations see the same
    e = e.to(torch.float32).to(device=dev, dtype=torch.float64)
    cam = cam.to(torch.float32).to(device=dev, dtype=torch.float64)
    x = (cam * (1.0 - e)).reshape(k, h * w)
    with torch.no_grad():
        if plan.method == "dense":
            md = transition_operator(e, radius=radius, beta=beta, dtype=dtype).to_dense()
            for _ in range(int(exp_times)):
                md = md @ md  # M**(2**t) = (T**(2**t)).T
            out = (md @ x.to(dtype).T).T
        else:
            m = transition_operator(e, radius=radius, beta=beta, dtype=torch.float64)
            parts = []
            for start in range(0, k, plan.class_chunk):
                y = x[start:start + plan.class_chunk].T.contiguous()  # [n, chunk]
                for _ in range(2 ** int(exp_times)):
                    y = m @ y
                parts.append(y.T)
            out = torch.cat(parts, dim=0)
    return out.reshape(k, h, w).cpu().numpy().astype(np_dtype, copy=False)


def random_walk_dense_reference(
    cam_strided: Any, edge: Any, *, radius: int = 5, beta: float = 10.0, exp_times: int = 8,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """The authors' dense formulation, step by step (tests and benchmark only: O(n^2) memory).

    Affinities by index gather on the padded edge map, a dense ``P x P`` affinity matrix of
    the padded map cropped to the ``n x n`` one, ``T = A**beta / column sums``, ``exp_times``
    squarings, ``rw = (cam * (1 - edge)) @ T``. Returns ``[K', h, w]`` (numpy, float32; float64
    with ``dtype=torch.float64``).
    """
    _check_dtype(dtype)
    cam = _as_tensor(cam_strided, dtype)
    e = _as_tensor(edge, dtype)
    _validate(cam, e, "reference")
    dev = torch.device(device)
    cam, e = cam.to(dev), e.to(dev)
    k, h, w = cam.shape
    r = int(radius)
    hp, wp = h + r, w + 2 * r
    pi = PathIndex(radius=r, size=(hp, wp))
    flat = F.pad(e[None], (r, r, 0, r), value=1.0).reshape(1, -1)
    affs = []
    for ind in pi.path_indices():  # [n_paths, L, n_src], one group per path length
        idx = torch.from_numpy(ind).to(dev)
        dist = flat[:, idx.reshape(-1)].reshape(1, *ind.shape)
        affs.append(1.0 - dist.amax(dim=2))
    aff = torch.cat(affs, dim=1).reshape(-1)  # [D * n_src], direction-major
    n_dirs = pi.n_directions
    frm = torch.from_numpy(pi.src_indices).to(dev).repeat(n_dirs)
    to = torch.from_numpy(pi.dst_indices).to(dev).reshape(-1)
    p = hp * wp
    ids = torch.arange(p, device=dev)
    indices = torch.cat([torch.stack([frm, to]), torch.stack([ids, ids]), torch.stack([to, frm])],
                        dim=1)
    values = torch.cat([aff, torch.ones(p, device=dev, dtype=dtype), aff])
    dense = torch.sparse_coo_tensor(indices, values, (p, p), check_invariants=True).to_dense()
    dense = dense.view(hp, wp, hp, wp)[:-r, r:-r, :-r, r:-r].reshape(h * w, h * w)
    trans = dense**beta
    del dense
    trans = trans / trans.sum(dim=0, keepdim=True)
    for _ in range(int(exp_times)):
        trans = trans @ trans
    x = (cam * (1.0 - e)).reshape(k, h * w)
    out = (x @ trans).reshape(k, h, w).cpu()
    return (out if dtype == torch.float64 else out.float()).numpy()


# -- pseudo masks ----------------------------------------------------------------------------------
def normalised_walk(rw: Any, keys: Sequence[int], image_size: tuple[int, int], *,
                    image_id: str = "?") -> tuple[torch.Tensor, np.ndarray]:
    """``(maps [K', H, W], keys)``: ``rw [K', h, w]`` (``h = (H - 1) // 4 + 1``,
    ``w = (W - 1) // 4 + 1``) upsampled bilinearly x4 (align_corners=False), cropped to
    ``image_size = (H, W)`` and divided by the global maximum (all zeros when it is not > 0):
    what the background threshold of :func:`pseudo_mask` is compared with."""
    r = _as_tensor(rw)
    hh, ww = (int(s) for s in image_size)
    if r.dim() != 3:
        raise ValueError(f"image {image_id!r}: expected rw [K', h, w], got {tuple(r.shape)}")
    k_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
    if len(k_arr) != r.shape[0]:
        raise ValueError(f"image {image_id!r}: {len(k_arr)} keys for {r.shape[0]} planes")
    if len(k_arr) and (k_arr.min() < 1 or k_arr.max() > 254):
        raise ValueError(f"image {image_id!r}: keys must be class ids in 1..254, "
                         f"got {k_arr.tolist()}")
    expected = ((hh - 1) // 4 + 1, (ww - 1) // 4 + 1)
    if tuple(r.shape[1:]) != expected:
        raise ValueError(f"image {image_id!r}: stride-4 map {tuple(r.shape[1:])} does not fit "
                         f"image size {(hh, ww)} (expected {expected})")
    if not torch.isfinite(r).all():
        raise ValueError(f"image {image_id!r}: random-walk maps hold NaN or infinite values")
    if r.shape[0] == 0:
        return torch.zeros((0, hh, ww)), k_arr
    up = F.interpolate(r[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    up = up[:, :hh, :ww]
    top = up.max()
    return (up / top if top > 0 else torch.zeros_like(up)), k_arr


def pseudo_mask(
    rw: Any, keys: Sequence[int], image_size: tuple[int, int], bg_threshold: float = 0.20,
    *, image_id: str = "?",
) -> np.ndarray:
    """uint8 ``[H, W]`` semantic pseudo mask (0 background, class ids from ``keys``, no 255):
    :func:`normalised_walk`, a ``bg_threshold`` plane prepended, argmax (ties to the first
    plane: a pixel is background unless some map is strictly above the threshold), mapped
    through ``[0, *keys]``."""
    up, k_arr = normalised_walk(rw, keys, image_size, image_id=image_id)
    hh, ww = (int(s) for s in image_size)
    if up.shape[0] == 0 or not up.max() > 0:
        return np.zeros((hh, ww), dtype=np.uint8)
    planes = torch.cat([torch.full((1, hh, ww), float(bg_threshold)), up], dim=0)
    arg = torch.argmax(planes, dim=0).numpy()
    return np.concatenate([[0], k_arr]).astype(np.uint8)[arg]
