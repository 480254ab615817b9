"""CLIP text features of the corpus: each distinct text encoded once (method.md 4).

The corpus repeats texts heavily ("a photo of cat." once per cat pair, "a photo of grass." for many
pairs), so only the distinct texts are encoded; :func:`encode_corpus_texts` reports how many encoder
inputs that saved.

``text_features.h5`` (written atomically by :func:`save_text_features`):

* ``texts``: [U] UTF-8 strings, sorted (the texts exactly as fed to the encoder, prompt included)
* ``feats``: [U, D] float32, L2-normalised rows, row i belongs to ``texts[i]``
* attributes ``model_id`` (the text encoder), ``prompt``, ``n_total`` (texts before dedup),
  ``n_unique``.

Per (image, class) pair the training stage needs:

* the foreground vector (:func:`foreground_vectors`): ``mode="code"`` (authors' code, default)
  ``0.5 * t(label) + 0.5 * mean_l t(fg_l)``, not re-normalised; ``mode="paper"`` the equal-weight
  mean of the L + 1 vectors (label and answers). A pair without fg rows (label-only ablation) gets
  ``t(label)`` in both modes.
* the background vectors (:func:`background_vectors`): [P, N_max, D] padded with zeros + a mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qaclims.store import atomic_path

log = logging.getLogger(__name__)

FG_MODES = ("code", "paper")
PAIR_KEYS = ["image_id", "class_id"]


# ---------------------------------------------------------------------- encoding


def l2_normalise(x: np.ndarray, what: str = "features") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if x.size and (not np.all(np.isfinite(norms)) or np.any(norms == 0)):
        raise ValueError(f"{what}: zero or non-finite vector(s) cannot be L2-normalised")
    return (x / norms).astype(np.float32)


def encode_corpus_texts(
    texts: Sequence[str],
    encode_text: Callable[[list[str]], Any],
    *,
    batch_size: int = 256,
    model_id: str = "",
) -> tuple[list[str], np.ndarray, int]:
    """Encode each distinct text once, ``batch_size`` texts per ``encode_text`` call.

    Returns ``(unique_texts, feats, n_saved)``: the distinct texts sorted, their features
    ([U, D] float32, L2-normalised), and how many encoder inputs deduplication saved
    (``len(texts) - U``). ``encode_text`` maps a list of strings to a [n, D] array (or tensor).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = [str(t) for t in texts]
    unique = sorted(set(texts))
    chunks = []
    for start in range(0, len(unique), batch_size):
        batch = unique[start:start + batch_size]
        out = encode_text(batch)
        if hasattr(out, "detach"):  # a torch tensor
            out = out.detach().float().cpu().numpy()
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise ValueError(f"encode_text returned shape {out.shape} for {len(batch)} texts")
        chunks.append(out)
    feats = (np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32))
    feats = l2_normalise(feats, f"text features of {model_id or 'the text encoder'}")
    saved = len(texts) - len(unique)
    log.info("encoded %d distinct texts of %d (%d encoder inputs saved by dedup) with %s",
             len(unique), len(texts), saved, model_id or "the text encoder")
    return unique, feats, saved


# ---------------------------------------------------------------------- storage


@dataclass
class TextFeatures:
    """Loaded ``text_features.h5``: distinct texts, their features, the encoder id."""

    texts: list[str]
    feats: np.ndarray
    model_id: str
    prompt: str = ""
    n_total: int = 0
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.feats):
            raise ValueError(f"{len(self.texts)} texts but {len(self.feats)} feature rows")
        self.index = {t: i for i, t in enumerate(self.texts)}

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        """Row indices of ``texts``; a text that was never encoded is a KeyError naming it."""
        try:
            return np.fromiter((self.index[t] for t in texts), dtype=np.int64, count=len(texts))
        except KeyError as err:
            raise KeyError(
                f"text {err.args[0]!r} is not in the text features (encoded with "
                f"{self.model_id!r}); was text_features.h5 built from this corpus?"
            ) from None

    def __getitem__(self, text: str) -> np.ndarray:
        return self.feats[self.rows([text])[0]]

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self.feats[self.rows(texts)]


def save_text_features(
    path: str | os.PathLike[str],
    texts: Sequence[str],
    feats: np.ndarray,
    *,
    model_id: str,
    prompt: str,
    n_total: int,
) -> None:
    import h5py

    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or len(texts) != feats.shape[0]:
        raise ValueError(f"{len(texts)} texts but features of shape {feats.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("texts", data=list(texts), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("feats", data=feats)
        f.attrs["model_id"] = model_id
        f.attrs["prompt"] = prompt
        f.attrs["n_total"] = int(n_total)
        f.attrs["n_unique"] = len(texts)


def load_text_features(path: str | os.PathLike[str], *, model_id: str | None = None
                       ) -> TextFeatures:
    """Read ``text_features.h5``; when ``model_id`` is given it must match the stored one."""
    import h5py

    with h5py.File(Path(path), "r") as f:
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in f["texts"][()]]
        feats = np.asarray(f["feats"][()], dtype=np.float32)
        stored = str(f.attrs["model_id"])
        prompt = str(f.attrs.get("prompt", ""))
        n_total = int(f.attrs.get("n_total", len(texts)))
    if model_id is not None and stored != model_id:
        raise ValueError(f"{path}: text features made by {stored!r}, expected {model_id!r}")
    if feats.ndim != 2:
        feats = feats.reshape(len(texts), -1)
    return TextFeatures(texts, feats, stored, prompt, n_total)


# ---------------------------------------------------------------------- per-pair vectors


def _as_features(feats: TextFeatures | Mapping[str, np.ndarray]) -> TextFeatures:
    if isinstance(feats, TextFeatures):
        return feats
    texts = list(feats)
    return TextFeatures(texts, np.stack([np.asarray(feats[t], np.float32) for t in texts]), "")


def _pair_codes(corpus: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    codes = corpus.groupby(PAIR_KEYS, sort=True).ngroup().to_numpy()
    keys = (corpus[PAIR_KEYS].drop_duplicates().sort_values(PAIR_KEYS, ignore_index=True))
    keys["class_id"] = keys["class_id"].astype("int64")
    return keys, codes


def _role_index(
    corpus: pd.DataFrame, tf: TextFeatures, role: str, codes: np.ndarray, n_pairs: int
) -> np.ndarray:
    """Per pair, the feature rows of its ``role`` texts in corpus order, [P, N_max], -1 padded."""
    is_role = corpus["role"].to_numpy() == role
    role_codes = codes[is_role]
    counts = np.bincount(role_codes, minlength=n_pairs)
    n_max = int(counts.max()) if n_pairs else 0
    index = np.full((n_pairs, n_max), -1, np.int64)
    if is_role.any():
        rows = tf.rows(corpus.loc[is_role, "text"].tolist())
        # position of each row within its pair, keeping corpus order
        order = np.argsort(role_codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.empty(len(role_codes), np.int64)
        slot[order] = np.arange(len(role_codes)) - starts[role_codes[order]]
        index[role_codes, slot] = rows
    return index


def _gather_sum(feats: np.ndarray, index: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``sum_j feats[index[p, j]]`` over the valid (>= 0) entries, [P, D] float64, in chunks of
    pairs so memory stays bounded (COCO: 240k pairs)."""
    padded = np.concatenate([feats.astype(np.float64), np.zeros((1, feats.shape[1]))])
    out = np.zeros((len(index), feats.shape[1]), np.float64)
    for s in range(0, len(index), chunk):
        idx = index[s:s + chunk]
        out[s:s + chunk] = padded[np.where(idx >= 0, idx, len(feats))].sum(axis=1)
    return out


def foreground_vectors(
    corpus: pd.DataFrame, feats: TextFeatures | Mapping[str, np.ndarray], mode: str = "code"
) -> tuple[pd.DataFrame, np.ndarray]:
    """``(pairs [image_id, class_id], vectors [P, D] float32)``, pairs sorted; see module doc."""
    if mode not in FG_MODES:
        raise ValueError(f"foreground mode must be one of {list(FG_MODES)}, got {mode!r}")
    tf = _as_features(feats)
    keys, codes = _pair_codes(corpus)
    P = len(keys)
    label_index = _role_index(corpus, tf, "label", codes, P)
    n_label = (label_index >= 0).sum(axis=1)
    if np.any(n_label != 1):
        i = int(np.flatnonzero(n_label != 1)[0])
        raise ValueError(
            f"pair ({keys.at[i, 'image_id']}, {keys.at[i, 'class_id']}) has {int(n_label[i])} "
            "label rows; expected exactly one"
        )
    label = tf.feats[label_index[:, 0]].astype(np.float64)
    fg_index = _role_index(corpus, tf, "fg", codes, P)
    fg_sum = _gather_sum(tf.feats, fg_index)
    n_fg = (fg_index >= 0).sum(axis=1).astype(np.float64)[:, None]
    if mode == "code":
        fg_mean = np.divide(fg_sum, n_fg, out=np.zeros_like(fg_sum), where=n_fg > 0)
        out = np.where(n_fg > 0, 0.5 * label + 0.5 * fg_mean, label)
    else:
        out = (label + fg_sum) / (1.0 + n_fg)
    return keys, out.astype(np.float32)


def background_index(
    corpus: pd.DataFrame, feats: TextFeatures | Mapping[str, np.ndarray]
) -> tuple[pd.DataFrame, np.ndarray]:
    """``(pairs, rows [P, N_max] int64)``: per pair the feature rows of its background texts in
    corpus order, padded with -1; pairs in the order of :func:`foreground_vectors`. The compact
    form for training on large datasets: COCO's ~240k pairs x 10 x 768 float32 would take 7 GB
    as vectors, this index 19 MB."""
    tf = _as_features(feats)
    keys, codes = _pair_codes(corpus)
    return keys, _role_index(corpus, tf, "bg", codes, len(keys))


def background_vectors(
    corpus: pd.DataFrame, feats: TextFeatures | Mapping[str, np.ndarray]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(pairs, vectors [P, N_max, D] float32 zero-padded, mask [P, N_max] bool)``, pairs in the
    same order as :func:`foreground_vectors`; background texts in corpus order."""
    tf = _as_features(feats)
    keys, index = background_index(corpus, tf)
    mask = index >= 0
    D = tf.dim if len(tf.texts) else 0
    out = np.zeros((*index.shape, D), np.float32)
    out[mask] = tf.feats[index[mask]]
    return keys, out, mask


def build_text_features_file(
    corpus_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    encode_text: Callable[[list[str]], Any],
    *,
    model_id: str,
    prompt: str,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The ``text_features`` rule: corpus.parquet -> text_features.h5 (every distinct text once).
    Returns counts for the log: total texts, distinct texts, encoder inputs saved."""
    texts = pd.read_parquet(corpus_path, columns=["text"])["text"].tolist()
    unique, feats, saved = encode_corpus_texts(texts, encode_text, batch_size=batch_size,
                                               model_id=model_id)
    save_text_features(out_path, unique, feats, model_id=model_id, prompt=prompt,
                       n_total=len(texts))
    return {"model_id": model_id, "n_total": len(texts), "n_unique": len(unique),
            "encoder_inputs_saved": saved, "dim": int(feats.shape[1]) if feats.size else 0}
