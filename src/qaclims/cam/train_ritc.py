"""Stage D: RITC training (method.md 6) - the CAM network learns from CLIP region-text contrast.

Per step (:func:`qaclims.cam.losses.ritc_loss`): the RITC network's sigmoid CAM ``P``, foreground
adaptive thresholding ``b = P >= omega * max P`` (omega 0.1), the regions ``P * img`` and
``(1 - P) * img`` with mask prompts ``b`` / ``1 - b`` into the frozen mask-prompt CLIP image
tower, then ``10 * FRC + 8 * BRC + 0.2 * REG`` (tau 0.7), FRC/BRC summed over the batch's pairs
and scaled to the authors' 2-GPU gradient (``RitcSettings.pair_scale``).

Initialisation: the baseline CAM network's file, loaded strictly (same parameter names); its
FixedBatchNorm statistics become ordinary BatchNorm (SyncBN across ranks).

Texts per (image, class) pair come from the QAPE corpus and its text features
(:func:`build_pair_texts`): the foreground vector (``fg_mix``: the authors' 0.5/0.5 mix, the
paper's equal mean, or the label text alone) and the background texts (``use_bg_text=False``:
the paper's "no {class}" instead). A pair the corpus has no texts for is skipped, as the authors
skip pairs without background answers; a batch without any usable pair still trains REG.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from qaclims.cam.checkpoint import (
    ResumeState,
    load_cam_network,
    save_model,
    write_curve_tsv,
)
from qaclims.cam.datasets import (
    SplitImages,
    StepBatchSampler,
    make_loader,
    split_images,
    train_augment,
)
from qaclims.cam.distributed import (
    DistEnv,
    barrier,
    convert_sync_batchnorm,
    run_ranks,
    wrap_ddp,
)
from qaclims.cam.optim import PolyOptimizer
from qaclims.cam.settings import RitcSettings
from qaclims.cam.train_cam import (
    check_world,
    fit,
    hashed_params,
    input_files,
    restore,
    set_threads,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
DEFAULT_PROMPT = "a photo of {}."


# ---------------------------------------------------------------------------- texts per pair


@dataclass
class PairTexts:
    """Text vectors of every (training image, class) pair, gathered per batch.

    ``pair_of`` [N_images, K]: row of the pair in ``fg``/``bg_index``, -1 when the pair has no
    texts (skipped). ``fg`` [P, D]; ``bg_index`` [P, Nb] rows of ``bank`` (-1 padding);
    ``bank`` [U, D] the background text vectors.
    """

    pair_of: Tensor
    fg: Tensor
    bg_index: Tensor
    bank: Tensor
    stats: dict[str, Any]

    def to(self, device: str | torch.device) -> PairTexts:
        return PairTexts(self.pair_of.to(device), self.fg.to(device), self.bg_index.to(device),
                         self.bank.to(device), self.stats)

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(fg [B, K, D], bg [B, K, Nb, D], bg_mask [B, K, Nb] bool)`` for image indices."""
        rows = self.pair_of[indices.to(self.pair_of.device)]
        valid = rows >= 0
        r = rows.clamp(min=0)
        fg = self.fg[r]
        bgi = self.bg_index[r]
        bgi = torch.where(valid.unsqueeze(-1), bgi, torch.full_like(bgi, -1))
        mask = bgi >= 0
        bg = self.bank[bgi.clamp(min=0)] * mask.unsqueeze(-1).to(self.bank.dtype)
        return fg, bg, mask


def _text_vectors(texts: Sequence[str], tf: Any, encode_text: Callable[[list[str]], Any] | None
                  ) -> np.ndarray:
    """Vectors of ``texts``: from the text features, else encoded (L2-normalised)."""
    from qaclims.qape.text_features import l2_normalise

    missing = [t for t in texts if t not in tf.index]
    extra: dict[str, np.ndarray] = {}
    if missing:
        if encode_text is None:
            raise KeyError(f"text {missing[0]!r} is not in the text features and no text "
                           "encoder was given")
        out = encode_text(list(missing))
        out = out.detach().float().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        extra = dict(zip(missing, l2_normalise(out, "encoded texts"), strict=True))
    return np.stack([extra[t] if t in extra else tf[t] for t in texts]).astype(np.float32)


def build_pair_texts(images: SplitImages, corpus: Any, tf: Any, classes: Sequence[Any],
                     settings: RitcSettings,
                     encode_text: Callable[[list[str]], Any] | None = None) -> PairTexts:
    """Per-pair foreground vectors and background texts for ``images`` (see module doc).

    ``corpus``: the corpus DataFrame (image_id, class_id, role, text); ``tf``: loaded
    ``TextFeatures``; ``classes``: ClassInfo list (ids 1..K). ``encode_text`` encodes texts the
    features lack (the "no {class}" texts of ``use_bg_text=False``); it must be the text tower
    that made ``tf``.
    """
    from qaclims.qape.text_features import background_index, foreground_vectors

    K = images.labels.shape[1]
    if len(classes) != K:
        raise ValueError(f"{len(classes)} classes but labels have {K} columns")
    prompt = tf.prompt or DEFAULT_PROMPT
    class_text = {int(c.id): c.text for c in classes}
    corpus = corpus[corpus["image_id"].isin(set(images.image_ids))]
    if settings.fg_mix == "label_only":
        fg_keys, fg = foreground_vectors(corpus[corpus["role"] == "label"], tf, "code")
    else:
        fg_keys, fg = foreground_vectors(corpus[corpus["role"].isin(["label", "fg"])], tf,
                                         settings.fg_mix)
    row_of = {(i, int(c)): r for r, (i, c) in enumerate(zip(fg_keys["image_id"],
                                                            fg_keys["class_id"], strict=True))}
    labelled = [(n, c + 1) for n, c in zip(*np.nonzero(images.labels > 0), strict=True)]
    if settings.use_bg_text:
        bg_keys, bg_index = background_index(corpus, tf)
        if not (bg_keys["image_id"].tolist() == fg_keys["image_id"].tolist()
                and bg_keys["class_id"].tolist() == fg_keys["class_id"].tolist()):
            raise ValueError("corpus pairs differ between foreground and background rows "
                             "(every pair needs its label row)")
        bank = tf.feats
        fg_all = fg
    else:
        # the paper's texts without QAPE background answers: "no {class}" for every pair
        nobg = _text_vectors([prompt.replace("{}", f"no {class_text[c]}") for c in
                              sorted(class_text)], tf, encode_text)
        label_vec = _text_vectors([prompt.replace("{}", class_text[c]) for c in
                                   sorted(class_text)], tf, encode_text)
        extra = [(images.image_ids[n], c) for n, c in labelled
                 if (images.image_ids[n], c) not in row_of]
        for key in extra:
            row_of[key] = len(row_of)
        fg_all = np.concatenate([fg, label_vec[[c - 1 for _, c in extra]]]) if extra else fg
        pair_class = np.asarray([c for (_, c) in sorted(row_of, key=row_of.get)], np.int64)
        bg_index = (pair_class - 1)[:, None]
        bank = nobg
    pair_of = np.full(images.labels.shape, -1, np.int64)
    for n, c in labelled:
        pair_of[n, c - 1] = row_of.get((images.image_ids[n], c), -1)
    used = pair_of[pair_of >= 0]
    n_bg = (bg_index[used] >= 0).sum(1) if len(used) else np.zeros(0)
    stats = {"labelled_pairs": len(labelled), "pairs_with_texts": int(len(used)),
             "pairs_skipped": int(len(labelled) - len(used)),
             "bg_texts_per_pair_mean": float(n_bg.mean()) if len(n_bg) else 0.0,
             "bg_texts_per_pair_max": int(bg_index.shape[1]) if bg_index.ndim == 2 else 0,
             "fg_mix": settings.fg_mix, "use_bg_text": settings.use_bg_text}
    if len(used) == 0:
        raise ValueError("no (image, class) pair of the training split has texts in the corpus: "
                         "was the corpus built for this dataset and split?")
    return PairTexts(torch.from_numpy(pair_of), torch.from_numpy(np.asarray(fg_all, np.float32)),
                     torch.from_numpy(np.asarray(bg_index, np.int64)),
                     torch.from_numpy(np.asarray(bank, np.float32)), stats)


def imagenet_to_clip_norm(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Re-normalise ImageNet-normalised pixels with the CLIP's own mean/std."""
    from qaclims.cam.augment import IMAGENET_MEAN, IMAGENET_STD

    def v(t: Sequence[float]) -> Tensor:
        return torch.tensor(t, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

    return (x * v(IMAGENET_STD) + v(IMAGENET_MEAN) - v(mean)) / v(std)


def ritc_optimizer(net: Any, settings: RitcSettings, total_steps: int) -> PolyOptimizer:
    """The authors' poly SGD over the backbone and the classifier (``classifier_lr_mult`` x lr)."""
    return PolyOptimizer(
        net.trainable_parameter_groups(settings.lr, settings.weight_decay,
                                       settings.classifier_lr_mult),
        lr=settings.lr, max_step=total_steps, weight_decay=settings.weight_decay,
        power=settings.poly_power, momentum=settings.momentum)


def ritc_batch_loss(cam: Tensor, x: Tensor, y: Tensor, idx: Tensor, texts: PairTexts,
                    clip_model: Any, settings: RitcSettings, pair_scale: float) -> Any:
    """:func:`qaclims.cam.losses.ritc_loss` of one batch with ``settings`` (the RITC sigmoid
    CAM ``cam`` of the ImageNet-normalised crops ``x``, labels ``y``, image indices ``idx``)."""
    from qaclims.cam.losses import ritc_loss

    fg, bg, mask = texts.batch(idx)
    x_clip = (imagenet_to_clip_norm(x, clip_model.mean, clip_model.std)
              if settings.clip_input_norm == "clip" else x)
    omega = settings.omega if settings.fat else 0.0  # omega 0: b is all ones (P >= 0)
    return ritc_loss(cam, x_clip, y, fg, bg, mask, clip_model.encode_image,
                     weights=settings.loss_weights, tau=settings.tau, omega=omega,
                     brc_variant=settings.brc_variant,  # type: ignore[arg-type]
                     mask_mode=settings.mask_mode,  # type: ignore[arg-type]
                     mask_prompt=None if settings.fat else False, pair_scale=pair_scale,
                     clip_size=clip_model.image_size)


# ---------------------------------------------------------------------------- training


def _train_ritc_rank(env: DistEnv, manifest: str, classes: str, split: str, corpus: str,
                     text_features: str, init_model: str, clip: Mapping[str, Any],
                     settings: RitcSettings, out_model: str, out_curve: str,
                     resume_root: str | None) -> dict[str, Any]:
    import pandas as pd

    from qaclims.data.manifest import read_classes
    from qaclims.qape.text_features import load_text_features
    from qaclims.vlp.clip import load_clip

    set_threads(settings.threads)
    dev = env.device
    class_list = read_classes(classes)
    n_classes = len(class_list)
    images = split_images(manifest, split, n_classes)
    total = settings.total_steps(len(images))
    torch.manual_seed(settings.seed)

    net, info = load_cam_network(init_model, "ritc", n_classes)
    net.to(dev)
    if env.distributed:
        convert_sync_batchnorm(net, dev)

    clip_model = load_clip(clip["arch"], clip.get("pretrained"),
                           mask_checkpoint=clip.get("mask_checkpoint"), device=dev)
    tf = load_text_features(text_features, model_id=clip_model.model_id)

    def encode_text(texts: list[str]) -> Any:
        with torch.no_grad():
            return clip_model.encode_text(texts).float().cpu().numpy()

    texts = build_pair_texts(images, pd.read_parquet(corpus), tf, class_list, settings,
                             encode_text).to(dev)
    optimizer = ritc_optimizer(net, settings, total)
    resume = None
    if resume_root is not None:
        clip_files = [clip.get("arch"), clip.get("pretrained"), clip.get("mask_checkpoint")]
        resume = ResumeState(
            resume_root,
            hashed_params(settings, split=split, stage="train_ritc",
                          clip={k: str(v) for k, v in clip.items()}),
            input_files(manifest, classes, corpus, text_features, init_model,
                        *[c for c in clip_files if c]))
    start, curve = restore(resume, net, optimizer)
    if env.is_main:
        log.info("train_ritc: %s from %s, %d images of %s, %d steps of %d (%d rank(s)), CLIP %s "
                 "(%d px), start at step %d; texts %s", info["arch"], init_model, len(images),
                 split, total, settings.batch_size, env.world_size, clip_model.model_id,
                 clip_model.image_size, start, texts.stats)
    ddp = wrap_ddp(net, env)
    sampler = StepBatchSampler(len(images), settings.batch_size, total, settings.seed, start,
                               env.rank, env.world_size)
    loader = make_loader(images, train_augment(settings.resize_long, settings.crop_size,
                                               settings.hflip), sampler, settings.num_workers)
    pair_scale = settings.pair_scale(env.world_size)

    def step_fn(batch: Any) -> tuple[Tensor, dict[str, Any]]:
        x, y, idx = batch
        x, y = x.to(dev), y.to(dev)
        out = ritc_batch_loss(ddp(x), x, y, idx, texts, clip_model, settings, pair_scale)
        return out.loss, {"loss": out.loss.detach(), "frc": out.frc.detach(),
                          "brc": out.brc.detach(), "reg": out.reg.detach(),
                          "pairs": float(out.n_valid_pairs)}

    t0 = time.perf_counter()
    ddp.train()
    curve = fit(env, net, optimizer, loader, step_fn, start_step=start, total_steps=total,
                curve=curve, settings=settings, resume=resume,
                images_per_step=settings.batch_size)
    seconds = time.perf_counter() - t0
    summary = {"stage": "train_ritc", "arch": info["arch"], "n_classes": n_classes,
               "output_stride": info["output_stride"], "split": split, "n_images": len(images),
               "steps": total, "resumed_from": start,
               "world_size": env.world_size, "train_seconds": round(seconds, 1),
               "clip": clip_model.model_id, "texts": texts.stats,
               "final_loss": curve[-1]["loss"] if curve else None}
    if env.is_main:
        # SyncBN layers save under BatchNorm2d's keys: the file loads into RitcNet/CamNet
        save_model(out_model, net.state_dict(), arch=info["arch"], n_classes=n_classes,
                   output_stride=info["output_stride"], stage="train_ritc",
                   meta={**summary, "settings": settings.to_dict()})
        write_curve_tsv(curve, out_curve)
        if resume is not None:
            resume.clear()
        log.info("train_ritc done: %s", summary)
    barrier(env)
    return summary


def train_ritc(manifest: PathLike, classes: PathLike, corpus: PathLike,
               text_features: PathLike, init_model: PathLike, clip: Mapping[str, Any],
               out_model: PathLike, out_curve: PathLike, settings: RitcSettings, *, split: str,
               resume_root: PathLike | None = None, device: str = "cpu",
               world_size: int = 1) -> dict[str, Any]:
    """Train the RITC network from the baseline model file ``init_model``.

    ``clip``: ``{"arch", "pretrained", "mask_checkpoint"}`` for :func:`qaclims.vlp.clip.load_clip`
    (the CLIP whose text tower made ``text_features``). Other arguments as
    :func:`qaclims.cam.train_cam.train_cam`. Returns a summary dict.
    """
    check_world(settings, world_size)
    return run_ranks(_train_ritc_rank, world_size, device, str(manifest), str(classes), split,
                     str(corpus), str(text_features), str(init_model), dict(clip), settings,
                     str(out_model), str(out_curve),
                     None if resume_root is None else str(resume_root))
