"""Pretrain a torchvision ResNet on the synthetic VLP corpus: the demo's stand-in for ImageNet.

The CAM, IRN and DeepLab stages start from ImageNet weights; the demo has none (no downloads),
and a randomly initialised ResNet learns little in a CPU-minute budget. This trains a plain
torchvision ``resnet18`` for a few minutes as a multi-label classifier of the corpus images
(object classes + context regions present, sigmoid / BCE), then saves its state dict **without
the ``fc.*`` head** (its 20-way head does not fit torchvision's 1000-way one;
:func:`qaclims.vlp.backbones.load_resnet` tolerates a missing head, as for backbone-only files).
So the stages load it exactly as they load ImageNet weights: ``load_resnet("resnet18", path)``.

Images are ImageNet-normalised (what the stages feed), random horizontal flips only. BatchNorm
trains normally, so its running statistics fit the synthetic images (the stages freeze BN).
Deterministic like the other toy trainers: ``max_steps`` decides; past ``max_minutes`` it fails.
Resumable like them: every ``checkpoint_every`` steps, on SIGTERM and before the time guard fails
(:mod:`qaclims.vlp.toy_resume`).
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
    HELDOUT_SPLIT,
    TRAIN_SPLIT,
    LogFn,
    TrainLog,
    VlpCorpus,
    count_parameters,
    load_corpus,
    lr_at,
    normalise_batch,
    resize_uint8,
)
from qaclims.vlp.toy_resume import LoopCheckpoint, toy_resume_state

PathLike = str | os.PathLike[str]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ToyBackboneSettings:
    """Knobs of the backbone pretraining (config: ``models.toy.backbone.<field>``)."""

    seed: int = 0
    threads: int = 2
    arch: str = "resnet18"
    image_size: int = 96
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    schedule: str = "cosine"
    min_lr_ratio: float = 0.02
    max_steps: int = 300
    max_minutes: float = 60.0
    log_every: int = 20
    # Steps between resumable states (0: only on SIGTERM / the time guard); result-neutral.
    checkpoint_every: int = 50
    hflip: bool = True
    eval_max_images: int | None = 800

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ToyBackboneSettings:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown toy backbone setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def image_labels(corpus: VlpCorpus) -> tuple[list[str], np.ndarray]:
    """``(label names, multi-hot [N, L] float32)``: object classes then context texts present."""
    from qaclims.vlp.toy_quality import region_vocabulary

    classes, _, contexts = region_vocabulary(corpus)
    names = [*classes, *contexts]
    col = {("object", c): i for i, c in enumerate(classes)}
    col.update({("context", c): len(classes) + i for i, c in enumerate(contexts)})
    y = np.zeros((corpus.images.shape[0], len(names)), np.float32)
    r = corpus.regions
    keys = [("object", c) if role == "object" else ("context", t)
            for role, c, t in zip(r["role"], r["class_name"], r["text"], strict=True)]
    for i, k in zip(r["index"].to_numpy(), keys, strict=True):
        j = col.get((k[0], str(k[1])))
        if j is not None:
            y[int(i), j] = 1.0
    return names, y


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one label (area under the precision-recall steps); nan without positives."""
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


#: Settings that only affect the evaluation: left out of the resume hash.
EVAL_ONLY = ("eval_max_images",)


def fit_toy_backbone(corpus: VlpCorpus, settings: ToyBackboneSettings, *, log: LogFn = print,
                     resume: ResumeState | None = None
                     ) -> tuple[Any, list[str], dict[str, Any]]:
    """Train in memory: ``(model with its label head, label names, training info)``.

    ``resume``: where the loop state is saved and resumed from (:mod:`qaclims.vlp.toy_resume`);
    None: not resumable.
    """
    import random

    import torch
    import torchvision

    s = settings
    configure_torch(max(1, int(s.threads)))
    torch.manual_seed(s.seed)
    np.random.seed(s.seed % 2**32)
    random.seed(s.seed)
    names, y_all = image_labels(corpus)
    model = getattr(torchvision.models, s.arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, len(names))
    train = corpus.split_indices(TRAIN_SPLIT)
    images = torch.from_numpy(resize_uint8(corpus.images, s.image_size))
    y = torch.from_numpy(y_all)
    n_params = count_parameters(model)
    log(f"toy backbone {s.arch}: {n_params:,} parameters, {len(names)} labels, {len(train)} "
        f"training images at {s.image_size} px, {s.max_steps} steps (guard {s.max_minutes} min)")
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed)
    train_t = torch.from_numpy(train)
    perm = train_t[torch.randperm(len(train_t), generator=gen)]
    cursor = 0
    model.train()
    ckpt = LoopCheckpoint(resume, s.checkpoint_every, modules={"model": model}, optimizer=opt,
                          generator=gen, total_steps=s.max_steps, what="toy backbone training",
                          log_fn=log)
    start, loop = ckpt.restore()
    losses: list[float] = list(loop.get("losses", []))
    if loop:
        perm, cursor = loop["perm"], int(loop["cursor"])

    def loop_state() -> dict[str, Any]:
        return {"perm": perm, "cursor": cursor, "losses": losses}

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    t_last = t_start
    stopped_by = "steps"
    steps_done = start
    with ckpt.watch_sigterm():
        for step in range(start, s.max_steps):
            ckpt.check_time(step, loop_state,
                            elapsed_minutes=(time.perf_counter() - t_start) / 60.0,
                            max_minutes=s.max_minutes, key="models.toy.backbone.max_minutes")
            if cursor + s.batch_size > len(perm):
                perm = train_t[torch.randperm(len(train_t), generator=gen)]
                cursor = 0
            idx = perm[cursor:cursor + s.batch_size]
            cursor += s.batch_size
            lr = lr_at(step, base_lr=s.lr, warmup_steps=s.warmup_steps, total_steps=s.max_steps,
                       schedule=s.schedule, min_lr_ratio=s.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            x = normalise_batch(images[idx], IMAGENET_MEAN, IMAGENET_STD)
            if s.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps_done = step + 1
            if steps_done % s.log_every == 0 or step == 0 or steps_done == s.max_steps:
                now = time.perf_counter()
                n_ex = s.batch_size * (s.log_every if step else 1)
                log(f"step {steps_done}/{s.max_steps} loss {np.mean(losses[-s.log_every:]):.4f} "
                    f"lr {lr:.2e} {n_ex / max(now - t_last, 1e-9):.0f} ex/s "
                    f"elapsed {now - t_start:.0f} s")
                t_last = now
            ckpt.step_done(steps_done, loop_state)
    train_seconds = time.perf_counter() - t_start
    model.eval()
    k = max(1, min(s.log_every, len(losses)))
    info = {
        "steps": steps_done, "max_steps": s.max_steps, "stopped_by": stopped_by,
        "train_seconds": round(train_seconds, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "examples_per_second": round((steps_done - start) * s.batch_size
                                     / max(train_seconds, 1e-9), 1),
        "resumed_from": start,
        "loss_first": losses[0] if losses else None,
        "loss_final": float(np.mean(losses[-k:])) if losses else None,
        "n_parameters": n_params, "labels": names, "threads": torch.get_num_threads(),
    }
    return model, names, info


def evaluate_backbone(model: Any, corpus: VlpCorpus, names: list[str], *,
                      image_size: int, split: str = HELDOUT_SPLIT,
                      max_images: int | None = None, batch_size: int = 128) -> dict[str, Any]:
    """Held-out multi-label quality: mAP, per-label AP, accuracy of the 0.5-thresholded labels."""
    import torch

    idx = corpus.split_indices(split)
    if max_images is not None:
        idx = idx[:max_images]
    _, y_all = image_labels(corpus)
    images = resize_uint8(corpus.images[idx], image_size)
    scores = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            x = normalise_batch(images[s:s + batch_size], IMAGENET_MEAN, IMAGENET_STD)
            scores.append(torch.sigmoid(model(x)).numpy())
    p = np.concatenate(scores) if scores else np.zeros((0, len(names)))
    y = y_all[idx]
    ap = {n: average_precision(p[:, j], y[:, j]) for j, n in enumerate(names)}
    valid = [v for v in ap.values() if not np.isnan(v)]
    return {
        "split": split, "n_images": int(len(idx)),
        "mAP": float(np.mean(valid)) if valid else float("nan"),
        "object_mAP": float(np.nanmean([ap[n] for n in names[:_n_objects(corpus)]])),
        "per_label_ap": ap,
        "label_accuracy": float(((p > 0.5) == (y > 0.5)).mean()) if len(p) else float("nan"),
        "exact_set_accuracy": float(((p > 0.5) == (y > 0.5)).all(1).mean()) if len(p)
        else float("nan"),
    }


def _n_objects(corpus: VlpCorpus) -> int:
    from qaclims.vlp.toy_quality import region_vocabulary

    return len(region_vocabulary(corpus)[0])


def save_backbone_state(model: Any, path: PathLike) -> dict[str, Any]:
    """The torchvision state dict without ``fc.*``, saved atomically with ``torch.save``."""

    from qaclims.store import atomic_path, save_torch

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
             if not k.startswith("fc.")}
    with atomic_path(path) as tmp:
        save_torch(state, tmp)
    return state


def train_toy_backbone(
    corpus_dir: PathLike,
    out_path: PathLike,
    metrics_path: PathLike | None = None,
    *,
    settings: ToyBackboneSettings | None = None,
    log: LogFn | PathLike | None = None,
    evaluate: bool = True,
    resume_root: PathLike | None = None,
) -> dict[str, Any]:
    """Train, save the head-less state dict to ``out_path``, reload it through
    :func:`qaclims.vlp.backbones.load_resnet` (checks it fits), evaluate, write metrics.

    ``resume_root``: folder of the resumable state (``<root>/<hash>/``, removed once the outputs
    are written; :mod:`qaclims.vlp.toy_resume`); None: not resumable."""
    import torch

    from qaclims.store import write_json
    from qaclims.vlp.backbones import load_resnet

    s = settings or ToyBackboneSettings()
    logger = log if callable(log) else TrainLog(log)
    try:
        t0 = time.perf_counter()
        corpus = load_corpus(corpus_dir)
        resume = toy_resume_state(resume_root, "train_toy_backbone", s.to_dict(), corpus_dir,
                                  neutral=EVAL_ONLY)
        model, names, info = fit_toy_backbone(corpus, s, log=logger, resume=resume)
        save_backbone_state(model, out_path)
        loaded = load_resnet(s.arch, out_path)  # type: ignore[arg-type]
        # The loader's model has the 1000-way head; evaluation needs ours back on top.
        loaded.fc = torch.nn.Linear(loaded.fc.in_features, len(names))
        loaded.fc.load_state_dict(model.fc.state_dict())
        loaded.eval()
        metrics: dict[str, Any] = {
            "model": f"toy_{s.arch}", "settings": s.to_dict(), "corpus": str(corpus_dir),
            "training": info, "model_bytes": os.path.getsize(out_path),
            "state_dict": "torchvision resnet keys without fc.* (load_resnet tolerates it)",
        }
        if evaluate:
            q = evaluate_backbone(loaded, corpus, names, image_size=s.image_size,
                                  max_images=s.eval_max_images)
            metrics["quality"] = q
            logger(f"held-out mAP {q['mAP']:.4f} (objects {q['object_mAP']:.4f}), label "
                   f"accuracy {q['label_accuracy']:.4f}")
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
    """``python -m qaclims.vlp.train_toy_backbone CORPUS OUT.pth METRICS [--set k=v ...]``."""
    import argparse
    import json

    # Under oversubscription (other jobs on the same cores), OpenMP's default spin-waiting makes
    # multi-threaded torch many times slower; passive waiting changes no result, only speed.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("corpus_dir")
    p.add_argument("out_path")
    p.add_argument("metrics")
    p.add_argument("--log", default=None)
    p.add_argument("--resume-root", default=None, help="folder of the resumable state")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    over: dict[str, Any] = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    m = train_toy_backbone(a.corpus_dir, a.out_path, a.metrics,
                           settings=ToyBackboneSettings.from_dict(over),
                           log=a.log if a.log else print, resume_root=a.resume_root)
    print(json.dumps({k: m[k] for k in ("training", "quality") if k in m}, indent=1)[:3000])


if __name__ == "__main__":
    main()


__all__ = ["ToyBackboneSettings", "fit_toy_backbone", "image_labels", "save_backbone_state",
           "train_toy_backbone"]
