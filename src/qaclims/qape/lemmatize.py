"""Answer lemmatisation as the authors do it (method.md 2.4).

The authors call ``WordNetLemmatizer().lemmatize(answer)`` on the *whole* answer string with the
default part of speech (noun). A single word gets its noun lemma ("trees" -> "tree"); a string with
a space is not a WordNet entry, so it comes back unchanged ("tall trees" stays); a word WordNet does
not know is unchanged too. When WordNet knows several lemmas, the shortest wins
("leaves" -> "leaf", "glasses" -> "glass").

Two back-ends:

* ``"lemminflect"`` (default): offline, its data ships in the wheel. It reproduces the rules above
  with lemminflect's noun lemmas of in-vocabulary words (out-of-vocabulary words are left unchanged,
  as WordNet leaves them). On rare words its vocabulary differs from WordNet's (e.g. WordNet keeps
  "men", lemminflect gives "man"; WordNet has "t-shirt", lemminflect leaves "t-shirts").
* ``"nltk"``: nltk's WordNetLemmatizer itself, for bit-exact reproduction, when nltk and its WordNet
  data are installed (``pip install nltk`` then ``python -m nltk.downloader wordnet omw-1.4``).
* ``"none"``: answers unchanged (for ablations).

Lemmatisation is applied to cached raw answers, so switching back-ends never asks the VQA model
again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

LEMMATIZERS = ("lemminflect", "nltk", "none")

Lemmatizer = Callable[[str], str]


class LemmatizerUnavailable(RuntimeError):
    """The chosen lemmatizer cannot run here; the message says what to install or download."""


def get_lemmatizer(name: str = "lemminflect") -> Lemmatizer:
    """A cached ``str -> str`` lemmatizer by name (see module docstring)."""
    if name == "lemminflect":
        return _lemminflect()
    if name == "nltk":
        return _nltk()
    if name == "none":
        return _identity
    raise ValueError(f"unknown lemmatizer {name!r}; expected one of {list(LEMMATIZERS)}")


def _identity(answer: str) -> str:
    return answer


def _is_single_word(answer: str) -> bool:
    return bool(answer) and not any(ch.isspace() for ch in answer)


@functools.cache
def _lemminflect() -> Lemmatizer:
    try:
        import lemminflect
    except ImportError as err:  # pragma: no cover - pinned in envs/requirements.txt
        raise LemmatizerUnavailable(
            "the default answer lemmatizer needs the 'lemminflect' package (pip install "
            "lemminflect); it ships its data, no download needed"
        ) from err

    @functools.lru_cache(maxsize=65536)
    def lemmatize(answer: str) -> str:
        if not _is_single_word(answer):
            return answer
        lemmas = lemminflect.getLemma(answer, upos="NOUN", lemmatize_oov=False)
        if not lemmas:
            return answer
        return min(lemmas, key=len)  # WordNetLemmatizer: min(lemmas, key=len)

    return lemmatize


@functools.cache
def _nltk() -> Lemmatizer:
    try:
        from nltk.stem import WordNetLemmatizer
    except ImportError as err:
        raise LemmatizerUnavailable(
            "lemmatizer 'nltk' needs the nltk package and its WordNet data: pip install nltk, then "
            "python -m nltk.downloader wordnet omw-1.4 (or use the offline default 'lemminflect')"
        ) from err
    lemmatizer = WordNetLemmatizer()
    try:
        lemmatizer.lemmatize("trees")  # loads the corpus lazily: fail now, not mid-shard
    except LookupError as err:
        raise LemmatizerUnavailable(
            "lemmatizer 'nltk': the WordNet data is not installed; run python -m nltk.downloader "
            "wordnet omw-1.4 (or set NLTK_DATA to a folder holding corpora/wordnet), or use the "
            f"offline default 'lemminflect'. nltk said: {str(err).strip().splitlines()[0]}"
        ) from err
    return functools.lru_cache(maxsize=65536)(lemmatizer.lemmatize)
