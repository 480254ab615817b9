"""QAPE post-processing (method.md 3) on hand-written answers."""

from pathlib import Path

import pandas as pd
import pytest

from qaclims.qape.corpus import (
    CORPUS_COLUMNS,
    bg_answer_texts,
    build_corpus,
    fg_answer_text,
    synonyms_of,
)
from qaclims.qape.questions import load_questions

ROOT = Path(__file__).resolve().parents[1]
QS = load_questions(ROOT / "config" / "questions.yaml")
# classes.json content as the VOC reader writes it (synonyms = the authors' supply_cat table)
CLASSES = {"classes": [
    {"id": 1, "name": "cat", "text": "cat", "synonyms": ["cat"]},
    {"id": 2, "name": "diningtable", "text": "dining table", "synonyms": ["table", "dining table"]},
    {"id": 3, "name": "person", "text": "person", "synonyms": ["person"]},
    {"id": 4, "name": "train", "text": "train", "synonyms": ["train"]},
]}
NAMES = {c["id"]: c["text"] for c in CLASSES["classes"]}


def answers_table(spec: dict[tuple[str, int], tuple[list[str], list[str]]]) -> pd.DataFrame:
    """(image, class) -> (6 fg answers, 10 bg answers), as the vqa stage would write them."""
    rows = []
    for (image_id, class_id), (fg, bg) in spec.items():
        assert len(fg) == 6 and len(bg) == 10
        for t, a in zip(QS.templates, fg + bg, strict=True):
            rows.append({"image_id": image_id, "class_id": class_id, "template_id": t.id,
                         "group": t.group, "role": t.role,
                         "question": t.question(NAMES[class_id]), "answer_raw": a, "answer": a,
                         "model_id": "m"})
    return pd.DataFrame(rows)


BG_TRAIN = ["sky", "track", "sky", "tree", "track", "train", "grass", "station", "outdoor",
            "station"]
SPEC = {
    ("im1", 4): (["passenger", "steam train", "train", "locomotive", "passenger", "yes"], BG_TRAIN),
    ("im1", 3): (["man", "person", "people", "man", "human", "persons"],
                 ["man", "person", "man", "table", "man", "man", "man", "room", "kitchen", "room"]),
    ("im0", 1): (["cattle", "tabby", "yes", "cat", "kitty", "tabby"],
                 ["cat", "cat", "cat", "cat", "cat", "cat", "cat", "cat", "cat", "cat"]),
    ("im0", 2): (["table", "wood", "dining table", "desk", "table", "furniture"],
                 ["table", "plate", "floor", "chair", "plate", "chair", "chair", "kitchen",
                  "kitchen", "restaurant"]),
}


def pair(corpus: pd.DataFrame, image_id: str, class_id: int, role: str) -> list[str]:
    sel = corpus[
        (corpus.image_id == image_id) & (corpus.class_id == class_id) & (corpus.role == role)
    ]
    return sel["answer"].tolist()


def test_fg_rule_examples() -> None:
    assert fg_answer_text("passenger", "train", ["train"]) == "passenger train"
    assert fg_answer_text("man", "person", ["person"]) == "man person"
    assert fg_answer_text("yes", "cat", ["cat"]) == "yes cat"
    assert fg_answer_text("cattle", "cat", ["cat"]) == "cattle"  # substring test
    assert fg_answer_text("table", "dining table", ["table", "dining table"]) == "table"
    assert fg_answer_text("table", "dining table", ["dining table"]) == "table dining table"
    assert fg_answer_text("monitor", "tv monitor", ["monitor", "tv monitor"]) == "monitor"
    assert fg_answer_text("pot", "potted plant", ["plant"]) == "pot potted plant"
    assert synonyms_of("dining table", ["table"]) == ["table", "dining table"]
    assert synonyms_of("cat") == ["cat"]


def test_bg_rule_examples() -> None:
    answers = ["table", "man", "table", "dining table", "floor"]
    assert bg_answer_texts(answers, "dining table") == [0, 1, 4]  # "table" stays
    assert bg_answer_texts(["man", "person", "man"], "person") == [0]  # "man" stays


def test_code_variant() -> None:
    corpus, stats = build_corpus(answers_table(SPEC), CLASSES)
    assert list(corpus.columns) == CORPUS_COLUMNS
    assert pair(corpus, "im1", 4, "fg") == ["passenger train", "steam train", "train",
                                            "locomotive train", "passenger train", "yes train"]
    assert pair(corpus, "im1", 3, "fg") == ["man person", "person", "people person", "man person",
                                            "human person", "persons"]
    assert pair(corpus, "im0", 2, "fg") == ["table", "wood dining table", "dining table",
                                            "desk dining table", "table", "furniture dining table"]
    assert pair(corpus, "im1", 4, "label") == ["train"]
    assert pair(corpus, "im1", 4, "bg") == ["sky", "track", "tree", "grass", "station", "outdoor"]
    assert pair(corpus, "im1", 3, "bg") == ["man", "table", "room", "kitchen"]
    assert pair(corpus, "im0", 2, "bg") == ["table", "plate", "floor", "chair", "kitchen",
                                            "restaurant"]
    # im0/cat: every bg answer is "cat" -> no bg text -> the pair is skipped entirely
    assert corpus[(corpus.image_id == "im0") & (corpus.class_id == 1)].empty
    assert stats["skipped_pairs"] == [{"image_id": "im0", "class_id": 1, "class_text": "cat"}]
    assert stats["empty_background_pairs"] == 1 and stats["pairs_used"] == 3
    # texts and order
    assert (corpus["text"] == "a photo of " + corpus["answer"] + ".").all()
    assert corpus[["image_id", "class_id"]].drop_duplicates().values.tolist() == [
        ["im0", 2], ["im1", 3], ["im1", 4]]
    first = corpus[(corpus.image_id == "im0") & (corpus.class_id == 2)]
    assert first["role"].tolist() == ["label"] + ["fg"] * 6 + ["bg"] * 6
    assert first["template_id"].isna().tolist() == [True] + [False] * 12
    assert first["template_id"].tolist()[1:3] == ["fg_kind", "fg_type"]
    bg = first[first.role == "bg"]
    assert bg["template_id"].tolist() == ["bg_above", "bg_under", "bg_behind", "bg_around",
                                          "bg_scene", "bg_place"]
    assert bg["group"].tolist() == ["object"] * 4 + ["scene"] * 2


def test_paper_variant_gives_no_class_text() -> None:
    corpus, stats = build_corpus(answers_table(SPEC), CLASSES, variant="paper")
    cat = corpus[(corpus.image_id == "im0") & (corpus.class_id == 1)]
    fallback = cat[cat.role == "bg"]
    assert fallback[["answer", "text"]].values.tolist() == [["no cat", "a photo of no cat."]]
    assert fallback[["template_id", "group"]].isna().all(axis=None)
    assert pair(corpus, "im0", 1, "fg") == ["cattle", "tabby cat", "yes cat", "cat", "kitty cat",
                                            "tabby cat"]
    assert stats["skipped_pairs"] == [] and stats["empty_background_pairs"] == 1


def test_group_filters() -> None:
    table = answers_table(SPEC)
    corpus, stats = build_corpus(table, CLASSES, bg_groups=["scene"], fg_groups=["alias"])
    assert pair(corpus, "im1", 4, "bg") == ["station", "outdoor"]
    assert pair(corpus, "im1", 4, "fg") == ["train", "locomotive train", "passenger train",
                                            "yes train"]
    label_only, _ = build_corpus(table, CLASSES, fg_groups=[])
    assert set(label_only["role"]) == {"label", "bg"}
    with pytest.raises(ValueError, match="group 'scene' is not a fg group"):
        build_corpus(table, CLASSES, fg_groups=["scene"])
    with pytest.raises(ValueError, match="no bg answers of group 'colour'"):
        build_corpus(table, CLASSES, bg_groups=["colour"])
    with pytest.raises(ValueError, match="all 4 pairs would be skipped"):
        build_corpus(table, CLASSES, bg_groups=[])
    paper, pstats = build_corpus(table, CLASSES, bg_groups=[], variant="paper")
    assert paper[paper.role == "bg"]["answer"].tolist() == ["no cat", "no dining table",
                                                            "no person", "no train"]
    assert pstats["empty_background_pairs"] == 4


def test_stats() -> None:
    _, stats = build_corpus(answers_table(SPEC), CLASSES, top_k=2)
    assert stats["top_answers"]["person"]["object"] == [["man", 5], ["person", 1]]
    assert stats["top_answers"]["cat"]["fine"] == [["cattle", 1], ["tabby", 1]]
    assert stats["texts_per_pair"]["fg"] == {"6": 3}
    assert stats["texts_per_pair"]["bg"] == {"4": 1, "6": 2}
    assert stats["fg_answers_with_class_appended"] == 4 + 4 + 3
    assert stats["rows"] == 3 * 7 + 4 + 6 + 6
    assert stats["unique_texts"] < stats["rows"]
    assert stats["empty_answers"] == 0


def test_custom_prompt_and_synonyms() -> None:
    corpus, _ = build_corpus(answers_table(SPEC), CLASSES, prompt="{}",
                             synonyms={"train": ["locomotive"], "dining table": []})
    assert pair(corpus, "im1", 4, "fg")[3] == "locomotive"
    assert pair(corpus, "im0", 2, "fg")[0] == "table dining table"
    with pytest.raises(ValueError, match="synonyms given for unknown class"):
        build_corpus(answers_table(SPEC), CLASSES, synonyms={"plane": ["jet"]})
    assert (corpus["text"] == corpus["answer"]).all()
    with pytest.raises(ValueError, match="prompt"):
        build_corpus(answers_table(SPEC), CLASSES, prompt="a photo")


def test_empty_answers() -> None:
    corpus, stats = build_corpus(answers_table({}).reindex(columns=[
        "image_id", "class_id", "template_id", "group", "role", "answer"]), CLASSES)
    assert corpus.empty and stats["pairs"] == 0


def test_empty_answers_are_kept_as_the_authors_do() -> None:
    spec = {("im", 1): (["", "tabby", "", "cat", "cat", "cat"], [""] + ["sofa"] * 9)}
    corpus, stats = build_corpus(answers_table(spec), CLASSES)
    assert pair(corpus, "im", 1, "fg")[:2] == [" cat", "tabby cat"]
    assert pair(corpus, "im", 1, "bg") == ["", "sofa"]
    assert stats["empty_answers"] == 3


def test_coco_config_carries_the_authors_synonyms() -> None:
    """coco14.yaml's qape.corpus.synonyms: "table" is an answer about a dining table as it is,
    like the authors' supply_cat (the COCO reader gives every class only its own name)."""
    from qaclims.config import load_yaml

    synonyms = load_yaml(ROOT / "config" / "coco14.yaml")["qape"]["corpus"]["synonyms"]
    assert synonyms == {"dining table": ["table", "dining table"],
                        "potted plant": ["plant", "potted plant"]}
    coco = {"classes": [
        {"id": 1, "name": "dining table", "text": "dining table", "synonyms": ["dining table"]},
        {"id": 2, "name": "potted plant", "text": "potted plant", "synonyms": ["potted plant"]},
    ]}
    spec = {1: ["table", "wooden table", "desk", "table", "dining table", "table"],
            2: ["plant", "fern", "plant", "house plant", "plant", "potted plant"]}
    rows = [{"image_id": "img", "class_id": cid, "template_id": t.id, "group": t.group,
             "role": t.role, "question": t.question(coco["classes"][cid - 1]["text"]),
             "answer_raw": a, "answer": a, "model_id": "m"}
            for cid, fg in spec.items()
            for t, a in zip(QS.templates, fg + ["floor", "wall"] * 5, strict=True)]
    answers = pd.DataFrame(rows)
    with_syn, _ = build_corpus(answers, coco, synonyms=synonyms)
    without, _ = build_corpus(answers, coco)
    assert pair(with_syn, "img", 1, "fg") == ["table", "wooden table", "desk dining table",
                                              "table", "dining table", "table"]
    assert pair(with_syn, "img", 2, "fg") == ["plant", "fern potted plant", "plant",
                                              "house plant", "plant", "potted plant"]
    assert pair(without, "img", 1, "fg")[0] == "table dining table"
    assert pair(without, "img", 2, "fg")[0] == "plant potted plant"
