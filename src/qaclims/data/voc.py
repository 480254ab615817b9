"""PASCAL VOC 2012 (and the VOC-style synthetic tree) -> reader output for prepare_dataset.

Layout (../shared/method.md 1.1), ``root`` = the ``VOC2012`` directory::

    JPEGImages/{id}.jpg                 required
    Annotations/{id}.xml                required (image-level labels)
    ImageSets/Segmentation/train.txt    required; val.txt required; test.txt, train_aug.txt optional
    SegmentationClass/{id}.png          optional ground truth (train/val: 2,913 images)
    SegmentationClassAug/{id}.png       optional (SBD-augmented ground truth, 12,031 images)

- Labels are the ``<name>`` of every ``<object>`` in the XML, difficult and truncated ones
  included (as the authors' ``make_cls_labels.py``); object parts' names are not classes.
- Splits are the lists in ``ImageSets/Segmentation`` that exist. ``train_aug`` is that folder's
  ``train_aug.txt`` when present, else derived: (ids in SegmentationClassAug ∪ train) − val
  (10,582 images on the standard tree); without SegmentationClassAug it equals train.
- Ground truth is ``SegmentationClass/{id}.png``, else ``SegmentationClassAug/{id}.png``.
- Test images without an XML (or whose XML has no objects) get empty labels; a train/val image
  without an XML is a bad image (``missing_annotation``).
- A class name that is not in the class table stops the preparation whatever ``on_bad_image``
  says: it means the class table is wrong, and skipping would silently drop data.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from qaclims.data.manifest import (
    Candidate,
    ClassInfo,
    DatasetError,
    DatasetScan,
    Problem,
    classes_from_json,
)
from qaclims.store import read_json

__all__ = ["VOC_CLASSES", "read_split_list", "scan_voc", "voc_classes"]

# (name in the XML, natural-language text) in CAT_LIST order; synonyms per method.md 3.1.
_VOC = [
    ("aeroplane", "aeroplane"), ("bicycle", "bicycle"), ("bird", "bird"), ("boat", "boat"),
    ("bottle", "bottle"), ("bus", "bus"), ("car", "car"), ("cat", "cat"), ("chair", "chair"),
    ("cow", "cow"), ("diningtable", "dining table"), ("dog", "dog"), ("horse", "horse"),
    ("motorbike", "motorbike"), ("person", "person"), ("pottedplant", "potted plant"),
    ("sheep", "sheep"), ("sofa", "sofa"), ("train", "train"), ("tvmonitor", "tv monitor"),
]
_SYNONYMS = {
    "dining table": ("table", "dining table"),
    "tv monitor": ("monitor", "tv monitor"),
    "potted plant": ("plant", "potted plant"),
}
VOC_CLASSES: tuple[ClassInfo, ...] = tuple(
    ClassInfo(i + 1, name, text, _SYNONYMS.get(text, (text,)))
    for i, (name, text) in enumerate(_VOC)
)

SPLIT_FILES = ("train", "val", "test", "train_aug")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def voc_classes() -> list[ClassInfo]:
    return list(VOC_CLASSES)


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{path} does not exist or is not a directory; expected {what}")


def read_split_list(path: Path) -> list[str]:
    """Image ids of a VOC split list (first token per line, blank lines ignored)."""
    ids = []
    for line in path.read_text().splitlines():
        tokens = line.split()
        if tokens:
            ids.append(tokens[0])
    return ids


def _stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """{stem: file name} of the files in ``folder`` with one of ``suffixes`` (one listdir)."""
    if not folder.is_dir():
        return {}
    out: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext in suffixes and stem not in out:
            out[stem] = name
    return out


def _xml_labels(path: Path, index: dict[str, int]) -> tuple[list[int], list[str]]:
    """(sorted class ids, unknown names) of one annotation file; raises ET.ParseError."""
    tree = ET.parse(path)
    ids, unknown = set(), []
    for obj in tree.getroot().findall("object"):
        node = obj.find("name")
        if node is None or node.text is None:
            continue
        name = node.text.strip()
        if name in index:
            ids.add(index[name])
        else:
            unknown.append(name)
    return sorted(ids), unknown


def scan_voc(root: str | os.PathLike[str], source: str = "voc12") -> DatasetScan:
    """Read a VOC-style tree: splits, labels and ground-truth paths; image files are not opened.

    ``source="synthetic"``: a ``classes.json`` at ``root`` replaces the VOC class table.
    """
    root = Path(os.path.abspath(root))
    layout = (
        "the VOC2012 directory holding JPEGImages/, Annotations/ and ImageSets/Segmentation/"
    )
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; expected {layout}")
    _require_dir(root / "JPEGImages", f"the images ({{id}}.jpg) of {layout}")
    _require_dir(root / "Annotations", f"the annotation XMLs ({{id}}.xml) of {layout}")
    _require_dir(
        root / "ImageSets" / "Segmentation", f"the split lists (train.txt, val.txt) of {layout}"
    )

    classes = voc_classes()
    if source == "synthetic" and (root / "classes.json").is_file():
        classes = classes_from_json(read_json(root / "classes.json"), str(root / "classes.json"))
    index = {c.name: c.id for c in classes}

    lists = root / "ImageSets" / "Segmentation"
    splits: dict[str, list[str]] = {}
    for name in SPLIT_FILES:
        if (lists / f"{name}.txt").is_file():
            splits[name] = read_split_list(lists / f"{name}.txt")
    for name in ("train", "val"):
        if name not in splits:
            raise DatasetError(
                f"{lists / (name + '.txt')} does not exist; expected the {name} split list "
                "(one image id per line)"
            )

    seg_class = _stems(root / "SegmentationClass", (".png",))
    seg_aug = _stems(root / "SegmentationClassAug", (".png",))
    if "train_aug" not in splits:
        val = set(splits["val"])
        splits["train_aug"] = sorted((set(seg_aug) | set(splits["train"])) - val)

    membership: dict[str, set[str]] = {}
    for split, ids in splits.items():
        for iid in ids:
            membership.setdefault(iid, set()).add(split)

    images = _stems(root / "JPEGImages", IMAGE_EXTS)
    xmls = _stems(root / "Annotations", (".xml",))
    candidates: list[Candidate] = []
    unknown: list[tuple[Path, str]] = []
    for iid in sorted(membership):
        image_name = images.get(iid, f"{iid}.jpg")
        cand = Candidate(
            image_id=iid,
            splits=membership[iid],
            image_path=root / "JPEGImages" / image_name,
            labels=[],
        )
        if iid in seg_class:
            cand.gt_path = root / "SegmentationClass" / seg_class[iid]
        elif iid in seg_aug:
            cand.gt_path = root / "SegmentationClassAug" / seg_aug[iid]
        xml = root / "Annotations" / f"{iid}.xml"
        only_test = cand.splits == {"test"}
        if iid not in xmls:
            if not only_test:
                cand.problem = Problem(
                    iid, "missing_annotation",
                    f"annotation {xml} does not exist (image {iid} is in {sorted(cand.splits)})",
                )
        else:
            try:
                cand.labels, bad_names = _xml_labels(xml, index)
            except ET.ParseError as err:
                cand.problem = Problem(
                    iid, "bad_annotation", f"annotation {xml} is not valid XML: {err}"
                )
            else:
                unknown.extend((xml, n) for n in bad_names)
        candidates.append(cand)

    if unknown:
        shown = "\n  ".join(f"{xml}: unknown class name {name!r}" for xml, name in unknown[:20])
        more = f"\n  ... and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        raise DatasetError(
            f"{len(unknown)} object(s) name a class outside the class table "
            f"{[c.name for c in classes]}:\n  {shown}{more}"
        )
    return DatasetScan(source=source, root=root, classes=classes, candidates=candidates)
