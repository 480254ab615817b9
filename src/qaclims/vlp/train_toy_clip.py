"""Train the demo's toy mask-prompt CLIP from scratch on the synthetic VLP corpus (CPU, minutes).

A :class:`~qaclims.vlp.clip.MaskPromptClip` built by :func:`qaclims.vlp.toy_models.build_toy_clip`
(open_clip ``CLIP`` from a custom config: 64 px, patch 8, width 64, 2 + 2 layers, context 16, a
word vocabulary of the corpus, plus OVSeg's learnable mask embeddings) learns, contrastively, on
the ``train`` split:

- **whole images** (all-ones mask prompt) with their captions;
- **object regions**: pixels outside the object's region zeroed (in normalised space, like the
  pipeline's ``P * img``), mask prompt = the region; texts: the class name, the sub-type, and the
  foreground texts the pipeline derives from the VQA answers of that object (method.md 3.1: the
  answer, with the class name appended unless it names the class) - all in the pipeline's prompt
  ``"a photo of {}."``;
- **context regions** the same way, with the context word ("a photo of water.");
- optionally (``mix_background``) the **complement of an object region** (what the pipeline
  feeds as background) with that object's background answers ("a photo of water.", "a photo of
  harbor.", "a photo of aeroplane." for the plane next to it), the texts BRC uses;
- optionally (``mix_blend``) **blends**: a random subset of an image's object and context
  regions, each at a random strength, the mask blurred like an upsampled CAM - what RITC feeds
  while its CAM is still wrong (``P * img`` with part object, part context). The target is a
  soft distribution over the class and context texts, each text's share being the mask's mass
  on its pixels, objects weighted ``blend_object_salience`` times, plus an even share for a
  constant mass of "nothing" (``blend_blank``) so faint regions read as hard to name
  (:func:`blend_targets`). Web-scale CLIP sees every mixture of things and grades
  its similarities by what is visible; a toy CLIP trained on clean regions only has no such
  grading, and RITC's gradient then finds CAMs that satisfy it without covering the object
  (issue #5: optimising a CAM directly under the loss lowered its mIoU).

Trap (environment.md): a batch holds few distinct texts, so the plain CLIP loss (diagonal
targets) would treat identical captions as negatives. Texts are deduplicated per batch and the
loss is multi-positive (SupCon-style mean log-likelihood of the positives) in both directions;
a sample's positives are *all* texts of its positive set present in the batch (a sailboat region
is a positive for "a photo of boat." and "a photo of sailboat."). Every object class and context
text joins every batch, so each region also meets every class text as a negative: a class-level
softmax, which is how the model is used (argmax over class texts).

Determinism: ``max_steps`` decides; past ``max_minutes`` the training fails (qaclims.determinism).
Resumable: every ``checkpoint_every`` steps, on SIGTERM and before the time guard fails, the loop
state is saved; a rerun continues bit for bit (:mod:`qaclims.vlp.toy_resume`).
The model is saved with :func:`~qaclims.vlp.toy_models.save_toy_clip` (open_clip config +
tokenizer + OVSeg-style checkpoint) and evaluated after loading it back with
:func:`~qaclims.vlp.clip.load_clip` (:func:`qaclims.vlp.toy_quality.evaluate_clip`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from qaclims.cam.checkpoint import ResumeState
from qaclims.determinism import configure_torch
from qaclims.vlp.toy_quality import (
    TEXT_PROMPT,
    TRAIN_SPLIT,
    LogFn,
    TrainLog,
    VlpCorpus,
    count_parameters,
    directory_bytes,
    evaluate_clip,
    load_corpus,
    lr_at,
    normalise_batch,
    prompt,
    region_vocabulary,
    resize_uint8,
)
from qaclims.vlp.toy_resume import LoopCheckpoint, toy_resume_state

PathLike = str | os.PathLike[str]
SAMPLE_KINDS = ("image", "object", "context", "background")


@dataclass(frozen=True)
class ToyClipSettings:
    """Every knob of the toy CLIP training (config: ``models.toy.clip.<field>``)."""

    seed: int = 0
    threads: int = 2
    # Model (environment.md prototype: ~0.23M parameters).
    image_size: int = 64
    patch_size: int = 8
    width: int = 64
    layers: int = 2
    text_layers: int = 2
    heads: int = 4
    context_length: int = 16
    embed_dim: int = 64
    mask_prompt_depth: int = 3
    # Data: share of each sample kind in a batch (whole image + caption, object region, context
    # region) and which texts an object region is a positive for.
    mix_image: float = 0.2
    mix_object: float = 0.5
    mix_context: float = 0.3
    # Everything *but* an object (the pipeline's background input) with that object's
    # background texts: its surrounding-object and scene answers, minus the class name - the
    # set BRC contrasts the background with (method.md 3.2).
    mix_background: float = 0.15
    # Blends of an image's regions with soft targets (see the module doc): each region kept
    # with probability ``blend_keep`` at a strength in [blend_min_strength, 1], the mask then
    # box-blurred over 1 to ``blend_max_blur`` pixels (a CAM upsampled from stride 16).
    mix_blend: float = 0.4
    blend_keep: float = 0.5
    blend_min_strength: float = 0.2
    blend_max_blur: int = 9
    # How a blend's soft target weighs what is visible. Web-scale CLIP is object-centric: a
    # photo of a horse on a beach is "a photo of a horse", although sand and sea fill most of
    # it. So an object's mass counts ``blend_object_salience`` times a context's. And a faint
    # region is hard to name: ``blend_blank`` x the image area is a mass of "nothing" that
    # spreads its share evenly over the texts. Area-proportional targets (1, 0) make the
    # baseline's broad CAM read as its context and a blank map beat it; the RITC loss then
    # shrinks every map instead of moving it onto the object (issue #5 notes).
    blend_object_salience: float = 24.0
    blend_blank: float = 0.05
    # Share of region samples whose mask prompt is the whole image (pixels still masked): RITC
    # feeds CLIP a loose prompt (every patch with a CAM value above 10 % of its max) over soft
    # ``P * img`` pixels, so the model must read the region from the pixels, not only from the
    # prompt. With exact prompts only, it learns the prompt shortcut and is blind to pixels.
    loose_prompt: float = 0.5
    # Share of region samples whose mask prompt is the region's bounding box grown by one patch.
    # Exact silhouettes as prompts let the model name an object from the prompt's shape alone,
    # even over blank pixels; RITC would then be satisfied by a CAM that is ~0 everywhere
    # (its FAT mask is relative to the CAM's max). The rest of the samples get exact prompts.
    box_prompt: float = 0.5
    object_texts: tuple[str, ...] = ("class", "subtype", "fg")
    text_prompt: str = TEXT_PROMPT
    # Optimisation.
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    max_steps: int = 1000
    max_minutes: float = 60.0
    log_every: int = 50
    # Steps between resumable states (0: only on SIGTERM / the time guard); result-neutral.
    checkpoint_every: int = 100
    # Evaluation (held-out split).
    eval_split: str = "heldout"
    eval_max_regions: int | None = None
    eval_batch_size: int = 512

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ToyClipSettings:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown toy CLIP setting(s) {unknown}; known: {sorted(known)}")
        if "object_texts" in data:
            data["object_texts"] = tuple(data["object_texts"])
        shares = [data.get(k, getattr(cls, k)) for k in ("loose_prompt", "box_prompt")]
        if not all(0 <= v <= 1 for v in shares) or sum(shares) > 1:
            raise ValueError(f"loose_prompt, box_prompt: expected shares in [0, 1] summing to "
                             f"<= 1, got {shares}")
        if not 0 < data.get("blend_keep", cls.blend_keep) <= 1:
            raise ValueError(f"blend_keep: expected a probability in (0, 1], got "
                             f"{data['blend_keep']!r}")
        if not 0 <= data.get("blend_min_strength", cls.blend_min_strength) <= 1:
            raise ValueError(f"blend_min_strength: expected a value in [0, 1], got "
                             f"{data['blend_min_strength']!r}")
        if not data.get("blend_object_salience", cls.blend_object_salience) > 0:
            raise ValueError(f"blend_object_salience: expected a weight > 0, got "
                             f"{data['blend_object_salience']!r}")
        if not 0 <= data.get("blend_blank", cls.blend_blank) < 1:
            raise ValueError(f"blend_blank: expected a share of the image area in [0, 1), got "
                             f"{data['blend_blank']!r}")
        if int(data.get("blend_max_blur", cls.blend_max_blur)) < 1:
            raise ValueError(f"blend_max_blur: expected >= 1 pixel, got "
                             f"{data['blend_max_blur']!r}")
        bad = set(data.get("object_texts", ())) - {"class", "subtype", "fg"}
        if bad:
            raise ValueError(f"object_texts: unknown source(s) {sorted(bad)} "
                             "(class, subtype, fg)")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["object_texts"] = list(self.object_texts)
        return d


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


@dataclass
class ClipSamples:
    """All training samples of one kind: image rows, region values (0 = whole image) and, per
    sample, the ids of its positive texts (into ``ClipData.texts``)."""

    kind: str
    index: np.ndarray  # int64 [n] rows of the image arrays
    region: np.ndarray  # int64 [n]; 0 = whole image, no mask
    positives: list[tuple[int, ...]]
    complement: bool = False  # the sample is everything *but* the region

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class ClipData:
    texts: list[str]  # every training text, id = position
    vocab_ids: list[int]  # object class + context texts (join every batch)
    n_object_texts: int  # the first n_object_texts of vocab_ids are the object classes
    samples: dict[str, ClipSamples]
    images: Any  # uint8 tensor [N,S,S,3] at the model's size
    masks: Any  # uint8 tensor [N,S,S]
    # int64 tensor [N, 256]: per image and region value, the text id of the region's class or
    # context text (-1: no such region); what a blend's soft target is made of.
    region_text: Any = None


def object_positive_texts(corpus: VlpCorpus, rows: Any, sources: tuple[str, ...],
                          text_prompt: str) -> list[list[str]]:
    """Per object region row: its positive texts (prompted), in a stable order."""
    from qaclims.qape.corpus import fg_answer_text, synonyms_of

    # Keyed by (image, class): an image never holds two objects of one class, and the questions
    # name the class, not the region.
    fg: dict[tuple[int, str], list[str]] = {}
    if "fg" in sources:
        qa = corpus.qa
        qa = qa[qa["group"].isin(("fine", "alias"))]
        for i, cls, ans in zip(qa["index"].to_numpy(), qa["class_name"].astype(str),
                               qa["answer"].astype(str), strict=True):
            fg.setdefault((int(i), cls), []).append(fg_answer_text(ans, cls, synonyms_of(cls)))
    out = []
    for i, cls, sub in zip(rows["index"].to_numpy(), rows["class_name"].astype(str),
                           rows["subtype"], strict=True):
        words: list[str] = []
        if "class" in sources:
            words.append(cls)
        if "subtype" in sources and isinstance(sub, str) and sub:
            words.append(sub)
        if "fg" in sources:
            words += fg.get((int(i), cls), [])
        out.append([prompt(w, text_prompt) for w in dict.fromkeys(words)])
    return out


def background_positive_texts(corpus: VlpCorpus, rows: Any, text_prompt: str
                              ) -> list[list[str]]:
    """Per object region row: the prompted background answers of its (image, class) - the
    surrounding-object and scene templates, deduplicated, minus the class name itself."""
    qa = corpus.qa
    qa = qa[qa["group"].isin(("object", "scene"))]
    bg: dict[tuple[int, str], list[str]] = {}
    for i, cls, ans in zip(qa["index"].to_numpy(), qa["class_name"].astype(str),
                           qa["answer"].astype(str), strict=True):
        if ans != cls:
            bg.setdefault((int(i), cls), []).append(ans)
    return [[prompt(a, text_prompt) for a in dict.fromkeys(bg.get((int(i), str(c)), []))]
            for i, c in zip(rows["index"].to_numpy(), rows["class_name"], strict=True)]


def build_clip_data(corpus: VlpCorpus, s: ToyClipSettings) -> ClipData:
    """Training samples of the train split and the text table."""
    import torch

    texts: dict[str, int] = {}

    def tid(t: str) -> int:
        return texts.setdefault(t, len(texts))

    classes, _, contexts = region_vocabulary(corpus)
    vocab_ids = [tid(prompt(c, s.text_prompt)) for c in classes]
    vocab_ids += [tid(prompt(c, s.text_prompt)) for c in contexts]

    train = corpus.split_indices(TRAIN_SPLIT)
    table = corpus.image_table.set_index("index").loc[train]
    samples: dict[str, ClipSamples] = {}
    samples["image"] = ClipSamples(
        "image", train.astype(np.int64), np.zeros(len(train), np.int64),
        [(tid(str(c)),) for c in table["caption"]])
    obj = corpus.region_rows(TRAIN_SPLIT, "object")
    pos = object_positive_texts(corpus, obj, s.object_texts, s.text_prompt)
    samples["object"] = ClipSamples(
        "object", obj["index"].to_numpy(np.int64), obj["region"].to_numpy(np.int64),
        [tuple(tid(t) for t in p) for p in pos])
    ctx = corpus.region_rows(TRAIN_SPLIT, "context")
    samples["context"] = ClipSamples(
        "context", ctx["index"].to_numpy(np.int64), ctx["region"].to_numpy(np.int64),
        [(tid(prompt(str(t), s.text_prompt)),) for t in ctx["text"]])
    if s.mix_background > 0:
        bg = background_positive_texts(corpus, obj, s.text_prompt)
        keep = [k for k, p in enumerate(bg) if p]
        samples["background"] = ClipSamples(
            "background", obj["index"].to_numpy(np.int64)[keep],
            obj["region"].to_numpy(np.int64)[keep],
            [tuple(tid(t) for t in bg[k]) for k in keep], complement=True)
    region_text = np.full((len(corpus.images), 256), -1, np.int64)
    region_text[obj["index"].to_numpy(np.int64), obj["region"].to_numpy(np.int64)] = [
        tid(prompt(str(c), s.text_prompt)) for c in obj["class_name"]]
    region_text[ctx["index"].to_numpy(np.int64), ctx["region"].to_numpy(np.int64)] = [
        tid(prompt(str(t), s.text_prompt)) for t in ctx["text"]]
    if s.mix_blend > 0:
        samples["blend"] = ClipSamples("blend", train.astype(np.int64),
                                       np.zeros(len(train), np.int64), [() for _ in train])
    images = torch.from_numpy(resize_uint8(corpus.images, s.image_size))
    masks = torch.from_numpy(resize_uint8(corpus.region_masks, s.image_size, nearest=True))
    return ClipData(list(texts), vocab_ids, len(classes), samples, images, masks,
                    torch.from_numpy(region_text))


def batch_counts(batch_size: int, mix: dict[str, float], available: dict[str, int]
                 ) -> dict[str, int]:
    """Samples per kind in a batch (largest remainder; kinds without samples get none)."""
    w = {k: v for k, v in mix.items() if v > 0 and available.get(k, 0) > 0}
    if not w:
        raise ValueError("no training samples of any kind with a positive mix weight")
    total = sum(w.values())
    raw = {k: batch_size * v / total for k, v in w.items()}
    out = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[:batch_size
                                                                        - sum(out.values())]:
        out[k] += 1
    return out


class _Sampler:
    """Epoch-wise shuffled streams per sample kind, one seeded generator."""

    def __init__(self, sizes: dict[str, int], gen: Any) -> None:
        import torch

        self.gen = gen
        self.sizes = sizes
        self.perm = {k: torch.randperm(n, generator=gen) for k, n in sizes.items() if n}
        self.cursor = dict.fromkeys(self.perm, 0)

    def state_dict(self) -> dict[str, Any]:
        """The streams' permutations and cursors (the generator is saved by its owner)."""
        return {"perm": dict(self.perm), "cursor": dict(self.cursor)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same sample kinds and sizes)."""
        sizes = {k: len(v) for k, v in d["perm"].items()}
        if sizes != {k: n for k, n in self.sizes.items() if n}:
            raise ValueError(f"sampler state of other samples: {sizes}, expected {self.sizes}")
        self.perm = dict(d["perm"])
        self.cursor = {k: int(v) for k, v in d["cursor"].items()}

    def take(self, kind: str, n: int) -> Any:
        import torch

        parts = []
        while n > 0:
            p, c = self.perm[kind], self.cursor[kind]
            k = min(n, len(p) - c)
            parts.append(p[c:c + k])
            self.cursor[kind] = c + k
            n -= k
            if self.cursor[kind] >= len(p):
                self.perm[kind] = torch.randperm(self.sizes[kind], generator=self.gen)
                self.cursor[kind] = 0
        return torch.cat(parts)


def multi_positive_loss(img: Any, txt: Any, pos: Any, logit_scale: Any) -> Any:
    """Symmetric multi-positive contrastive loss.

    ``img [B,D]``, ``txt [U,D]`` L2-normalised, ``pos [B,U]`` bool (every row has a positive).
    Image -> text: mean over the row's positives of ``log softmax``; text -> image the same over
    columns that have a positive. Identical texts never appear twice (deduplicated), so no
    positive is ever treated as a negative.
    """
    import torch

    logits = logit_scale * img @ txt.T
    posf = pos.float()
    lp_i = torch.log_softmax(logits, dim=1)
    loss_i = -((lp_i * posf).sum(1) / posf.sum(1)).mean()
    cols = pos.any(0)
    lp_t = torch.log_softmax(logits[:, cols].T, dim=1)
    pt = posf[:, cols].T
    loss_t = -((lp_t * pt).sum(1) / pt.sum(1)).mean()
    return 0.5 * (loss_i + loss_t)


def blend_masks(masks: Any, region_text: Any, gen: Any, keep: float, min_strength: float,
                max_blur: int) -> Any:
    """Soft blend masks ``[B,S,S]`` in [0, 1] for region maps ``masks`` [B,S,S] (uint8).

    Every region with a text (``region_text`` [B,256] >= 0) is kept with probability ``keep`` at
    a strength drawn from [min_strength, 1] (at least one region per image: the likeliest
    draw); the result is box-blurred with an odd kernel of 1..``max_blur`` pixels per sample.
    """
    import torch
    import torch.nn.functional as F

    B = masks.shape[0]
    present = torch.zeros(B, 256, dtype=torch.bool)
    present.scatter_(1, masks.reshape(B, -1).long(), True)
    present &= region_text >= 0
    u = torch.rand(B, 256, generator=gen)
    kept = present & (u < keep)
    none = ~kept.any(1)
    first = torch.where(present, u, torch.full_like(u, 2.0)).argmin(1)
    kept[none, first[none]] = True
    strength = min_strength + (1 - min_strength) * torch.rand(B, 256, generator=gen)
    w = torch.where(kept, strength, torch.zeros_like(strength))
    m = torch.gather(w, 1, masks.reshape(B, -1).long()).view(masks.shape)
    sizes = torch.randint(0, (max_blur + 1) // 2, (B,), generator=gen) * 2 + 1
    out = torch.empty_like(m)
    for i in range(B):
        k = int(sizes[i])
        out[i] = m[i] if k == 1 else F.avg_pool2d(m[i][None, None], k, stride=1, padding=k // 2,
                                                  count_include_pad=False)[0, 0]
    return out


def blend_targets(weights: Any, text_map: Any, columns: list[int],
                  salience: Any = None, blank: float = 0.0) -> Any:
    """``[B, len(columns)]`` soft targets: the share of each mask's mass ``weights`` [B,S,S] on
    the pixels whose region text (``text_map`` [B,S,S], -1 none) is each column's text id.

    ``salience`` [len(columns)] (default all 1) multiplies each column's mass; ``blank`` x the
    number of pixels is a mass of "nothing" whose share goes evenly to every column.
    """
    import torch

    B = weights.shape[0]
    col = {t: j for j, t in enumerate(columns)}
    flat = text_map.reshape(B, -1).long()
    # text id -> column; ids that are no column (and -1) go to a dropped extra column
    lookup = torch.full((max(int(max(columns)), int(flat.max())) + 1,), len(columns),
                        dtype=torch.long)
    for t, j in col.items():
        lookup[t] = j
    flat = torch.where(flat >= 0, lookup[flat.clamp(min=0)], torch.full_like(flat, len(columns)))
    q = torch.zeros(B, len(columns) + 1)
    q.scatter_add_(1, flat, weights.reshape(B, -1).float())
    q = q[:, :-1]
    if salience is not None:
        q = q * torch.as_tensor(salience, dtype=q.dtype)
    q = q + blank * weights[0].numel() / len(columns)
    return q / q.sum(1, keepdim=True).clamp(min=1e-8)


def soft_target_loss(img: Any, txt: Any, target: Any, logit_scale: Any) -> Any:
    """Cross-entropy of the image -> text softmax against soft targets ``target`` [B,U]."""
    import torch

    return -(target * torch.log_softmax(logit_scale * img @ txt.T, dim=1)).sum(1).mean()


def grown_boxes(masks: Any, grow: int) -> Any:
    """Each ``[B,1,S,S]`` mask's bounding box, grown by ``grow`` pixels on every side (an
    empty mask stays empty)."""
    import torch
    import torch.nn.functional as F

    rows = masks.amax(dim=3) > 0                               # [B,1,S]
    cols = masks.amax(dim=2) > 0

    def span(occ: Any) -> Any:                                 # first..last occupied index
        fwd = torch.cummax(occ.int(), dim=-1).values
        bwd = torch.cummax(occ.int().flip(-1), dim=-1).values.flip(-1)
        return (fwd & bwd).float()

    box = span(rows)[..., :, None] * span(cols)[..., None, :]
    if grow > 0:
        box = F.max_pool2d(box, 2 * grow + 1, stride=1, padding=grow)
    return box


def _assemble_batch(data: ClipData, picks: dict[str, Any], gen: Any, mean, std,
                    loose_prompt: float = 0.0, box_prompt: float = 0.0, patch_size: int = 8
                    ) -> tuple[Any, Any, list[int], Any]:
    """Masked images, mask prompts, the batch's text ids (deduplicated, vocabulary included)
    and ``pos``. A ``loose_prompt`` share of samples gets the all-ones prompt, a ``box_prompt``
    share the region's bounding box grown by a patch, the rest the exact region."""
    import torch

    idx, reg, comp, positives = [], [], [], []
    for kind, sel in picks.items():
        if kind == "blend":
            continue
        smp = data.samples[kind]
        sel_np = sel.numpy()
        idx.append(torch.from_numpy(smp.index[sel_np]))
        reg.append(torch.from_numpy(smp.region[sel_np]))
        comp.append(torch.full((len(sel_np),), smp.complement))
        positives += [smp.positives[j] for j in sel_np]
    idx_t = torch.cat(idx)
    reg_t = torch.cat(reg)
    comp_t = torch.cat(comp).view(-1, 1, 1)
    x = normalise_batch(data.images[idx_t], mean, std)
    whole = (reg_t == 0).view(-1, 1, 1)
    inside = data.masks[idx_t] == reg_t.view(-1, 1, 1).to(data.masks.dtype)
    m = ((inside ^ comp_t) | whole).float()[:, None]
    x = x * m
    draw = torch.rand(len(m), generator=gen).view(-1, 1, 1, 1)
    prompt_mask = torch.where(draw < loose_prompt, torch.ones_like(m),
                              torch.where(draw < loose_prompt + box_prompt,
                                          grown_boxes(m, patch_size), m))
    # One text per sample drawn from its positives (so every positive text gets trained), plus
    # the class / context vocabulary; the positive matrix uses each sample's whole positive set.
    draw = torch.randint(0, 1 << 30, (len(positives),), generator=gen).tolist()
    chosen = [p[d % len(p)] for p, d in zip(positives, draw, strict=True)]
    text_ids = list(dict.fromkeys([*chosen, *data.vocab_ids]))
    col = {t: j for j, t in enumerate(text_ids)}
    pos = torch.zeros(len(positives), len(text_ids), dtype=torch.bool)
    for i, p in enumerate(positives):
        for t in p:
            j = col.get(t)
            if j is not None:
                pos[i, j] = True
    return x, prompt_mask, text_ids, pos


def _assemble_blends(data: ClipData, sel: Any, gen: Any, mean, std, s: ToyClipSettings
                     ) -> tuple[Any, Any, Any]:
    """Blend samples: pixels x soft mask, the mask prompt RITC would give (every pixel with at
    least 10 % of the mask's maximum, as FAT), and the soft targets over ``data.vocab_ids``."""
    import torch

    idx = torch.from_numpy(data.samples["blend"].index[sel.numpy()])
    maps = data.masks[idx]
    rt = data.region_text[idx]
    w = blend_masks(maps, rt, gen, s.blend_keep, s.blend_min_strength, s.blend_max_blur)
    x = normalise_batch(data.images[idx], mean, std) * w[:, None]
    peak = w.amax(dim=(1, 2), keepdim=True)
    prompt_mask = (w >= 0.1 * peak).float()[:, None]
    text_map = torch.gather(rt, 1, maps.reshape(len(idx), -1).long()).view(maps.shape)
    salience = torch.ones(len(data.vocab_ids))
    salience[:data.n_object_texts] = s.blend_object_salience
    return x, prompt_mask, blend_targets(w, text_map, data.vocab_ids, salience, s.blend_blank)


def _set_determinism(seed: int, threads: int) -> None:
    import random

    import torch

    configure_torch(max(1, int(threads)))
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


#: Settings that only affect the evaluation: left out of the resume hash.
EVAL_ONLY = ("eval_split", "eval_max_regions", "eval_batch_size")


def fit_toy_clip(corpus: VlpCorpus, settings: ToyClipSettings, *, log: LogFn = print,
                 resume: ResumeState | None = None) -> tuple[Any, dict[str, Any]]:
    """Train a toy mask-prompt CLIP in memory: ``(model, training info)``.

    ``resume``: where the loop state is saved and resumed from (:mod:`qaclims.vlp.toy_resume`);
    None: not resumable.
    """
    import torch

    from qaclims.vlp.toy_models import build_toy_clip

    s = settings
    _set_determinism(s.seed, s.threads)
    data = build_clip_data(corpus, s)
    words = data.texts + [str(t) for t in corpus.qa["answer"]]
    model = build_toy_clip(
        words, image_size=s.image_size, patch_size=s.patch_size, width=s.width,
        layers=s.layers, text_layers=s.text_layers, context_length=s.context_length,
        embed_dim=s.embed_dim, mask_prompt_depth=s.mask_prompt_depth, heads=s.heads, seed=s.seed)
    model.train()
    tokens = model.tokenize(data.texts)
    n_unknown = int((tokens == model.tokenizer.unk_id).sum())
    if n_unknown:
        log(f"warning: {n_unknown} unknown tokens in the training texts")
    n_params = count_parameters(model)
    sizes = {k: len(v) for k, v in data.samples.items()}
    mix = {"image": s.mix_image, "object": s.mix_object, "context": s.mix_context,
           "background": s.mix_background, "blend": s.mix_blend}
    counts = batch_counts(s.batch_size, mix, sizes)
    log(f"toy CLIP: {n_params:,} parameters, vocabulary {model.tokenizer.vocab_size}, "
        f"{len(data.texts)} distinct texts; samples {sizes}; per batch {counts}; "
        f"{s.max_steps} steps (guard {s.max_minutes} min), {torch.get_num_threads()} threads")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "ln" in name or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(s.seed)
    sampler = _Sampler(sizes, gen)
    logit_scale = model.clip.logit_scale
    ckpt = LoopCheckpoint(resume, s.checkpoint_every, modules={"model": model}, optimizer=opt,
                          generator=gen, total_steps=s.max_steps, what="toy CLIP training",
                          log_fn=log)
    start, loop = ckpt.restore()
    losses: list[float] = list(loop.get("losses", []))
    if loop:
        sampler.load_state_dict(loop["sampler"])

    def loop_state() -> dict[str, Any]:
        return {"sampler": sampler.state_dict(), "losses": losses}

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    t_last = t_start
    stopped_by = "steps"
    steps_done = start
    with ckpt.watch_sigterm():
        for step in range(start, s.max_steps):
            ckpt.check_time(step, loop_state,
                            elapsed_minutes=(time.perf_counter() - t_start) / 60.0,
                            max_minutes=s.max_minutes, key="models.toy.clip.max_minutes")
            lr = lr_at(step, base_lr=s.lr, warmup_steps=s.warmup_steps, total_steps=s.max_steps,
                       schedule=s.schedule, min_lr_ratio=s.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            picks = {k: sampler.take(k, n) for k, n in counts.items()}
            x, m, text_ids, pos = _assemble_batch(data, picks, gen, model.mean, model.std,
                                                  s.loose_prompt, s.box_prompt, s.patch_size)
            n_hard = len(x)
            if "blend" in picks:
                xb, mb, qb = _assemble_blends(data, picks["blend"], gen, model.mean, model.std, s)
                x, m = torch.cat([x, xb]), torch.cat([m, mb])
            img = model.encode_image(x, m)
            txt = model.encode_text(tokens[text_ids])
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            loss = multi_positive_loss(img[:n_hard], txt, pos, logit_scale.exp())
            if "blend" in picks:
                # blends are scored against the class and context texts only; the batch's texts
                # are deduplicated, so look up where each of them landed
                cols = [text_ids.index(t) for t in data.vocab_ids]
                share = len(xb) / len(x)
                loss = (1 - share) * loss + share * soft_target_loss(
                    img[n_hard:], txt[cols], qb, logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip and s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            with torch.no_grad():
                logit_scale.clamp_(0, float(np.log(100.0)))
            losses.append(float(loss.detach()))
            steps_done = step + 1
            if steps_done % s.log_every == 0 or step == 0 or steps_done == s.max_steps:
                now = time.perf_counter()
                n_ex = s.batch_size * (s.log_every if step else 1)
                scale = float(logit_scale.detach().exp())
                log(f"step {steps_done}/{s.max_steps} loss {np.mean(losses[-s.log_every:]):.4f} "
                    f"lr {lr:.2e} scale {scale:.1f} texts {len(text_ids)} "
                    f"{n_ex / max(now - t_last, 1e-9):.0f} ex/s elapsed {now - t_start:.0f} s")
                t_last = now
            ckpt.step_done(steps_done, loop_state)
    train_seconds = time.perf_counter() - t_start
    model.eval()
    k = max(1, min(s.log_every, len(losses)))
    info = {
        "steps": steps_done,
        "max_steps": s.max_steps,
        "stopped_by": stopped_by,
        "train_seconds": round(train_seconds, 2),
        # CPU time of the whole process over training: ~2x train_seconds on an idle 2-core
        # machine; when train_seconds is much larger, the machine was busy with other work.
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "examples_per_second": round((steps_done - start) * s.batch_size
                                     / max(train_seconds, 1e-9), 1),
        "resumed_from": start,
        "loss_first": losses[0] if losses else None,
        "loss_final": float(np.mean(losses[-k:])) if losses else None,
        "loss_curve": [round(float(np.mean(losses[i:i + k])), 5)
                       for i in range(0, len(losses), k)],
        "logit_scale": float(logit_scale.detach().exp()),
        "n_parameters": n_params,
        "vocab_size": model.tokenizer.vocab_size,
        "n_texts": len(data.texts),
        "n_samples": sizes,
        "batch_composition": counts,
        "threads": torch.get_num_threads(),
    }
    return model, info


def train_toy_clip(
    corpus_dir: PathLike,
    out_dir: PathLike,
    metrics_path: PathLike | None = None,
    *,
    settings: ToyClipSettings | None = None,
    log: LogFn | PathLike | None = None,
    evaluate: bool = True,
    resume_root: PathLike | None = None,
) -> dict[str, Any]:
    """Train, save with :func:`save_toy_clip` into ``out_dir``, reload with :func:`load_clip`,
    evaluate on the held-out split, write ``metrics_path``. Returns the metrics dict.

    ``resume_root``: folder of the resumable state (``<root>/<hash>/``, removed once the outputs
    are written; :mod:`qaclims.vlp.toy_resume`); None: not resumable.

    ``out_dir`` then holds ``open_clip_config.json`` (pass as ``arch``), ``tokenizer.json`` and
    ``ovseg_toy_clip.pth`` (pass as ``mask_checkpoint``; ``pretrained=None``).
    """
    from qaclims.store import write_json
    from qaclims.vlp.clip import load_clip
    from qaclims.vlp.toy_models import save_toy_clip

    s = settings or ToyClipSettings()
    logger = log if callable(log) else TrainLog(log)
    try:
        t0 = time.perf_counter()
        corpus = load_corpus(corpus_dir)
        logger(f"corpus {corpus_dir}: {corpus.images.shape[0]} images of {corpus.size} px, "
               f"{len(corpus.regions):,} regions")
        resume = toy_resume_state(resume_root, "train_toy_clip", s.to_dict(), corpus_dir,
                                  neutral=EVAL_ONLY)
        model, info = fit_toy_clip(corpus, s, log=logger, resume=resume)
        files = save_toy_clip(model, out_dir)
        logger(f"saved to {out_dir} ({directory_bytes(out_dir):,} bytes)")
        metrics: dict[str, Any] = {
            "model": "toy_mask_clip",
            "settings": s.to_dict(),
            "corpus": str(corpus_dir),
            "training": info,
            "files": {"arch": str(files.config), "mask_checkpoint": str(files.checkpoint),
                      "tokenizer": str(files.tokenizer)},
            "model_bytes": directory_bytes(out_dir),
        }
        if evaluate:
            loaded = load_clip(files.config, None, mask_checkpoint=files.checkpoint)
            q = evaluate_clip(loaded, corpus, split=s.eval_split, batch_size=s.eval_batch_size,
                              max_regions=s.eval_max_regions, seed=s.seed,
                              text_prompt=s.text_prompt, log_fn=logger)
            metrics["quality"] = q
            logger("held-out: " + ", ".join(
                f"{k} {q[k]:.4f}" for k in ("object_class_accuracy", "object_subtype_accuracy",
                                            "context_accuracy", "object_vs_context") if k in q))
        metrics["total_seconds"] = round(time.perf_counter() - t0, 2)
        if metrics_path is not None:
            write_json(metrics, metrics_path)
        if resume is not None:  # every output is written: the state is no longer needed
            resume.clear()
        return metrics
    finally:
        if isinstance(logger, TrainLog):
            logger.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m qaclims.vlp.train_toy_clip CORPUS OUT_DIR METRICS [--set key=value ...]``."""
    import argparse
    import json

    # Under oversubscription (other jobs on the same cores), OpenMP's default spin-waiting makes
    # multi-threaded torch many times slower; passive waiting changes no result, only speed.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("corpus_dir")
    p.add_argument("out_dir")
    p.add_argument("metrics")
    p.add_argument("--log", default=None)
    p.add_argument("--resume-root", default=None, help="folder of the resumable state")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ToyClipSettings field (value parsed as JSON when possible)")
    a = p.parse_args(argv)
    over: dict[str, Any] = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    log: Any = a.log if a.log else print
    m = train_toy_clip(a.corpus_dir, a.out_dir, a.metrics,
                       settings=ToyClipSettings.from_dict(over), log=log,
                       resume_root=a.resume_root)
    print(json.dumps({k: m[k] for k in ("training", "quality") if k in m}, indent=1)[:4000])


if __name__ == "__main__":
    main()


__all__ = ["ToyClipSettings", "blend_masks", "blend_targets", "build_clip_data", "fit_toy_clip",
           "multi_positive_loss", "soft_target_loss", "train_toy_clip"]
