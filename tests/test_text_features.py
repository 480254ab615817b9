"""Text features: each distinct text encoded once, h5 round trip, foreground mixes, bg padding."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qaclims.qape.corpus import build_corpus
from qaclims.qape.text_features import (
    background_index,
    background_vectors,
    encode_corpus_texts,
    foreground_vectors,
    load_text_features,
    save_text_features,
)

D = 8


class FakeTextEncoder:
    """TEST DOUBLE: text -> fixed random vector (seeded by a hash of the text), not normalised;
    counts calls and texts seen."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen: list[str] = []

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")
        return np.random.default_rng(seed).normal(size=D) * 3.0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.seen.extend(texts)
        return np.stack([self.vector(t) for t in texts])


def unit(text: str) -> np.ndarray:
    v = FakeTextEncoder.vector(text)
    return v / np.linalg.norm(v)


def corpus_rows(spec: dict[tuple[str, int], dict[str, list[str]]]) -> pd.DataFrame:
    rows = []
    for (image_id, class_id), roles in spec.items():
        for role in ("label", "fg", "bg"):
            for a in roles.get(role, []):
                rows.append({"image_id": image_id, "class_id": class_id, "role": role,
                             "group": None, "template_id": None, "answer": a,
                             "text": f"a photo of {a}."})
    return pd.DataFrame(rows)


CORPUS = corpus_rows({
    ("b", 1): {"label": ["cat"], "fg": ["tabby cat", "cat", "tabby cat", "kitty cat", "cat",
                                        "yes cat"], "bg": ["sofa", "floor", "room"]},
    ("a", 2): {"label": ["dog"], "fg": ["puppy dog"] * 6, "bg": ["grass"]},
    ("a", 1): {"label": ["cat"], "fg": ["tabby cat"] * 6, "bg": ["grass", "sofa"]},
})


def test_dedup_counts_and_batches() -> None:
    enc = FakeTextEncoder()
    texts = CORPUS["text"].tolist()
    unique, feats, saved = encode_corpus_texts(texts, enc, batch_size=3, model_id="fake")
    assert len(texts) == 27 and len(unique) == len(set(texts)) == 10
    assert saved == 27 - 10
    assert sorted(enc.seen) == unique and enc.calls == 4  # ceil(10 / 3), each text once
    assert feats.dtype == np.float32 and feats.shape == (10, D)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(feats[unique.index("a photo of sofa.")], unit("a photo of sofa."),
                               rtol=1e-5)


def test_zero_vector_is_rejected() -> None:
    with pytest.raises(ValueError, match="zero or non-finite"):
        encode_corpus_texts(["x"], lambda t: np.zeros((len(t), D)), model_id="m")
    with pytest.raises(ValueError, match="shape"):
        encode_corpus_texts(["x", "y"], lambda t: np.ones((1, D)), model_id="m")


def test_h5_round_trip(tmp_path: Path) -> None:
    texts = CORPUS["text"].tolist() + ["a photo of café ☕."]
    unique, feats, _ = encode_corpus_texts(texts, FakeTextEncoder(), batch_size=64, model_id="m1")
    path = tmp_path / "tf" / "text_features.h5"
    save_text_features(path, unique, feats, model_id="m1", prompt="a photo of {}.",
                       n_total=len(texts))
    assert [p.name for p in path.parent.iterdir()] == ["text_features.h5"]
    tf = load_text_features(path, model_id="m1")
    assert tf.texts == unique and tf.model_id == "m1" and tf.prompt == "a photo of {}."
    assert tf.n_total == len(texts) and tf.dim == D
    np.testing.assert_array_equal(tf.feats, feats)
    cafe = "a photo of café ☕."
    np.testing.assert_array_equal(tf[cafe], feats[unique.index(cafe)])
    with pytest.raises(KeyError, match="'a photo of moon.' is not in the text features"):
        tf.vectors(["a photo of moon."])
    with pytest.raises(ValueError, match="made by 'm1', expected 'm2'"):
        load_text_features(path, model_id="m2")


@pytest.fixture
def tf(tmp_path: Path):
    unique, feats, _ = encode_corpus_texts(CORPUS["text"], FakeTextEncoder(), model_id="m")
    save_text_features(tmp_path / "t.h5", unique, feats, model_id="m", prompt="a photo of {}.",
                       n_total=len(CORPUS))
    return load_text_features(tmp_path / "t.h5")


def test_foreground_code_mix(tf) -> None:
    keys, v = foreground_vectors(CORPUS, tf, mode="code")
    assert keys.values.tolist() == [["a", 1], ["a", 2], ["b", 1]]
    assert v.shape == (3, D) and v.dtype == np.float32
    fg = ["tabby cat", "cat", "tabby cat", "kitty cat", "cat", "yes cat"]
    expected = 0.5 * unit("a photo of cat.") + 0.5 * np.mean(
        [unit(f"a photo of {a}.") for a in fg], axis=0)
    np.testing.assert_allclose(v[2], expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(v[2]) < 1.0  # not re-normalised
    np.testing.assert_allclose(v[1], 0.5 * unit("a photo of dog.") + 0.5 * unit(
        "a photo of puppy dog."), rtol=1e-5, atol=1e-6)


def test_foreground_paper_mix(tf) -> None:
    _, v = foreground_vectors(CORPUS, tf, mode="paper")
    fg = ["tabby cat", "cat", "tabby cat", "kitty cat", "cat", "yes cat"]
    expected = np.mean([unit(f"a photo of {a}.") for a in ["cat", *fg]], axis=0)
    np.testing.assert_allclose(v[2], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        foreground_vectors(CORPUS, tf, mode="mean")


def test_label_only_pairs_get_the_label_vector(tf) -> None:
    label_only = CORPUS[CORPUS.role != "fg"]
    for mode in ("code", "paper"):
        _, v = foreground_vectors(label_only, tf, mode=mode)
        np.testing.assert_allclose(v[0], unit("a photo of cat."), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"pair \(a, 1\) has 0 label rows"):
        foreground_vectors(CORPUS[CORPUS.role != "label"], tf)


def test_background_padding_and_order(tf) -> None:
    keys, v, mask = background_vectors(CORPUS, tf)
    assert keys.values.tolist() == [["a", 1], ["a", 2], ["b", 1]]
    assert v.shape == (3, 3, D) and mask.tolist() == [[True, True, False], [True, False, False],
                                                      [True, True, True]]
    np.testing.assert_allclose(v[0, 1], unit("a photo of sofa."), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v[2, 2], unit("a photo of room."), rtol=1e-5, atol=1e-6)
    assert not v[1, 1:].any()
    keys2, index = background_index(CORPUS, tf)
    assert keys2.equals(keys) and index.dtype == np.int64
    assert (index >= 0).tolist() == mask.tolist()
    assert [tf.texts[i] for i in index[0] if i >= 0] == ["a photo of grass.", "a photo of sofa."]


def test_works_on_a_built_corpus(tf) -> None:
    qs_rows = []
    for image_id, class_id in [("x", 1), ("y", 1)]:
        for tid, group, role, a in [("fg_kind", "fine", "fg", "tabby"),
                                    ("fg_type", "fine", "fg", "cat"),
                                    ("bg_above", "object", "bg", "sofa"),
                                    ("bg_under", "object", "bg", "sofa")]:
            qs_rows.append({"image_id": image_id, "class_id": class_id, "template_id": tid,
                            "group": group, "role": role, "answer": a})
    corpus, stats = build_corpus(pd.DataFrame(qs_rows), ["cat"])
    unique, feats, saved = encode_corpus_texts(corpus["text"], FakeTextEncoder(), model_id="m")
    assert unique == ["a photo of cat.", "a photo of sofa.", "a photo of tabby cat."]
    assert saved == len(corpus) - 3 == stats["rows"] - 3
    keys, v = foreground_vectors(corpus, dict(zip(unique, feats, strict=True)))
    np.testing.assert_allclose(v[0], v[1])


def test_gather_sum_chunks_match_a_plain_sum() -> None:
    from qaclims.qape.text_features import _gather_sum

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(7, 3)).astype(np.float32)
    index = rng.integers(-1, 7, size=(11, 4))
    expected = np.array([feats[[i for i in row if i >= 0]].sum(axis=0) if (row >= 0).any()
                         else np.zeros(3) for row in index])
    np.testing.assert_allclose(_gather_sum(feats, index, chunk=3), expected, rtol=1e-6, atol=1e-6)
