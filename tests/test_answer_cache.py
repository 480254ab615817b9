"""Answer cache: hits and misses, persistence, concurrent writers, damaged files never trusted."""

import multiprocessing as mp
import shutil
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest

from qaclims.qape.answer_cache import (
    AnswerCache,
    AnswerCacheWarning,
    compact,
    entry_digest,
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


def _row(model=MODEL, image="img", question="q?", answer="wrong", written_ns=1, sha=None):
    digest = entry_digest(model, image, SHA, question, answer, written_ns)
    return {"model_id": [model], "image_id": [image], "image_sha": [SHA], "question": [question],
            "answer": [answer], "written_ns": [written_ns], "entry_sha": [sha or digest]}


def test_rows_of_another_model_are_ignored(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path, MODEL)
    c.dir.mkdir(parents=True)
    pd.DataFrame(_row(model="other")).to_parquet(c.dir / "0.parquet")
    with pytest.warns(AnswerCacheWarning, match="another model id"):
        c.load()
    assert c.peek("img", SHA, "q?") is None


def test_a_file_planted_under_an_early_name_does_not_win(tmp_path: Path) -> None:
    """Precedence comes from each row's verified write time, not from file names; a row whose
    digest does not match its content (edited, or made up) is never served."""
    real = AnswerCache(tmp_path, MODEL)
    real.put("img", SHA, "q?", "real")
    real.flush()
    first = "00000000000000000000-planted.parquet"
    # 1. a planted row that claims an early time without a matching digest: file ignored
    pd.DataFrame(_row(answer="planted", written_ns=1, sha="0" * 32)).to_parquet(real.dir / first)
    fresh = AnswerCache(tmp_path, MODEL)
    with pytest.warns(AnswerCacheWarning, match="does not match its entry_sha"):
        fresh.load()
    assert fresh.peek("img", SHA, "q?") == "real"
    assert fresh.stats()["ignored_files"] == [str(real.dir / first)]
    # 2. a consistent row written later, under a name that sorts first: the older answer wins
    later = real._written[("img", SHA, "q?")] + 1
    pd.DataFrame(_row(answer="planted", written_ns=later)).to_parquet(real.dir / first)
    again = AnswerCache(tmp_path, MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load()
    assert again.peek("img", SHA, "q?") == "real"
    # 3. an answer edited in place (its digest no longer matches): that file is ignored
    path = real.files_written[0]
    table = pd.read_parquet(path)
    table.loc[0, "answer"] = "edited"
    table.to_parquet(path)
    edited = AnswerCache(tmp_path, MODEL)
    with pytest.warns(AnswerCacheWarning, match=path.name):
        edited.load()
    assert edited.peek("img", SHA, "q?") == "planted"  # the only consistent row left


def test_old_format_files_are_not_read(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path, MODEL)
    c.dir.mkdir(parents=True)
    row = {k: v for k, v in _row(answer="old").items() if k not in ("written_ns", "entry_sha")}
    pd.DataFrame(row).to_parquet(c.dir / "00000000000000000000-old.parquet")
    with pytest.warns(AnswerCacheWarning, match="missing column"):
        assert c.load() == 0


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


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_results_keeps_the_cache_and_toy_models_and_says_so(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "Makefile", tmp_path / "Makefile")
    for d in ("results/synthetic/data", ".snakemake", "resources/cache/vqa/m",
              "resources/weights/toy/demo"):
        (tmp_path / d).mkdir(parents=True)
    out = subprocess.run(["make", "clean-results"], cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert not (tmp_path / "results/synthetic").exists() and not (tmp_path / ".snakemake").exists()
    assert (tmp_path / "resources/cache/vqa/m").is_dir()
    assert (tmp_path / "resources/weights/toy/demo").is_dir()
    assert "kept the VQA answer cache (resources/cache/vqa" in out and "toy models" in out
    subprocess.run(["make", "clean-cache"], cwd=tmp_path, check=True, capture_output=True,
                   timeout=60)
    assert not (tmp_path / "resources/cache/vqa").exists()
    assert (tmp_path / "resources/weights/toy/demo").is_dir()
