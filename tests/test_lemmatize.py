"""Answer lemmatisation: whole-string noun lemma like WordNetLemmatizer().lemmatize(answer)."""

import sys
import types

import pytest

from qaclims.qape import lemmatize as lem
from qaclims.qape.lemmatize import LemmatizerUnavailable, get_lemmatizer


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("trees", "tree"),
        ("dogs", "dog"),
        ("buses", "bus"),
        ("boxes", "box"),
        ("knives", "knife"),
        ("mice", "mouse"),
        ("geese", "goose"),
        ("women", "woman"),
        ("leaves", "leaf"),  # several lemmas: the shortest wins, as in WordNetLemmatizer
        ("glasses", "glass"),
        ("grass", "grass"),  # already a lemma
        ("bus", "bus"),
        ("sheep", "sheep"),
        ("people", "people"),
        ("cattle", "cattle"),
        ("yes", "yes"),
        ("sky", "sky"),
        ("xyzzies", "xyzzies"),  # unknown word: unchanged, as WordNet leaves it
        ("2", "2"),
        ("", ""),
        ("dining tables", "dining tables"),  # multi-word: no WordNet entry, unchanged
        ("tall trees", "tall trees"),
        ("passenger train", "passenger train"),
    ],
)
def test_default_lemmatizer_table(answer: str, expected: str) -> None:
    assert get_lemmatizer()(answer) == expected


def test_none_and_unknown() -> None:
    assert get_lemmatizer("none")("trees") == "trees"
    with pytest.raises(ValueError, match="unknown lemmatizer 'wordnet'"):
        get_lemmatizer("wordnet")


def test_nltk_missing_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    lem._nltk.cache_clear()
    monkeypatch.setitem(sys.modules, "nltk", None)  # import nltk -> ImportError
    monkeypatch.setitem(sys.modules, "nltk.stem", None)
    with pytest.raises(LemmatizerUnavailable, match="pip install nltk.*nltk.downloader wordnet"):
        get_lemmatizer("nltk")
    lem._nltk.cache_clear()


def test_nltk_without_wordnet_data_names_the_download(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeWordNetLemmatizer:
        def lemmatize(self, word: str) -> str:
            raise LookupError("\n  Resource wordnet not found.\n  Please use the NLTK Downloader")

    stem = types.ModuleType("nltk.stem")
    stem.WordNetLemmatizer = FakeWordNetLemmatizer
    nltk = types.ModuleType("nltk")
    nltk.stem = stem
    lem._nltk.cache_clear()
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    monkeypatch.setitem(sys.modules, "nltk.stem", stem)
    with pytest.raises(LemmatizerUnavailable, match="WordNet data is not installed.*downloader "
                                                     "wordnet.*Resource wordnet not found"):
        get_lemmatizer("nltk")
    lem._nltk.cache_clear()


def test_nltk_used_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeWordNetLemmatizer:
        def lemmatize(self, word: str) -> str:
            return {"trees": "tree", "men": "men"}.get(word, word)

    stem = types.ModuleType("nltk.stem")
    stem.WordNetLemmatizer = FakeWordNetLemmatizer
    nltk = types.ModuleType("nltk")
    nltk.stem = stem
    lem._nltk.cache_clear()
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    monkeypatch.setitem(sys.modules, "nltk.stem", stem)
    f = get_lemmatizer("nltk")
    assert f("trees") == "tree" and f("men") == "men"
    lem._nltk.cache_clear()
