"""Answer cache: hits and misses, persistence, concurrent writers, damaged files never trusted."""

import multiprocessing as mp
import warnings
from pathlib import Path

import pandas as pd
import pytest

from qaclims.qape.answer_cache import (
    AnswerCache,
    AnswerCacheWarning,
    compact,
    image_digest,
    model_dir_name,
    model_fingerprint,
)

MODEL = "blip-vqa@abc123"
SHA = image_digest(b"image bytes")


def test_hit_miss_and_persistence(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path, MODEL)
    assert c.get("img1", SHA, "what is this cat?") is None
    c.put("img1", SHA, "what is this cat?", "tabby")
    assert c.get("img1", SHA, "what is this cat?") == "tabby"
    assert (c.hits, c.misses) == (1, 1)
    assert c.files() == []  # nothing durable before flush
    path = c.flush()
    assert path is not None and path.parent == tmp_path / model_dir_name(MODEL)
    assert c.flush() is None  # nothing pending

    fresh = AnswerCache(tmp_path, MODEL)
    assert fresh.load() == 1
    assert fresh.get("img1", SHA, "what is this cat?") == "tabby"
    assert fresh.get("img1", image_digest(b"other bytes"), "what is this cat?") is None
    assert fresh.get("img1", SHA, "what is this dog?") is None
    assert AnswerCache(tmp_path, "another-model").load() == 0


def test_load_filters_by_image(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path, MODEL)
    for i in range(5):
        c.put(f"img{i}", SHA, "q?", f"a{i}")
    c.flush()
    fresh = AnswerCache(tmp_path, MODEL)
    assert fresh.load(["img1", "img3"]) == 2
    assert fresh.peek("img3", SHA, "q?") == "a3" and fresh.peek("img0", SHA, "q?") is None


def test_first_written_answer_wins(tmp_path: Path) -> None:
    a, b = AnswerCache(tmp_path, MODEL), AnswerCache(tmp_path, MODEL)
    a.put("img", SHA, "q?", "first")
    a.flush()
    b.put("img", SHA, "q?", "second")  # b never loaded a's file
    b.flush()
    fresh = AnswerCache(tmp_path, MODEL)
    fresh.load()
    assert fresh.peek("img", SHA, "q?") == "first"
    merged = compact(tmp_path, MODEL)
    assert [p.name for p in AnswerCache(tmp_path, MODEL).files()] == [merged.name]
    again = AnswerCache(tmp_path, MODEL)
    again.load()
    assert again.peek("img", SHA, "q?") == "first" and len(again) == 1


def _writer(root: str, worker: int, n: int) -> None:
    c = AnswerCache(root, MODEL)
    c.load()
    for i in range(n):
        c.put(f"img{worker}_{i}", SHA, f"question {i}?", f"answer {worker} {i}")
        if i % 50 == 49:
            c.flush()
    c.flush()


def test_two_concurrent_writers(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 200)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = AnswerCache(tmp_path, MODEL)
    assert c.load() == 400
    assert c.peek("img1_199", SHA, "question 199?") == "answer 1 199"
    assert len(c.files()) == 8
    assert not [p for p in c.dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_damaged_file_is_ignored_with_a_warning(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path, MODEL)
    c.put("img", SHA, "q?", "good")
    c.flush()
    (c.dir / "00000000000000000000-x-1-dead.parquet").write_bytes(b"PAR1 not parquet at all")
    pd.DataFrame({"image_id": ["img"], "answer": ["wrong"]}).to_parquet(
        c.dir / "00000000000000000001-x-1-beef.parquet")
    fresh = AnswerCache(tmp_path, MODEL)
    with pytest.warns(AnswerCacheWarning) as record:
        fresh.load()
    messages = " ".join(str(r.message) for r in record)
    assert "dead.parquet" in messages and "beef.parquet" in messages
    assert "missing column" in messages and "recomputed" in messages
    assert fresh.peek("img", SHA, "q?") == "good" and len(fresh) == 1
    assert len(fresh.stats()["ignored_files"]) == 2


def test_rows_of_another_model_are_ignored(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path, MODEL)
    c.dir.mkdir(parents=True)
    pd.DataFrame({"model_id": ["other"], "image_id": ["img"], "image_sha": [SHA],
                  "question": ["q?"], "answer": ["wrong"]}).to_parquet(c.dir / "0.parquet")
    with pytest.warns(AnswerCacheWarning, match="another model id"):
        c.load()
    assert c.peek("img", SHA, "q?") is None


def test_temp_files_of_running_writers_are_not_read(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path, MODEL)
    c.dir.mkdir(parents=True)
    (c.dir / ".123.parquet").write_bytes(b"half written")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.load() == 0


def test_ids() -> None:
    assert model_dir_name("Salesforce/blip-vqa-capfilt-large").startswith(
        "Salesforce_blip-vqa-capfilt-large-")
    assert model_dir_name("a/b") != model_dir_name("a_b")
    fp = model_fingerprint("blip", "w" * 64, num_beams=3, max_length=10)
    assert fp.startswith("blip@") and fp == model_fingerprint("blip", "w" * 64, max_length=10,
                                                              num_beams=3)
    assert fp != model_fingerprint("blip", "w" * 64, num_beams=1, max_length=10)
    assert image_digest(b"a") != image_digest(b"b") and len(image_digest(b"a")) == 32
    with pytest.raises(ValueError):
        AnswerCache("x", "")
