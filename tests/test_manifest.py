"""The manifest / classes.json contract: schema, validation, writer and reader."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from qaclims.data.images import BadFile, check_files, check_image, check_label_png
from qaclims.data.manifest import (
    MANIFEST_COLUMNS,
    ClassInfo,
    DatasetError,
    ManifestRecord,
    class_names,
    classes_from_json,
    manifest_schema,
    multi_hot,
    read_classes,
    read_manifest,
    split_view,
    validate_manifest,
    write_classes,
    write_manifest,
)


def rec(image_id, splits=("train",), labels=(1,), gt=None, h=4, w=5):
    return ManifestRecord(image_id, list(splits), f"/data/{image_id}.jpg", h, w, list(labels),
                          gt is not None, gt)


def good():
    return [rec("b", ["val"], [2, 3], gt="/gt/b.png"), rec("a", ["train", "train_aug"], [1]),
            rec("c", ["test"], [])]


def test_roundtrip_schema_and_types(tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(good(), path, num_classes=3)
    table = pq.read_table(path)
    assert tuple(table.column_names) == MANIFEST_COLUMNS
    assert table.schema.equals(manifest_schema(), check_metadata=False)
    assert table.schema.metadata[b"qaclims.manifest_version"] == b"1"
    df = read_manifest(path, num_classes=3)
    assert list(df["image_id"]) == ["a", "b", "c"]  # sorted on write
    assert df.loc[1, "labels"] == [2, 3] and isinstance(df.loc[1, "labels"], list)
    assert df.loc[0, "splits"] == ["train", "train_aug"]
    assert df.loc[0, "gt_path"] is None and df.loc[1, "gt_path"] == "/gt/b.png"
    assert df["height"].dtype == np.int32
    # a DataFrame from read_manifest is itself valid input for the writer
    write_manifest(df, tmp_path / "again.parquet", num_classes=3)
    assert pq.read_table(tmp_path / "again.parquet").equals(table)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_empty_labels_everywhere_keep_the_list_type(tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest([rec("x", ["test"], [])], path)
    import pyarrow as pa

    labels_type = pq.read_table(path).schema.field("labels").type
    assert pa.types.is_list(labels_type) and labels_type.value_type == pa.int32()


@pytest.mark.parametrize(
    "records, match",
    [
        ([rec("a"), rec("a")], "duplicate image_id"),
        ([rec("a", labels=[0])], r"outside 1\.\.3"),
        ([rec("a", labels=[4])], r"outside 1\.\.3"),
        ([rec("a", splits=[])], "splits must be a non-empty"),
        ([rec("a", h=0)], "bad size"),
        ([rec("a", labels=[])], "no labels, but in training"),
        ([ManifestRecord("a", ["train"], "/x.jpg", 2, 2, [1], True, None)], "has_gt=True"),
        ([ManifestRecord("a", ["train"], "/x.jpg", 2, 2, [1], False, "/g.png")], "has_gt=False"),
        ([rec("")], "empty image_id"),
    ],
)
def test_validation_rejects(records, match):
    with pytest.raises(DatasetError, match=match):
        validate_manifest(records, num_classes=3)


def test_validation_rejects_unsorted_table_and_unlabelled_split_is_fine(tmp_path):
    import pyarrow as pa

    ok = [rec("a", ["train_unlabelled"], []), rec("b")]
    validate_manifest(ok, num_classes=3)
    path = tmp_path / "m.parquet"
    write_manifest(ok, path)
    table = pq.read_table(path)
    reversed_table = table.take(pa.array([1, 0]))
    with pytest.raises(DatasetError, match="not sorted"):
        validate_manifest(reversed_table)
    pq.write_table(reversed_table, tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match="bad.parquet"):
        read_manifest(tmp_path / "bad.parquet")
    assert list(read_manifest(tmp_path / "bad.parquet", validate=False)["image_id"]) == ["b", "a"]
    with pytest.raises(DatasetError, match="does not exist"):
        read_manifest(tmp_path / "nope.parquet")


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(good(), path)
    before = path.read_bytes()
    with pytest.raises(DatasetError):
        write_manifest([rec("a"), rec("a")], path)
    assert path.read_bytes() == before


def test_split_view_and_multi_hot(tmp_path):
    write_manifest(good(), tmp_path / "m.parquet")
    df = read_manifest(tmp_path / "m.parquet")
    val = split_view(df, "val")
    assert list(val["image_id"]) == ["b"] and list(val.index) == [0]
    hot = multi_hot(df["labels"], 3)
    assert hot.dtype == np.float32
    assert hot.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_classes_json_formats(tmp_path):
    classes = [ClassInfo(1, "diningtable", "dining table", ("table", "dining table")),
               ClassInfo(2, "dog", "dog", ("dog",))]
    write_classes(classes, tmp_path / "classes.json", source="voc12")
    assert read_classes(tmp_path / "classes.json") == classes
    assert class_names(classes) == ["background", "diningtable", "dog"]
    assert class_names(classes, background=False) == ["diningtable", "dog"]
    # looser forms a generator may write
    assert [c.name for c in classes_from_json(["background", "cat", "dog"])] == ["cat", "dog"]
    loose = classes_from_json({"classes": [{"id": 0, "name": "bg"}, {"id": 1, "name": "cat"}]})
    assert loose == [ClassInfo(1, "cat", "cat", ("cat",))]
    for bad, match in [([], "non-empty"), (["a", "a"], "duplicate"),
                       ([{"id": 2, "name": "a"}], "expected 1"), ([{"text": "x"}], "no string"),
                       ([{"name": "a", "synonyms": "a"}], "synonyms")]:
        with pytest.raises(DatasetError, match=match):
            classes_from_json(bad)


def test_image_checks(tmp_path):
    from PIL import Image

    Image.new("RGB", (6, 4)).save(tmp_path / "ok.jpg")
    info = check_image(tmp_path / "ok.jpg")
    assert (info.height, info.width) == (4, 6)
    Image.new("RGB", (6, 4)).save(tmp_path / "rgb.png")
    Image.new("L", (6, 4)).save(tmp_path / "grey.png")
    assert check_label_png(tmp_path / "grey.png", (4, 6)).mode == "L"
    with pytest.raises(BadFile, match="mode RGB") as err:
        check_label_png(tmp_path / "rgb.png", (4, 6))
    assert err.value.reason == "corrupt_gt"
    with pytest.raises(BadFile) as err:
        check_label_png(tmp_path / "grey.png", (5, 6), tmp_path / "ok.jpg")
    assert err.value.reason == "gt_size_mismatch" and "ok.jpg" in err.value.message
    out = check_files([tmp_path / "ok.jpg", tmp_path / "none.jpg"], check_image, workers=2)
    assert out[0].width == 6 and isinstance(out[1], BadFile) and out[1].reason == "missing_image"
