"""The synthetic VLP corpus as training data, and held-out quality of the demo's toy models.

The corpus (written by :func:`qaclims.data.synthetic.generate_vlp_corpus`) is a directory:

- ``corpus.h5``: ``images`` uint8 ``[N,S,S,3]`` and ``region_masks`` uint8 ``[N,S,S]`` (per pixel
  the ``region`` number of ``regions.parquet``; 0 = none);
- ``images.parquet``: ``index`` (row in the HDF5 arrays), ``image_id``, ``kind``
  (object / context / scene), ``split`` (train / heldout), ``caption``;
- ``regions.parquet``: ``index``, ``region``, ``role`` (object / context), ``class_name``,
  ``subtype``, ``text``, ``context_of``;
- ``qa.parquet``: ``index``, ``class_name``, ``template_id``, ``group``, ``question``, ``answer``.

Quality is always measured on the *saved* model, loaded through the loaders the pipeline uses
(:func:`qaclims.vlp.blip.load_blip_vqa`, :func:`qaclims.vlp.clip.load_clip`), on the held-out
split, so what is measured is what the pipeline gets:

- :func:`evaluate_vqa`: exact match (lower-case, stripped) of the decoded answer with the corpus
  answer, overall, per template group (fine / alias / object / scene), per template and per class,
  with the authors' decoding settings (beam 3, max length 10, min length 1). Questions are asked in
  batches of equal token length, so no padding is involved and every answer is the one the
  per-question protocol (method.md 2.4) gives.
- :func:`evaluate_clip`: object regions (pixels outside the region zeroed, mask prompt = region)
  against every object class text, context regions against every context text, and each object
  region's class text against the text of the context it co-occurs with.

This module imports no torch / transformers / open_clip at import time.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike[str]
LogFn = Callable[[str], None]

log = logging.getLogger(__name__)

#: The pipeline's CLIP text prompt (method.md 3: ``TEXT_PROMPT = 'a photo of {}.'``).
TEXT_PROMPT = "a photo of {}."
TRAIN_SPLIT = "train"
HELDOUT_SPLIT = "heldout"
VQA_GROUPS = ("fine", "alias", "object", "scene")


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


@dataclass
class VlpCorpus:
    """The whole corpus in memory (a few hundred MB at the default size)."""

    root: Path
    images: np.ndarray  # uint8 [N,S,S,3]
    region_masks: np.ndarray  # uint8 [N,S,S]
    image_table: Any  # pandas.DataFrame (images.parquet)
    regions: Any  # pandas.DataFrame (regions.parquet)
    qa: Any  # pandas.DataFrame (qa.parquet)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def split_indices(self, split: str) -> np.ndarray:
        t = self.image_table
        return np.sort(t.loc[t["split"] == split, "index"].to_numpy(dtype=np.int64))

    def qa_rows(self, split: str) -> Any:
        """QA rows whose image is in ``split``, in corpus order."""
        keep = set(self.split_indices(split).tolist())
        qa = self.qa
        return qa[qa["index"].isin(keep)].reset_index(drop=True)

    def region_rows(self, split: str, role: str | None = None) -> Any:
        keep = set(self.split_indices(split).tolist())
        r = self.regions
        r = r[r["index"].isin(keep)]
        if role is not None:
            r = r[r["role"] == role]
        return r.reset_index(drop=True)

    def texts(self) -> list[str]:
        """Every text of the corpus (captions, region texts, questions, answers)."""
        out: list[str] = []
        out += self.image_table["caption"].astype(str).tolist()
        out += self.regions["text"].astype(str).tolist()
        out += self.qa["question"].astype(str).tolist()
        out += self.qa["answer"].astype(str).tolist()
        return out


def load_corpus(root: PathLike) -> VlpCorpus:
    """Read a corpus directory (see the module docstring); checks the tables fit the arrays."""
    import h5py
    import pandas as pd

    root = Path(root)
    missing = [n for n in ("corpus.h5", "images.parquet", "regions.parquet", "qa.parquet")
               if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"VLP corpus {root} lacks {', '.join(missing)}")
    with h5py.File(root / "corpus.h5", "r") as f:
        images = f["images"][()]
        masks = f["region_masks"][()]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{root}/corpus.h5: images must be uint8 [N,S,S,3], got "
                         f"{images.dtype} {images.shape}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"{root}/corpus.h5: region_masks {masks.shape} do not match images "
                         f"{images.shape}")
    table = pd.read_parquet(root / "images.parquet")
    regions = pd.read_parquet(root / "regions.parquet")
    qa = pd.read_parquet(root / "qa.parquet")
    n = images.shape[0]
    for name, df in (("images", table), ("regions", regions), ("qa", qa)):
        idx = df["index"].to_numpy()
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{root}/{name}.parquet: index outside 0..{n - 1}")
    return VlpCorpus(root, images, masks, table, regions, qa)


def normalise_answer(text: str) -> str:
    return " ".join(str(text).lower().split())


def prompt(text: str, template: str = TEXT_PROMPT) -> str:
    """``text`` in the pipeline's CLIP prompt, unless it already is a sentence ("a photo of")."""
    t = str(text).strip()
    if t.lower().startswith("a photo of") or t.endswith("."):
        return t
    return template.format(t)


# ---------------------------------------------------------------------------------------------
# Image helpers (numpy / torch, shared by the trainers)
# ---------------------------------------------------------------------------------------------


def resize_uint8(images: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """``[N,S,S,3]`` / ``[N,S,S]`` uint8 -> side ``size`` with PIL (bicubic, or nearest for
    label maps): the same resize the loaders' ``preprocess`` applies to PIL images."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    out = np.empty((images.shape[0], size, size, *images.shape[3:]), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), resample))
    return out


def normalise_batch(images_u8: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """uint8 ``[n,S,S,3]`` (numpy or torch) -> float ``[n,3,S,S]`` normalised tensor."""
    import torch

    x = torch.as_tensor(images_u8).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


# ---------------------------------------------------------------------------------------------
# VQA quality
# ---------------------------------------------------------------------------------------------


def select_eval_rows(rows: Any, max_rows: int | None, seed: int) -> Any:
    """A deterministic subset (corpus order kept) of at most ``max_rows`` rows."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=max_rows, replace=False))
    return rows.iloc[pick].reset_index(drop=True)


def evaluate_vqa(
    model_dir: PathLike,
    corpus: VlpCorpus | PathLike,
    *,
    split: str = HELDOUT_SPLIT,
    max_questions: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    num_beams: int = 3,
    max_length: int = 10,
    min_length: int = 1,
    n_examples: int = 12,
    log_fn: LogFn | None = None,
) -> dict[str, Any]:
    """Exact match of a saved BLIP VQA on the ``split`` questions (see the module docstring)."""
    import time

    import torch

    from qaclims.vlp.blip import load_blip_vqa

    if not isinstance(corpus, VlpCorpus):
        corpus = load_corpus(corpus)
    t0 = time.perf_counter()
    vqa = load_blip_vqa(model_dir, num_beams=num_beams, max_length=max_length,
                        min_length=min_length)
    rows = select_eval_rows(corpus.qa_rows(split), max_questions, seed)
    if len(rows) == 0:
        raise ValueError(f"corpus {corpus.root} has no QA rows in split {split!r}")
    questions = rows["question"].astype(str).tolist()
    # Equal token length per batch: no padding, so batching cannot change any answer.
    lengths = [len(vqa.tokenizer(q, truncation=True, max_length=vqa.question_max_length)
                   ["input_ids"]) for q in questions]
    images = resize_uint8(corpus.images, vqa.image_size)
    order = sorted(range(len(rows)), key=lambda i: (lengths[i], i))
    predictions: list[str] = [""] * len(rows)
    img_index = rows["index"].to_numpy()
    done = 0
    start = 0
    while start < len(order):
        end = start
        while (end < len(order) and end - start < batch_size
               and lengths[order[end]] == lengths[order[start]]):
            end += 1
        part = order[start:end]
        pixels = normalise_batch(images[img_index[part]], vqa.mean, vqa.std)
        with torch.inference_mode():
            answers = vqa.answer(pixels, [questions[i] for i in part])
        for i, a in zip(part, answers, strict=True):
            predictions[i] = a
        done += len(part)
        start = end
        if log_fn is not None and (done == len(order) or done % (batch_size * 10) < len(part)):
            log_fn(f"eval vqa: {done}/{len(order)} questions")
    seconds = time.perf_counter() - t0

    truth = [normalise_answer(a) for a in rows["answer"].astype(str)]
    pred = [normalise_answer(p) for p in predictions]
    correct = np.array([p == t for p, t in zip(pred, truth, strict=True)])

    def acc(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    groups = rows["group"].astype(str).to_numpy()
    templates = rows["template_id"].astype(str).to_numpy()
    classes = rows["class_name"].astype(str).to_numpy()
    errors = Counter((t, tr, p) for t, tr, p, c in zip(templates, truth, pred, correct,
                                                        strict=True) if not c)
    return {
        "split": split,
        "n_questions": int(len(rows)),
        "n_images": int(len(set(img_index.tolist()))),
        "exact_match": float(correct.mean()),
        "per_group": {g: acc(groups == g) for g in sorted(set(groups))},
        "per_template": {t: acc(templates == t) for t in sorted(set(templates))},
        "per_class": {c: acc(classes == c) for c in sorted(set(classes))},
        "min_group_exact_match": float(min(acc(groups == g) for g in set(groups))),
        "frequent_errors": [
            {"template_id": t, "answer": tr, "predicted": p, "count": n}
            for (t, tr, p), n in errors.most_common(n_examples)
        ],
        "decoding": {"num_beams": num_beams, "max_length": max_length, "min_length": min_length,
                     "question_start_token_id": vqa.question_start_token_id},
        "model_id": vqa.model_id,
        "eval_seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------------------------------
# CLIP quality
# ---------------------------------------------------------------------------------------------


def masked_inputs(images_u8: np.ndarray, region_masks: np.ndarray, regions: Sequence[int],
                  mean: Sequence[float], std: Sequence[float], *, complement: bool = False
                  ) -> tuple[Any, Any]:
    """Pixels outside ``region`` set to zero (in normalised space, as the pipeline's
    ``P * img`` does) and the region as the ``[n,1,S,S]`` mask prompt. ``complement``: keep
    everything *but* the region instead (the pipeline's background input ``(1-P) * img``)."""
    import torch

    x = normalise_batch(images_u8, mean, std)
    inside = region_masks == np.asarray(regions, dtype=region_masks.dtype).reshape(-1, 1, 1)
    m = torch.from_numpy(~inside if complement else inside).float()[:, None]
    return x * m, m


def region_vocabulary(corpus: VlpCorpus) -> tuple[list[str], list[str], list[str]]:
    """(object class names, object sub-type texts, context texts), each sorted.

    Object regions are named by ``class_name`` (sub-type in ``subtype``); context regions by
    their ``text`` (the answer word: "track" for the rails region), ``class_name`` being empty.
    """
    r = corpus.regions
    obj = r[r["role"] == "object"]
    ctx = r[r["role"] == "context"]
    return (sorted(set(obj["class_name"].dropna().astype(str))),
            sorted(set(obj["subtype"].dropna().astype(str))),
            sorted(set(ctx["text"].dropna().astype(str))))


def class_context_pairs(corpus: VlpCorpus) -> dict[str, str]:
    """Object class -> the text of the context it co-occurs with (from ``context_of``)."""
    r = corpus.regions
    r = r[(r["role"] == "context") & r["context_of"].notna()]
    out: dict[str, str] = {}
    for text, of in zip(r["text"].astype(str), r["context_of"].astype(str), strict=True):
        if of:
            out.setdefault(of, text)
    return out


def evaluate_clip(
    model: Any,
    corpus: VlpCorpus | PathLike,
    *,
    split: str = HELDOUT_SPLIT,
    batch_size: int = 512,
    max_regions: int | None = None,
    seed: int = 0,
    text_prompt: str = TEXT_PROMPT,
    log_fn: LogFn | None = None,
) -> dict[str, Any]:
    """Held-out retrieval quality of a loaded :class:`~qaclims.vlp.clip.MaskPromptClip`.

    - ``object_class_accuracy``: object regions, argmax over every object class text
      ``text_prompt.format(class text)``;
    - ``object_subtype_accuracy``: object regions, argmax over every sub-type text;
    - ``context_accuracy``: context regions, argmax over every context text;
    - ``object_vs_context``: share of object regions whose class text scores above the text of
      the context the class co-occurs with (``context_of``);
    - ``background_vs_object``: the same pair of texts for the *complement* of each object region
      (mask prompt and pixels = everything else): the context text should win;
    - ``*_pixels_only``: the same with the all-ones mask prompt, the region given by the masked
      pixels alone;
    - ``object_class_accuracy_prompt_only``: blank pixels under the region's prompt - should
      be near chance: a model that names the object from the prompt's shape lets RITC shrink
      the CAM to ~0 and still match.
    """
    import time

    import torch

    if not isinstance(corpus, VlpCorpus):
        corpus = load_corpus(corpus)
    t0 = time.perf_counter()
    size = model.image_size
    images = resize_uint8(corpus.images, size)
    masks = resize_uint8(corpus.region_masks, size, nearest=True)
    classes, subtypes, contexts = region_vocabulary(corpus)
    obj = select_eval_rows(corpus.region_rows(split, "object"), max_regions, seed)
    ctx = select_eval_rows(corpus.region_rows(split, "context"), max_regions, seed)
    class_texts = [prompt(c, text_prompt) for c in classes]
    context_texts = [prompt(c, text_prompt) for c in contexts]
    subtype_texts = [prompt(s, text_prompt) for s in subtypes]
    class_of_context = class_context_pairs(corpus)

    with torch.inference_mode():
        def text_feats(texts: list[str]) -> Any:
            f = model.encode_text(texts).float()
            return f / f.norm(dim=-1, keepdim=True)

        t_cls, t_ctx, t_sub = text_feats(class_texts), text_feats(context_texts), (
            text_feats(subtype_texts) if subtype_texts else None)

        def image_feats(rows: Any, complement: bool = False, loose: bool = False,
                        blank: bool = False) -> Any:
            feats = []
            idx = rows["index"].to_numpy()
            reg = rows["region"].to_numpy()
            for s in range(0, len(rows), batch_size):
                x, m = masked_inputs(images[idx[s:s + batch_size]],
                                     masks[idx[s:s + batch_size]], reg[s:s + batch_size],
                                     model.mean, model.std, complement=complement)
                if blank:
                    x = torch.zeros_like(x)
                f = model.encode_image(x, torch.ones_like(m) if loose else m).float()
                feats.append(f / f.norm(dim=-1, keepdim=True))
            return torch.cat(feats) if feats else torch.zeros(0, t_cls.shape[1])

        f_obj = image_feats(obj)
        f_bg = image_feats(obj, complement=True)
        # The region told by the pixels alone (all-ones prompt): what RITC's gradient, which
        # reaches the CAM only through the masked pixels, needs the model to see.
        f_loose = image_feats(obj, loose=True)
        f_bg_loose = image_feats(obj, complement=True, loose=True)
        # Blank pixels under the exact prompt: should *not* name the class (chance level) -
        # otherwise RITC is satisfied by a CAM that is ~0 everywhere.
        f_blank = image_feats(obj, blank=True)
        f_ctx = image_feats(ctx)
    out: dict[str, Any] = {"split": split, "n_object_regions": int(len(obj)),
                           "n_context_regions": int(len(ctx)), "object_classes": classes,
                           "contexts": contexts, "text_prompt": text_prompt}
    if len(obj):
        s_cls = f_obj @ t_cls.T
        truth = np.array([classes.index(c) for c in obj["class_name"].astype(str)])
        pred = s_cls.argmax(1).numpy()
        out["object_class_accuracy"] = float((pred == truth).mean())
        out["object_class_per_class"] = {
            c: float((pred[truth == k] == k).mean()) for k, c in enumerate(classes)
            if (truth == k).any()}
        out["object_class_confusions"] = _confusions(truth, pred, classes)
        if t_sub is not None and obj["subtype"].notna().all():
            st = np.array([subtypes.index(s) for s in obj["subtype"].astype(str)])
            out["object_subtype_accuracy"] = float(((f_obj @ t_sub.T).argmax(1).numpy()
                                                    == st).mean())
        # Class text vs the text of the context the class co-occurs with.
        pairs = [(k, class_of_context.get(c)) for k, c in zip(truth, obj["class_name"]
                                                               .astype(str), strict=True)]
        ok = [(k, contexts.index(cx)) for k, cx in pairs if cx in contexts]
        if ok:
            ki = torch.tensor([k for k, _ in ok])
            ci = torch.tensor([c for _, c in ok])
            sel = torch.tensor([cx in contexts for _, cx in pairs])
            s_c = (f_obj[sel] * t_cls[ki]).sum(1)
            s_x = (f_obj[sel] * t_ctx[ci]).sum(1)
            out["object_vs_context"] = float((s_c > s_x).float().mean())
            # The background analogue (what BRC relies on): everything but the object scores
            # the co-occurring context text above the object's class text.
            b_c = (f_bg[sel] * t_cls[ki]).sum(1)
            b_x = (f_bg[sel] * t_ctx[ci]).sum(1)
            out["background_vs_object"] = float((b_x > b_c).float().mean())
            out["object_class_accuracy_pixels_only"] = float(
                ((f_loose @ t_cls.T).argmax(1).numpy() == truth).mean())
            out["object_class_accuracy_prompt_only"] = float(
                ((f_blank @ t_cls.T).argmax(1).numpy() == truth).mean())
            out["object_vs_context_pixels_only"] = float(
                ((f_loose[sel] * t_cls[ki]).sum(1) > (f_loose[sel] * t_ctx[ci]).sum(1))
                .float().mean())
            out["background_vs_object_pixels_only"] = float(
                ((f_bg_loose[sel] * t_ctx[ci]).sum(1) > (f_bg_loose[sel] * t_cls[ki]).sum(1))
                .float().mean())
    if len(ctx):
        truth_c = np.array([contexts.index(c) for c in ctx["text"].astype(str)])
        pred_c = (f_ctx @ t_ctx.T).argmax(1).numpy()
        out["context_accuracy"] = float((pred_c == truth_c).mean())
        out["context_per_class"] = {
            c: float((pred_c[truth_c == k] == k).mean()) for k, c in enumerate(contexts)
            if (truth_c == k).any()}
        out["context_confusions"] = _confusions(truth_c, pred_c, contexts)
    out["model_id"] = getattr(model, "model_id", "")
    out["eval_seconds"] = round(time.perf_counter() - t0, 2)
    if log_fn is not None:
        log_fn(f"eval clip: {len(obj)} object regions, {len(ctx)} context regions in "
               f"{out['eval_seconds']} s")
    return out


def _confusions(truth: np.ndarray, pred: np.ndarray, names: Sequence[str], n: int = 8
                ) -> list[dict[str, Any]]:
    c = Counter((int(t), int(p)) for t, p in zip(truth, pred, strict=True) if t != p)
    return [{"truth": names[t], "predicted": names[p], "count": k} for (t, p), k in
            c.most_common(n)]


# ---------------------------------------------------------------------------------------------
# Shared training utilities
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
          schedule: str = "cosine", min_lr_ratio: float = 0.0) -> float:
    """Learning rate for 0-based ``step``: linear warm-up, then cosine or linear decay."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown schedule {schedule!r} (cosine, linear, constant)")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * t))
    elif schedule == "linear":
        f = 1 - t
    else:
        f = 1.0
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * f)


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def directory_bytes(path: PathLike) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return int(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()))


class TrainLog:
    """Progress lines to a log file (appended, flushed per line) and to the logging module."""

    def __init__(self, path: PathLike | None = None, echo: LogFn | None = None):
        self.path = Path(path) if path is not None else None
        self.echo = echo
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a") if self.path is not None else None  # noqa: SIM115

    def __call__(self, msg: str) -> None:
        log.info(msg)
        if self._fh is not None:
            self._fh.write(msg + "\n")
            self._fh.flush()
        if self.echo is not None:
            self.echo(msg)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def group_counts(values: Sequence[str]) -> dict[str, int]:
    d: dict[str, int] = defaultdict(int)
    for v in values:
        d[str(v)] += 1
    return dict(sorted(d.items()))
