"""The per-shard answering driver: cache-first, one engine call per image, deterministic output."""

import hashlib
import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from qaclims.data.manifest import ManifestRecord, read_manifest, write_manifest
from qaclims.qape.answer_cache import AnswerCache
from qaclims.qape.answers import (
    ANSWER_COLUMNS,
    BadImageError,
    BadImageWarning,
    answer_shard,
    answer_shard_files,
    read_answers,
    write_answers,
)
from qaclims.qape.lemmatize import get_lemmatizer
from qaclims.qape.pairs import make_pairs
from qaclims.qape.questions import load_questions, questions_from_dict

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fake-vqa@1"
CLASSES = {"classes": [{"id": 1, "name": "cat", "text": "cat"},
                       {"id": 2, "name": "diningtable", "text": "dining table"},
                       {"id": 3, "name": "train", "text": "train"}]}
WORDS = ["trees", "grass", "yes", "men", "passenger", "dining tables", "leaves", "sky", "tabby"]


class EchoEngine:
    """TEST DOUBLE, never used by the pipeline: answers each question with a word picked by a
    hash of its text (deterministic), and counts questions (``calls``, like VqaEngine) and
    images (``image_calls``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.image_calls = 0
        self.asked: list[list[str]] = []

    @staticmethod
    def answer(question: str) -> str:
        return WORDS[hashlib.sha1(question.encode()).digest()[0] % len(WORDS)]

    def answer_image(self, image, questions):
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        self.image_calls += 1
        self.calls += len(questions)
        self.asked.append(list(questions))
        return [self.answer(q) for q in questions]


class BatchingEchoEngine(EchoEngine):
    """TEST DOUBLE with VqaEngine's lazy ``answer_many`` (images in chunks of 2)."""

    def answer_many(self, items):
        chunk = []
        for item in items:
            chunk.append(item)
            if len(chunk) == 2:
                yield from ((k, self.answer_image(im, qs)) for k, im, qs in chunk)
                chunk = []
        yield from ((k, self.answer_image(im, qs)) for k, im, qs in chunk)


@pytest.fixture
def data(tmp_path: Path):
    records = []
    for i, labels in enumerate([[1], [2, 3], [1, 2, 3], [3]]):
        path = tmp_path / "img" / f"im{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (16 + i, 12), (10 * i, 20, 30)).save(path)
        records.append(ManifestRecord(f"im{i}", ["train", "train_aug"], str(path), 12, 16 + i,
                                      labels, False, None))
    write_manifest(records, tmp_path / "manifest.parquet", num_classes=3)
    manifest = read_manifest(tmp_path / "manifest.parquet")  # the real data contract
    pairs = make_pairs(manifest, CLASSES, ["train_aug"])
    return tmp_path, manifest, pairs, load_questions(ROOT / "config" / "questions.yaml")


def run(data, engine, cache_dir=None, questions=None, **kw):
    root, manifest, pairs, qs = data
    cache = AnswerCache(cache_dir or root / "cache", MODEL)
    return answer_shard(pairs, manifest, questions or qs, engine, cache, model_id=MODEL, **kw)


def test_output_contract(data) -> None:
    _, _, pairs, qs = data
    engine = EchoEngine()
    df = run(data, engine)
    assert list(df.columns) == ANSWER_COLUMNS
    assert len(df) == len(pairs) * 16 == 7 * 16
    key = df[["image_id", "class_id"]].drop_duplicates()
    assert key.values.tolist() == pairs[["image_id", "class_id"]].values.tolist()
    assert df.groupby(["image_id", "class_id"])["template_id"].agg(list).map(
        lambda ids: ids == qs.ids).all()
    row = df[(df.image_id == "im1") & (df.class_id == 2) & (df.template_id == "fg_kind")].iloc[0]
    assert row.question == "What kind of dining table is in the photo?"
    assert (row.group, row.role, row.model_id) == ("fine", "fg", MODEL)
    assert row.answer_raw == EchoEngine.answer(row.question)
    lem = get_lemmatizer()
    assert (df["answer"] == df["answer_raw"].map(lem)).all()
    assert (df["answer"] != df["answer_raw"]).any()  # some plural was lemmatised
    assert set(df.loc[df.role == "bg", "group"]) == {"object", "scene"}
    assert df["class_id"].dtype == "int64"


def test_one_engine_call_per_image_with_all_its_questions(data) -> None:
    engine = EchoEngine()
    df = run(data, engine)
    assert engine.image_calls == 4
    assert [len(a) for a in engine.asked] == [16, 32, 48, 16]
    assert engine.calls == 7 * 16
    stats = df.attrs["stats"]
    assert (stats["engine_questions"], stats["cache_hits"], stats["engine_images"]) == (112, 0, 4)


def test_rerun_hits_the_cache_only(data) -> None:
    first = run(data, EchoEngine())
    engine = EchoEngine()
    again = run(data, engine)
    assert engine.calls == 0 and engine.image_calls == 0
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs["stats"]["cache_hits"] == 112


def test_editing_one_template_asks_one_question_per_pair(data) -> None:
    _, _, pairs, qs = data
    run(data, EchoEngine())
    edited = qs.to_dict()
    edited["templates"][8]["text"] = "what is far behind the {}?"
    engine = EchoEngine()
    df = run(data, engine, questions=questions_from_dict(edited))
    assert engine.calls == len(pairs) == 7  # 1 per pair, not 16
    assert engine.image_calls == 4  # still one call per image
    assert all(q.startswith("what is far behind the") for batch in engine.asked for q in batch)
    assert (df.loc[df.template_id == "bg_behind", "question"].str.contains("far behind")).all()


def test_a_changed_image_is_asked_again(data) -> None:
    root = data[0]
    run(data, EchoEngine())
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "img" / "im3.png")
    engine = EchoEngine()
    run(data, engine)
    assert engine.image_calls == 1 and engine.calls == 16


def test_batched_engine_path(data) -> None:
    plain = run(data, EchoEngine(), cache_dir=data[0] / "c1")
    engine = BatchingEchoEngine()
    batched = run(data, engine, cache_dir=data[0] / "c2", flush_every=1)
    pd.testing.assert_frame_equal(plain, batched)
    assert engine.image_calls == 4
    assert len(AnswerCache(data[0] / "c2", MODEL).files()) == 4


def test_bad_image_error_or_skip(data) -> None:
    root = data[0]
    (root / "img" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(BadImageError, match=r"image im1 \(.*im1.png\): cannot decode"):
        run(data, EchoEngine())
    with pytest.warns(BadImageWarning, match="image im1"):
        df = run(data, EchoEngine(), on_bad_image="skip")
    assert "im1" not in set(df["image_id"]) and len(df) == 5 * 16
    assert df.attrs["stats"]["skipped_images"][0]["image_id"] == "im1"
    Image.new("RGB", (9, 9)).save(root / "img" / "im1.png")
    (root / "img" / "im2.png").unlink()
    with pytest.raises(BadImageError, match="image im2 .*cannot read file"):
        run(data, EchoEngine())


def test_write_read_and_empty_shard(data, tmp_path: Path) -> None:
    df = run(data, EchoEngine())
    write_answers(df, tmp_path / "answers" / "1.parquet")
    write_answers(df.iloc[:0], tmp_path / "answers" / "0.parquet")
    both = read_answers([tmp_path / "answers" / "1.parquet", tmp_path / "answers" / "0.parquet"])
    df.attrs = {}
    pd.testing.assert_frame_equal(both, df, check_dtype=False)
    _, manifest, pairs, qs = data
    empty = answer_shard(pairs.iloc[:0], manifest, qs, EchoEngine(),
                         AnswerCache(tmp_path / "c", MODEL), model_id=MODEL)
    write_answers(empty, tmp_path / "e.parquet")
    back = pd.read_parquet(tmp_path / "e.parquet")
    assert list(back.columns) == ANSWER_COLUMNS and len(back) == 0


def test_killed_write_leaves_no_file(data, tmp_path: Path, monkeypatch) -> None:
    df = run(data, EchoEngine())

    def boom(self, path, **kw):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(KeyboardInterrupt):
        write_answers(df, tmp_path / "out" / "3.parquet")
    assert list((tmp_path / "out").iterdir()) == []


def test_model_id_must_match_cache(data) -> None:
    root, manifest, pairs, qs = data
    with pytest.raises(ValueError, match="cache is for model"):
        answer_shard(pairs, manifest, qs, EchoEngine(), AnswerCache(root, "x"), model_id=MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(data, EchoEngine())


def test_relative_image_paths_and_unknown_images(data) -> None:
    root, manifest, pairs, qs = data
    rel = manifest.assign(image_path=[f"img/{i}.png" for i in manifest["image_id"]])
    cache = AnswerCache(root / "cache", MODEL)
    df = answer_shard(pairs, rel, qs, EchoEngine(), cache, model_id=MODEL, image_root=root)
    assert len(df) == 7 * 16
    with pytest.raises(KeyError, match=r"not in the manifest, e.g. \['im0'\]"):
        answer_shard(pairs, manifest[manifest.image_id != "im0"], qs, EchoEngine(), cache,
                     model_id=MODEL)


def test_files_end_to_end_over_shards(data, tmp_path: Path) -> None:
    """vqa (3 shards) -> corpus -> text_features through the file-level entry points."""
    import numpy as np

    from qaclims.data.manifest import ClassInfo, write_classes
    from qaclims.qape.corpus import build_corpus_files
    from qaclims.qape.text_features import build_text_features_file, load_text_features

    write_classes([ClassInfo(1, "cat", "cat", ("cat",)),
                   ClassInfo(2, "diningtable", "dining table", ("table", "dining table")),
                   ClassInfo(3, "train", "train", ("train",))], tmp_path / "classes.json", "test")
    engine = EchoEngine()
    outs, total = [], 0
    for shard in ("0", "1", "2"):
        out = tmp_path / "answers" / f"{shard}.parquet"
        stats = answer_shard_files(
            manifest_path=tmp_path / "manifest.parquet", classes_path=tmp_path / "classes.json",
            questions_path=ROOT / "config" / "questions.yaml", out_path=out, shard=shard,
            n_shards=3, splits=["train_aug"], engine=engine, cache_dir=tmp_path / "cache",
            model_id=MODEL)
        total += stats["pairs"]
        outs.append(out)
    assert total == 7 and engine.image_calls == 4
    stats = build_corpus_files([str(p) for p in outs], str(tmp_path / "classes.json"),
                               str(tmp_path / "corpus.parquet"), str(tmp_path / "corpus.json"),
                               variant="paper")
    corpus = pd.read_parquet(tmp_path / "corpus.parquet")
    assert stats["pairs"] == 7 and corpus[["image_id", "class_id"]].drop_duplicates().shape[0] == 7
    assert corpus["template_id"].isna().sum() >= 7  # label rows

    def encode(texts):
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest(), np.uint8)[:8] + 1.0
                         for t in texts])

    tstats = build_text_features_file(tmp_path / "corpus.parquet", tmp_path / "tf.h5", encode,
                                      model_id="clip-x", prompt="a photo of {}.")
    tf = load_text_features(tmp_path / "tf.h5", model_id="clip-x")
    assert tstats["n_total"] == len(corpus) and tstats["n_unique"] == len(tf.texts)
    assert set(tf.texts) == set(corpus["text"])


def test_engine_factory_is_called_only_on_a_miss(data) -> None:
    built = []

    def factory():
        built.append(EchoEngine())
        return built[-1]

    run(data, factory)
    assert len(built) == 1 and built[0].calls == 112
    df = run(data, factory)  # all cached: the model is never loaded
    assert len(built) == 1 and len(df) == 112
    assert "engine" not in df.attrs["stats"]


def test_answers_before_a_failure_are_kept(data) -> None:
    root = data[0]
    (root / "img" / "im3.png").write_bytes(b"not an image")
    engine = EchoEngine()
    with pytest.raises(BadImageError, match="image im3"):
        run(data, engine, flush_every=1000)
    assert engine.image_calls == 3
    Image.new("RGB", (9, 9)).save(root / "img" / "im3.png")
    engine = EchoEngine()
    run(data, engine)
    assert engine.image_calls == 1 and engine.calls == 16  # only the repaired image
