"""The results table of a dataset: CAM, pseudo-mask and DeepLab mIoU per experiment, beside the
paper's numbers (rule ``final_table`` -> ``results/{dataset}/summary/miou_table.{tsv,md,json}``).

One row per experiment, in config order: the CAM experiments (baseline first) with

* ``cam_miou_at_fixed`` - CAM mIoU at the fixed background threshold (0.15, the authors'
  protocol: ``cam_eval/threshold.json``: ``miou_at_fixed``), and ``cam_miou`` at the best
  threshold of the full sweep (``best_miou``, ``best_threshold``) - a separate column, because
  the paper's 67.3 was measured at 0.15, not at a threshold picked on the evaluation split;
* ``pseudo_mask_miou`` - the IRN pseudo masks (``irn/metrics/pseudo_masks.json``: ``miou``);
* ``deeplab_miou`` - DeepLab trained on that experiment's pseudo masks, on the segmentation
  evaluation split (``deeplab/metrics.json``: ``miou``), where one was trained;

then the ground-truth upper bound (DeepLab only), and for the paper's datasets a row with the
paper's numbers (QA-CLIMS, ACM MM 2023: CAM 67.3, mask 77.4 on VOC train; DeepLab-v2 72.4 val /
72.3 test on VOC, 43.2 val on COCO). Every mIoU is in percent; an empty cell is a value that does
not exist (GT has no CAM) or was not computed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qaclims.store import atomic_path, write_json

PathLike = str | os.PathLike[str]

__all__ = ["COLUMNS", "PAPER", "build_rows", "markdown_table", "paper_row", "tsv_table",
           "write_tables"]

#: The paper's numbers (percent) by dataset source; the splits are the papers' (VOC: CAM and
#: masks on train, DeepLab on val and test; COCO: DeepLab on val). Each sits in the column of
#: the protocol it was measured with: the CAM's 67.3 at the fixed threshold 0.15 (the authors'
#: eval_cam, method.md 8), not at the best of a sweep.
PAPER: dict[str, dict[str, float]] = {
    "voc12": {"cam_miou_at_fixed": 67.3, "pseudo_mask_miou": 77.4, "deeplab_miou": 72.4,
              "deeplab_test_miou": 72.3},
    "coco14": {"deeplab_miou": 43.2},
}
PAPER_LABEL = "QA-CLIMS (paper)"

#: (key, header of the markdown table); ``{cam}``, ``{mask}``, ``{seg}`` become the splits.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiment", "experiment"),
    ("labels", "DeepLab trained on"),
    ("cam_miou_at_fixed", "CAM mIoU ({cam}, thr. {fixed}: paper protocol)"),
    ("cam_miou", "CAM mIoU ({cam}, best of sweep)"),
    ("cam_best_threshold", "best thr."),
    ("pseudo_mask_miou", "pseudo-mask mIoU ({mask})"),
    ("deeplab_miou", "DeepLab mIoU ({seg})"),
    ("deeplab_test_miou", "DeepLab mIoU (test)"),
)
_PERCENT = {"cam_miou", "cam_miou_at_fixed", "pseudo_mask_miou", "deeplab_miou",
            "deeplab_test_miou"}


def _read(path: PathLike | None, what: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {path}: not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a JSON object")
    return data


def _percent(data: Mapping[str, Any], key: str, path: PathLike) -> float | None:
    if key not in data:
        raise ValueError(f"{path}: no key {key!r} (keys: {sorted(data)})")
    v = data[key]
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 1:
        raise ValueError(f"{path}: {key} = {v!r}, expected a fraction in [0, 1] or null")
    return 100.0 * float(v)


def paper_row(dataset_source: str) -> dict[str, Any] | None:
    """The paper's numbers for a dataset source (``voc12``, ``coco14``), else None."""
    numbers = PAPER.get(dataset_source)
    if numbers is None:
        return None
    return {"experiment": PAPER_LABEL, "labels": "pseudo masks", "source": "paper", **numbers}


def build_rows(
    *,
    cam: Mapping[str, PathLike],
    pseudo_masks: Mapping[str, PathLike],
    deeplab: Mapping[str, PathLike],
    gt_experiment: str | None = None,
    dataset_source: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table rows and what they were measured on.

    ``cam`` / ``pseudo_masks`` / ``deeplab``: experiment -> its ``threshold.json`` /
    ``pseudo_masks.json`` / ``deeplab/metrics.json``. Rows follow the order of ``cam``, then the
    DeepLab-only experiments (``gt_experiment``: trained on ground truth), then the paper row.
    Returns ``(rows, splits)`` with ``splits`` = {"cam", "mask", "seg", "fixed"} read from the
    files (None where no file says).
    """
    splits: dict[str, Any] = {"cam": None, "mask": None, "seg": None, "fixed": None}

    def note(kind: str, value: Any, path: PathLike) -> None:
        if value is None:
            return
        if splits[kind] is not None and splits[kind] != value:
            raise ValueError(f"{path}: {kind} {value!r} differs from the other experiments' "
                             f"{splits[kind]!r}; one table compares one split")
        splits[kind] = value

    order = list(cam) + [e for e in pseudo_masks if e not in cam]
    order += [e for e in deeplab if e not in order]
    rows = []
    for experiment in order:
        is_gt = experiment == gt_experiment
        row: dict[str, Any] = {
            "experiment": experiment,
            "labels": ("ground truth" if is_gt else "pseudo masks") if experiment in deeplab
            else None,
            "source": "measured",
        }
        t = _read(cam.get(experiment), "CAM threshold file")
        if t is not None:
            path = cam[experiment]
            row["cam_miou"] = _percent(t, "best_miou", path)
            row["cam_miou_at_fixed"] = _percent(t, "miou_at_fixed", path)
            row["cam_best_threshold"] = t.get("best_threshold")
            note("cam", t.get("split"), path)
            note("fixed", t.get("fixed_threshold"), path)
        m = _read(pseudo_masks.get(experiment), "pseudo-mask metrics")
        if m is not None:
            row["pseudo_mask_miou"] = _percent(m, "miou", pseudo_masks[experiment])
            note("mask", m.get("split"), pseudo_masks[experiment])
        d = _read(deeplab.get(experiment), "DeepLab metrics")
        if d is not None:
            row["deeplab_miou"] = _percent(d, "miou", deeplab[experiment])
            note("seg", d.get("split"), deeplab[experiment])
        rows.append(row)
    paper = paper_row(dataset_source) if dataset_source else None
    if paper is not None:
        rows.append(paper)
    return rows, splits


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Every column but those no row fills (e.g. the test column without the paper row)."""
    return [(k, h) for k, h in COLUMNS
            if k in ("experiment", "labels") or any(r.get(k) is not None for r in rows)]


def _cell(key: str, value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key in _PERCENT:
        return f"{value:.{decimals}f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def tsv_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Tab-separated, one header line of column keys, mIoU in percent with 2 decimals."""
    cols = _columns(rows)
    lines = ["\t".join(k for k, _ in cols)]
    lines += ["\t".join(_cell(k, r.get(k), 2) for k, _ in cols) for r in rows]
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]], splits: Mapping[str, Any],
                   title: str = "") -> str:
    """A GitHub-markdown table (mIoU in percent, 1 decimal), with a title line."""
    fill = {k: (v if v is not None else "?") for k, v in splits.items()}
    cols = _columns(rows)
    header = [h.format(**fill) for _, h in cols]
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_cell(k, r.get(k), 1) for k, _ in cols) + " |")
    lines.append("")
    lines.append("mIoU in percent; empty: not applicable or not computed. The paper's numbers "
                 "sit in the column of the protocol they were measured with (CAM: fixed "
                 "threshold); the best of the threshold sweep is picked on the evaluation split "
                 "itself and has no paper counterpart.")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[Mapping[str, Any]], splits: Mapping[str, Any], *,
                 tsv: PathLike, md: PathLike, json_path: PathLike, title: str = "",
                 extra: Mapping[str, Any] | None = None) -> None:
    """The table as TSV, markdown and JSON (rows, splits, ``extra``), each written atomically."""
    with atomic_path(tsv) as tmp:
        tmp.write_text(tsv_table(rows))
    with atomic_path(md) as tmp:
        tmp.write_text(markdown_table(rows, splits, title))
    write_json({"title": title, "unit": "percent", "splits": dict(splits),
                "columns": [k for k, _ in _columns(rows)], "rows": [dict(r) for r in rows],
                **dict(extra or {})}, json_path)
