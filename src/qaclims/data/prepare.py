"""prepare_dataset: any source (voc12, coco14, synthetic) -> the one manifest contract.

Writes ``out_dir/{manifest.parquet, classes.json, stats.json, cooccurrence.tsv}`` (formats in
:mod:`qaclims.data.manifest` and :mod:`qaclims.data.stats`). Nothing is written until every
image has been read and checked, and each file is replaced atomically, so a failed run leaves an
earlier manifest untouched. (COCO ground-truth masks are a cache outside ``out_dir``: they are
rendered after all checks passed, each atomically.)

Bad images (missing, corrupt or truncated file; missing or broken annotation XML; COCO size that
disagrees with the json; GT mask unreadable, of another size than its image, or with pixel
values other than 0..K and 255):
``on_bad_image="error"`` raises one :class:`DatasetError` listing them all; ``"skip"`` warns
(:class:`BadImageWarning`) per image, leaves it out and counts it by reason in stats.json.
Structural problems (missing root or sub-directory, unknown class name) always raise.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from qaclims.data.images import BadFile, ImageInfo, check_files, check_image, check_label_png
from qaclims.data.manifest import (
    UNLABELLED_SUFFIX,
    Candidate,
    DatasetError,
    DatasetScan,
    ManifestRecord,
    Problem,
    classes_to_json,
    records_to_table,
    validate_manifest,
)
from qaclims.data.stats import compute_stats, cooccurrence_tsv
from qaclims.store import atomic_path, write_json

__all__ = ["BadImageWarning", "DatasetError", "OUTPUT_FILES", "prepare_dataset", "scan_dataset"]

log = logging.getLogger(__name__)

Source = Literal["voc12", "coco14", "synthetic"]
OUTPUT_FILES = ("manifest.parquet", "classes.json", "stats.json", "cooccurrence.tsv")
SOURCES = ("voc12", "coco14", "synthetic")
# splits whose images may lack labels without being moved to "{split}_unlabelled"
UNLABELLED_OK = frozenset({"test"})


class BadImageWarning(UserWarning):
    """An image was left out of the manifest (on_bad_image='skip')."""


def scan_dataset(source: Source, root: Path, gt_dir: Path | None, out_dir: Path, *,
                 train_aug_fallback: Literal["error", "train"] = "error",
                 required_splits: Collection[str] | None = None) -> DatasetScan:
    if source in ("voc12", "synthetic"):
        from qaclims.data.voc import scan_voc

        need = required_splits is None or "train_aug" in required_splits
        return scan_voc(root, source=source, train_aug_fallback=train_aug_fallback,
                        need_train_aug=need)
    if source == "coco14":
        from qaclims.data.coco import scan_coco

        masks = gt_dir if gt_dir is not None else Path(out_dir) / "gt"
        return scan_coco(root, masks, source=source)
    raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")


def prepare_dataset(
    source: Source,
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    on_bad_image: Literal["error", "skip"] = "error",
    gt_dir: str | os.PathLike[str] | None = None,
    check_images: bool = True,
    workers: int | None = None,
    train_aug_fallback: Literal["error", "train"] = "error",
    required_splits: Collection[str] | None = None,
) -> dict[str, Any]:
    """Read, check and write the dataset contract into ``out_dir``; returns the stats dict.

    ``check_images=False`` reads image sizes from the file headers instead of decoding every
    image (fast, but a truncated JPEG goes unnoticed). ``workers``: threads for the checks and
    for COCO mask rendering (default: the usable CPUs, at most 16). ``gt_dir``: COCO only, where
    masks are rendered (default ``out_dir/gt``). ``required_splits``: the splits the run uses
    (None - all, train_aug included); VOC's train_aug must exist when it is one of them, unless
    ``train_aug_fallback="train"`` (:func:`qaclims.data.voc.scan_voc`). The image count of every
    split is logged.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    scan = scan_dataset(source, Path(root), Path(gt_dir) if gt_dir is not None else None, out_dir,
                        train_aug_fallback=train_aug_fallback, required_splits=required_splits)
    log.info("%s: %d images listed in %s (%.1f s)", source, len(scan.candidates), scan.root,
             time.perf_counter() - t0)

    t1 = time.perf_counter()
    kept, problems, to_render = _check(scan.candidates, check_images, workers,
                                       n_classes=len(scan.classes))
    log.info("checked %d images (%s) in %.1f s: %d bad", len(scan.candidates),
             "full decode" if check_images else "headers only", time.perf_counter() - t1,
             len(problems))

    if problems and on_bad_image == "error":
        raise DatasetError(_summary(problems, scan.root), [p for p, _ in problems])
    for problem, _ in problems:
        warnings.warn(f"skipping image {problem.image_id}: {problem.message}", BadImageWarning,
                      stacklevel=2)

    records = [_record(cand, info) for cand, info in kept]
    _log_split_counts(records)
    table = records_to_table(records)
    validate_manifest(table, len(scan.classes), where=f"manifest of {scan.root}")
    stats = compute_stats(records, scan.classes, problems, source=source)
    tsv = cooccurrence_tsv(sorted(records, key=lambda r: r.image_id), scan.classes)

    if to_render:
        t2 = time.perf_counter()
        assert scan.render is not None
        scan.render(to_render, workers=_workers(workers))
        log.info("rendered %d ground-truth masks in %.1f s", len(to_render),
                 time.perf_counter() - t2)

    _write_outputs(out_dir, table, classes_to_json(scan.classes, source), stats, tsv)
    log.info("wrote %s (%d images, %d skipped)", out_dir, len(records), len(problems))
    return stats


# -- checks ------------------------------------------------------------------------------------
def _workers(workers: int | None) -> int:
    from qaclims.data.images import default_workers

    return default_workers() if workers is None else max(1, int(workers))


def _check(
    candidates: list[Candidate], decode: bool, workers: int | None, *, n_classes: int,
) -> tuple[list[tuple[Candidate, ImageInfo]], list[tuple[Problem, list[str]]], list[Candidate]]:
    """Open every image (and GT mask); returns kept (candidate, size), problems, masks to render."""

    def check(cand: Candidate) -> tuple[ImageInfo, bool]:
        info = check_image(cand.image_path, decode=decode)
        hw = (info.height, info.width)
        if cand.expected_hw is not None and hw != cand.expected_hw:
            h, w = cand.expected_hw
            raise BadFile(
                "size_mismatch",
                f"image {cand.image_path} is {info.width}x{info.height} but its annotations "
                f"say {w}x{h} (width x height)",
            )
        render = False
        if cand.gt_path is not None:
            try:
                check_label_png(cand.gt_path, hw, cand.image_path, decode=decode,
                                n_classes=n_classes)
            except BadFile:
                if not cand.render_gt:
                    raise
                render = True  # a rendered mask that is missing, stale or broken: render again
        return info, render

    results = check_files(candidates, check, workers)
    kept, problems, to_render = [], [], []
    for cand, result in zip(candidates, results, strict=True):
        if cand.problem is not None:
            problems.append((cand.problem, sorted(cand.splits)))
        elif isinstance(result, BadFile):
            problem = Problem(cand.image_id, result.reason, result.message)
            problems.append((problem, sorted(cand.splits)))
        else:
            info, render = result
            kept.append((cand, info))
            if render:
                to_render.append(cand)
    return kept, problems, to_render


def _record(cand: Candidate, info: ImageInfo) -> ManifestRecord:
    splits = sorted(
        s if cand.labels or s in UNLABELLED_OK else s + UNLABELLED_SUFFIX for s in cand.splits
    )
    return ManifestRecord(
        image_id=cand.image_id,
        splits=splits,
        image_path=str(cand.image_path),
        height=info.height,
        width=info.width,
        labels=list(cand.labels),
        has_gt=cand.gt_path is not None,
        gt_path=str(cand.gt_path) if cand.gt_path is not None else None,
    )


def _log_split_counts(records: list[ManifestRecord]) -> None:
    """One line per split: a wrong split size (e.g. VOC train_aug of 1,464) shows in the log."""
    counts: dict[str, int] = {}
    for r in records:
        for split in r.splits:
            counts[split] = counts.get(split, 0) + 1
    for split in sorted(counts):
        log.info("split %s: %d images", split, counts[split])


def _summary(problems: list[tuple[Problem, list[str]]], root: Path, limit: int = 20) -> str:
    lines = [f"- {p.message}" for p, _ in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    reasons: dict[str, int] = {}
    for p, _ in problems:
        reasons[p.reason] = reasons.get(p.reason, 0) + 1
    return (
        f"{len(problems)} bad image(s) in {root} {dict(sorted(reasons.items()))}; nothing was "
        "written. Fix them, or set on_bad_image to 'skip' to leave them out:\n  "
        + "\n  ".join(lines)
    )


# -- outputs -----------------------------------------------------------------------------------
def _write_outputs(out_dir: Path, table: Any, classes: dict, stats: dict, tsv: str) -> None:
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(classes, out_dir / "classes.json")
    write_json(stats, out_dir / "stats.json")
    with atomic_path(out_dir / "cooccurrence.tsv") as tmp:
        tmp.write_text(tsv)
    # the manifest last: its presence means the others are there too
    with atomic_path(out_dir / "manifest.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
