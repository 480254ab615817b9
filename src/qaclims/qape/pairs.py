"""Which (image, class) pairs the VQA stage asks about, and how they are split into shards.

Pairs (method.md 2.3): every image of the chosen splits, every class in its image-level labels.

Shards: a fixed number (from config) of jobs, each owning the images whose stable hash falls in
it. The hash depends on the image id alone, so

* all classes of an image land in the same shard (the engine encodes each image once), and
* adding or removing images never moves any other image to another shard (no reshuffle: the other
  shards' cached answers and outputs stay valid).

Shard names are zero-padded numbers (``shard_names(8) == ['0', ..., '7']`` padded to the width of
``n_shards - 1``) so they sort and serve as a Snakemake wildcard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from qaclims.data.manifest import ClassInfo, classes_from_json

PAIR_COLUMNS = ["image_id", "class_id", "class_text"]


def class_table(classes: Any) -> dict[int, ClassInfo]:
    """Class id -> :class:`~qaclims.data.manifest.ClassInfo` (id, name, text, synonyms).

    Accepts what :func:`qaclims.data.manifest.read_classes` returns (a list of ClassInfo), the
    parsed classes.json (``{"classes": [...]}``) or any form ``classes_from_json`` takes (a list of
    entries or names, ids 1..K), or a mapping id -> text (synonyms = the text itself).
    """
    if isinstance(classes, Mapping) and "classes" not in classes:
        infos = [ClassInfo(int(k), str(v), str(v), (str(v),)) for k, v in classes.items()]
    elif isinstance(classes, Sequence) and classes and all(
        isinstance(c, ClassInfo) for c in classes
    ):
        infos = list(classes)
    else:
        infos = classes_from_json(classes, where="classes")
    if not infos:
        raise ValueError("no classes given")
    texts = [c.text for c in infos]
    if len(set(texts)) != len(texts):
        raise ValueError(f"class texts must be unique, got {sorted(texts)}")
    return {c.id: c for c in infos}


def class_texts(classes: Any) -> dict[int, str]:
    """Class id -> the natural-language class name used in questions and texts ("dining table")."""
    return {i: c.text for i, c in class_table(classes).items()}


def image_splits(manifest: pd.DataFrame) -> pd.Series:
    """Per manifest row, the set of splits it belongs to (a ``splits`` list column or a ``split``
    string column)."""
    if "splits" in manifest.columns:
        return manifest["splits"].map(lambda s: {s} if isinstance(s, str) else set(s))
    if "split" in manifest.columns:
        return manifest["split"].map(lambda s: {s})
    raise KeyError("manifest has neither a 'splits' nor a 'split' column")


def make_pairs(manifest: pd.DataFrame, classes: Any, splits: Sequence[str]) -> pd.DataFrame:
    """``[image_id, class_id, class_text]`` for every labelled class of every image in any of
    ``splits``, sorted by (image_id, class_id). Label ids outside the class list are an error."""
    if isinstance(splits, str):
        splits = [splits]
    wanted = set(splits)
    names = class_texts(classes)
    in_split = image_splits(manifest).map(lambda s: bool(s & wanted))
    rows = []
    for image_id, labels in zip(
        manifest.loc[in_split.to_numpy(), "image_id"], manifest.loc[in_split.to_numpy(), "labels"],
        strict=True,
    ):
        for class_id in sorted({int(c) for c in np.asarray(labels).ravel()}):
            if class_id not in names:
                raise ValueError(
                    f"image {image_id}: label {class_id} is not a class id; expected one of "
                    f"{min(names)}..{max(names)}"
                )
            rows.append((str(image_id), class_id, names[class_id]))
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    pairs["class_id"] = pairs["class_id"].astype("int64")
    if pairs.duplicated(["image_id", "class_id"]).any():
        dup = pairs.loc[pairs.duplicated(["image_id", "class_id"]), "image_id"].iloc[0]
        raise ValueError(f"manifest lists image {dup} more than once")
    return pairs.sort_values(["image_id", "class_id"], ignore_index=True)


# ---------------------------------------------------------------------- shards


def shard_of(image_id: str, n_shards: int) -> int:
    """The shard of ``image_id``: a stable hash (SHA-1 of the UTF-8 id), independent of the
    Python process, platform, and of which other images exist."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    digest = hashlib.sha1(str(image_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def shard_names(n_shards: int) -> list[str]:
    """Wildcard values of the ``n_shards`` shards: '0'..'7', or '00'..'15' for 16 shards."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    width = len(str(n_shards - 1))
    return [f"{i:0{width}d}" for i in range(n_shards)]


def shard_index(name: str | int, n_shards: int) -> int:
    """Inverse of :func:`shard_names` (accepts the int too); range-checked."""
    i = int(name)
    if not 0 <= i < n_shards:
        raise ValueError(f"shard {name!r} out of range for {n_shards} shards")
    return i


def assign_shards(image_ids: Iterable[str], n_shards: int) -> np.ndarray:
    return np.fromiter((shard_of(i, n_shards) for i in image_ids), dtype=np.int64)


def select_shard(pairs: pd.DataFrame, shard: str | int, n_shards: int) -> pd.DataFrame:
    """The pairs of one shard, order kept."""
    i = shard_index(shard, n_shards)
    keep = assign_shards(pairs["image_id"], n_shards) == i
    return pairs.loc[keep].reset_index(drop=True)


def split_shards(pairs: pd.DataFrame, n_shards: int) -> dict[str, pd.DataFrame]:
    """Shard name -> its pairs (every shard present, possibly empty), order kept."""
    which = assign_shards(pairs["image_id"], n_shards)
    return {
        name: pairs.loc[which == i].reset_index(drop=True)
        for i, name in enumerate(shard_names(n_shards))
    }
