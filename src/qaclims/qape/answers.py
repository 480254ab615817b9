"""Answer every question template about the (image, class) pairs of one shard.

``answer_shard`` is what one ``vqa`` job runs. For each image of the shard it

1. reads the file and hashes its bytes (the cache's image key),
2. looks all its questions (every template x every class of the image) up in the answer cache,
3. sends the questions the cache does not know to the engine in *one* call per image (the engine
   encodes each image once), stores the new answers in the cache (flushed every ``flush_every``
   images, so a killed job loses little work), and
4. lemmatises the raw answers (cheap, so it is not cached: changing the lemmatizer asks no model).

The engine is any object with ``answer_image(image, questions) -> answers`` (and optionally the
batched ``answer_many(items)`` of :class:`qaclims.qape.engine.VqaEngine`, used when present), or a
zero-argument callable that builds one: it is called only if some question is not cached, so a
rerun that the cache answers completely never loads the model.

Output: one row per (image, class, template), columns ``ANSWER_COLUMNS``, ordered by image id,
class id, then template order - the ``answers/{shard}.parquet`` contract.
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from qaclims.data.images import ImageReadError
from qaclims.qape.answer_cache import AnswerCache, image_digest
from qaclims.qape.lemmatize import get_lemmatizer
from qaclims.qape.questions import QuestionSet
from qaclims.store import write_parquet

log = logging.getLogger(__name__)

ANSWER_COLUMNS = ["image_id", "class_id", "template_id", "group", "role", "question",
                  "answer_raw", "answer", "model_id"]
PATH_COLUMNS = ("image_path", "path")


class BadImageError(RuntimeError):
    """An image of the shard cannot be read or decoded; the message names it."""


class BadImageWarning(UserWarning):
    """An image was skipped (on_bad_image='skip'); its pairs get no answers."""


def empty_answers() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series([], dtype="str") for c in ANSWER_COLUMNS})
    df["class_id"] = df["class_id"].astype("int64")
    return df


def image_paths(manifest: pd.DataFrame, image_root: str | os.PathLike[str] | None = None
                ) -> dict[str, Path]:
    """image_id -> image file, from the manifest's ``image_path`` column (absolute by contract);
    relative paths are taken relative to ``image_root`` when given."""
    col = next((c for c in PATH_COLUMNS if c in manifest.columns), None)
    if col is None:
        raise KeyError(f"manifest has no image path column (expected one of {list(PATH_COLUMNS)})")
    root = Path(image_root) if image_root is not None else None
    out = {}
    for image_id, p in zip(manifest["image_id"], manifest[col], strict=True):
        p = Path(p)
        out[str(image_id)] = root / p if root is not None and not p.is_absolute() else p
    return out


def _decode(data: bytes, path: Path) -> Any:
    """Fully decoded RGB image (the bytes were read once for the cache digest too)."""
    from qaclims.data.images import open_image

    return open_image(path, data=data)


def answer_shard(
    pairs: pd.DataFrame,
    manifest: pd.DataFrame,
    questions: QuestionSet,
    engine: Any,
    cache: AnswerCache,
    *,
    model_id: str,
    lemmatizer: str | Callable[[str], str] = "lemminflect",  # or a str -> str function
    on_bad_image: str = "error",
    image_root: str | os.PathLike[str] | None = None,
    flush_every: int = 256,
) -> pd.DataFrame:
    """Answers for ``pairs`` (columns image_id, class_id, class_text) - see module docstring.

    ``df.attrs["stats"]`` holds counts for the log/report: pairs, images, questions, cache hits,
    questions and images sent to the engine, skipped images.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if cache.model_id != model_id:
        raise ValueError(f"cache is for model {cache.model_id!r}, answering with {model_id!r}")
    lemmatize = get_lemmatizer(lemmatizer) if isinstance(lemmatizer, str) else lemmatizer
    pairs = pairs.sort_values(["image_id", "class_id"], ignore_index=True)
    paths = image_paths(manifest, image_root)
    templates = questions.templates

    per_image: dict[str, list[tuple[int, str]]] = {}
    for image_id, class_id, class_text in pairs[["image_id", "class_id", "class_text"]].itertuples(
        index=False
    ):
        per_image.setdefault(str(image_id), []).append((int(class_id), str(class_text)))
    missing_paths = [i for i in per_image if i not in paths]
    if missing_paths:
        raise KeyError(f"{len(missing_paths)} image(s) of the pairs are not in the manifest, "
                       f"e.g. {missing_paths[:3]}")

    cache.load(per_image)
    stats: dict[str, Any] = {
        "pairs": len(pairs), "images": len(per_image), "questions": 0, "unique_questions": 0,
        "cache_hits": 0, "engine_questions": 0, "engine_images": 0, "skipped_images": [],
    }
    shas: dict[str, str] = {}
    skipped: set[str] = set()

    def bad(image_id: str, why: str) -> None:
        msg = f"image {image_id} ({paths[image_id]}): {why}"
        if on_bad_image == "error":
            raise BadImageError(msg + " (set dataset.on_bad_image: skip to skip it)")
        warnings.warn(msg + "; skipped", BadImageWarning, stacklevel=3)
        log.warning("%s; skipped", msg)
        skipped.add(image_id)
        stats["skipped_images"].append({"image_id": image_id, "reason": why})

    def todo() -> Iterator[tuple[str, Any, list[str]]]:
        """(image_id, decoded image, questions the cache lacks) for every image with misses."""
        for image_id, classes in per_image.items():
            try:
                data = paths[image_id].read_bytes()
            except OSError as err:
                bad(image_id, f"cannot read file: {err}")
                continue
            sha = shas[image_id] = image_digest(data)
            asked = list(dict.fromkeys(t.question(text) for _, text in classes for t in templates))
            stats["questions"] += len(classes) * len(templates)
            stats["unique_questions"] += len(asked)
            known = cache.lookup(image_id, sha, asked)
            stats["cache_hits"] += len(known)
            misses = [q for q in asked if q not in known]
            if not misses:
                continue
            try:
                image = _decode(data, paths[image_id])
            except ImageReadError as err:
                cause = err.__cause__ or err  # the message already names the file
                bad(image_id, f"cannot decode image: {type(cause).__name__}: {cause}")
                continue
            yield image_id, image, misses

    def answered() -> Iterator[tuple[str, list[str], list[str]]]:
        items = todo()
        first = next(items, None)
        if first is None:
            return  # everything cached (or skipped): the engine is never built
        eng = engine if hasattr(engine, "answer_image") else engine()
        stats["engine"] = type(eng).__name__
        if hasattr(eng, "answer_many"):
            pending: dict[str, list[str]] = {}

            def tracked() -> Iterator[tuple[str, Any, list[str]]]:
                for image_id, image, misses in itertools.chain([first], items):
                    pending[image_id] = misses
                    yield image_id, image, misses

            for image_id, answers in eng.answer_many(tracked()):
                yield image_id, pending.pop(image_id), list(answers)
        else:
            for image_id, image, misses in itertools.chain([first], items):
                yield image_id, misses, list(eng.answer_image(image, misses))

    since_flush = 0
    try:
        for image_id, misses, answers in answered():
            if len(answers) != len(misses):
                raise RuntimeError(f"engine returned {len(answers)} answers for {len(misses)} "
                                   f"questions about image {image_id}")
            stats["engine_images"] += 1
            stats["engine_questions"] += len(misses)
            cache.put_many(image_id, shas[image_id], dict(zip(misses, answers, strict=True)))
            since_flush += 1
            if since_flush >= flush_every:
                cache.flush()
                since_flush = 0
    finally:
        # Answers computed before a failure (a bad image, an interrupt) are valid: keep them,
        # so the rerun after the fix asks only what is left.
        cache.flush()

    rows = []
    for image_id, classes in per_image.items():
        if image_id in skipped:
            continue
        sha = shas[image_id]
        for class_id, class_text in classes:
            for t in templates:
                q = t.question(class_text)
                raw = cache.peek(image_id, sha, q)
                if raw is None:  # pragma: no cover - every miss was answered above
                    raise RuntimeError(f"no answer for {q!r} about image {image_id}")
                rows.append((image_id, class_id, t.id, t.group, t.role, q, raw, lemmatize(raw),
                             model_id))
    df = pd.DataFrame(rows, columns=ANSWER_COLUMNS) if rows else empty_answers()
    df["class_id"] = df["class_id"].astype("int64")
    stats["rows"] = len(df)
    stats["cache"] = cache.stats()
    df.attrs["stats"] = stats
    log.info("answered %d pairs of %d images: %d questions, %d from the cache, %d asked the engine "
             "(%d images), %d images skipped", stats["pairs"], stats["images"], stats["questions"],
             stats["cache_hits"], stats["engine_questions"], stats["engine_images"],
             len(stats["skipped_images"]))
    return df


def write_answers(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write an answers table atomically (a killed job leaves no file that looks complete)."""
    missing = [c for c in ANSWER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"answers table lacks column(s) {missing}")
    out = df[ANSWER_COLUMNS].copy()
    out.attrs = {}
    write_parquet(out, path)


def read_answers(paths: list[str | os.PathLike[str]] | str | os.PathLike[str]) -> pd.DataFrame:
    """Concatenate shard files; order: image id, class id, then the stored template order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = [pd.read_parquet(p) for p in paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_answers()
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["image_id", "class_id"], kind="stable", ignore_index=True)


def answer_shard_files(
    *,
    manifest_path: str | os.PathLike[str],
    classes_path: str | os.PathLike[str],
    questions_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    shard: str | int,
    n_shards: int,
    splits: list[str],
    engine: Any,
    cache_dir: str | os.PathLike[str],
    model_id: str,
    lemmatizer: str = "lemminflect",
    on_bad_image: str = "error",
    flush_every: int = 256,
) -> dict[str, Any]:
    """One ``vqa`` job from files to file: the shard's pairs -> ``answers/{shard}.parquet``.

    Everything is checked (questions file, classes, manifest, lemmatizer) before the engine runs;
    ``engine`` may be a zero-argument factory, called only when some question is not cached.
    Returns the statistics (also in the returned table's ``attrs``) for the job's log.
    """
    from qaclims.data.manifest import read_classes, read_manifest
    from qaclims.qape.pairs import make_pairs, select_shard
    from qaclims.qape.questions import load_questions

    questions = load_questions(questions_path)
    lemmatize = get_lemmatizer(lemmatizer)  # fails fast, e.g. nltk without WordNet data
    classes = read_classes(classes_path)
    manifest = read_manifest(manifest_path, num_classes=len(classes))
    pairs = select_shard(make_pairs(manifest, classes, splits), shard, n_shards)
    cache = AnswerCache(cache_dir, model_id)
    df = answer_shard(pairs, manifest, questions, engine, cache, model_id=model_id,
                      lemmatizer=lemmatize, on_bad_image=on_bad_image, flush_every=flush_every)
    write_answers(df, out_path)
    return {"shard": str(shard), "n_shards": n_shards, "questions_digest": questions.digest,
            **df.attrs["stats"]}
