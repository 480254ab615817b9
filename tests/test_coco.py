"""prepare_dataset on a tiny COCO 2014 tree: classes, labels, unlabelled images, GT rendering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from datasets_factory import (
    COCO_CLASS,
    CocoTree,
    make_coco_tree,
    truncate_file,
    write_garbage,
    write_jpeg,
)

from qaclims.data.manifest import DatasetError, read_classes, read_manifest
from qaclims.data.prepare import OUTPUT_FILES, BadImageWarning, prepare_dataset
from qaclims.store import read_label_png, write_label_png

P, CAR, DOG = COCO_CLASS["person"], COCO_CLASS["car"], COCO_CLASS["dog"]
ID = CocoTree.image_id


def run(tree, tmp_path, out="out", **kw):
    kw.setdefault("gt_dir", tmp_path / "masks")
    kw.setdefault("workers", 2)
    stats = prepare_dataset("coco14", tree.root, tmp_path / out, **kw)
    return stats, read_manifest(tmp_path / out / "manifest.parquet").set_index("image_id")


def test_coco_classes_labels_and_splits(tmp_path):
    tree = make_coco_tree(tmp_path / "coco")
    stats, df = run(tree, tmp_path)
    classes = read_classes(tmp_path / "out/classes.json")
    # sorted category ids 1, 3, 18 -> classes 1, 2, 3; names from the json
    assert [(c.id, c.name, c.text, list(c.synonyms)) for c in classes] == [
        (1, "person", "person", ["person"]), (2, "car", "car", ["car"]), (3, "dog", "dog", ["dog"]),
    ]
    assert list(df.index) == [ID("train", 9), ID("train", 25), ID("train", 30),
                              ID("val", 42), ID("val", 73)]
    assert df.loc[ID("train", 9), "labels"] == [P, CAR, DOG]  # crowd car counts as a label
    assert df.loc[ID("train", 25), "labels"] == [P]  # only a crowd annotation
    assert df.loc[ID("train", 30), "labels"] == []
    assert df.loc[ID("train", 30), "splits"] == ["train_unlabelled"]
    assert df.loc[ID("train", 9), "splits"] == ["train"]
    assert df.loc[ID("val", 73), "splits"] == ["val"]
    assert (df.loc[ID("val", 42), "height"], df.loc[ID("val", 42), "width"]) == (24, 36)
    assert df["has_gt"].all()
    assert df.loc[ID("train", 9), "image_path"] == str(tree.image("train", 9))

    assert stats["splits"]["train"]["n_images"] == 2
    assert stats["splits"]["train_unlabelled"] == {
        "n_images": 1, "n_with_gt": 1, "n_unlabelled": 1, "n_label_pairs": 0,
        "labels_per_image": {"0": 1}, "class_images": {"person": 0, "car": 0, "dog": 0},
        "n_skipped": {},
    }
    assert stats["splits"]["val"]["class_images"] == {"person": 1, "car": 1, "dog": 1}


def test_gt_masks_rendered_like_the_authors(tmp_path):
    tree = make_coco_tree(tmp_path / "coco")
    _, df = run(tree, tmp_path)
    gt9 = Path(df.loc[ID("train", 9), "gt_path"])
    assert gt9 == tmp_path / "masks/train/9.png"
    m = read_label_png(gt9)
    assert m.shape == (30, 40) and m.dtype == np.uint8
    assert set(np.unique(m)) <= {0, P, CAR, DOG}  # no 255
    assert m[15, 5] == P  # person only
    assert m[15, 15] == DOG  # person, then dog later in the json: dog wins
    assert m[15, 25] == DOG
    assert m[24, 34] == 0  # crowd car: not drawn
    assert (m[2:8, 30:38] == CAR).all() and m[1, 34] == 0  # compressed RLE, exact
    assert (read_label_png(tmp_path / "masks/train/25.png") == 0).all()  # crowd only
    assert (read_label_png(tmp_path / "masks/train/30.png") == 0).all()  # no annotation
    m73 = read_label_png(tmp_path / "masks/val/73.png")
    assert m73[10, 5] == DOG and m73[10, 18] == P and m73[10, 30] == P  # person later: wins
    m42 = read_label_png(tmp_path / "masks/val/42.png")
    expected = np.zeros((24, 36), np.uint8)
    expected[4:10, 4:12] = CAR
    assert np.array_equal(m42, expected)  # uncompressed RLE, exact


def test_existing_masks_are_reused_and_wrong_ones_rerendered(tmp_path):
    tree = make_coco_tree(tmp_path / "coco")
    run(tree, tmp_path)
    gt9, gt42 = tmp_path / "masks/train/9.png", tmp_path / "masks/val/42.png"
    os.utime(gt9, (1, 1))
    write_label_png(np.zeros((3, 3), np.uint8), gt42)  # stale: wrong size
    _, df = run(tree, tmp_path, out="out2")
    assert gt9.stat().st_mtime == 1  # right size: kept as it was
    assert read_label_png(gt42).shape == (24, 36) and read_label_png(gt42).max() == CAR
    assert df["has_gt"].all()


def test_ready_made_masks_under_root_are_used(tmp_path):
    tree = make_coco_tree(tmp_path / "coco")
    ready = tree.root / "mask/train2014/9.png"
    write_label_png(np.full((30, 40), 2, np.uint8), ready)
    _, df = run(tree, tmp_path)
    assert df.loc[ID("train", 9), "gt_path"] == str(ready)
    assert not (tmp_path / "masks/train/9.png").exists()
    assert df.loc[ID("train", 25), "gt_path"] == str(tmp_path / "masks/train/25.png")


def test_deterministic_and_default_gt_dir(tmp_path):
    tree = make_coco_tree(tmp_path / "coco")
    prepare_dataset("coco14", tree.root, tmp_path / "a", workers=1)
    prepare_dataset("coco14", tree.root, tmp_path / "b", gt_dir=tmp_path / "a/gt", workers=2)
    assert (tmp_path / "a/gt/val/73.png").is_file()
    for name in ("classes.json", "stats.json", "cooccurrence.tsv", "manifest.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda r: r.rename(r.parent / "gone"), "coco does not exist; expected the COCO 2014"),
        (lambda r: (r / "val2014").rename(r / "v"), "val2014 does not exist.*val2014 images"),
        (lambda r: (r / "annotations/instances_train2014.json").unlink(),
         "instances_train2014.json does not exist"),
        (lambda r: (r / "annotations/instances_val2014.json").write_text("[1, 2]"),
         "instances_val2014.json is not a COCO instances json"),
    ],
    ids=["root", "val_dir", "train_json", "bad_json"],
)
def test_missing_structure_raises(tmp_path, policy, breakage, match):
    tree = make_coco_tree(tmp_path / "coco")
    breakage(tree.root)
    with pytest.raises(DatasetError, match=match):
        run(tree, tmp_path, on_bad_image=policy)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_unknown_category_raises(tmp_path, policy):
    tree = make_coco_tree(tmp_path / "coco")
    path = tree.json_path("val")
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 77
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances_val2014.json.*category ids \[77\]"):
        run(tree, tmp_path, on_bad_image=policy)


def _missing(tree):
    tree.image("train", 25).unlink()
    return ID("train", 25), "missing_image", "does not exist"


def _corrupt(tree):
    write_garbage(tree.image("val", 42))
    return ID("val", 42), "corrupt_image", "is not a readable image"


def _truncated(tree):
    truncate_file(tree.image("train", 9), keep=0.5)
    return ID("train", 9), "truncated_image", "cannot be decoded"


def _size_mismatch(tree):
    write_jpeg(tree.image("val", 73), 20, 20)
    return ID("val", 73), "size_mismatch", "is 20x20 but its annotations say 36x24"


def _ready_mask_wrong_size(tree):
    gt = tree.root / "mask/val2014/42.png"
    write_label_png(np.zeros((4, 4), np.uint8), gt)
    return ID("val", 42), "gt_size_mismatch", f"{gt} is 4x4 but its image .*000042.jpg is 36x24"


BREAKAGES = [_missing, _corrupt, _truncated, _size_mismatch, _ready_mask_wrong_size]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__[1:])
def test_bad_image_error_policy(tmp_path, breakage):
    tree = make_coco_tree(tmp_path / "coco")
    image_id, reason, match = breakage(tree)
    with pytest.raises(DatasetError, match=match) as err:
        run(tree, tmp_path)
    assert [(p.image_id, p.reason) for p in err.value.problems] == [(image_id, reason)]
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "masks").exists()  # nothing rendered before the checks passed


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__[1:])
def test_bad_image_skip_policy(tmp_path, breakage):
    tree = make_coco_tree(tmp_path / "coco")
    image_id, reason, match = breakage(tree)
    with pytest.warns(BadImageWarning, match=match):
        stats, df = run(tree, tmp_path, on_bad_image="skip")
    assert image_id not in df.index and len(df) == 4
    assert stats["skipped_by_reason"] == {reason: 1}
    split = "train" if "train" in image_id else "val"
    assert stats["splits"][split]["n_skipped"] == {reason: 1}
    assert not (tmp_path / "masks" / split / f"{int(image_id[-12:])}.png").exists()


def test_failed_run_leaves_previous_outputs_untouched(tmp_path):
    tree = make_coco_tree(tmp_path / "coco")
    run(tree, tmp_path)
    before = {n: (tmp_path / "out" / n).read_bytes() for n in OUTPUT_FILES}
    _truncated(tree)
    with pytest.raises(DatasetError):
        run(tree, tmp_path)
    assert {n: (tmp_path / "out" / n).read_bytes() for n in OUTPUT_FILES} == before
