"""Train the demo's toy BLIP VQA from scratch on the synthetic VLP corpus (CPU, minutes).

A transformers ``BlipForQuestionAnswering`` built by
:func:`qaclims.vlp.toy_models.build_toy_blip_vqa` (96 px, patch 12, hidden 128, 2 layers per
tower, a word vocabulary of the corpus questions and answers) learns the question-answer pairs of
all 16 templates of the ``train`` split with the model's own loss (answer tokens from [DEC],
padding excluded - :func:`blip_training_batch`).

The spatial questions ("what is above / next to / the left side of the cow?") are what a model
this small learns last, if at all: from the vision tower's transformers initialisation (std
1e-10) and the QA loss alone it answers them with the class's usual context. Three training aids,
none of which changes the saved model's architecture, make it look where things are:

- the vision tower starts from N(0, 0.02) weights (``vision_init_std``);
- an auxiliary loss on the patch tokens (``region_loss_weight``): a linear head, dropped after
  training, predicts each patch's region label from the corpus region masks and which labels lie
  within ``region_reach`` patches left, right, above and below it (:func:`patch_region_rays`);
- left-right mirroring of half the training images, with the "left side" / "right side"
  answers swapped (``hflip``, :func:`mirror_rows`), and more draws of the spatial templates
  (``group_repeats``).

Determinism: the step count decides (``max_steps``; the learning-rate schedule is laid out over
it); ``max_minutes`` only guards against a machine far slower than expected: past it the training
fails instead of saving weights from fewer steps (qaclims.determinism). Same seed, same thread
count, same corpus -> same weights. Resumable: every ``checkpoint_every`` steps, on SIGTERM and
before the time guard fails, the loop state is saved; a rerun continues bit for bit
(:mod:`qaclims.vlp.toy_resume`).

The model is saved with ``save_pretrained`` (model + processor) and evaluated *after loading it
back* through :func:`qaclims.vlp.blip.load_blip_vqa` (:func:`qaclims.vlp.toy_quality.evaluate_vqa`).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qaclims.cam.checkpoint import ResumeState
from qaclims.determinism import configure_torch
from qaclims.vlp.toy_quality import (
    TRAIN_SPLIT,
    LogFn,
    TrainLog,
    VlpCorpus,
    count_parameters,
    directory_bytes,
    evaluate_vqa,
    load_corpus,
    lr_at,
    normalise_batch,
    resize_uint8,
)
from qaclims.vlp.toy_resume import LoopCheckpoint, toy_resume_state

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ToyVqaSettings:
    """Every knob of the toy VQA training (config: ``models.toy.vqa.<field>``)."""

    seed: int = 0
    threads: int = 2
    # Model (environment.md prototype: ~1.6M parameters).
    image_size: int = 96
    patch_size: int = 12
    hidden: int = 128
    layers: int = 2
    text_layers: int | None = None  # text encoder / decoder layers; None = ``layers``
    heads: int = 4
    # Initial weights of the vision tower: transformers' BLIP vision config initialises every
    # vision weight with std 1e-10 (harmless for pretrained weights, a near-zero start from
    # scratch). ``vision_init_std`` redraws them N(0, std) (biases 0); null keeps transformers'.
    vision_init_std: float | None = 0.02
    # Auxiliary dense supervision of the vision tower, during training only (nothing of it is
    # saved): a linear head on the patch tokens predicts the region label of each patch (object
    # class, context text or none; the majority of the corpus region mask) and which labels lie
    # within ``region_reach`` patches to its left, right, above and below, so that the patch
    # features carry what is where - what the spatial questions ("what is above / the left side
    # of the cow?") ask. Weight 0 turns it off.
    region_loss_weight: float = 0.5
    region_reach: int = 4
    # Mirror each training image left-right with probability 0.5 and swap its "left side" /
    # "right side" answers (and region targets): the same scene with the two answers exchanged,
    # which only a model that looks where things are can fit.
    hflip: bool = True
    # Data: question rows of these template ids or groups (a template id wins over its group)
    # appear this many times in the training table - more draws for the spatial questions,
    # which are learnt last.
    group_repeats: dict[str, int] = field(default_factory=lambda: {"object": 3})
    # Optimisation.
    batch_size: int = 128  # questions per step
    # Questions per image in a batch: the vision tower runs once per image and its output serves
    # all of them (the same loss as ``model(...)`` on repeated images, ~2x cheaper at 4).
    # 1 = every question with its own image draw, through ``model(...)`` itself.
    questions_per_image: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 60
    schedule: str = "cosine"
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    max_steps: int = 1500
    max_minutes: float = 60.0
    log_every: int = 25
    # Steps between resumable states (0: only on SIGTERM / the time guard); result-neutral.
    checkpoint_every: int = 100
    # Evaluation (held-out split, authors' decoding).
    eval_split: str = "heldout"
    eval_max_questions: int | None = 6000
    eval_batch_size: int = 256
    num_beams: int = 3
    max_length: int = 10
    min_length: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ToyVqaSettings:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown toy VQA setting(s) {unknown}; known: {sorted(known)}")
        if "group_repeats" in data:  # absent: the default; null / {}: no repeats
            reps = dict(data["group_repeats"] or {})
            bad = {g: r for g, r in reps.items() if not isinstance(r, int) or r < 1}
            if bad:
                raise ValueError(f"group_repeats: expected integers >= 1, got {bad}")
            data["group_repeats"] = reps
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def corpus_words(corpus: VlpCorpus) -> list[str]:
    """The texts the BLIP vocabulary is built from: every question and answer of the corpus."""
    qa = corpus.qa
    return sorted(set(qa["question"].astype(str)) | set(qa["answer"].astype(str)))


class _QaBatches:
    """Pre-tokenised QA rows; a batch is a gather plus trimming of trailing padding."""

    def __init__(self, tokenizer: Any, rows: Any) -> None:
        import torch

        from qaclims.vlp.toy_models import blip_training_batch

        questions = rows["question"].astype(str).tolist()
        answers = rows["answer"].astype(str).tolist()
        uq = sorted(set(questions))
        ua = sorted(set(answers))
        # Tokenise each distinct question / answer once, exactly as blip_training_batch does.
        q_enc = blip_training_batch(tokenizer, uq, [ua[0]] * len(uq))
        a_enc = blip_training_batch(tokenizer, [uq[0]] * len(ua), ua)
        qi = {q: i for i, q in enumerate(uq)}
        ai = {a: i for i, a in enumerate(ua)}
        q_rows = torch.tensor([qi[q] for q in questions])
        a_rows = torch.tensor([ai[a] for a in answers])
        self.input_ids = q_enc["input_ids"][q_rows]
        self.attention_mask = q_enc["attention_mask"][q_rows]
        self.decoder_input_ids = a_enc["decoder_input_ids"][a_rows]
        self.decoder_attention_mask = a_enc["decoder_attention_mask"][a_rows]
        self.labels = a_enc["labels"][a_rows]
        self.image_index = torch.tensor(rows["index"].to_numpy(dtype=np.int64, copy=True))
        unk = tokenizer.unk_token_id
        self.n_unknown = (int((q_enc["input_ids"] == unk).sum())
                          + int((a_enc["decoder_input_ids"] == unk).sum()))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, idx: Any, answer_idx: Any = None) -> dict[str, Any]:
        """Questions of rows ``idx`` with the answers of rows ``answer_idx`` (default: idx)."""
        a_idx = idx if answer_idx is None else answer_idx
        qm = self.attention_mask[idx]
        am = self.decoder_attention_mask[a_idx]
        lq = int(qm.sum(1).max())
        la = int(am.sum(1).max())
        return {
            "input_ids": self.input_ids[idx, :lq],
            "attention_mask": qm[:, :lq],
            "decoder_input_ids": self.decoder_input_ids[a_idx, :la],
            "decoder_attention_mask": am[:, :la],
            "labels": self.labels[a_idx, :la],
        }


#: Templates whose answers swap when the image is mirrored left-right.
MIRRORED_TEMPLATES = {"bg_left": "bg_right", "bg_right": "bg_left"}


def mirror_rows(rows: Any) -> np.ndarray:
    """Per QA row, the row holding its answer for the left-right mirrored image: the same
    object's "right side" row for a "left side" row and vice versa, itself otherwise."""
    tids = rows["template_id"].astype(str).to_numpy()
    keys = list(zip(rows["index"].to_numpy().tolist(), rows["region"].to_numpy().tolist(),
                    tids.tolist(), strict=True))
    first: dict[tuple, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    out = np.arange(len(rows))
    for i, (idx, region, tid) in enumerate(keys):
        other = MIRRORED_TEMPLATES.get(tid)
        if other is not None:
            out[i] = first.get((idx, region, other), i)
    return out


class _ImageGroupedSampler:
    """Batches of ``n_images`` images x ``per_image`` of their QA rows, seeded.

    Images are drawn from an epoch-wise shuffled stream of the training images; each image's rows
    from its own shuffled stream, so every row is visited about equally often. ``per_image=1``
    degenerates to epoch-wise shuffled rows.
    """

    def __init__(self, image_index: Any, per_image: int, gen: Any) -> None:
        import torch

        self.gen = gen
        self.per_image = per_image
        order = torch.argsort(image_index, stable=True)
        uniq, counts = torch.unique_consecutive(image_index[order], return_counts=True)
        self.rows_of = list(torch.split(order, counts.tolist()))
        self.n_groups = len(uniq)
        self.row_perm = [r[torch.randperm(len(r), generator=gen)] for r in self.rows_of]
        self.row_cursor = [0] * self.n_groups
        self.perm = torch.randperm(self.n_groups, generator=gen)
        self.cursor = 0
        self.epoch = 0
        self.n_rows = len(image_index)

    def state_dict(self) -> dict[str, Any]:
        """Everything drawing batches changes (the generator is saved by its owner), in types a
        weights-only load accepts."""
        import torch

        d: dict[str, Any] = {"row_perm": torch.cat(self.row_perm), "row_cursor": self.row_cursor,
                             "perm": self.perm, "cursor": self.cursor, "epoch": self.epoch}
        if hasattr(self, "_row_stream"):
            d["row_stream"], d["row_stream_cursor"] = self._row_stream, self._row_cursor
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same rows)."""
        import torch

        sizes = [len(r) for r in self.rows_of]
        if int(d["row_perm"].numel()) != sum(sizes) or len(d["row_cursor"]) != self.n_groups:
            raise ValueError("sampler state of another training table")
        self.row_perm = list(torch.split(d["row_perm"], sizes))
        self.row_cursor = [int(c) for c in d["row_cursor"]]
        self.perm, self.cursor, self.epoch = d["perm"], int(d["cursor"]), int(d["epoch"])
        if "row_stream" in d:
            self._row_stream, self._row_cursor = d["row_stream"], int(d["row_stream_cursor"])

    def _rows(self, g: int, k: int) -> list[int]:
        import torch

        out: list[int] = []
        while k > 0:
            p, c = self.row_perm[g], self.row_cursor[g]
            take = min(k, len(p) - c)
            out += p[c:c + take].tolist()
            self.row_cursor[g] = c + take
            k -= take
            if self.row_cursor[g] >= len(p):
                self.row_perm[g] = self.rows_of[g][torch.randperm(len(p), generator=self.gen)]
                self.row_cursor[g] = 0
        return out

    def next(self, batch_size: int) -> tuple[Any, Any]:
        """``(row indices [B], image slot per row [B])``; slots index the distinct images."""
        import torch

        if self.per_image <= 1:
            rows = self._next_rows(batch_size)
            return rows, torch.arange(len(rows))
        n_img = -(-batch_size // self.per_image)
        groups = []
        for _ in range(n_img):
            if self.cursor >= self.n_groups:
                self.perm = torch.randperm(self.n_groups, generator=self.gen)
                self.cursor = 0
                self.epoch += 1
            groups.append(int(self.perm[self.cursor]))
            self.cursor += 1
        rows, slots = [], []
        left = batch_size
        for slot, g in enumerate(groups):
            k = min(self.per_image, left)
            rows += self._rows(g, k)
            slots += [slot] * k
            left -= k
        return torch.tensor(rows), torch.tensor(slots)

    def _next_rows(self, batch_size: int) -> Any:
        import torch

        if not hasattr(self, "_row_stream") or self._row_cursor + batch_size > self.n_rows:
            if hasattr(self, "_row_stream"):
                self.epoch += 1
            self._row_stream = torch.randperm(self.n_rows, generator=self.gen)
            self._row_cursor = 0
        out = self._row_stream[self._row_cursor:self._row_cursor + batch_size]
        self._row_cursor += batch_size
        return out


def vqa_loss(model: Any, pixels: Any, slots: Any, batch: dict[str, Any],
             image_embeds: Any = None) -> Any:
    """``BlipForQuestionAnswering``'s own training loss, with the vision tower run once per image.

    ``pixels [n_images,3,S,S]``, ``slots [B]`` the image of each question. Identical (up to float
    rounding) to ``model(pixel_values=pixels[slots], **batch).loss`` - the same modules, masks and
    decoder loss as transformers' forward. ``image_embeds``: the vision tower's output for
    ``pixels`` when the caller already has it.
    """
    import torch

    if image_embeds is None:
        if len(slots) == len(pixels) and bool((slots == torch.arange(len(slots))).all()):
            return model(pixel_values=pixels, **batch).loss
        image_embeds = model.vision_model(pixel_values=pixels)[0]
    image_embeds = image_embeds[slots]
    image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long,
                                      device=image_embeds.device)
    question_embeds = model.text_encoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        encoder_hidden_states=image_embeds, encoder_attention_mask=image_attention_mask,
        return_dict=False)[0]
    out = model.text_decoder(
        input_ids=batch["decoder_input_ids"], attention_mask=batch["decoder_attention_mask"],
        encoder_hidden_states=question_embeds, encoder_attention_mask=batch["attention_mask"],
        labels=batch["labels"], reduction="mean")
    return out.loss.mean()


def patch_region_rays(corpus: VlpCorpus, image_size: int, patch_size: int,
                      reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per image and patch: its region label and, for each direction (left, right, up, down),
    which labels occur within ``reach`` patches that way.

    -> ``(self int64 [N, g*g], rays bool [N, g*g, 4, L], valid bool [g*g, 4], labels)``; a ray
    that starts at the image border is not valid.
    """
    grid, labels = patch_region_grid(corpus, image_size, patch_size)
    n, g = grid.shape[:2]
    onehot = np.eye(len(labels), dtype=bool)[grid]  # [n, g, g, L]
    rays = np.zeros((n, g, g, 4, len(labels)), bool)
    valid = np.zeros((g, g, 4), bool)
    for d, (dy, dx) in enumerate(((0, -1), (0, 1), (-1, 0), (1, 0))):
        for k in range(1, reach + 1):
            oy, ox = dy * k, dx * k
            ys = slice(max(0, -oy), g - max(0, oy))
            xs = slice(max(0, -ox), g - max(0, ox))
            yt = slice(max(0, oy), g - max(0, -oy))
            xt = slice(max(0, ox), g - max(0, -ox))
            rays[:, ys, xs, d] |= onehot[:, yt, xt]
            if k == 1:
                valid[ys, xs, d] = True
    return (grid.reshape(n, g * g), rays.reshape(n, g * g, 4, len(labels)),
            valid.reshape(g * g, 4), labels)


def patch_region_grid(corpus: VlpCorpus, image_size: int,
                      patch_size: int) -> tuple[np.ndarray, list[str]]:
    """``(int64 [N, g, g] region label per patch, labels)``: the label of the region covering
    most of the patch (ties: the lower region number) - the object's class name, the context's
    text, or "none" (clutter / nothing)."""
    masks = resize_uint8(corpus.region_masks, image_size, nearest=True)
    n = masks.shape[0]
    g = image_size // patch_size
    blocks = masks[:, :g * patch_size, :g * patch_size].reshape(n, g, patch_size, g, patch_size)
    n_values = int(masks.max()) + 1
    counts = np.stack([(blocks == v).sum(axis=(2, 4)) for v in range(n_values)], axis=-1)
    major = counts.argmax(axis=-1)  # [n, g, g] region number
    r = corpus.regions
    names = np.where(r["role"].astype(str).to_numpy() == "object",
                     r["class_name"].astype(str).to_numpy(), r["text"].astype(str).to_numpy())
    labels = ["none"] + sorted(set(names.tolist()) - {"none"})
    label_id = {t: i for i, t in enumerate(labels)}
    lut = np.zeros((n, max(n_values, int(r["region"].to_numpy().max(initial=0)) + 1)), np.int64)
    lut[r["index"].to_numpy(), r["region"].to_numpy()] = [label_id[t] for t in names]
    return lut[np.arange(n)[:, None, None], major], labels


def init_vision_tower(model: Any, std: float, seed: int) -> None:
    """Redraw the vision tower's weights (see ``ToyVqaSettings.vision_init_std``), seeded."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    vision = model.vision_model
    with torch.no_grad():
        for mod in vision.modules():
            if isinstance(mod, torch.nn.Linear | torch.nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * std)
                if mod.bias is not None:
                    mod.bias.zero_()
        emb = vision.embeddings
        emb.class_embedding.copy_(torch.randn(emb.class_embedding.shape, generator=gen) * std)
        pos = emb.position_embedding
        pos.copy_(torch.randn(pos.shape, generator=gen) * std)


def _set_determinism(seed: int, threads: int) -> None:
    import random

    import torch

    configure_torch(max(1, int(threads)))
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _optimizer(model: Any, lr: float, weight_decay: float, extra: Any = None) -> Any:
    """AdamW; no weight decay on biases, norms and embeddings' position tables."""
    import itertools

    import torch

    decay, no_decay = [], []
    named = model.named_parameters()
    if extra is not None:
        named = itertools.chain(named, extra.named_parameters(prefix="region_head"))
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "norm" in name.lower() or "embedding" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6)


#: Settings that only affect the evaluation: left out of the resume hash.
EVAL_ONLY = ("eval_split", "eval_max_questions", "eval_batch_size", "num_beams", "max_length",
             "min_length")


def fit_toy_vqa(
    corpus: VlpCorpus,
    settings: ToyVqaSettings,
    *,
    log: LogFn = print,
    resume: ResumeState | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train a toy BLIP VQA in memory: ``(model, processor, training info)``.

    ``resume``: where the loop state is saved and resumed from (:mod:`qaclims.vlp.toy_resume`);
    None: not resumable.
    """
    import torch

    from qaclims.vlp.toy_models import build_corpus_bert_tokenizer, build_toy_blip_vqa

    s = settings
    _set_determinism(s.seed, s.threads)
    with tempfile.TemporaryDirectory(prefix="toy_vqa_vocab_") as tmp:
        tokenizer = build_corpus_bert_tokenizer(corpus_words(corpus), tmp)
        model, processor = build_toy_blip_vqa(
            tokenizer, image_size=s.image_size, patch_size=s.patch_size, hidden=s.hidden,
            layers=s.layers, heads=s.heads, text_layers=s.text_layers, seed=s.seed)
    if s.vision_init_std is not None:
        init_vision_tower(model, s.vision_init_std, s.seed)
    ip = processor.image_processor
    mean, std = tuple(ip.image_mean), tuple(ip.image_std)
    rows = corpus.qa_rows(TRAIN_SPLIT)
    if len(rows) == 0:
        raise ValueError(f"corpus {corpus.root} has no QA rows in the {TRAIN_SPLIT!r} split")
    if s.group_repeats:
        import pandas as pd

        reps = np.array([s.group_repeats.get(str(t), s.group_repeats.get(str(g), 1))
                         for t, g in zip(rows["template_id"], rows["group"], strict=True)])
        rows = pd.DataFrame(rows.to_dict("list")).loc[np.repeat(np.arange(len(rows)), reps)]
        rows = rows.reset_index(drop=True)
    data = _QaBatches(tokenizer, rows)
    if data.n_unknown:
        log(f"warning: {data.n_unknown} [UNK] tokens in the training questions/answers")
    images = torch.from_numpy(resize_uint8(corpus.images, s.image_size))
    n_params = count_parameters(model)
    log(f"toy VQA: {n_params:,} parameters, vocabulary {len(tokenizer)}, {len(data):,} training "
        f"QA pairs on {len(set(data.image_index.tolist())):,} images, batch {s.batch_size}, "
        f"{s.max_steps} steps (guard {s.max_minutes} min), {torch.get_num_threads()} threads")

    mirror = torch.from_numpy(mirror_rows(rows)) if s.hflip else None
    region_head = None
    params = list(model.parameters())
    if s.region_loss_weight > 0:
        self_t, rays, valid, labels = patch_region_rays(corpus, s.image_size, s.patch_size,
                                                        s.region_reach)
        grid = s.image_size // s.patch_size
        region_self = torch.from_numpy(self_t).view(-1, grid, grid)
        region_rays = torch.from_numpy(rays).view(-1, grid, grid, 4, len(labels))
        ray_valid = torch.from_numpy(valid)  # left-right symmetric: holds for mirrored images
        region_head = torch.nn.Linear(s.hidden, 5 * len(labels))
        g = torch.Generator().manual_seed(s.seed + 1)
        with torch.no_grad():
            region_head.weight.copy_(torch.randn(region_head.weight.shape, generator=g) * 0.02)
            region_head.bias.zero_()
        params += list(region_head.parameters())
        log(f"region loss: weight {s.region_loss_weight}, {len(labels)} labels, reach "
            f"{s.region_reach} patches")
    opt = _optimizer(model, s.lr, s.weight_decay, extra=region_head)
    gen = torch.Generator().manual_seed(s.seed)
    model.train()
    sampler = _ImageGroupedSampler(data.image_index, s.questions_per_image, gen)
    modules = {"model": model} if region_head is None else {"model": model,
                                                            "region_head": region_head}
    ckpt = LoopCheckpoint(resume, s.checkpoint_every, modules=modules, optimizer=opt,
                          generator=gen, total_steps=s.max_steps, what="toy VQA training",
                          log_fn=log)
    start, loop = ckpt.restore()
    losses: list[float] = list(loop.get("losses", []))
    aux_losses: list[float] = list(loop.get("aux_losses", []))
    if loop:
        sampler.load_state_dict(loop["sampler"])

    def loop_state() -> dict[str, Any]:
        return {"sampler": sampler.state_dict(), "losses": losses, "aux_losses": aux_losses}

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    t_last = t_start
    seen_since = 0
    stopped_by = "steps"
    step = 0
    loss_first = losses[0] if losses else None
    with ckpt.watch_sigterm():
        for step in range(start, s.max_steps):
            ckpt.check_time(step, loop_state,
                            elapsed_minutes=(time.perf_counter() - t_start) / 60.0,
                            max_minutes=s.max_minutes, key="models.toy.vqa.max_minutes")
            idx, slots = sampler.next(s.batch_size)
            lr = lr_at(step, base_lr=s.lr, warmup_steps=s.warmup_steps, total_steps=s.max_steps,
                       schedule=s.schedule, min_lr_ratio=s.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            first = torch.zeros(int(slots.max()) + 1, dtype=torch.long)
            first[slots.flip(0)] = idx.flip(0)  # one row per image slot -> its image
            img_rows = data.image_index[first]
            pixels = normalise_batch(images[img_rows], mean, std)
            flip = None
            if mirror is not None:
                flip = torch.rand(len(first), generator=gen) < 0.5
                pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
                batch = data.batch(idx, torch.where(flip[slots], mirror[idx], idx))
            else:
                batch = data.batch(idx)
            if region_head is None:
                loss = vqa_loss(model, pixels, slots, batch)
                total = loss
            else:
                embeds = model.vision_model(pixel_values=pixels)[0]
                loss = vqa_loss(model, pixels, slots, batch, image_embeds=embeds)
                t_self, t_rays = region_self[img_rows], region_rays[img_rows].float()
                if flip is not None:  # mirror the patch grid; left and right rays swap
                    t_self = torch.where(flip[:, None, None], t_self.flip(2), t_self)
                    t_rays = torch.where(flip[:, None, None, None, None],
                                         t_rays.flip(2)[:, :, :, [1, 0, 2, 3]], t_rays)
                logits = region_head(embeds[:, 1:]).view(len(img_rows), -1, 5, len(labels))
                aux = torch.nn.functional.cross_entropy(logits[:, :, 0].reshape(-1, len(labels)),
                                                        t_self.reshape(-1))
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits[:, :, 1:], t_rays.view(len(img_rows), -1, 4, len(labels)),
                    reduction="none").sum(-1)
                aux = aux + bce[:, ray_valid].mean()
                total = loss + s.region_loss_weight * aux
                aux_losses.append(float(aux.detach()))
            opt.zero_grad(set_to_none=True)
            total.backward()
            if s.grad_clip and s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            lv = float(loss.detach())
            losses.append(lv)
            if loss_first is None:
                loss_first = lv
            seen_since += len(idx)
            if (step + 1) % s.log_every == 0 or step == 0 or step + 1 == s.max_steps:
                now = time.perf_counter()
                recent = losses[-s.log_every:]
                aux_txt = (f" region loss {np.mean(aux_losses[-s.log_every:]):.4f}"
                           if aux_losses else "")
                log(f"step {step + 1}/{s.max_steps} epoch {sampler.epoch} "
                    f"loss {np.mean(recent):.4f}{aux_txt} lr {lr:.2e} "
                    f"{seen_since / max(now - t_last, 1e-9):.0f} ex/s "
                    f"elapsed {now - t_start:.0f} s")
                t_last = now
                seen_since = 0
            ckpt.step_done(step + 1, loop_state)
        else:
            step = s.max_steps
    steps_done = s.max_steps
    train_seconds = time.perf_counter() - t_start
    model.eval()
    k = max(1, min(s.log_every, len(losses)))
    info = {
        "steps": int(steps_done),
        "max_steps": s.max_steps,
        "stopped_by": stopped_by,
        "epochs": round(steps_done * s.batch_size / len(data), 3),  # question rows seen / rows
        "questions_per_image": s.questions_per_image,
        "train_seconds": round(train_seconds, 2),
        # CPU time of the whole process over training: ~2x train_seconds on an idle 2-core
        # machine; when train_seconds is much larger, the machine was busy with other work.
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "examples_per_second": round((steps_done - start) * s.batch_size
                                     / max(train_seconds, 1e-9), 1),
        "resumed_from": start,
        "loss_first": loss_first,
        "loss_final": float(np.mean(losses[-k:])) if losses else None,
        "region_loss_final": float(np.mean(aux_losses[-k:])) if aux_losses else None,
        "loss_curve": [round(float(np.mean(losses[i:i + k])), 5)
                       for i in range(0, len(losses), k)],
        "n_parameters": n_params,
        "vocab_size": len(tokenizer),
        "n_train_pairs": len(data),
        "n_train_images": len(set(data.image_index.tolist())),
        "threads": torch.get_num_threads(),
    }
    return model, processor, info


def train_toy_vqa(
    corpus_dir: PathLike,
    out_dir: PathLike,
    metrics_path: PathLike | None = None,
    *,
    settings: ToyVqaSettings | None = None,
    log: LogFn | PathLike | None = None,
    evaluate: bool = True,
    resume_root: PathLike | None = None,
) -> dict[str, Any]:
    """Train, save (``save_pretrained`` model + processor into ``out_dir``, atomically), reload
    through :func:`load_blip_vqa`, evaluate on the held-out split, write ``metrics_path``.

    ``log``: a callable taking one line, or a log file path (lines are appended).
    ``resume_root``: folder of the resumable state (``<root>/<hash>/``, removed once the outputs
    are written; :mod:`qaclims.vlp.toy_resume`); None: not resumable. Returns the metrics dict.
    """
    from qaclims.store import write_json
    from qaclims.vlp.toy_models import save_toy_blip_vqa

    s = settings or ToyVqaSettings()
    logger = log if callable(log) else TrainLog(log)
    try:
        t0 = time.perf_counter()
        corpus = load_corpus(corpus_dir)
        logger(f"corpus {corpus_dir}: {corpus.images.shape[0]} images of {corpus.size} px, "
               f"{len(corpus.qa):,} QA rows")
        resume = toy_resume_state(resume_root, "train_toy_vqa", s.to_dict(), corpus_dir,
                                  neutral=EVAL_ONLY)
        model, processor, info = fit_toy_vqa(corpus, s, log=logger, resume=resume)
        save_toy_blip_vqa(model, processor, out_dir)
        logger(f"saved to {out_dir} ({directory_bytes(out_dir):,} bytes)")
        metrics: dict[str, Any] = {
            "model": "toy_blip_vqa",
            "settings": s.to_dict(),
            "corpus": str(corpus_dir),
            "training": info,
            "model_bytes": directory_bytes(out_dir),
        }
        if evaluate:
            q = evaluate_vqa(out_dir, corpus, split=s.eval_split,
                             max_questions=s.eval_max_questions, seed=s.seed,
                             batch_size=s.eval_batch_size, num_beams=s.num_beams,
                             max_length=s.max_length, min_length=s.min_length, log_fn=logger)
            metrics["quality"] = q
            logger(f"held-out exact match {q['exact_match']:.4f} on {q['n_questions']} questions;"
                   f" per group " + ", ".join(f"{g} {v:.3f}" for g, v in q["per_group"].items()))
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
    """``python -m qaclims.vlp.train_toy_vqa CORPUS OUT_DIR METRICS [--set key=value ...]``."""
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
                   help="override a ToyVqaSettings field (value parsed as JSON when possible)")
    a = p.parse_args(argv)
    over: dict[str, Any] = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    log: Any = a.log if a.log else print
    m = train_toy_vqa(a.corpus_dir, a.out_dir, a.metrics, settings=ToyVqaSettings.from_dict(over),
                      log=log, resume_root=a.resume_root)
    print(json.dumps({k: m[k] for k in ("training", "quality") if k in m}, indent=1)[:4000])


if __name__ == "__main__":
    main()


__all__ = ["ToyVqaSettings", "corpus_words", "fit_toy_vqa", "train_toy_vqa"]
