"""Tiny VOC- and COCO-style dataset trees built in a temporary folder, for tests.

``make_voc_tree(root)`` and ``make_coco_tree(root)`` write small but complete trees (a few
images of a few dozen pixels) and return a description of what they wrote, so tests can state
expectations without repeating the layout. ``truncate_file`` / ``write_garbage`` break files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qaclims.store import write_label_png

# -- generic helpers ---------------------------------------------------------------------------


def write_jpeg(path: Path, height: int, width: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    # smooth-ish content so the JPEG has a realistic size (noise compresses badly)
    base = rng.integers(0, 255, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)


def truncate_file(path: Path, keep: float = 0.6) -> None:
    """Cut a file short. For a JPEG ``keep`` is the share of the entropy-coded scan data kept,
    so the header stays readable (the size is known, decoding fails)."""
    data = path.read_bytes()
    sos = data.find(b"\xff\xda")
    start = sos + 4 if sos >= 0 else 0
    path.write_bytes(data[: max(1, start + int((len(data) - start) * keep))])


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not an image\n" * 10)


# -- VOC ---------------------------------------------------------------------------------------


@dataclass
class VocImage:
    image_id: str
    objects: list[str]  # class names in the XML, in order (duplicates allowed)
    height: int = 24
    width: int = 32
    seg: bool = False  # SegmentationClass/{id}.png
    aug: bool = False  # SegmentationClassAug/{id}.png
    xml: bool = True
    difficult: tuple[int, ...] = ()  # object indices marked difficult


@dataclass
class VocTree:
    root: Path
    images: dict[str, VocImage]
    splits: dict[str, list[str]]
    classes: list[str] = field(default_factory=list)

    def image(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def xml(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"


VOC_NAMES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]

DEFAULT_VOC_IMAGES = [
    VocImage("2007_000001", ["person", "dog", "person"], seg=True, aug=True),
    VocImage("2007_000002", ["cat", "chair"], height=30, width=20, seg=True, difficult=(1,)),
    VocImage("2007_000003", ["diningtable", "person"], seg=True, aug=True),
    VocImage("2007_000004", ["car"], height=20, width=28, seg=True),
    VocImage("2008_000005", ["bird"], aug=True),  # only in SegmentationClassAug -> train_aug
    VocImage("2008_000006", ["tvmonitor", "pottedplant", "person"], aug=True),
    VocImage("2009_000007", [], xml=False),  # test image without XML
    VocImage("2009_000008", []),  # test image whose XML lists no object
]
DEFAULT_VOC_SPLITS = {
    "train": ["2007_000001", "2007_000002"],
    "val": ["2007_000003", "2007_000004"],
    "test": ["2009_000007", "2009_000008"],
}


def _voc_xml(img: VocImage) -> str:
    objects = []
    for i, name in enumerate(img.objects):
        objects.append(
            "  <object>\n"
            f"    <name>{name}</name>\n"
            f"    <difficult>{1 if i in img.difficult else 0}</difficult>\n"
            "    <truncated>0</truncated>\n"
            "    <part><name>head</name></part>\n"
            "    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>\n"
            "  </object>\n"
        )
    return (
        "<annotation>\n"
        f"  <filename>{img.image_id}.jpg</filename>\n"
        f"  <size><width>{img.width}</width><height>{img.height}</height><depth>3</depth></size>\n"
        + "".join(objects)
        + "</annotation>\n"
    )


def _mask(img: VocImage, class_ids: list[int]) -> np.ndarray:
    mask = np.zeros((img.height, img.width), dtype=np.uint8)
    for k, cid in enumerate(class_ids):
        mask[2 + k : 6 + k, 2 + 2 * k : 8 + 2 * k] = cid
    mask[0, :] = 255
    return mask


def make_voc_tree(
    root: Path,
    images: list[VocImage] | None = None,
    splits: dict[str, list[str]] | None = None,
    *,
    train_aug_txt: list[str] | None = None,
    classes: list[str] | None = None,
    classes_json: Any = None,
) -> VocTree:
    """Write a VOC2012-style tree at ``root``.

    ``classes_json`` (if given) is written to root/classes.json, as the synthetic generator does.
    """
    images = list(DEFAULT_VOC_IMAGES if images is None else images)
    splits = {k: list(v) for k, v in (DEFAULT_VOC_SPLITS if splits is None else splits).items()}
    names = classes or VOC_NAMES
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, img in enumerate(images):
        write_jpeg(root / "JPEGImages" / f"{img.image_id}.jpg", img.height, img.width, seed=n)
        if img.xml:
            (root / "Annotations" / f"{img.image_id}.xml").write_text(_voc_xml(img))
        ids = sorted({names.index(o) + 1 for o in img.objects if o in names})
        if img.seg:
            write_label_png(_mask(img, ids), root / "SegmentationClass" / f"{img.image_id}.png")
        if img.aug:
            # SBD-converted masks are grey PNGs
            (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
            Image.fromarray(_mask(img, ids), mode="L").save(
                root / "SegmentationClassAug" / f"{img.image_id}.png"
            )
    for split, ids in splits.items():
        lines = "".join(f"{i}\n" for i in ids)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text(lines)
    if train_aug_txt is not None:
        (root / "ImageSets/Segmentation/train_aug.txt").write_text(
            "".join(f"{i}\n" for i in train_aug_txt)
        )
    if classes_json is not None:
        (root / "classes.json").write_text(json.dumps(classes_json))
    return VocTree(root=root, images={i.image_id: i for i in images}, splits=splits, classes=names)


# -- COCO --------------------------------------------------------------------------------------


def rect_polygon(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat.tolist():
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(s) for s in rle["size"]]}


@dataclass
class CocoTree:
    root: Path
    # per split: {int image id: (file name, height, width)}
    images: dict[str, dict[int, tuple[str, int, int]]]
    jsons: dict[str, dict[str, Any]]

    def image(self, split: str, img_id: int) -> Path:
        return self.root / f"{split}2014" / self.images[split][img_id][0]

    def json_path(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}2014.json"

    @staticmethod
    def image_id(split: str, img_id: int) -> str:
        return f"COCO_{split}2014_{img_id:012d}"


# categories deliberately out of id order: the class ids follow sorted category ids
COCO_CATEGORIES = [
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]
COCO_CLASS = {"person": 1, "car": 2, "dog": 3}  # class ids after sorting category ids 1, 3, 18


def _ann(ann_id: int, img_id: int, cat: int, seg: Any, crowd: int = 0) -> dict[str, Any]:
    return {"id": ann_id, "image_id": img_id, "category_id": cat, "segmentation": seg,
            "iscrowd": crowd, "area": 1.0, "bbox": [0, 0, 1, 1]}


def default_coco_spec() -> dict[str, Any]:
    """Images and annotations (json order matters: later non-crowd annotations win)."""
    h, w = 30, 40
    crowd = np.zeros((h, w), np.uint8)
    crowd[20:28, 30:38] = 1
    car = np.zeros((h, w), np.uint8)
    car[2:8, 30:38] = 1
    car_val = np.zeros((24, 36), np.uint8)
    car_val[4:10, 4:12] = 1
    return {
        "train": {
            "images": [(9, h, w), (25, h, w), (30, 20, 20)],  # 30: no annotations
            "annotations": [
                # image 9: person left, then dog overlapping its right part (dog wins there),
                # a crowd car (labels only), a compressed-RLE car
                _ann(900, 9, 1, rect_polygon(0, 0, 20, 30)),
                _ann(100, 9, 18, rect_polygon(10, 0, 30, 30)),
                _ann(101, 9, 3, uncompressed_rle(crowd), crowd=1),
                _ann(102, 9, 3, compressed_rle(car)),
                # image 25: only a crowd annotation -> labelled, all-background mask
                _ann(103, 25, 1, uncompressed_rle(crowd), crowd=1),
            ],
        },
        "val": {
            "images": [(42, 24, 36), (73, 24, 36)],
            "annotations": [
                # image 73: dog then person overlapping: person wins in the overlap
                _ann(200, 73, 18, rect_polygon(0, 0, 24, 24)),
                _ann(201, 73, 1, rect_polygon(12, 0, 36, 24)),
                _ann(202, 42, 3, uncompressed_rle(car_val)),
            ],
        },
    }


def make_coco_tree(root: Path, spec: dict[str, Any] | None = None,
                   categories: list[dict[str, Any]] | None = None) -> CocoTree:
    spec = default_coco_spec() if spec is None else spec
    categories = COCO_CATEGORIES if categories is None else categories
    images: dict[str, dict[int, tuple[str, int, int]]] = {}
    jsons: dict[str, dict[str, Any]] = {}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, content in spec.items():
        folder = root / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        images[split] = {}
        entries = []
        for img_id, h, w in content["images"]:
            name = f"{CocoTree.image_id(split, img_id)}.jpg"
            write_jpeg(folder / name, h, w, seed=img_id)
            images[split][img_id] = (name, h, w)
            entries.append({"id": img_id, "file_name": name, "height": h, "width": w})
        data = {"info": {}, "images": entries, "annotations": content["annotations"],
                "categories": categories}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
        jsons[split] = data
    return CocoTree(root=root, images=images, jsons=jsons)
