"""CAM and pseudo-mask overlays of sample images with their VQA texts (the paper's Fig. 3 idea).

One row per sample image: the image with its ground truth, the baseline CAM, the experiment's
CAM, its pseudo mask, and the foreground / background answers the VQA model gave for each of the
image's classes (the texts RITC matches the CAM regions against). A CAM is shown as the maximum
over the image's class maps, on the image.

Samples are picked deterministically: images of the evaluation split with ground truth and
CAMs, preferring those with VQA texts (the QAPE splits), evenly spaced in image-id order.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qaclims.report.figures import pyplot, save_figure
from qaclims.store import read_label_png, voc_palette

PathLike = str | os.PathLike[str]


def pick_samples(rows: pd.DataFrame, available: set[str], preferred: set[str] | None = None,
                 n: int = 4) -> list[str]:
    """``n`` image ids of ``rows`` (with ground truth and labels) that are in ``available``;
    those in ``preferred`` first if there are enough, evenly spaced in id order."""
    ok = rows[rows["has_gt"] & (rows["labels"].map(len) > 0) & rows["image_id"].isin(available)]
    ids = sorted(ok["image_id"])
    if preferred is not None:
        pref = [i for i in ids if i in preferred]
        if len(pref) >= min(n, len(ids)):
            ids = pref
    if len(ids) <= n:
        return ids
    return [ids[int(round(i))] for i in np.linspace(0, len(ids) - 1, n)]


def vqa_texts(corpus: PathLike, image_ids: Sequence[str]) -> dict[str, dict[int, dict[str, list]]]:
    """``{image_id: {class_id: {"fg": [answers], "bg": [answers]}}}`` from ``corpus.parquet``,
    distinct answers in corpus order (the label row itself left out)."""
    df = pd.read_parquet(corpus, columns=["image_id", "class_id", "role", "answer"],
                         filters=[("image_id", "in", list(image_ids))] if image_ids else None)
    out: dict[str, dict[int, dict[str, list]]] = {}
    for r in df[df["role"].isin(["fg", "bg"])].itertuples(index=False):
        texts = out.setdefault(r.image_id, {}).setdefault(int(r.class_id), {"fg": [], "bg": []})
        if r.answer and r.answer not in texts[r.role]:
            texts[r.role].append(r.answer)
    return out


def corpus_image_ids(corpus: PathLike) -> set[str]:
    return set(pd.read_parquet(corpus, columns=["image_id"])["image_id"])


def find_mask(mask_dirs: Sequence[PathLike], image_id: str) -> Path | None:
    for d in mask_dirs:
        p = Path(d) / f"{image_id}.png"
        if p.is_file():
            return p
    return None


def read_rgb(path: PathLike) -> np.ndarray:
    from qaclims.data.images import read_image

    return read_image(path).astype(np.float32) / 255.0


def heat_overlay(image: np.ndarray, cams: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB float image with the max over the CAM planes ``[K', H, W]`` (values in [0, 1]) in
    the jet colour map on top."""
    heat = cams.max(axis=0) if len(cams) else np.zeros(image.shape[:2], np.float32)
    colored = pyplot().get_cmap("jet")(np.clip(heat, 0, 1))[..., :3]
    return (1 - alpha) * image + alpha * colored


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The VOC palette colours of a label map on the image (background left as is; 255, the
    ignore label, in the palette's light colour)."""
    colors = voc_palette().reshape(256, 3).astype(np.float32)[label] / 255.0
    a = np.where(label > 0, alpha, 0.0)[..., None]
    return (1 - a) * image + a * colors


def _text_block(labels: Sequence[int], names: Mapping[int, str],
                texts: Mapping[int, Mapping[str, Sequence[str]]], max_texts: int) -> str:
    lines = []
    for c in labels:
        t = texts.get(int(c))
        lines.append(names.get(int(c), str(c)))
        if t is None:
            lines.append("  (no VQA answers: image not in the QAPE splits)")
            continue
        for role, head in (("fg", "fg"), ("bg", "bg")):
            shown = ", ".join(t[role][:max_texts]) or "-"
            more = f" (+{len(t[role]) - max_texts})" if len(t[role]) > max_texts else ""
            lines += textwrap.wrap(f"{head}: {shown}{more}", 38, initial_indent="  ",
                                   subsequent_indent="      ")
    return "\n".join(lines)


def plot_overlays(manifest: PathLike, classes: PathLike, cam_files: Sequence[PathLike],
                  path: PathLike, *, split: str, corpus: PathLike | None = None,
                  baseline_cam_files: Sequence[PathLike] | None = None,
                  mask_dirs: Sequence[PathLike] | None = None, n_images: int = 4,
                  experiment: str = "", max_texts: int = 4) -> list[str]:
    """The overlay figure of ``n_images`` samples of ``split``; returns their image ids."""
    from qaclims.cam.cam_store import CamStore
    from qaclims.data.manifest import read_classes, read_manifest, split_view

    cls = read_classes(classes)
    names = {c.id: c.name for c in cls}
    rows = split_view(read_manifest(manifest, num_classes=len(cls)), split)
    with CamStore(cam_files) as store:
        available = set(store.image_ids)
        base = CamStore(baseline_cam_files) if baseline_cam_files else None
        try:
            if base is not None:
                available &= set(base.image_ids)
            preferred = corpus_image_ids(corpus) if corpus is not None else None
            ids = pick_samples(rows, available, preferred, n_images)
            texts = vqa_texts(corpus, ids) if corpus is not None else {}
            columns = ["image + ground truth"]
            if base is not None:
                columns.append("baseline CAM")
            columns.append(f"{experiment} CAM" if experiment else "CAM")
            if mask_dirs:
                columns.append("pseudo mask")
            columns.append("VQA answers (fg / bg)")
            _draw(rows.set_index("image_id"), ids, columns, store, base, mask_dirs or [],
                  names, texts, path, max_texts)
        finally:
            if base is not None:
                base.close()
    return ids


def _draw(rows: pd.DataFrame, ids: Sequence[str], columns: Sequence[str], store: Any,
          base: Any, mask_dirs: Sequence[PathLike], names: Mapping[int, str],
          texts: Mapping[str, Any], path: PathLike, max_texts: int) -> None:
    plt = pyplot()
    n_img = len(columns) - 1
    fig, axes = plt.subplots(max(1, len(ids)), len(columns),
                             figsize=(2.3 * n_img + 3.6, 2.4 * max(1, len(ids))), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n_img + [1.6]})
    for ax, title in zip(axes[0], columns, strict=True):
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    if not ids:
        axes[0, 0].text(0, 0.5, "no image of the split has ground truth and CAMs", fontsize=9)
    for r, image_id in enumerate(ids):
        row = rows.loc[image_id]
        image = read_rgb(row["image_path"])
        panels = [label_overlay(image, read_label_png(row["gt_path"]))]
        if base is not None:
            panels.append(heat_overlay(image, base.high_res(image_id)[1]))
        panels.append(heat_overlay(image, store.high_res(image_id)[1]))
        if mask_dirs:
            mask = find_mask(mask_dirs, image_id)
            panels.append(label_overlay(image, read_label_png(mask)) if mask is not None
                          else np.ones_like(image))
        for c, panel in enumerate(panels):
            axes[r, c].imshow(np.clip(panel, 0, 1))
        axes[r, 0].text(0, -0.04, image_id, transform=axes[r, 0].transAxes, fontsize=7,
                        va="top")
        axes[r, -1].text(0, 1, _text_block(list(row["labels"]), names, texts.get(image_id, {}),
                                           max_texts),
                         va="top", ha="left", fontsize=7, family="monospace",
                         transform=axes[r, -1].transAxes)
    fig.tight_layout()
    save_figure(fig, path)
