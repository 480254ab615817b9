"""Dataset statistics (stats.json) and class co-occurrence (cooccurrence.tsv) of a manifest.

stats.json::

    {"source", "num_classes", "classes": [names, id order],
     "n_images", "n_skipped", "skipped_by_reason": {reason: n},
     "skipped": [{"image_id", "reason", "message"}],
     "splits": {split: {"n_images", "n_with_gt", "n_unlabelled", "n_label_pairs",
                        "labels_per_image": {"0": n, "1": n, ...},
                        "class_images": {name: n images with the class},
                        "n_skipped": {reason: n}}}}

Skipped images are counted under the splits they were listed in (before any move to
``*_unlabelled``). Everything is deterministic (no timings, sorted keys where order is free).

cooccurrence.tsv: columns ``split, id_a, class_a, id_b, class_b, n_images``; one row per split and
unordered class pair ``id_a <= id_b`` (zeros included); ``id_a == id_b`` rows are the per-class
image counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from qaclims.data.manifest import ClassInfo, ManifestRecord, Problem

__all__ = ["compute_stats", "cooccurrence", "cooccurrence_tsv"]


def _split_names(records: Sequence[ManifestRecord], skipped: dict[str, list[str]]) -> list[str]:
    names = {s for r in records for s in r.splits}
    names |= {s for splits in skipped.values() for s in splits}
    return sorted(names)


def cooccurrence(records: Sequence[ManifestRecord], num_classes: int) -> dict[str, np.ndarray]:
    """{split: [K, K] int64 matrix of images holding both classes}; diagonal = images per class."""
    by_split: dict[str, list[list[int]]] = {}
    for r in records:
        for s in r.splits:
            by_split.setdefault(s, []).append(r.labels)
    out = {}
    for split in sorted(by_split):
        hot = np.zeros((len(by_split[split]), num_classes), dtype=np.int64)
        for i, labels in enumerate(by_split[split]):
            if labels:
                hot[i, np.asarray(labels) - 1] = 1
        out[split] = hot.T @ hot
    return out


def cooccurrence_tsv(records: Sequence[ManifestRecord], classes: Sequence[ClassInfo]) -> str:
    lines = ["split\tid_a\tclass_a\tid_b\tclass_b\tn_images"]
    for split, mat in cooccurrence(records, len(classes)).items():
        for a in classes:
            for b in classes[a.id - 1:]:
                n = int(mat[a.id - 1, b.id - 1])
                lines.append(f"{split}\t{a.id}\t{a.name}\t{b.id}\t{b.name}\t{n}")
    return "\n".join(lines) + "\n"


def compute_stats(
    records: Sequence[ManifestRecord],
    classes: Sequence[ClassInfo],
    skipped: Sequence[tuple[Problem, Sequence[str]]] = (),
    source: str = "",
) -> dict[str, Any]:
    """Statistics of the manifest rows; ``skipped`` pairs each problem with the image's splits."""
    names = [c.name for c in classes]
    skipped_splits = {p.image_id: list(splits) for p, splits in skipped}
    splits: dict[str, Any] = {}
    for split in _split_names(records, skipped_splits):
        rows = [r for r in records if split in r.splits]
        per_image = Counter(len(r.labels) for r in rows)
        class_count = Counter(c for r in rows for c in r.labels)
        reasons = Counter(p.reason for p, s in skipped if split in s)
        splits[split] = {
            "n_images": len(rows),
            "n_with_gt": sum(r.has_gt for r in rows),
            "n_unlabelled": sum(not r.labels for r in rows),
            "n_label_pairs": sum(len(r.labels) for r in rows),
            "labels_per_image": {str(k): per_image[k] for k in sorted(per_image)},
            "class_images": {c.name: class_count[c.id] for c in classes},
            "n_skipped": dict(sorted(reasons.items())),
        }
    by_reason = Counter(p.reason for p, _ in skipped)
    return {
        "source": source,
        "num_classes": len(classes),
        "classes": names,
        "n_images": len(records),
        "n_skipped": len(skipped),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "skipped": [
            {"image_id": p.image_id, "reason": p.reason, "message": p.message}
            for p, _ in sorted(skipped, key=lambda x: x[0].image_id)
        ],
        "splits": splits,
    }
