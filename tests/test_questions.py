"""Question templates: the shipped file holds the authors' 16; broken files name the template."""

import copy
from pathlib import Path

import pytest
import yaml

from qaclims.qape.questions import (
    QuestionsError,
    QuestionSet,
    load_questions,
    questions_from_dict,
)

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "config" / "questions.yaml"

AUTHORS_FG = [
    "What kind of {} is in the photo?",
    "What type of {} is in the photo?",
    "What is this {} also called?",
    "What is this {} usually called?",
    "What is another word for this {}?",
    "What is another name for this {}?",
]
AUTHORS_BG = [
    "what is above the {}?",
    "what is under the {}?",
    "what is behind the {}?",
    "what is around the {}?",
    "what is next to the {}?",
    "what is the left side of {}?",
    "what is the right side of {}?",
    "what scene is the {} in?",
    "what environment is the {} in?",
    "what place is the {} in?",
]


@pytest.fixture
def qs() -> QuestionSet:
    return load_questions(QUESTIONS)


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(QUESTIONS.read_text())


def test_shipped_file_is_the_authors_templates(qs: QuestionSet) -> None:
    assert [t.text for t in qs.fg] == AUTHORS_FG
    assert [t.text for t in qs.bg] == AUTHORS_BG
    assert [len(qs.by_group(g)) for g in ("fine", "alias", "object", "scene")] == [2, 4, 7, 3]
    assert {t.role for t in qs.by_group("fine")} == {"fg"}
    assert {t.role for t in qs.by_group("scene")} == {"bg"}
    assert qs.groups_of_role("bg") == ["object", "scene"]


def test_question_fills_the_class_name(qs: QuestionSet) -> None:
    assert qs.question("fg_kind", "dining table") == "What kind of dining table is in the photo?"
    assert qs.question("bg_left", "tv monitor") == "what is the left side of tv monitor?"
    with pytest.raises(KeyError, match="no template with id 'nope'"):
        qs.question("nope", "cat")


def test_digest_is_stable_and_per_template(qs: QuestionSet, raw: dict) -> None:
    again = questions_from_dict(copy.deepcopy(raw))
    assert again.digests() == qs.digests() and again.digest == qs.digest
    raw["templates"][0]["text"] = "What breed of {} is in the photo?"
    edited = questions_from_dict(raw)
    changed = [i for i in qs.ids if qs.digests()[i] != edited.digests()[i]]
    assert changed == ["fg_kind"]
    assert edited.digest != qs.digest
    assert len(set(qs.digests().values())) == len(qs)


def test_roundtrip_and_select(qs: QuestionSet) -> None:
    assert questions_from_dict(qs.to_dict()).digest == qs.digest
    sub = qs.select(["fine", "object"])
    assert [t.group for t in sub] == ["fine"] * 2 + ["object"] * 7


def _error(raw: dict) -> str:
    with pytest.raises(QuestionsError) as info:
        questions_from_dict(raw, source="q.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What kind of thing is in the photo?", "exactly once, found 0"),
        ("What {} kind of {} is it?", "exactly once, found 2"),
        ("What kind of {name} is it {}?", "no brace other than"),
    ],
)
def test_placeholder_errors_name_the_template(raw: dict, text: str, expected: str) -> None:
    raw["templates"][1]["text"] = text
    msg = _error(raw)
    assert "q.yaml" in msg and "template 'fg_type'" in msg and repr(text) in msg and expected in msg


def test_duplicate_id_and_text(raw: dict) -> None:
    raw["templates"][2]["id"] = "fg_kind"
    msg = _error(raw)
    assert "template 'fg_kind' ('What is this {} also called?'): duplicate id" in msg
    raw = yaml.safe_load(QUESTIONS.read_text())
    raw["templates"][3]["text"] = "what KIND of {}  is in the photo?"
    msg = _error(raw)
    assert "template 'fg_usually'" in msg and "duplicate text" in msg and "'fg_kind'" in msg


def test_unknown_and_empty_groups(raw: dict) -> None:
    raw["templates"][0]["group"] = "colour"
    raw["templates"][1]["group"] = "colour"
    msg = _error(raw)
    assert "template 'fg_kind'" in msg and "unknown group 'colour'" in msg
    assert "group 'fine' (role fg) has no template" in msg


def test_roles_must_each_have_templates(raw: dict) -> None:
    raw["templates"] = [t for t in raw["templates"] if t["group"] in ("fine", "alias")]
    del raw["groups"]["object"], raw["groups"]["scene"]
    assert "no group has role 'bg'" in _error(raw)


def test_a_group_can_be_removed_with_its_templates(raw: dict) -> None:
    raw["templates"] = [t for t in raw["templates"] if t["group"] != "alias"]
    del raw["groups"]["alias"]
    qs = questions_from_dict(raw)
    assert len(qs.fg) == 2 and len(qs.bg) == 10


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["templates"][4].pop("group"), "template #5 (id 'fg_word'"),
        (lambda r: r["templates"][4].update(id="Another Word"), "expected a string matching"),
        (lambda r: r["templates"][0].update(weight=2), "unknown key(s) ['weight']"),
        (lambda r: r["groups"]["fine"].update(role="fore"), "expected one of ['fg', 'bg']"),
        (lambda r: r.update(extra=1), "unknown key(s) ['extra']"),
    ],
)
def test_schema_errors_are_named(raw: dict, mutate, expected: str) -> None:
    mutate(raw)
    msg = _error(raw)
    assert "questions.schema.yaml" in msg and expected in msg


def test_missing_file() -> None:
    with pytest.raises(QuestionsError, match="not found"):
        load_questions("nope/questions.yaml")
