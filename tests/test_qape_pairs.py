"""(image, class) pairs and shards: deterministic, balanced, stable when images are added."""

import numpy as np
import pandas as pd
import pytest

from qaclims.qape.pairs import (
    class_table,
    class_texts,
    make_pairs,
    select_shard,
    shard_index,
    shard_names,
    shard_of,
    split_shards,
)

CLASSES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dining table"}, {"id": 3, "name": "person"}]


def manifest(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(n)]
    return pd.DataFrame({
        "image_id": ids[::-1],  # unsorted on purpose
        "splits": [["train", "train_aug"] if i % 3 == 0 else (["val"] if i % 3 == 1 else
                   ["train_aug"]) for i in range(n)][::-1],
        "path": [f"JPEGImages/{i}.jpg" for i in ids[::-1]],
        "labels": [sorted(rng.choice([1, 2, 3], size=1 + i % 3, replace=False).tolist())
                   for i in range(n)][::-1],
    })


def test_make_pairs_order_and_contents() -> None:
    m = manifest()
    pairs = make_pairs(m, CLASSES, ["train_aug"])
    assert list(pairs.columns) == ["image_id", "class_id", "class_text"]
    assert pairs.equals(pairs.sort_values(["image_id", "class_id"], ignore_index=True))
    expected = sum(len(lab) for lab, s in zip(m["labels"], m["splits"], strict=True)
                   if "train_aug" in s)
    assert len(pairs) == expected
    assert set(pairs["image_id"]) == {i for i, s in zip(m["image_id"], m["splits"], strict=True)
                                      if "train_aug" in s}
    assert dict(zip(pairs["class_id"], pairs["class_text"], strict=True))[2] == "dining table"
    both = make_pairs(m, CLASSES, ["train_aug", "val"])
    assert len(both) == sum(len(lab) for lab in m["labels"])
    assert make_pairs(m, CLASSES, "val").equals(make_pairs(m, CLASSES, ["val"]))


def test_make_pairs_split_column_and_bad_label() -> None:
    m = pd.DataFrame({"image_id": ["b", "a"], "split": ["train", "train"],
                      "labels": [[3, 1], [2]]})
    pairs = make_pairs(m, ["cat", "dining table", "person"], ["train"])
    assert pairs.values.tolist() == [["a", 2, "dining table"], ["b", 1, "cat"], ["b", 3, "person"]]
    m.loc[0, "labels"] = [4]
    with pytest.raises(ValueError, match="image b: label 4 is not a class id"):
        make_pairs(m, CLASSES, ["train"])


def test_class_forms() -> None:
    assert class_texts(CLASSES) == {1: "cat", 2: "dining table", 3: "person"}
    assert class_texts({"classes": CLASSES}) == class_texts(CLASSES)
    assert class_texts({5: "dog"}) == {5: "dog"}
    table = class_table({"source": "voc12", "classes": [
        {"id": 1, "name": "diningtable", "text": "dining table", "synonyms": ["table"]}]})
    assert (table[1].text, table[1].synonyms) == ("dining table", ("table",))
    infos = class_table(["cat", "dog"])  # read_classes() gives a list of ClassInfo
    assert class_table(list(infos.values())) == infos
    with pytest.raises(ValueError, match="unique"):
        class_texts({1: "cat", 2: "cat"})
    with pytest.raises(ValueError, match="duplicate class names"):
        class_texts(["cat", "cat"])


GOLDEN = [6, 2, 2, 0, 1, 1, 5, 1]


def test_shard_hash_is_fixed() -> None:
    # Golden values: a change here reshuffles every cached shard of every user - don't.
    assert [shard_of(f"2007_{i:06d}", 8) for i in range(8)] == GOLDEN
    assert shard_of("x", 1) == 0
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_shards_are_balanced() -> None:
    ids = [f"2008_{i:06d}" for i in range(4000)]
    counts = np.bincount([shard_of(i, 8) for i in ids], minlength=8)
    assert counts.min() > 0.85 * 500 and counts.max() < 1.15 * 500, counts


def test_adding_images_moves_no_other_image() -> None:
    ids = [f"img{i}" for i in range(500)]
    before = {i: shard_of(i, 6) for i in ids}
    pairs = pd.DataFrame({"image_id": ids + [f"new{i}" for i in range(100)], "class_id": 1,
                          "class_text": "cat"})
    shards = split_shards(pairs, 6)
    after = {i: int(name) for name, df in shards.items() for i in df["image_id"]}
    assert all(after[i] == before[i] for i in ids)


def test_all_classes_of_an_image_share_a_shard() -> None:
    m = manifest(60)
    pairs = make_pairs(m, CLASSES, ["train_aug", "val"])
    shards = split_shards(pairs, 4)
    assert sum(len(s) for s in shards.values()) == len(pairs)
    owners = {}
    for name, df in shards.items():
        for i in df["image_id"]:
            assert owners.setdefault(i, name) == name
        assert df.equals(select_shard(pairs, name, 4))
        assert df.equals(df.sort_values(["image_id", "class_id"], ignore_index=True))


def test_shard_names() -> None:
    assert shard_names(3) == ["0", "1", "2"]
    assert shard_names(16)[:2] == ["00", "01"] and shard_names(16)[-1] == "15"
    assert shard_index("07", 16) == 7
    with pytest.raises(ValueError, match="out of range"):
        shard_index("16", 16)
    empty = split_shards(pd.DataFrame({"image_id": ["a"], "class_id": [1], "class_text": ["c"]}), 5)
    assert len(empty) == 5 and sum(len(d) for d in empty.values()) == 1
