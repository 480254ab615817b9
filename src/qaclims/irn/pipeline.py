"""Per-shard drivers of the IRN stage and its evaluations (method.md 9.1, 9.3, 9.4).

* :func:`ir_labels_shard` - the IR labels (CAMs + dense CRF) of one shard of images, one PNG per
  image, CRFs in a process pool;
* :func:`random_walk_shard` - the pseudo masks of one shard: boundary maps from the trained
  network (this process, CPU or GPU), random walks in a pool of single-thread processes (CPU) or
  on the GPU, one VOC-palette PNG per image;
* :func:`evaluate_ir_labels` / :func:`evaluate_pseudo_masks` - scores on the split with ground
  truth, into a metrics JSON.

Shards are the CAM export's: image ``i`` belongs to shard ``qape.pairs.shard_of(i, n_shards)``,
so ``cams/{shard}.h5`` holds exactly the images a shard needs. A shard's output is a folder
``{shard}/`` of ``<image_id>.png``, written to a temporary folder beside it and renamed when
complete; a failed job leaves no folder that looks finished.

Every image of the selected splits gets a PNG - there is no truncation (the authors' COCO code
kept only the first 10,000 images). An image without classes gets an all-background IR label
and pseudo mask and needs no CAM. Before anything is computed, each image's CAM is checked: an
image with classes missing from the CAM file, a CAM whose size or class keys differ from the
manifest, and (per image, while running) NaN/inf CAMs raise ``ValueError`` naming the image.

Threads: the random walk does many small sparse products; more than one torch thread per walk
makes it many times slower on a shared machine (10-40x measured with 2 threads here). Workers
therefore run with one torch thread each and the parallelism is across images.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.irn.settings import IrLabelSettings, RandomWalkSettings
from qaclims.store import read_label_png, temp_dir, write_json, write_label_png

__all__ = [
    "evaluate_ir_labels",
    "evaluate_pseudo_masks",
    "ir_labels_shard",
    "label_files",
    "random_walk_shard",
    "shard_rows",
    "staged_directory",
]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def staged_directory(target: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, prefix=f".{target.name}.tmp-")
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def label_files(dirs: Sequence[PathLike] | PathLike) -> dict[str, Path]:
    """``{image_id: path}`` of the ``*.png`` files in ``dirs`` (the shard folders of a stage).

    An image id found in two folders is an error (shards are disjoint).
    """
    if isinstance(dirs, str | os.PathLike):
        dirs = [dirs]
    out: dict[str, Path] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"label folder {d} does not exist")
        for p in sorted(d.glob("*.png")):
            if p.stem in out:
                raise ValueError(f"image {p.stem} has labels in both {out[p.stem].parent} "
                                 f"and {d}")
            out[p.stem] = p
    return out


def _read_inputs(manifest: PathLike, classes: PathLike) -> tuple[Any, list[str]]:
    from qaclims.data.manifest import class_names, read_classes, read_manifest

    cls = read_classes(classes)
    return read_manifest(manifest, num_classes=len(cls)), class_names(cls)


def shard_rows(df: Any, splits: Sequence[str], shard: str | int | None = None,
               n_shards: int = 1, *, include_unlabelled: bool = False) -> Any:
    """Manifest rows in any of ``splits`` (and in ``shard`` when given), image_id order.

    ``include_unlabelled``: also the images of ``{split}_unlabelled`` where the manifest has
    that split (COCO's images without any class). An unknown split name is an error (a typo
    would otherwise give an empty shard).
    """
    from qaclims.data.manifest import UNLABELLED_SUFFIX
    from qaclims.qape.pairs import shard_index, shard_of

    known = {s for row in df["splits"] for s in row}
    unknown = sorted(set(splits) - known)
    if unknown:
        raise ValueError(f"split {unknown[0]!r} is not in the manifest (splits: {sorted(known)})")
    wanted = set(splits)
    if include_unlabelled:
        wanted |= {f"{s}{UNLABELLED_SUFFIX}" for s in splits} & known
    keep = [bool(wanted & set(s)) for s in df["splits"]]
    if shard is not None:
        i = shard_index(shard, n_shards)
        keep = [k and shard_of(im, n_shards) == i for k, im in zip(keep, df["image_id"],
                                                                     strict=True)]
    return df[keep].sort_values("image_id").reset_index(drop=True)


def check_cams(store: Any, rows: Any) -> None:
    """Every image with classes is in ``store`` with the manifest's size and class keys."""
    for row in rows.itertuples(index=False):
        labels = sorted(int(c) for c in row.labels)
        if row.image_id not in store:
            if labels:
                raise ValueError(f"image {row.image_id}: no CAM in {[str(p) for p in store.paths]}"
                                 f" (its classes {labels} need one)")
            continue
        size = store.size(row.image_id)
        if size != (int(row.height), int(row.width)):
            raise ValueError(f"image {row.image_id}: CAM of size {size[1]}x{size[0]}, the "
                             f"manifest says {row.width}x{row.height}")


def _check_keys(image_id: str, keys: np.ndarray, labels: Sequence[int]) -> None:
    if sorted(int(k) for k in keys) != sorted(int(c) for c in labels):
        raise ValueError(f"image {image_id}: CAM keys {sorted(keys.tolist())} differ from its "
                         f"labels {sorted(int(c) for c in labels)} in the manifest")


def _load_image(row: Any) -> np.ndarray:
    from qaclims.cam.datasets import load_rgb

    img = load_rgb(row.image_path)
    if img.shape[:2] != (row.height, row.width):
        raise ValueError(f"image {row.image_id}: {row.image_path} is {img.shape[1]}x"
                         f"{img.shape[0]}, the manifest says {row.width}x{row.height}")
    return img


def _open_store(cams: PathLike | Sequence[PathLike]) -> Any:
    from qaclims.cam.cam_store import CamStore

    return CamStore(cams)


# ---------------------------------------------------------------------------- G1: IR labels


def ir_labels_shard(manifest: PathLike, classes: PathLike, cams: PathLike | Sequence[PathLike],
                    out_dir: PathLike, *, splits: Sequence[str], shard: str | int | None = None,
                    n_shards: int = 1, settings: IrLabelSettings | None = None,
                    workers: int | None = None) -> dict[str, Any]:
    """Write ``out_dir/<image_id>.png`` (0 confident bg, 1..K confident fg, 255 uncertain) for
    every image of ``splits`` in ``shard``; CRFs in ``workers`` processes (default
    ``settings.workers`` or 1). ``settings`` default: the authors'. Returns a summary."""
    from qaclims.irn.ir_labels import IrLabelItem, make_ir_labels

    settings = settings or IrLabelSettings()
    df, _ = _read_inputs(manifest, classes)
    rows = shard_rows(df, splits, shard, n_shards)
    n_workers = workers or settings.workers or 1
    t0 = time.perf_counter()
    with _open_store(cams) as store:
        check_cams(store, rows)

        def items() -> Iterator[IrLabelItem]:
            for row in rows.itertuples(index=False):
                img = _load_image(row)
                if row.image_id in store:
                    keys, high = store.high_res(row.image_id)
                    _check_keys(row.image_id, keys, row.labels)
                else:  # an image without classes (checked above): confident background
                    keys = np.zeros(0, np.int64)
                    high = np.zeros((0, *img.shape[:2]), np.float32)
                yield IrLabelItem(row.image_id, img, high, keys.tolist())

        n = n_bg = 0
        with staged_directory(out_dir) as tmp:
            for image_id, label in make_ir_labels(
                    items(), n_workers, fg_threshold=settings.fg_threshold,
                    bg_threshold=settings.bg_threshold, crf=settings.crf_params()):
                write_label_png(label, tmp / f"{image_id}.png")
                n += 1
                n_bg += int(not (label != 0).any())
                if n % 200 == 0:
                    log.info("%d/%d IR labels (%.2f images/s)", n, len(rows),
                             n / (time.perf_counter() - t0))
    seconds = time.perf_counter() - t0
    summary = {"shard": None if shard is None else str(shard), "n_images": n,
               "n_all_background": n_bg, "workers": n_workers, "seconds": round(seconds, 2)}
    log.info("IR labels done: %s", summary)
    return summary


# ---------------------------------------------------------------------------- G3: random walk


def _init_walk_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _walk(image_id: str, cam: np.ndarray, edge: Any, keys: Sequence[int],
          size: tuple[int, int], rw: Mapping[str, Any], device: str,
          as_walk: bool = False) -> tuple[str, np.ndarray]:
    """One image's random walk and its pseudo mask, or (``as_walk``) the walked maps
    (runs in a pool worker or in this process)."""
    from qaclims.irn.random_walk import pseudo_mask, random_walk

    try:
        walked = random_walk(cam, edge, radius=rw["radius"], beta=rw["beta"],
                             exp_times=rw["exp_times"], memory_budget_mb=rw["memory_budget_mb"],
                             method=rw["method"], device=device, image_id=image_id)
    except MemoryError as err:
        raise MemoryError(f"image {image_id}: {err}") from None
    if as_walk:
        return image_id, np.asarray(walked.cpu() if hasattr(walked, "cpu") else walked,
                                    dtype=np.float32)
    return image_id, pseudo_mask(walked, keys, size, rw["bg_threshold"], image_id=image_id)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_walk_shard(manifest: PathLike, classes: PathLike, cams: PathLike | Sequence[PathLike],
                      model: PathLike, out_dir: PathLike | None, *, splits: Sequence[str],
                      shard: str | int | None = None, n_shards: int = 1,
                      settings: RandomWalkSettings | None = None, device: str = "cpu",
                      workers: int | None = None, include_unlabelled: bool = True,
                      torch_threads: int | None = None,
                      walk_out: PathLike | None = None) -> dict[str, Any]:
    """Write the pseudo mask ``out_dir/<image_id>.png`` (VOC palette, 0 bg, 1..K) of every
    image of ``splits`` in ``shard``, and (``include_unlabelled``) an all-background one of
    every image of ``{split}_unlabelled`` (COCO's images without classes; the authors' code
    wrote all-zero masks for them too). With ``walk_out`` (and ``out_dir`` None) the walked
    maps go to that walk file instead (:mod:`qaclims.irn.walk_store`), for masks made later
    at a threshold chosen on them (:func:`pseudo_masks_from_walks`).

    Boundary maps come from the IRN model file ``model`` on ``device``. On CPU the walks run in
    ``workers`` single-thread processes (default ``settings.workers`` or 1: in this process, one
    thread); on CUDA in this process on the GPU. Returns a summary.
    """
    import torch

    from qaclims.cam.augment import normalize_imagenet
    from qaclims.irn.random_walk import infer_edge
    from qaclims.irn.train_irn import load_irn_network
    from qaclims.irn.walk_store import WalkShardWriter

    if (out_dir is None) == (walk_out is None):
        raise ValueError("random_walk_shard: give exactly one of out_dir (masks) and walk_out")
    as_walk = walk_out is not None
    settings = settings or RandomWalkSettings()
    df, _ = _read_inputs(manifest, classes)
    rows = shard_rows(df, splits, shard, n_shards, include_unlabelled=include_unlabelled)
    rw = settings.to_dict()
    n_workers = workers or settings.workers or 1
    on_gpu = str(device).startswith("cuda")
    net, _ = load_irn_network(model)
    net.to(device).eval()
    t0 = time.perf_counter()
    n = n_bg = 0
    # CPU: the boundary maps (a ResNet forward, which threads well) run here with
    # ``torch_threads`` (a fixed count, so the pool size changes speed, never the maps; None:
    # the pool size), the walks in the single-thread pool; restored on exit
    threads = (contextlib.nullcontext() if on_gpu
               else _torch_threads(torch_threads or n_workers))
    sink = WalkShardWriter(walk_out) if as_walk else staged_directory(out_dir)  # type: ignore
    seen: dict[str, tuple[list[int], tuple[int, int]]] = {}
    with threads, _open_store(cams) as store, sink as tmp:
        check_cams(store, rows)

        def jobs() -> Iterator[tuple[Any, ...]]:
            for row in rows.itertuples(index=False):
                size = (int(row.height), int(row.width))
                seen[row.image_id] = ([], size)
                if row.image_id not in store:  # no classes (checked): background, no walk
                    yield row.image_id, None, None, [], size
                    continue
                keys, strided, _ = store.get(row.image_id)
                _check_keys(row.image_id, keys, row.labels)
                if len(keys) == 0:
                    yield row.image_id, None, None, [], size
                    continue
                img = _load_image(row)
                x = torch.from_numpy(np.ascontiguousarray(
                    normalize_imagenet(img).transpose(2, 0, 1)))
                edge = infer_edge(net, x).numpy()
                seen[row.image_id] = (keys.tolist(), size)
                yield row.image_id, strided, edge, keys.tolist(), size

        def write(image_id: str, result: np.ndarray | None) -> None:
            nonlocal n, n_bg
            if as_walk:  # result: the walked maps, None for an image without classes
                keys, size = seen.pop(image_id)
                tmp.add(image_id, keys, result, size)
                n_bg += int(result is None)
            else:
                write_label_png(result, tmp / f"{image_id}.png")
                n_bg += int(not result.any())
            n += 1
            if n % 200 == 0:
                log.info("%d/%d pseudo masks (%.2f images/s)", n, len(rows),
                         n / (time.perf_counter() - t0))

        def blank(size: tuple[int, int]) -> np.ndarray | None:
            return None if as_walk else np.zeros(size, np.uint8)

        if on_gpu or n_workers <= 1:
            for image_id, cam, edge, keys, size in jobs():
                if cam is None:
                    write(image_id, blank(size))
                    continue
                # the walk itself with one thread (see the module docstring); on the GPU the
                # thread count does not matter
                with _torch_threads(1):
                    write(*_walk(image_id, cam, edge, keys, size, rw, str(device), as_walk))
        else:
            import multiprocessing as mp

            # spawn, not fork: this process holds torch's thread pools, which a fork breaks
            with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"),
                                     initializer=_init_walk_worker) as pool:
                pending: deque[Future[tuple[str, np.ndarray]] | tuple[str, np.ndarray]] = deque()
                limit = 2 * n_workers

                def drain(keep: int) -> None:
                    while len(pending) > keep:
                        head = pending.popleft()
                        write(*(head.result() if isinstance(head, Future) else head))

                try:
                    for image_id, cam, edge, keys, size in jobs():
                        if cam is None:
                            pending.append((image_id, blank(size)))
                        else:
                            pending.append(pool.submit(_walk, image_id, cam, edge, keys, size,
                                                       rw, "cpu", as_walk))
                        drain(limit)
                    drain(0)
                finally:
                    for f in pending:
                        if isinstance(f, Future):
                            f.cancel()
    seconds = time.perf_counter() - t0
    summary = {"shard": None if shard is None else str(shard), "n_images": n,
               "n_all_background": n_bg, "workers": 1 if on_gpu else n_workers,
               "device": str(device), "seconds": round(seconds, 2)}
    log.info("random walk done: %s", summary)
    return summary


def pseudo_masks_from_walks(manifest: PathLike, classes: PathLike,
                            walks: PathLike | Sequence[PathLike], out_dir: PathLike, *,
                            splits: Sequence[str], bg_threshold: float,
                            shard: str | int | None = None, n_shards: int = 1,
                            include_unlabelled: bool = True) -> dict[str, Any]:
    """The pseudo masks (``out_dir/<image_id>.png``) of the images of ``splits`` in ``shard``
    from their walked maps (walk files of :func:`random_walk_shard`), at ``bg_threshold``:
    the same masks :func:`random_walk_shard` writes directly at that threshold."""
    from qaclims.irn.random_walk import pseudo_mask
    from qaclims.irn.walk_store import WalkStore

    df, _ = _read_inputs(manifest, classes)
    rows = shard_rows(df, splits, shard, n_shards, include_unlabelled=include_unlabelled)
    n = n_bg = 0
    with WalkStore([walks] if isinstance(walks, str | os.PathLike) else walks) as store, \
            staged_directory(out_dir) as tmp:
        for row in rows.itertuples(index=False):
            keys, rw, size = store.get(row.image_id)
            if size != (int(row.height), int(row.width)):
                raise ValueError(f"image {row.image_id}: walked maps are for {size}, the "
                                 f"manifest says {(int(row.height), int(row.width))}")
            mask = pseudo_mask(rw, keys, size, bg_threshold, image_id=row.image_id)
            write_label_png(mask, tmp / f"{row.image_id}.png")
            n += 1
            n_bg += int(not mask.any())
    summary = {"shard": None if shard is None else str(shard), "n_images": n,
               "n_all_background": n_bg, "bg_threshold": bg_threshold}
    log.info("pseudo masks from walks: %s", summary)
    return summary


def search_walk_threshold(manifest: PathLike, classes: PathLike, walks: Sequence[PathLike],
                          out_json: PathLike, *, split: str, thresholds: Sequence[float],
                          fixed_threshold: float) -> dict[str, Any]:
    """Pseudo-mask mIoU of every background threshold in ``thresholds`` on ``split`` (with
    ground truth), from the walked maps: the curve, the best threshold (lowest on a tie) and the
    mIoU at ``fixed_threshold`` (the configured, possibly shifted one) -> ``out_json``. The same
    protocol as the CAM threshold search (:func:`qaclims.cam.threshold.sweep_thresholds`)."""
    from qaclims.cam.threshold import sweep_thresholds
    from qaclims.irn.random_walk import normalised_walk
    from qaclims.irn.walk_store import WalkStore

    df, names = _read_inputs(manifest, classes)
    rows = shard_rows(df, [split])
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no images")
    with WalkStore(walks) as store:
        def samples() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            for row in rows.itertuples(index=False):
                if not row.has_gt:
                    raise ValueError(f"image {row.image_id} of split {split!r} has no ground "
                                     f"truth; search the walk threshold on a split with it")
                keys, rw, size = store.get(row.image_id)
                maps, k = normalised_walk(rw, keys, size, image_id=row.image_id)
                yield maps.numpy(), k, read_label_png(row.gt_path)

        out = sweep_thresholds(samples(), thresholds, n_classes=len(names) + 1,
                               fixed_threshold=fixed_threshold)
    out = {"stage": "walk_threshold", "split": split, **out}
    write_json(out, out_json)
    log.info("walk threshold on %r: best %.3f (mIoU %.4f), configured %.3f (mIoU %.4f)", split,
             out["best_threshold"], out["best_miou"], fixed_threshold, out.get("miou_at_fixed"))
    return out


# ---------------------------------------------------------------------------- evaluation


def _gt_pairs(manifest: PathLike, classes: PathLike, label_dirs: Sequence[PathLike],
              split: str, what: str) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    df, names = _read_inputs(manifest, classes)
    rows = shard_rows(df, [split])
    files = label_files(label_dirs)
    pairs = []
    for row in rows.itertuples(index=False):
        if not row.has_gt:
            raise ValueError(f"image {row.image_id} of split {split!r} has no ground truth; "
                             f"evaluate {what} on a split with ground truth")
        if row.image_id not in files:
            raise ValueError(f"image {row.image_id} of split {split!r}: no {what} PNG in "
                             f"{[str(d) for d in label_dirs]}")
        pairs.append((row.image_id, Path(row.gt_path), files[row.image_id]))
    if not pairs:
        raise ValueError(f"split {split!r} has no images")
    return pairs, names


def _read_pair(image_id: str, gt_path: Path, pred_path: Path, what: str
               ) -> tuple[np.ndarray, np.ndarray]:
    gt = read_label_png(gt_path)
    pred = read_label_png(pred_path)
    if gt.shape != pred.shape:
        raise ValueError(f"image {image_id}: {what} {pred_path} is {pred.shape[1]}x"
                         f"{pred.shape[0]}, the ground truth {gt.shape[1]}x{gt.shape[0]}")
    return gt, pred


def evaluate_ir_labels(manifest: PathLike, classes: PathLike, label_dirs: Sequence[PathLike],
                       out_json: PathLike, *, split: str,
                       settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Precision and coverage of the confident IR-label pixels on ``split`` (with ground
    truth) -> ``out_json`` (``qaclims.irn.evaluate.IrLabelScore`` + split, n_images, the
    settings that made the labels). Returns the dict written."""
    from qaclims.irn.evaluate import IrLabelScore

    pairs, names = _gt_pairs(manifest, classes, label_dirs, split, "IR label")
    score = IrLabelScore(len(names))
    for image_id, gt_path, path in pairs:
        gt, ir = _read_pair(image_id, gt_path, path, "IR label")
        score.update(ir, gt, image_id=image_id)
    out = {"stage": "ir_labels", "split": split, "n_images": len(pairs),
           "settings": dict(settings or {}), **score.to_dict(names)}
    write_json(out, out_json)
    return out


def evaluate_pseudo_masks(manifest: PathLike, classes: PathLike, mask_dirs: Sequence[PathLike],
                          out_json: PathLike, *, split: str,
                          settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """mIoU of the pseudo masks on ``split`` (with ground truth; GT 255 ignored, as the
    authors' ``eval_sem_seg``) -> ``out_json`` (``ConfusionMatrix.to_dict`` + split, n_images,
    the settings). Returns the dict written."""
    from qaclims.metrics import ConfusionMatrix

    pairs, names = _gt_pairs(manifest, classes, mask_dirs, split, "pseudo mask")
    cm = ConfusionMatrix(len(names))
    for image_id, gt_path, path in pairs:
        gt, pred = _read_pair(image_id, gt_path, path, "pseudo mask")
        if pred.max(initial=0) >= len(names):
            raise ValueError(f"image {image_id}: pseudo mask {path} holds {int(pred.max())}, "
                             f"expected 0..{len(names) - 1}")
        cm.update(gt, pred)
    out = {"stage": "pseudo_masks", "split": split, "n_images": len(pairs),
           "settings": dict(settings or {}), **cm.to_dict(names)}
    write_json(out, out_json)
    return out
