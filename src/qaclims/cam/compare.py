"""CAM mIoU of several experiments side by side (the paper's Tables 4 and 5).

Each row comes from one experiment's ``threshold.json`` (:func:`qaclims.cam.evaluate.
search_threshold`): the mIoU at the paper's fixed threshold (0.15, the authors' protocol) and,
beside it, the paper's number for the same setting where the config gives one; then, as separate
columns, the best mIoU of the full threshold sweep, its threshold and the change against the
baseline CAM network at that best. The paper's numbers are compared with the fixed-threshold
column only: the sweep picks its threshold on the evaluation split. Written as TSV (for tools),
Markdown (for people and the report) and JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from qaclims.store import atomic_path, read_json, write_json

PathLike = str | os.PathLike[str]

COLUMNS = ("experiment", "overrides", "fixed_threshold", "miou_at_fixed", "paper_miou",
           "best_miou", "best_threshold", "delta_vs_baseline")


def describe_overrides(spec: Mapping[str, Any] | None) -> str:
    """``ritc.fat=False; corpus.bg_groups=['object']`` - what an experiment changes."""
    spec = spec or {}
    parts = [f"{section}.{key}={value}" for section in ("ritc", "corpus")
             for key, value in sorted((spec.get(section) or {}).items())]
    return "; ".join(parts) or "full method (cam.ritc)"


def compare_experiments(rows: Sequence[tuple[str, Mapping[str, Any] | None, PathLike]],
                        baseline: str = "baseline") -> list[dict[str, Any]]:
    """One table row per ``(name, spec, threshold.json path)``; mIoU in percent, 1 decimal.

    ``delta_vs_baseline`` is against the row named ``baseline`` (None when it is absent).
    """
    results = {name: read_json(path) for name, _, path in rows}
    base = results.get(baseline)
    out = []
    for name, spec, path in rows:
        r = results[name]
        for key in ("best_miou", "best_threshold", "miou_at_fixed"):
            if key not in r:
                raise ValueError(f"{path}: no {key!r} (not a threshold.json of search_threshold)")
        best = 100.0 * r["best_miou"]
        out.append({
            "experiment": name,
            "overrides": "CAM baseline" if name == baseline else describe_overrides(spec),
            "fixed_threshold": r.get("fixed_threshold"),
            "miou_at_fixed": round(100.0 * r["miou_at_fixed"], 1),
            "paper_miou": (spec or {}).get("paper"),
            "best_miou": round(best, 1),
            "best_threshold": round(float(r["best_threshold"]), 3),
            "delta_vs_baseline": (None if base is None or name == baseline
                                  else round(best - 100.0 * base["best_miou"], 1)),
        })
    return out


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


def to_markdown(table: Sequence[Mapping[str, Any]], title: str = "") -> str:
    fixed = {r.get("fixed_threshold") for r in table}
    at = f"thr. {fixed.pop():g}" if len(fixed) == 1 and None not in fixed else "fixed thr."
    head = ["experiment", "changes", f"mIoU @ {at} (paper protocol)", "paper",
            "best mIoU (full sweep)", "best thr.", "vs baseline (best)"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        delta = r["delta_vs_baseline"]
        cells = [r["experiment"], r["overrides"], f"{r['miou_at_fixed']:.1f}",
                 "-" if r["paper_miou"] is None else f"{r['paper_miou']:.1f}",
                 f"{r['best_miou']:.1f}", f"{r['best_threshold']:.2f}",
                 "-" if delta is None else f"{delta:+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The paper's numbers were measured at the fixed threshold (the authors' "
              "protocol): compare them with the column beside them. The full sweep picks its "
              "threshold on the evaluation split itself."]
    return "\n".join(lines) + "\n"


def write_comparison(table: Sequence[Mapping[str, Any]], tsv: PathLike, md: PathLike,
                     json_path: PathLike | None = None, title: str = "") -> None:
    """The table as TSV, Markdown (and JSON), each written atomically."""
    with atomic_path(tsv) as tmp:
        lines = ["\t".join(COLUMNS)]
        lines += ["\t".join(_cell(r[c]) for c in COLUMNS) for r in table]
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(table, title))
    if json_path is not None:
        write_json(list(table), json_path)
