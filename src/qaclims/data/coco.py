"""MS COCO 2014 -> reader output for prepare_dataset (../shared/method.md 1.2 and 11).

Layout, ``root``::

    train2014/COCO_train2014_{id:012d}.jpg      val2014/...          required
    annotations/instances_{train,val}2014.json                       required
    mask/{train2014,val2014}/{id}.png                                optional ready-made GT

- Classes: the json's categories in sorted category-id order -> 1..K (80 on COCO); name from the
  json, text = name, synonyms = [name].
- Labels: the classes of all annotations of an image, crowd ones included (as the authors).
- Ground truth (as the authors' ``annToMask.py``): zeros, then for every non-crowd annotation in
  json order ``mask[annToMask(ann) == 1] = class id`` (later annotations overwrite earlier ones),
  no 255 region. Masks come from ``root/mask/{train2014,val2014}/{id}.png`` where that file
  exists, else they are rendered to ``gt_dir/{train,val}/{id}.png`` (atomically; a file already
  there with the image's size is reused, so a rerun renders nothing).
- image_id = the file name's stem, e.g. ``COCO_train2014_000000000009``.
- Images without annotations stay in the manifest with empty labels; prepare_dataset moves them to
  ``train_unlabelled`` / ``val_unlabelled`` so ``train`` / ``val`` hold only labelled images.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.data.manifest import Candidate, ClassInfo, DatasetError, DatasetScan

__all__ = ["COCO_SPLITS", "load_coco", "render_coco_mask", "scan_coco"]

# manifest split -> folder / annotation-file tag
COCO_SPLITS = {"train": "train2014", "val": "val2014"}


def load_coco(annotation_file: Path) -> Any:
    """pycocotools.COCO of one instances json, checked, without pycocotools' stdout chatter."""
    from pycocotools.coco import COCO

    def bad(why: str) -> DatasetError:
        return DatasetError(f"{annotation_file} is not a COCO instances json: {why}")

    try:
        data = json.loads(annotation_file.read_text())
    except ValueError as err:
        raise bad(str(err)) from err
    if not isinstance(data, dict):
        raise bad(f"expected an object at the top, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise bad(f"no list '{key}'")
    try:
        for img in data["images"]:
            img["id"], img["file_name"], img["height"], img["width"]  # noqa: B018
        for ann in data["annotations"]:
            ann["image_id"], ann["category_id"], ann["segmentation"]  # noqa: B018
    except (KeyError, TypeError) as err:
        raise bad(f"an image or annotation lacks {err}") from err
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    missing = sorted({a["image_id"] for a in data["annotations"]} - set(coco.imgs))[:5]
    if missing:
        raise bad(f"annotations refer to image ids {missing} that 'images' does not list")
    return coco


def render_coco_mask(coco: Any, img_id: int, cat_to_class: dict[int, int]) -> np.ndarray:
    """The authors' GT mask of one image: non-crowd annotations in json order, later win."""
    info = coco.imgs[img_id]
    mask = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
    for ann in coco.imgToAnns.get(img_id, []):
        if ann.get("iscrowd", 0):
            continue
        mask[coco.annToMask(ann) == 1] = cat_to_class[ann["category_id"]]
    return mask


def scan_coco(
    root: str | os.PathLike[str], gt_dir: str | os.PathLike[str], source: str = "coco14",
) -> DatasetScan:
    """Read the instances jsons; image files are not opened and no mask is rendered yet."""
    root = Path(os.path.abspath(root))
    gt_dir = Path(os.path.abspath(gt_dir))
    layout = "the COCO 2014 directory holding train2014/, val2014/ and annotations/"
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; expected {layout}")
    for folder in COCO_SPLITS.values():
        if not (root / folder).is_dir():
            raise DatasetError(
                f"{root / folder} does not exist or is not a directory; expected the {folder} "
                f"images of {layout}"
            )
        ann = root / "annotations" / f"instances_{folder}.json"
        if not ann.is_file():
            raise DatasetError(f"{ann} does not exist; expected the COCO instances annotations")

    cocos = {split: load_coco(root / "annotations" / f"instances_{folder}.json")
             for split, folder in COCO_SPLITS.items()}
    classes, cat_to_class = _classes(cocos)

    candidates: list[Candidate] = []
    for split, folder in COCO_SPLITS.items():
        coco = cocos[split]
        ann_file = root / "annotations" / f"instances_{folder}.json"
        unknown = sorted({a["category_id"] for a in coco.anns.values()} - set(cat_to_class))
        if unknown:
            raise DatasetError(
                f"{ann_file}: annotations use category ids {unknown} that no category defines"
            )
        ready = root / "mask" / folder
        ready_masks = set(os.listdir(ready)) if ready.is_dir() else set()
        for img_id in sorted(coco.imgs):
            info = coco.imgs[img_id]
            file_name = str(info["file_name"])
            ready_mask = ready / f"{img_id}.png"
            use_ready = f"{img_id}.png" in ready_masks
            anns = coco.imgToAnns.get(img_id, [])
            cand = Candidate(
                image_id=Path(file_name).stem,
                splits={split},
                image_path=root / folder / file_name,
                labels=sorted({cat_to_class[a["category_id"]] for a in anns}),
                gt_path=ready_mask if use_ready else gt_dir / split / f"{img_id}.png",
                expected_hw=(int(info["height"]), int(info["width"])),
                render_gt=not use_ready,
                key=(split, img_id),
            )
            candidates.append(cand)

    ids = [c.image_id for c in candidates]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DatasetError(f"image file names repeat across {list(COCO_SPLITS.values())}: {dupes}")

    def render(todo: Sequence[Candidate], workers: int = 1) -> None:
        from qaclims.store import write_label_png

        def one(cand: Candidate) -> None:
            split, img_id = cand.key
            assert cand.gt_path is not None
            write_label_png(render_coco_mask(cocos[split], img_id, cat_to_class), cand.gt_path)

        with warnings.catch_warnings():
            # pycocotools' RLE decode trips numpy 2's __array__(copy=...) deprecation; harmless
            warnings.filterwarnings("ignore", message=r".*__array__ implementation doesn't accept",
                                    category=DeprecationWarning)
            if workers <= 1:
                for cand in todo:
                    one(cand)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(one, todo))

    return DatasetScan(source=source, root=root, classes=classes, candidates=candidates,
                       render=render)


def _classes(cocos: dict[str, Any]) -> tuple[list[ClassInfo], dict[int, int]]:
    """Categories of the train json (val must agree) in sorted id order -> classes 1..K."""
    tables = {}
    for split, coco in cocos.items():
        tables[split] = {int(c["id"]): str(c["name"]) for c in coco.dataset.get("categories", [])}
    train = tables["train"]
    if not train:
        raise DatasetError("instances_train2014.json defines no categories")
    for split, table in tables.items():
        if table != train:
            raise DatasetError(
                f"the categories of instances_{COCO_SPLITS[split]}.json differ from those of "
                "instances_train2014.json"
            )
    cat_ids = sorted(train)
    classes = [ClassInfo(i + 1, train[c], train[c], (train[c],)) for i, c in enumerate(cat_ids)]
    return classes, {c: i + 1 for i, c in enumerate(cat_ids)}
