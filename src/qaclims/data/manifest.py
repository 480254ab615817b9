"""The dataset contract every later stage reads: ``manifest.parquet`` + ``classes.json``.

manifest.parquet - one row per image, sorted by ``image_id``, no duplicates:

========== ================ =============================================================
column     type             meaning
========== ================ =============================================================
image_id   string           file stem: ``2007_000032``, ``COCO_train2014_000000000009``
splits     list<string>     every split the image belongs to (sorted), never empty
image_path string           absolute path of the RGB/grey image file
height     int32            image height in pixels (> 0)
width      int32            image width in pixels (> 0)
labels     list<int32>      image-level class ids, sorted, unique, each in 1..K; may be empty
has_gt     bool             a pixel ground-truth mask exists
gt_path    string (null)    absolute path of the label PNG (0 bg, 1..K, 255 ignore) iff has_gt
========== ================ =============================================================

Split names: ``train``, ``val``, ``test`` (VOC, where listed), ``train_aug`` (VOC; = train for the
synthetic data). An image with no labels in any split other than ``test`` is moved to
``{split}_unlabelled`` (e.g. COCO's ~700 unannotated train2014 images go to ``train_unlabelled``),
so every split except ``test`` and ``*_unlabelled`` holds only labelled images and is safe to
train a multi-label classifier on. ``test`` images may have empty labels (VOC test has none).

classes.json - ``{"source", "num_classes" (K), "background", "classes": [{"id", "name", "text",
"synonyms"}, ...]}`` with ids 1..K in order; ``name`` is the dataset's own token
(``diningtable``), ``text`` the natural-language name fed to VQA/CLIP (``dining table``),
``synonyms`` the strings that count as naming the class in an answer (method.md 3.1 supply_cat).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.store import atomic_path, read_json, write_json

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_VERSION",
    "ClassInfo",
    "DatasetError",
    "ManifestRecord",
    "Problem",
    "class_names",
    "classes_from_json",
    "classes_to_json",
    "manifest_schema",
    "multi_hot",
    "read_classes",
    "read_manifest",
    "records_to_table",
    "split_view",
    "validate_manifest",
    "write_classes",
    "write_manifest",
]

MANIFEST_VERSION = "1"
MANIFEST_COLUMNS = (
    "image_id", "splits", "image_path", "height", "width", "labels", "has_gt", "gt_path",
)
UNLABELLED_SUFFIX = "_unlabelled"


class DatasetError(ValueError):
    """The dataset cannot be turned into a manifest; the message names the files involved.

    ``problems`` lists the per-image problems (empty for structural errors such as a missing
    root or sub-directory).
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class Problem:
    """Why one image cannot be used. ``reason`` is a short key (``missing_image``, ...)."""

    image_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    text: str
    synonyms: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "text": self.text,
                "synonyms": list(self.synonyms or (self.text,))}


@dataclass
class ManifestRecord:
    image_id: str
    splits: list[str]
    image_path: str
    height: int
    width: int
    labels: list[int]
    has_gt: bool
    gt_path: str | None


# -- classes.json ------------------------------------------------------------------------------
def classes_to_json(classes: Sequence[ClassInfo], source: str) -> dict[str, Any]:
    return {
        "source": source,
        "num_classes": len(classes),
        "background": "background",
        "classes": [c.to_json() for c in classes],
    }


def classes_from_json(data: Any, where: str = "classes.json") -> list[ClassInfo]:
    """Parse a class table: the format written by :func:`write_classes`, or a looser one.

    Accepted: ``{"classes": [...]}`` or a bare list; entries are names (``"cat"``) or objects
    with ``name`` and optional ``id``, ``text``, ``synonyms``. A leading ``background`` entry
    (or id 0) is dropped. Ids, where given, must be 1..K in order.
    """
    entries = data.get("classes") if isinstance(data, Mapping) else data
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{where}: expected a non-empty list of classes under 'classes'")
    out: list[ClassInfo] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise DatasetError(f"{where}: class entry {i} has no string 'name': {entry!r}")
        if entry.get("id") == 0 or (i == 0 and entry["name"] in ("background", "_background_")
                                    and "id" not in entry):
            continue
        cid = len(out) + 1
        if "id" in entry and int(entry["id"]) != cid:
            raise DatasetError(
                f"{where}: class {entry['name']!r} has id {entry['id']}, expected {cid} "
                "(ids must run 1..K in order)"
            )
        text = str(entry.get("text") or entry["name"])
        synonyms = entry.get("synonyms") or [text]
        if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
            raise DatasetError(f"{where}: class {entry['name']!r}: 'synonyms' must be strings")
        out.append(ClassInfo(cid, entry["name"], text, tuple(synonyms)))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{where}: duplicate class names {dupes}")
    if not out:
        raise DatasetError(f"{where}: no classes besides background")
    return out


def write_classes(classes: Sequence[ClassInfo], path: str | os.PathLike[str], source: str) -> None:
    write_json(classes_to_json(classes, source), path)


def read_classes(path: str | os.PathLike[str]) -> list[ClassInfo]:
    return classes_from_json(read_json(path), where=str(path))


def class_names(classes: Sequence[ClassInfo], background: bool = True) -> list[str]:
    """Class names in id order, ``background`` first unless ``background=False``."""
    return (["background"] if background else []) + [c.name for c in classes]


# -- manifest.parquet --------------------------------------------------------------------------
def manifest_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("splits", pa.list_(pa.string()), nullable=False),
            pa.field("image_path", pa.string(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("labels", pa.list_(pa.int32()), nullable=False),
            pa.field("has_gt", pa.bool_(), nullable=False),
            pa.field("gt_path", pa.string(), nullable=True),
        ],
        metadata={"qaclims.manifest_version": MANIFEST_VERSION},
    )


def records_to_table(records: Iterable[ManifestRecord]) -> Any:
    import pyarrow as pa

    records = sorted(records, key=lambda r: r.image_id)
    columns = {name: [getattr(r, name) for r in records] for name in MANIFEST_COLUMNS}
    columns["splits"] = [sorted(s) for s in columns["splits"]]
    columns["labels"] = [sorted(int(c) for c in lab) for lab in columns["labels"]]
    return pa.table(columns, schema=manifest_schema())


def _to_table(manifest: Any) -> Any:
    import pyarrow as pa

    if isinstance(manifest, pa.Table):
        return manifest
    if isinstance(manifest, Sequence) and (not manifest or isinstance(manifest[0], ManifestRecord)):
        return records_to_table(manifest)
    # a pandas DataFrame (e.g. from read_manifest)
    df = manifest.copy()
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"manifest lacks columns {missing}")
    df["splits"] = [list(v) for v in df["splits"]]
    df["labels"] = [[int(x) for x in v] for v in df["labels"]]
    df["gt_path"] = [None if v is None or v != v else str(v) for v in df["gt_path"]]
    return pa.Table.from_pandas(df[list(MANIFEST_COLUMNS)], schema=manifest_schema(),
                                preserve_index=False)


def validate_manifest(
    manifest: Any, num_classes: int | None = None, where: str = "manifest",
) -> None:
    """Raise :class:`DatasetError` unless ``manifest`` obeys the contract.

    ``manifest``: a pyarrow Table, a DataFrame (as :func:`read_manifest` returns) or records.
    """
    table = _to_table(manifest)
    if tuple(table.column_names) != MANIFEST_COLUMNS:
        raise DatasetError(
            f"{where}: columns {table.column_names}, expected {list(MANIFEST_COLUMNS)}"
        )
    expected = manifest_schema()
    for f in expected:
        if not table.schema.field(f.name).type.equals(f.type):
            raise DatasetError(
                f"{where}: column {f.name!r} has type {table.schema.field(f.name).type}, "
                f"expected {f.type}"
            )
    cols = {name: table.column(name).to_pylist() for name in MANIFEST_COLUMNS}
    ids = cols["image_id"]
    problems: list[str] = []
    if any(not i for i in ids):
        problems.append("empty image_id")
    if ids != sorted(ids):
        problems.append("rows are not sorted by image_id")
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        problems.append(f"duplicate image_id {dupes}")
    for i, (iid, splits, h, w, labels, has_gt, gt) in enumerate(zip(
        ids, cols["splits"], cols["height"], cols["width"], cols["labels"], cols["has_gt"],
        cols["gt_path"], strict=True,
    )):
        if len(problems) > 20:
            break
        row = f"row {i} ({iid})"
        if not splits or splits != sorted(set(splits)):
            problems.append(f"{row}: splits must be a non-empty sorted set, got {splits}")
        if h is None or w is None or h < 1 or w < 1:
            problems.append(f"{row}: bad size {w}x{h}")
        if labels is None or labels != sorted(set(labels)):
            problems.append(f"{row}: labels must be sorted and unique, got {labels}")
        elif labels and (labels[0] < 1 or (num_classes is not None and labels[-1] > num_classes)):
            problems.append(f"{row}: labels {labels} outside 1..{num_classes or 'K'}")
        elif not labels and any(
            s not in ("test",) and not s.endswith(UNLABELLED_SUFFIX) for s in splits
        ):
            problems.append(f"{row}: no labels, but in training/evaluation splits {splits}")
        if bool(has_gt) != (gt is not None and gt != ""):
            problems.append(f"{row}: has_gt={has_gt} but gt_path={gt!r}")
    if problems:
        raise DatasetError(f"{where} breaks the manifest contract:\n  " + "\n  ".join(problems))


def write_manifest(
    manifest: Any, path: str | os.PathLike[str], num_classes: int | None = None,
) -> None:
    """Validate, then write atomically (zstd Parquet with the fixed schema)."""
    import pyarrow.parquet as pq

    table = _to_table(manifest)
    validate_manifest(table, num_classes, where=str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_manifest(
    path: str | os.PathLike[str], validate: bool = True, num_classes: int | None = None,
) -> Any:
    """Read a manifest as a pandas DataFrame.

    ``splits`` and ``labels`` hold Python lists, ``gt_path`` a string or None.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist (run the prepare_dataset rule)")
    table = pq.read_table(path)
    if validate:
        validate_manifest(table, num_classes, where=str(path))
    import pandas as pd

    df = table.to_pandas()
    df["splits"] = table.column("splits").to_pylist()
    df["labels"] = table.column("labels").to_pylist()
    # None (not NaN) where there is no ground truth
    df["gt_path"] = pd.Series(table.column("gt_path").to_pylist(), dtype=object, index=df.index)
    return df


def split_view(df: Any, split: str) -> Any:
    """The rows of one split, in image_id order (index reset)."""
    mask = [split in s for s in df["splits"]]
    return df[mask].reset_index(drop=True)


def multi_hot(labels: Iterable[Sequence[int]], num_classes: int) -> np.ndarray:
    """Image-level labels as an [N, K] float32 multi-hot matrix (class id c -> column c-1)."""
    rows = list(labels)
    out = np.zeros((len(rows), num_classes), dtype=np.float32)
    for i, lab in enumerate(rows):
        if len(lab):
            out[i, np.asarray(lab, dtype=np.int64) - 1] = 1.0
    return out


# -- what a dataset reader hands to prepare_dataset ---------------------------------------------
@dataclass
class Candidate:
    """One image as a reader found it, before its files are checked.

    ``expected_hw`` is the size the annotations claim (COCO json), checked against the file.
    ``render_gt``: ``gt_path`` is a mask the preparation renders (COCO) if it is missing or has
    the wrong size. ``problem`` is set when the annotations already make the image unusable.
    """

    image_id: str
    splits: set[str]
    image_path: Path
    labels: list[int]
    gt_path: Path | None = None
    expected_hw: tuple[int, int] | None = None
    render_gt: bool = False
    problem: Problem | None = None
    key: Any = None  # reader-specific handle (COCO image id)


@dataclass
class DatasetScan:
    source: str
    root: Path
    classes: list[ClassInfo]
    candidates: list[Candidate]
    # renders the masks of the given candidates (those with render_gt); None: nothing to render
    render: Any = None
