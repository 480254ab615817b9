"""prepare_dataset on VOC-style trees (voc12 and synthetic): splits, labels, GT, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets_factory import (
    VOC_NAMES,
    VocImage,
    make_voc_tree,
    truncate_file,
    write_garbage,
    write_jpeg,
)
from PIL import Image

from qaclims.data.manifest import DatasetError, read_classes, read_manifest
from qaclims.data.prepare import OUTPUT_FILES, BadImageWarning, prepare_dataset
from qaclims.store import write_label_png

C = {name: i + 1 for i, name in enumerate(VOC_NAMES)}


def run(tree, out: Path, **kw):
    kw.setdefault("workers", 2)
    stats = prepare_dataset(kw.pop("source", "voc12"), tree.root, out, **kw)
    return stats, read_manifest(out / "manifest.parquet").set_index("image_id")


def test_voc_tree_splits_labels_and_gt(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC2012")
    stats, df = run(tree, tmp_path / "out")
    assert sorted(df.index) == list(df.index)
    assert len(df) == 8
    assert df.loc["2007_000001", "splits"] == ["train", "train_aug"]
    assert df.loc["2007_000003", "splits"] == ["val"]  # in Aug, but val wins
    assert df.loc["2008_000005", "splits"] == ["train_aug"]  # only in SegmentationClassAug
    assert df.loc["2009_000007", "splits"] == ["test"]
    train_aug = sorted(i for i, s in df["splits"].items() if "train_aug" in s)
    assert train_aug == ["2007_000001", "2007_000002", "2008_000005", "2008_000006"]
    # all objects count (difficult too), duplicates collapse, parts' names are not classes
    assert df.loc["2007_000001", "labels"] == [C["dog"], C["person"]]
    assert df.loc["2007_000002", "labels"] == [C["cat"], C["chair"]]
    assert df.loc["2008_000006", "labels"] == [C["person"], C["pottedplant"], C["tvmonitor"]]
    assert df.loc["2009_000007", "labels"] == [] and df.loc["2009_000008", "labels"] == []
    # sizes from the files, (height, width)
    assert (df.loc["2007_000002", "height"], df.loc["2007_000002", "width"]) == (30, 20)
    # SegmentationClass wins over SegmentationClassAug
    assert df.loc["2007_000001", "gt_path"].endswith("SegmentationClass/2007_000001.png")
    assert df.loc["2008_000005", "gt_path"].endswith("SegmentationClassAug/2008_000005.png")
    assert not df.loc["2009_000007", "has_gt"] and df.loc["2009_000007", "gt_path"] is None
    assert Path(df.loc["2007_000001", "image_path"]).is_absolute()
    assert Path(df.loc["2007_000001", "image_path"]).is_file()

    classes = read_classes(tmp_path / "out/classes.json")
    assert [c.name for c in classes] == VOC_NAMES
    dining = classes[C["diningtable"] - 1]
    assert dining.text == "dining table" and list(dining.synonyms) == ["table", "dining table"]
    assert list(classes[C["tvmonitor"] - 1].synonyms) == ["monitor", "tv monitor"]
    assert list(classes[C["pottedplant"] - 1].synonyms) == ["plant", "potted plant"]
    assert list(classes[C["dog"] - 1].synonyms) == ["dog"]

    assert stats["n_images"] == 8 and stats["n_skipped"] == 0
    tr = stats["splits"]["train_aug"]
    assert tr["n_images"] == 4 and tr["n_with_gt"] == 4 and tr["n_unlabelled"] == 0
    assert tr["labels_per_image"] == {"1": 1, "2": 2, "3": 1}
    assert tr["class_images"]["person"] == 2 and tr["n_label_pairs"] == 8
    assert stats["splits"]["test"]["n_unlabelled"] == 2
    assert json.loads((tmp_path / "out/stats.json").read_text()) == stats

    tsv = (tmp_path / "out/cooccurrence.tsv").read_text()
    rows = [line.split("\t") for line in tsv.splitlines()]
    assert rows[0] == ["split", "id_a", "class_a", "id_b", "class_b", "n_images"]
    table = {(r[0], r[2], r[4]): int(r[5]) for r in rows[1:]}
    assert table[("train_aug", "person", "person")] == 2
    assert table[("train_aug", "dog", "person")] == 1
    assert table[("train_aug", "person", "tvmonitor")] == 1
    assert table[("val", "diningtable", "person")] == 1
    assert len(rows) - 1 == 4 * 20 * 21 // 2  # 4 splits x unordered pairs incl. diagonal


def test_output_is_deterministic(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC2012")
    run(tree, tmp_path / "a", workers=1)
    run(tree, tmp_path / "b", workers=3)
    for name in OUTPUT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_train_aug_txt_wins(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC2012", train_aug_txt=["2007_000002", "2008_000006"])
    _, df = run(tree, tmp_path / "out")
    assert sorted(i for i, s in df["splits"].items() if "train_aug" in s) == [
        "2007_000002", "2008_000006",
    ]
    assert "2008_000005" not in df.index  # in no list any more


def _no_aug_tree(root: Path):
    images = [VocImage("a1", ["cat"], seg=True), VocImage("a2", ["dog"]), VocImage("b1", ["cow"])]
    return make_voc_tree(root, images, {"train": ["a1", "a2"], "val": ["b1"]})


def test_no_aug_folder_and_no_list_is_an_error_naming_what_is_missing(tmp_path):
    """Without SegmentationClassAug and train_aug.txt, VOC's train_aug would silently be the
    1,464 train images: stop before anything is written, saying what to get."""
    tree = _no_aug_tree(tmp_path / "VOC2012")
    with pytest.raises(DatasetError) as ei:
        run(tree, tmp_path / "out")
    msg = str(ei.value)
    assert "train_aug" in msg and "SegmentationClassAug" in msg
    assert str(tree.root / "ImageSets/Segmentation/train_aug.txt") in msg
    assert "dataset.train_aug_fallback: train" in msg and "10,582" in msg
    assert not (tmp_path / "out").exists()


def test_no_aug_folder_train_aug_is_train_only_when_opted_in(tmp_path, caplog):
    tree = _no_aug_tree(tmp_path / "VOC2012")
    with caplog.at_level("INFO", logger="qaclims.data"):
        stats, df = run(tree, tmp_path / "out", train_aug_fallback="train")
    assert df.loc["a1", "splits"] == ["train", "train_aug"]
    assert df.loc["a2", "splits"] == ["train", "train_aug"]
    assert not df.loc["a2", "has_gt"] and df.loc["a1", "has_gt"]
    assert set(stats["splits"]) == {"train", "train_aug", "val"}
    assert "train_aug = train" in caplog.text
    # every split's size is in the log
    for split, n in (("train", 2), ("train_aug", 2), ("val", 1)):
        assert f"split {split}: {n} images" in caplog.text


def test_no_aug_folder_is_fine_when_train_aug_is_not_used(tmp_path):
    tree = _no_aug_tree(tmp_path / "VOC2012")
    stats, df = run(tree, tmp_path / "out", required_splits=["train", "val"])
    assert set(stats["splits"]) == {"train", "val"}
    assert df.loc["a1", "splits"] == ["train"]


def test_train_aug_list_in_deeplab_format(tmp_path):
    """DeepLab's train_aug.txt: '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png' lines."""
    tree = _no_aug_tree(tmp_path / "VOC2012")
    (tree.root / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/a2.jpg /SegmentationClassAug/a2.png\n\n"
        "/JPEGImages/a1.jpg /SegmentationClassAug/a1.png\n")
    _, df = run(tree, tmp_path / "out")
    assert sorted(i for i, s in df["splits"].items() if "train_aug" in s) == ["a1", "a2"]


def test_synthetic_classes_json_overrides(tmp_path):
    classes = {"classes": [
        {"name": "circle", "text": "red circle", "synonyms": ["circle", "red circle"]},
        {"name": "square"},
    ]}
    images = [VocImage("s0", ["square", "circle"], seg=True), VocImage("s1", ["square"], seg=True)]
    tree = make_voc_tree(tmp_path / "syn", images, {"train": ["s0"], "val": ["s1"]},
                         classes=["circle", "square"], classes_json=classes)
    stats, df = run(tree, tmp_path / "out", source="synthetic")
    assert df.loc["s0", "labels"] == [1, 2]
    assert df.loc["s0", "splits"] == ["train", "train_aug"]
    got = read_classes(tmp_path / "out/classes.json")
    assert [(c.name, c.text, list(c.synonyms)) for c in got] == [
        ("circle", "red circle", ["circle", "red circle"]), ("square", "square", ["square"]),
    ]
    assert stats["classes"] == ["circle", "square"] and stats["source"] == "synthetic"
    # voc12 ignores a classes.json at the root: 'square' is then an unknown class
    with pytest.raises(DatasetError, match="square"):
        run(tree, tmp_path / "out2", train_aug_fallback="train")


# -- structural errors: always raise, whatever on_bad_image says -------------------------------


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda r: r.rename(r.parent / "elsewhere"), "VOC2012 does not exist; expected"),
        (lambda r: (r / "JPEGImages").rename(r / "jpg"), "JPEGImages does not exist.*images"),
        (lambda r: (r / "Annotations").rename(r / "ann"), "Annotations does not exist"),
        (lambda r: (r / "ImageSets/Segmentation/val.txt").unlink(), "val.txt does not exist"),
    ],
    ids=["root", "jpegimages", "annotations", "val_list"],
)
def test_missing_structure_raises(tmp_path, policy, breakage, match):
    tree = make_voc_tree(tmp_path / "VOC2012")
    breakage(tree.root)
    with pytest.raises(DatasetError, match=match):
        run(tree, tmp_path / "out", on_bad_image=policy)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_unknown_class_always_raises_naming_xml_and_name(tmp_path, policy):
    tree = make_voc_tree(tmp_path / "VOC2012")
    xml = tree.xml("2007_000002")
    xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>kitten</name>"))
    with pytest.raises(DatasetError) as err:
        run(tree, tmp_path / "out", on_bad_image=policy)
    assert str(xml) in str(err.value) and "'kitten'" in str(err.value)


# -- bad images: error lists them and writes nothing; skip warns, leaves them out, counts ------


def _missing_image(tree):
    tree.image("2007_000002").unlink()
    return "2007_000002", "missing_image", "2007_000002.jpg does not exist"


def _corrupt_image(tree):
    write_garbage(tree.image("2007_000002"))
    return "2007_000002", "corrupt_image", "2007_000002.jpg is not a readable image"


def _truncated_image(tree):
    truncate_file(tree.image("2008_000005"), keep=0.6)
    return "2008_000005", "truncated_image", "2008_000005.jpg cannot be decoded.*[Tt]runcated"


def _gt_size_mismatch(tree):
    gt = tree.root / "SegmentationClass/2007_000004.png"
    write_label_png(np.zeros((5, 5), np.uint8), gt)
    match = f"{gt} is 5x5 but its image .*2007_000004.jpg is 28x20"
    return "2007_000004", "gt_size_mismatch", match


def _missing_xml(tree):
    tree.xml("2008_000006").unlink()
    return "2008_000006", "missing_annotation", "2008_000006.xml does not exist"


def _broken_xml(tree):
    tree.xml("2007_000001").write_text("<annotation><object>")
    return "2007_000001", "bad_annotation", "2007_000001.xml is not valid XML"


def _corrupt_gt(tree):
    write_garbage(tree.root / "SegmentationClassAug/2008_000005.png")
    return "2008_000005", "corrupt_gt", "SegmentationClassAug/2008_000005.png is not a readable"


def _gt_bad_values(tree):
    # 21 is one past VOC's 20 classes; 254 is neither a class nor the ignore value 255
    gt = tree.root / "SegmentationClass/2007_000004.png"
    label = np.zeros((20, 28), np.uint8)
    label[0, :3], label[1, 0], label[2, 0] = 21, 254, 255
    write_label_png(label, gt)
    match = rf"{gt} has pixel values outside 0..20 and 255 \(ignore\): 21 \(3 px\), 254 \(1 px\)"
    return "2007_000004", "gt_bad_values", match


BREAKAGES = [_missing_image, _corrupt_image, _truncated_image, _gt_size_mismatch, _missing_xml,
             _broken_xml, _corrupt_gt, _gt_bad_values]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__[1:])
def test_bad_image_error_policy(tmp_path, breakage):
    tree = make_voc_tree(tmp_path / "VOC2012")
    image_id, reason, match = breakage(tree)
    with pytest.raises(DatasetError, match=match) as err:
        run(tree, tmp_path / "out", on_bad_image="error")
    assert [(p.image_id, p.reason) for p in err.value.problems] == [(image_id, reason)]
    assert "skip" in str(err.value)  # says how to go on
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__[1:])
def test_bad_image_skip_policy(tmp_path, breakage):
    tree = make_voc_tree(tmp_path / "VOC2012")
    image_id, reason, match = breakage(tree)
    with pytest.warns(BadImageWarning, match=match):
        stats, df = run(tree, tmp_path / "out", on_bad_image="skip")
    assert image_id not in df.index and len(df) == 7
    assert stats["n_skipped"] == 1 and stats["skipped_by_reason"] == {reason: 1}
    assert stats["skipped"][0]["image_id"] == image_id
    listed_in = {s for s, ids in tree.splits.items() if image_id in ids}
    for split in listed_in:
        assert stats["splits"][split]["n_skipped"] == {reason: 1}


def test_several_bad_images_reported_together(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC2012")
    for breakage in (_missing_image, _truncated_image, _missing_xml):
        breakage(tree)
    with pytest.raises(DatasetError, match=r"3 bad image\(s\)") as err:
        run(tree, tmp_path / "out")
    assert sorted(p.reason for p in err.value.problems) == [
        "missing_annotation", "missing_image", "truncated_image",
    ]


def test_failed_run_leaves_previous_outputs_untouched(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC2012")
    out = tmp_path / "out"
    run(tree, out)
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    _truncated_image(tree)
    with pytest.raises(DatasetError):
        run(tree, out)
    xml = tree.xml("2007_000001")
    xml.write_text(xml.read_text().replace("<name>dog</name>", "<name>wolf</name>"))
    with pytest.raises(DatasetError):
        run(tree, out, on_bad_image="skip")
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # no temp files left


def test_check_images_false_reads_headers_only(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC2012")
    _truncated_image(tree)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats, df = run(tree, tmp_path / "out", check_images=False)
    assert (df.loc["2008_000005", "height"], df.loc["2008_000005", "width"]) == (24, 32)
    # missing files are still found without decoding
    _missing_image(tree)
    with pytest.raises(DatasetError, match="missing_image"):
        run(tree, tmp_path / "out2", check_images=False)


def test_load_truncated_images_flag_cannot_hide_truncation(tmp_path):
    from PIL import ImageFile

    tree = make_voc_tree(tmp_path / "VOC2012")
    _truncated_image(tree)
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(DatasetError, match="truncated"):
            run(tree, tmp_path / "out")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_png_images_and_extra_list_columns(tmp_path):
    """A VOC-style tree may hold PNG images; list lines may carry extra columns."""
    images = [VocImage("p1", ["cat"]), VocImage("p2", ["dog"])]
    tree = make_voc_tree(tmp_path / "VOC2012", images, {"train": ["p1"], "val": ["p2"]})
    tree.image("p1").unlink()
    Image.new("RGB", (7, 5)).save(tree.root / "JPEGImages/p1.png")
    (tree.root / "ImageSets/Segmentation/train.txt").write_text("p1  1\n\n")
    _, df = run(tree, tmp_path / "out", train_aug_fallback="train")
    assert df.loc["p1", "image_path"].endswith("p1.png")
    assert (df.loc["p1", "height"], df.loc["p1", "width"]) == (5, 7)


def test_unlabelled_train_image_moves_to_unlabelled_split(tmp_path):
    images = [VocImage("u1", []), VocImage("u2", ["dog"]), VocImage("v1", ["cat"])]
    tree = make_voc_tree(tmp_path / "VOC2012", images, {"train": ["u1", "u2"], "val": ["v1"]})
    write_jpeg(tree.image("u1"), 24, 32)
    stats, df = run(tree, tmp_path / "out", train_aug_fallback="train")
    assert df.loc["u1", "splits"] == ["train_aug_unlabelled", "train_unlabelled"]
    assert stats["splits"]["train_unlabelled"]["n_unlabelled"] == 1
    assert stats["splits"]["train"]["n_images"] == 1
