"""A persistent cache of raw VQA answers, keyed by (model id, image key, question text).

Why: editing one question template reruns every VQA job (the questions file is their input), but
only the questions whose text changed should reach the model. With the cache, a rerun after editing
one of 16 templates asks 1 question per (image, class) pair instead of 16.

Layout - built for concurrent Snakemake jobs on a shared file system, no locks needed::

    {root}/{model_dir}/{time_ns}-{host}-{pid}-{rand}.parquet   one file per flush of one job

* a job reads the existing files (only the rows of its own images), then writes what it computed
  as *new* files; a file is written under a temporary dot-name and renamed when complete
  (atomic), and it is never rewritten afterwards - so concurrent writers never collide and readers
  never see half a file;
* every row carries the time it was written (``written_ns``) and ``entry_sha``, a digest of its
  key, answer and time (:func:`entry_digest`). A file with a row whose digest does not match its
  content (an answer edited by hand, a row moved under another key or time) is ignored whole;
* when two rows hold the same key, the one written first wins (``written_ns``, then the file
  name), so an answer once served is served again. The order comes from the verified rows, not
  from file names: a file dropped in under a name that sorts first cannot win over a real answer;
* :func:`compact` merges the files into one (optional, run when no VQA job is running).

The digest is a consistency check against accidents and stale or foreign files, not a signature:
anyone who can write the folder can also compute it.

Clearing it: delete the folder (``rm -rf resources/cache/vqa``, or ``qape.cache_dir``), or one
model's sub-folder. Nothing else refers to it; the next ``vqa`` jobs ask the model again.
``make clean-results`` keeps it (and the toy models); ``make clean-cache`` removes it.

Keys:

* ``model_id`` - must change whenever the answers could change: weights, decoding settings
  (beams, lengths), image size, dtype, device kind, question start token and the engine version
  (:meth:`qaclims.qape.engine.VqaEngine.cache_model_id`). :func:`model_fingerprint` builds one.
  Each model gets its own folder (``model_dir_name``); rows of another model id are ignored.
* image key - the image id *and* a SHA-256 of the image file's bytes (:func:`image_digest`), so a
  replaced or re-encoded image is never served stale answers. Hashing costs ~1 ms per JPEG.
* question - the full question text after the class name was inserted.

A cache file that cannot be read (damaged by hand, a foreign file, a wrong schema) is ignored with
a warning: its answers are recomputed. The cache never returns an answer it did not read intact
(Parquet files are read whole or not at all).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from qaclims.store import atomic_path

log = logging.getLogger(__name__)

TEXT_COLUMNS = ["model_id", "image_id", "image_sha", "question", "answer"]
CACHE_COLUMNS = [*TEXT_COLUMNS, "written_ns", "entry_sha"]
#: Changes when the row format or the digest's definition changes (older files are then unread).
CACHE_FORMAT = "qaclims-answer-cache-2"
Key = tuple[str, str, str]  # (image_id, image_sha, question)


class AnswerCacheWarning(UserWarning):
    """A cache file was ignored; its answers will be recomputed."""


def image_digest(data: bytes) -> str:
    """Content key of an image file: the first 128 bits of SHA-256 of its bytes, hex."""
    return hashlib.sha256(data).hexdigest()[:32]


def entry_digest(model_id: str, image_id: str, image_sha: str, question: str, answer: str,
                 written_ns: int) -> str:
    """The ``entry_sha`` of a cache row: 128 bits of SHA-256 over its key, answer and time."""
    payload = json.dumps([CACHE_FORMAT, model_id, image_id, image_sha, question, answer,
                          int(written_ns)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def model_dir_name(model_id: str) -> str:
    """A folder name for ``model_id``: readable slug + hash (ids may hold '/', ':' ...)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id).strip("._")[:60] or "model"
    return f"{slug}-{hashlib.sha256(model_id.encode()).hexdigest()[:10]}"


def model_fingerprint(name: str, weights_digest: str, **settings: Any) -> str:
    """A model id that changes with the weights and with any answer-changing setting, e.g.
    ``model_fingerprint("blip-vqa-base", sha, num_beams=3, max_length=10, image_size=480)``."""
    parts = ",".join(f"{k}={settings[k]}" for k in sorted(settings))
    h = hashlib.sha256(f"{weights_digest}|{parts}".encode()).hexdigest()[:12]
    return f"{name}@{h}"


class AnswerCache:
    """Answers of one model. Load the rows you need with :meth:`load`, query with :meth:`get`,
    add with :meth:`put`, and make them durable with :meth:`flush` (a new file per flush)."""

    def __init__(self, root: str | os.PathLike[str], model_id: str) -> None:
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        self.model_id = model_id
        self.dir = Path(root) / model_dir_name(model_id)
        self._answers: dict[Key, str] = {}
        self._written: dict[Key, int] = {}  # written_ns of entries read from or flushed to files
        self._pending: dict[Key, str] = {}
        self.hits = 0
        self.misses = 0
        self.ignored_files: list[str] = []
        self.files_written: list[Path] = []

    # ------------------------------------------------------------------ reading
    def files(self) -> list[Path]:
        """Complete cache files, oldest first (temporary dot-files of running writers excluded)."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    def load(self, image_ids: Iterable[str] | None = None) -> int:
        """Read every cache file's rows for ``image_ids`` (all rows when None); return how many
        keys are now known. Existing in-memory entries win over those read; among those read,
        the row written first wins (``written_ns``, then the file name)."""
        ids = None if image_ids is None else sorted({str(i) for i in image_ids})
        if ids is not None and not ids:
            return len(self._answers)
        rows: list[tuple[int, str, Key, str]] = []
        for path in self.files():
            table = self._read_file(path, ids)
            if table is None:
                continue
            rows.extend(
                (int(t), path.name, key, answer) for t, key, answer in zip(
                    table["written_ns"],
                    zip(table["image_id"], table["image_sha"], table["question"], strict=True),
                    table["answer"], strict=True)
            )
        rows.sort(key=lambda r: (r[0], r[1]))
        for written_ns, _, key, answer in rows:
            if key not in self._answers:
                self._answers[key] = answer
                self._written[key] = written_ns
        return len(self._answers)

    def _read_file(self, path: Path, ids: list[str] | None) -> pd.DataFrame | None:
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
            missing = [c for c in CACHE_COLUMNS if c not in schema.names]
            if missing:
                raise ValueError(f"missing column(s) {missing}")
            filters = [("image_id", "in", ids)] if ids is not None else None
            table = pq.read_table(path, columns=CACHE_COLUMNS, filters=filters).to_pandas()
        except FileNotFoundError:
            return None  # removed by a concurrent compact(); its rows live in the merged file
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, never trusted
            msg = (f"answer cache: ignoring unreadable file {path} ({type(err).__name__}: {err}); "
                   "its answers will be recomputed. Delete it to silence this warning.")
            warnings.warn(msg, AnswerCacheWarning, stacklevel=3)
            log.warning(msg)
            self.ignored_files.append(str(path))
            return None
        other = table["model_id"] != self.model_id
        if other.any():
            msg = (f"answer cache: {path} holds {int(other.sum())} row(s) of another model id "
                   f"(e.g. {table.loc[other, 'model_id'].iloc[0]!r}); ignored")
            warnings.warn(msg, AnswerCacheWarning, stacklevel=3)
            log.warning(msg)
            table = table.loc[~other]
        for col in CACHE_COLUMNS[1:]:
            if table[col].isna().any():
                return self._ignore(path, f"null values in column {col!r}")
        table = table.astype({c: str for c in TEXT_COLUMNS[1:]})
        # Each row must match its own digest: nothing edited, moved or planted is served.
        for row in table.itertuples(index=False):
            expected = entry_digest(self.model_id, row.image_id, row.image_sha, row.question,
                                    row.answer, row.written_ns)
            if row.entry_sha != expected:
                return self._ignore(
                    path, f"the row for image {row.image_id!r}, question {row.question!r} does "
                    "not match its entry_sha (edited, or not written by this cache)")
        return table

    def _ignore(self, path: Path, why: str) -> None:
        msg = (f"answer cache: ignoring {path}: {why}; its answers will be recomputed. Delete it "
               "to silence this warning.")
        warnings.warn(msg, AnswerCacheWarning, stacklevel=4)
        log.warning(msg)
        self.ignored_files.append(str(path))
        return None

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: Key) -> bool:
        return key in self._answers

    def get(self, image_id: str, image_sha: str, question: str) -> str | None:
        """The cached answer or None; counts a hit or a miss."""
        answer = self._answers.get((str(image_id), image_sha, question))
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    def peek(self, image_id: str, image_sha: str, question: str) -> str | None:
        """The cached answer or None, without counting a hit or miss."""
        return self._answers.get((str(image_id), image_sha, question))

    def lookup(self, image_id: str, image_sha: str, questions: Iterable[str]) -> dict[str, str]:
        """The cached answers among ``questions`` (question -> answer); counts hits and misses."""
        found = {}
        for q in questions:
            a = self.get(image_id, image_sha, q)
            if a is not None:
                found[q] = a
        return found

    # ------------------------------------------------------------------ writing
    def put(self, image_id: str, image_sha: str, question: str, answer: str) -> None:
        key = (str(image_id), image_sha, question)
        if key in self._answers:
            return  # first wins, as across files
        if not isinstance(answer, str):
            raise TypeError(f"answer to {question!r} must be a string, got {type(answer).__name__}")
        self._answers[key] = answer
        self._pending[key] = answer

    def put_many(self, image_id: str, image_sha: str, answers: Mapping[str, str]) -> None:
        for q, a in answers.items():
            self.put(image_id, image_sha, q, a)

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def flush(self) -> Path | None:
        """Write the entries added since the last flush as one new file (atomically)."""
        if not self._pending:
            return None
        written_ns = time.time_ns()
        rows = [(self.model_id, *key, answer, written_ns)
                for key, answer in self._pending.items()]
        path = self.dir / _new_file_name(written_ns)
        _write_rows(rows, path)
        for key in self._pending:
            self._written[key] = written_ns
        self._pending.clear()
        self.files_written.append(path)
        return path

    def stats(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "cache_dir": str(self.dir),
            "hits": self.hits,
            "misses": self.misses,
            "entries_known": len(self._answers),
            "files_written": [p.name for p in self.files_written],
            "ignored_files": list(self.ignored_files),
        }


def _new_file_name(time_ns: int | None = None) -> str:
    t = time.time_ns() if time_ns is None else time_ns
    host = re.sub(r"[^A-Za-z0-9]+", "", socket.gethostname())[:20] or "host"
    return f"{t:020d}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"


def _write_rows(rows: list[tuple[str, str, str, str, str, int]], path: Path) -> None:
    """Rows ``(model_id, image_id, image_sha, question, answer, written_ns)`` + their digests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    full = [(*r, entry_digest(*r)) for r in rows]
    columns = list(zip(*full, strict=True)) if full else [[] for _ in CACHE_COLUMNS]
    types = {"written_ns": pa.int64()}
    table = pa.table({c: pa.array(list(v), type=types.get(c, pa.string())) for c, v in
                      zip(CACHE_COLUMNS, columns, strict=True)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def compact(root: str | os.PathLike[str], model_id: str) -> Path | None:
    """Merge a model's cache files into one; keeps first-wins order; removes the merged files.

    Safe against readers (they skip files that vanish; the merged file is complete before any
    removal). Run it when no VQA job of this model is *writing*: a file flushed during compaction
    is not merged, and stays (nothing is lost either way).
    """
    cache = AnswerCache(root, model_id)
    files = cache.files()
    if len(files) <= 1:
        return files[0] if files else None
    cache.load()
    # Each row keeps its own written_ns, so the merged file decides no tie by its name.
    rows = [(model_id, *key, answer, cache._written[key]) for key, answer in cache._answers.items()]
    merged = cache.dir / _new_file_name()
    _write_rows(rows, merged)
    broken = set(cache.ignored_files)
    for p in files:
        if str(p) not in broken:  # unreadable files stay for a person to look at
            p.unlink(missing_ok=True)
    return merged
