"""Report figures (matplotlib, Agg): per-class IoU bars, threshold curves, loss curves, runtimes.

Each ``plot_*`` writes one PNG atomically. With nothing to plot it still writes a figure that
says so: report rules always produce their outputs, and the report shows the gap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qaclims.store import atomic_path

PathLike = str | os.PathLike[str]
DPI = 110


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    pyplot().close(fig)


def _empty(path: PathLike, message: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, color="0.35")
    save_figure(fig, path)


def _colors(n: int) -> list[Any]:
    cmap = pyplot().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# ---------------------------------------------------------------------------- per-class IoU
def plot_class_iou(per_class: Mapping[str, Mapping[str, Mapping[str, float | None]]],
                   path: PathLike) -> None:
    """One panel per stage: IoU (%) of every class, one bar per experiment, with each
    experiment's mIoU in the legend. ``per_class``: ``{stage: {experiment: {class: IoU}}}``."""
    stages = [s for s, exps in per_class.items() if exps]
    if not stages:
        _empty(path, "no per-class IoU yet")
        return
    plt = pyplot()
    n_cls = max(len(c) for s in stages for c in per_class[s].values())
    all_exps = list(dict.fromkeys(e for s in stages for e in per_class[s]))
    color_of = dict(zip(all_exps, _colors(len(all_exps)), strict=True))  # same in every panel
    width = float(np.clip(1.2 + n_cls * (0.18 + 0.12 * len(all_exps)), 6, 40))
    fig, axes = plt.subplots(len(stages), 1, figsize=(width, 2.8 * len(stages)), squeeze=False)
    for ax, stage in zip(axes[:, 0], stages, strict=True):
        exps = per_class[stage]
        classes = list(dict.fromkeys(c for v in exps.values() for c in v))
        x = np.arange(len(classes))
        bar = 0.8 / len(exps)
        for k, (exp, iou) in enumerate(exps.items()):
            vals = np.array([np.nan if iou.get(c) is None else 100 * iou[c] for c in classes])
            miou = np.nanmean(vals) if np.isfinite(vals).any() else math.nan
            ax.bar(x - 0.4 + bar * (k + 0.5), np.nan_to_num(vals), bar, color=color_of[exp],
                   label=f"{exp} (mIoU {miou:.1f})")
        tilt = len(classes) > 6
        ax.set_xticks(x, classes, rotation=45 if tilt else 0, ha="right" if tilt else "center",
                      fontsize=8)
        ax.set_ylim(0, 115)  # room for the legend above the 100 % line
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("IoU (%)")
        ax.set_title(stage, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=min(len(exps), 4), loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)


# ------------------------------------------------------------------------- threshold curves
def plot_threshold_curves(files: Mapping[str, PathLike], path: PathLike) -> None:
    """CAM mIoU against the background threshold, one curve per experiment
    (``{experiment: threshold.json}``), each best threshold marked; the fixed threshold dotted."""
    present = {e: Path(p) for e, p in files.items() if Path(p).is_file()}
    if not present:
        _empty(path, "no threshold search yet")
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    fixed = None
    for (exp, p), color in zip(present.items(), _colors(len(present)), strict=True):
        d = json.loads(p.read_text())
        t = np.asarray(d["thresholds"], float)
        m = np.array([np.nan if v is None else 100 * v for v in d["miou"]], float)
        label = exp
        if d.get("best_miou") is not None:
            label += f" (best {100 * d['best_miou']:.1f} @ {d['best_threshold']:.2f})"
            ax.scatter([d["best_threshold"]], [100 * d["best_miou"]], color=color, zorder=3)
        ax.plot(t, m, color=color, lw=1.5, label=label)
        fixed = d.get("fixed_threshold", fixed)
    if fixed is not None:
        ax.axvline(fixed, color="0.5", ls=":", lw=1, label=f"fixed threshold {fixed:g}")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("CAM mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- loss curves
X_COLUMNS = ("step", "iteration", "iter", "epoch")
NON_LOSS = {*X_COLUMNS, "lr", "seconds", "time", "images_per_s", "examples_per_s", "pairs"}


def read_loss_curve(path: PathLike) -> pd.DataFrame:
    """A loss curve as a table: TSV/CSV with a header (CAM, RITC, DeepLab), a JSON object with a
    ``curve`` list of rows (IRN), or a JSON list of rows or of numbers (one loss per step)."""
    p = Path(path)
    if p.suffix == ".json":
        d = json.loads(p.read_text())
        rows = d.get("curve", d.get("loss_curve", [])) if isinstance(d, Mapping) else d
        if rows and not isinstance(rows[0], Mapping):
            return pd.DataFrame({"step": np.arange(1, len(rows) + 1), "loss": rows})
        return pd.DataFrame(list(rows))
    return pd.read_csv(p, sep="\t" if p.suffix in (".tsv", ".txt") else ",")


def loss_columns(df: pd.DataFrame) -> list[str]:
    """The loss-like numeric columns, ``loss`` (the total) first."""
    cols = [c for c in df.columns if c not in NON_LOSS and not str(c).startswith(("lr", "n_"))
            and pd.api.types.is_numeric_dtype(df[c])]
    return sorted(cols, key=lambda c: (c != "loss", cols.index(c)))


def smooth(y: np.ndarray, n_points: int = 60) -> np.ndarray:
    """Trailing moving average over ~len/n_points steps (no smoothing for short curves)."""
    window = max(1, len(y) // n_points)
    return pd.Series(y).rolling(window, min_periods=1).mean().to_numpy()


def plot_loss_curves(curves: Mapping[str, PathLike], path: PathLike, ncols: int = 3) -> None:
    """One panel per training run (``{title: curve file}``): every loss component, smoothed,
    the total in black over its raw values; a log scale where the components span more than
    two orders of magnitude."""
    present = {t: p for t, p in curves.items() if Path(p).is_file()}
    if not present:
        _empty(path, "no training run yet")
        return
    plt = pyplot()
    ncols = min(ncols, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows), squeeze=False)
    for ax, (title, p) in zip(axes.flat, present.items(), strict=False):
        df = read_loss_curve(p)
        xcol = next((c for c in X_COLUMNS if c in df.columns), None)
        x = df[xcol].to_numpy() if xcol else np.arange(1, len(df) + 1)
        ys = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in loss_columns(df)}
        for (c, y), color in zip(ys.items(), _colors(len(ys)), strict=True):
            if c == "loss":
                ax.plot(x, y, color="0.75", lw=0.6)
                ax.plot(x, smooth(y), color="black", lw=1.6, label="loss")
            else:
                ax.plot(x, smooth(y), color=color, lw=1.0, label=c)
        finite = np.concatenate([y[np.isfinite(y)] for y in ys.values()]) if ys else np.zeros(0)
        if finite.size and finite.min() > 0 and finite.max() > 100 * finite.min():
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlabel(xcol or "step")
        ax.grid(alpha=0.3)
        if ys:
            ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------- runtimes
def plot_runtimes(summary: pd.DataFrame, path: PathLike) -> None:
    """Total wall time per rule (horizontal bars, most expensive on top), jobs per rule noted.
    ``summary``: :func:`qaclims.report.tables.runtime_summary`."""
    if summary.empty:
        _empty(path, "no benchmark files yet")
        return
    plt = pyplot()
    s = summary.sort_values("total_s")
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(s)))
    minutes = s["total_s"].to_numpy(float) / 60
    ax.barh(s["rule"], minutes, color="tab:blue")
    for y, (m, jobs) in enumerate(zip(minutes, s["jobs"], strict=True)):
        ax.text(m, y, f" {m:.1f} min, {int(jobs)} job{'s' if jobs != 1 else ''}",
                va="center", fontsize=7)
    ax.set_xlabel("total job wall time (minutes)")
    ax.set_xlim(0, max(minutes.max() * 1.35, 1e-3))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


STAGE_TITLES = {"cam": "CAM", "ritc": "RITC", "irn": "IRN", "deeplab": "DeepLab"}


def stage_label(path: PathLike) -> str:
    """"qa_clims: RITC" for ``results/x/qa_clims/ritc/loss_curve.tsv``: the experiment and the
    stage are the two folders above a stage file."""
    p = Path(path)
    stage = p.parent.name
    return f"{p.parent.parent.name}: {STAGE_TITLES.get(stage, stage)}"
