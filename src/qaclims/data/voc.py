"""PASCAL VOC 2012 (and the VOC-style synthetic tree) -> reader output for prepare_dataset.

Layout (../shared/method.md 1.1), ``root`` = the ``VOC2012`` directory::

    JPEGImages/{id}.jpg                 required
    Annotations/{id}.xml                required (image-level labels)
    ImageSets/Segmentation/train.txt    required; val.txt required; test.txt, train_aug.txt optional
    SegmentationClass/{id}.png          optional ground truth (train/val: 2,913 images)
    SegmentationClassAug/{id}.png       optional (SBD-augmented ground truth, 12,031 images)

- Labels are the ``<name>`` of every ``<object>`` in the XML, difficult and truncated ones
  included (as the authors' ``make_cls_labels.py``); object parts' names are not classes.
- Splits are the lists in ``ImageSets/Segmentation`` that exist. A list holds one image per line:
  a plain id (``2007_000032``, the authors' ``voc12/*.txt``) or the DeepLab format
  (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``); the id is the file stem.
- ``train_aug`` is that folder's ``train_aug.txt`` when present, else derived: (ids in
  SegmentationClassAug ∪ train) − val (10,582 images on the standard tree). With neither, VOC
  has no train_aug: when a stage needs it (``need_train_aug``) the scan stops with a
  :class:`DatasetError` that says what is missing and where to get it, because silently training
  on the 1,464 ``train`` images instead of 10,582 changes every number downstream.
  ``train_aug_fallback="train"`` is the explicit opt-in to ``train_aug = train``. The synthetic
  source has no SBD: its ``train_aug`` is its ``train`` by design.
- Ground truth is ``SegmentationClass/{id}.png``, else ``SegmentationClassAug/{id}.png``.
- Test images without an XML (or whose XML has no objects) get empty labels; a train/val image
  without an XML is a bad image (``missing_annotation``).
- A class name that is not in the class table stops the preparation whatever ``on_bad_image``
  says: it means the class table is wrong, and skipping would silently drop data.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

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

log = logging.getLogger(__name__)

TrainAugFallback = Literal["error", "train"]
#: Where SegmentationClassAug is usually fetched from (SBD labels converted to VOC PNGs; the
#: archive that DeepLab, IRN and CLIMS users unzip next to SegmentationClass).
SEGMENTATION_CLASS_AUG_URL = "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip"

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
    """Image ids of a VOC split list: the first token per line, blank lines ignored; a token that
    is a path (``/JPEGImages/2007_000032.jpg``, DeepLab's list format) gives its file stem."""
    ids = []
    for line in path.read_text().splitlines():
        tokens = line.split()
        if not tokens:
            continue
        token = tokens[0]
        if "/" in token or token.endswith(IMAGE_EXTS):
            token = os.path.splitext(token.rsplit("/", 1)[-1])[0]
            if not token:
                raise DatasetError(f"{path}: line {line!r} names no image file")
        ids.append(token)
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


def scan_voc(root: str | os.PathLike[str], source: str = "voc12", *,
             train_aug_fallback: TrainAugFallback = "error",
             need_train_aug: bool = True) -> DatasetScan:
    """Read a VOC-style tree: splits, labels and ground-truth paths; image files are not opened.

    ``source="synthetic"``: a ``classes.json`` at ``root`` replaces the VOC class table, and
    ``train_aug`` is ``train``. ``train_aug_fallback`` / ``need_train_aug``: what happens when
    VOC's train_aug can be neither read nor derived (see module doc); when it is not needed it is
    simply left out.
    """
    if train_aug_fallback not in ("error", "train"):
        raise ValueError(f"train_aug_fallback must be 'error' or 'train', got "
                         f"{train_aug_fallback!r}")
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
        if seg_aug or source == "synthetic":
            val = set(splits["val"])
            splits["train_aug"] = sorted((set(seg_aug) | set(splits["train"])) - val)
        elif train_aug_fallback == "train":
            log.warning("%s: no train_aug.txt and no SegmentationClassAug/: train_aug = train "
                        "(%d images; the paper's train_aug has 10,582) as configured "
                        "(dataset.train_aug_fallback: train)", root, len(splits["train"]))
            splits["train_aug"] = list(splits["train"])
        elif need_train_aug:
            raise DatasetError(_no_train_aug_message(root, lists, len(splits["train"])))

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


def _no_train_aug_message(root: Path, lists: Path, n_train: int) -> str:
    return (
        f"VOC split train_aug is needed but cannot be built from {root}: neither "
        f"{lists / 'train_aug.txt'} nor {root / 'SegmentationClassAug'}/ exists. Without them "
        f"train_aug would be the {n_train} 'train' images instead of the paper's 10,582, and "
        "every stage would train on the wrong set. Either\n"
        f"  - unzip SegmentationClassAug (the SBD-augmented labels, 12,031 PNGs, e.g. "
        f"{SEGMENTATION_CLASS_AUG_URL}) into {root}/, or\n"
        f"  - put a train_aug list at {lists / 'train_aug.txt'} (the authors' voc12/train_aug.txt "
        "with one id per line, or DeepLab's '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png' "
        "lines), or\n"
        "  - set dataset.train_aug_fallback: train to train on 'train' knowingly."
    )
