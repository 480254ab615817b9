"""The results over seeds: mean +- std of every stage's mIoU per experiment, and each
experiment's gain over the baseline seed by seed (rule ``seed_table`` ->
``results/{dataset}/summary/seeds.{tsv,md,json}``; target ``snakemake seeds``).

A gain counts when it survives noise: the table says how many seeds it was positive on, beside
its mean and standard deviation. Each seed's row values come from the same files as the main
table (:func:`qaclims.seg.summary.build_rows`), so the two tables cannot disagree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from qaclims.store import atomic_path, write_json

PathLike = str | os.PathLike[str]

#: (row key, header) of the stages a seed table reports, in pipeline order.
STAGES: tuple[tuple[str, str], ...] = (
    ("cam_miou", "CAM (best thr.)"),
    ("cam_miou_at_fixed", "CAM (thr. {fixed})"),
    ("pseudo_mask_miou", "pseudo masks"),
    ("deeplab_miou", "DeepLab ({seg})"),
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of ``values`` (not empty)."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def _values(per_seed: Mapping[int, Sequence[Mapping[str, Any]]], experiment: str,
            key: str) -> dict[int, float]:
    out = {}
    for seed, rows in per_seed.items():
        for row in rows:
            if row.get("experiment") == experiment and row.get(key) is not None:
                out[seed] = float(row[key])
    return out


def seed_summary(per_seed: Mapping[int, Sequence[Mapping[str, Any]]], *, baseline: str
                 ) -> dict[str, Any]:
    """``per_seed``: seed offset -> the rows of :func:`qaclims.seg.summary.build_rows` of that
    seed's runs (named by their experiment). Returns ``{"seeds", "rows", "gains"}``:

    * ``rows``: per experiment and stage ``{"mean", "std", "n", "values": {seed: v}}``;
    * ``gains``: per experiment other than ``baseline`` and stage, the per-seed difference
      experiment - baseline over the seeds both have, with ``mean``, ``std``, ``n`` and
      ``n_positive``.
    """
    seeds = sorted(per_seed)
    experiments: list[str] = []
    for seed in seeds:
        for row in per_seed[seed]:
            name = row.get("experiment")
            if row.get("source", "measured") == "measured" and name not in experiments:
                experiments.append(name)
    rows = []
    for experiment in experiments:
        row: dict[str, Any] = {"experiment": experiment}
        for key, _ in STAGES:
            vals = _values(per_seed, experiment, key)
            if vals:
                mean, std = mean_std(list(vals.values()))
                row[key] = {"mean": mean, "std": std, "n": len(vals), "values": vals}
        rows.append(row)
    gains = []
    for experiment in experiments:
        if experiment == baseline:
            continue
        gain: dict[str, Any] = {"experiment": experiment, "versus": baseline}
        for key, _ in STAGES:
            ours, base = _values(per_seed, experiment, key), _values(per_seed, baseline, key)
            common = [s for s in seeds if s in ours and s in base]
            if not common:
                continue
            diffs = {s: ours[s] - base[s] for s in common}
            mean, std = mean_std(list(diffs.values()))
            gain[key] = {"mean": mean, "std": std, "n": len(diffs), "values": diffs,
                         "n_positive": sum(d > 0 for d in diffs.values())}
        if len(gain) > 2:
            gains.append(gain)
    return {"seeds": seeds, "rows": rows, "gains": gains}


def _cell(stat: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not stat:
        return ""
    sign = "+" if signed else ""
    text = f"{stat['mean']:{sign}.1f} ± {stat['std']:.1f}"
    if "n_positive" in stat:
        text += f" ({stat['n_positive']}/{stat['n']} > 0)"
    return text


def markdown(summary: Mapping[str, Any], splits: Mapping[str, Any], title: str = "") -> str:
    """Three markdown tables: mean ± std per experiment, gains over the baseline, and every
    seed's value."""
    fill = {"fixed": splits.get("fixed") or "?", "seg": splits.get("seg") or "?"}
    heads = [h.format(**fill) for _, h in STAGES]
    seeds = summary["seeds"]
    lines = [f"# {title}", ""] if title else []
    lines += [f"mIoU (%) over seed offsets {seeds}: mean ± sample std.", ""]
    lines.append("| experiment | seeds | " + " | ".join(heads) + " |")
    lines.append("|---|---:|" + "---:|" * len(STAGES))
    for row in summary["rows"]:
        n = max((row[k]["n"] for k, _ in STAGES if k in row), default=0)
        lines.append(f"| {row['experiment']} | {n} | "
                     + " | ".join(_cell(row.get(k)) for k, _ in STAGES) + " |")
    if summary["gains"]:
        lines += ["", "Gain over the baseline, seed by seed (mean ± std, seeds with a gain > 0):",
                  "", "| experiment | " + " | ".join(heads) + " |",
                  "|---|" + "---:|" * len(STAGES)]
        for gain in summary["gains"]:
            lines.append(f"| {gain['experiment']} - {gain['versus']} | "
                         + " | ".join(_cell(gain.get(k), signed=True) for k, _ in STAGES) + " |")
    lines += ["", "Per seed:", "", "| experiment | seed | " + " | ".join(heads) + " |",
              "|---|---:|" + "---:|" * len(STAGES)]
    for row in summary["rows"]:
        for seed in seeds:
            cells = [row[k]["values"].get(seed) if k in row else None for k, _ in STAGES]
            if all(c is None for c in cells):
                continue
            lines.append(f"| {row['experiment']} | {seed} | "
                         + " | ".join("" if c is None else f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def tsv(summary: Mapping[str, Any]) -> str:
    """One line per (experiment, stage): mean, std, n and the per-seed values (2 decimals)."""
    seeds = summary["seeds"]
    lines = ["\t".join(["experiment", "stage", "mean", "std", "n",
                        *(f"seed{s}" for s in seeds)])]
    for row in summary["rows"]:
        for key, _ in STAGES:
            if key in row:
                st = row[key]
                vals = [st["values"].get(s) for s in seeds]
                lines.append("\t".join([row["experiment"], key, f"{st['mean']:.2f}",
                                        f"{st['std']:.2f}", str(st["n"]),
                                        *("" if v is None else f"{v:.2f}" for v in vals)]))
    return "\n".join(lines) + "\n"


def write_seed_tables(summary: Mapping[str, Any], splits: Mapping[str, Any], *, tsv_path: PathLike,
                      md_path: PathLike, json_path: PathLike, title: str = "") -> None:
    """The seed table as TSV, markdown and JSON, each written atomically."""
    with atomic_path(tsv_path) as tmp:
        tmp.write_text(tsv(summary))
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(summary, splits, title))
    write_json({"title": title, "unit": "percent", "splits": dict(splits), **summary},
               json_path)
