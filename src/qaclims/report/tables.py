"""Report tables: stage metrics, top VQA answers, toy-model quality, dataset statistics, runtimes.

Stage metric files are recognised by where they live under ``results/{dataset}``
(``{experiment}/<stage file>``, see :data:`STAGE_FILES`); any other JSON with an ``miou`` key is
listed under its relative path, so a new stage shows up without a change here.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from qaclims.store import atomic_path

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------- HTML
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 13px;
       margin: 12px; color: #222; }
h1 { font-size: 16px; } h2 { font-size: 14px; margin-top: 18px; }
p.note { color: #555; max-width: 60em; }
table { border-collapse: collapse; margin: 6px 0 14px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; vertical-align: top; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; }
"""


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]],
               bold: set[tuple[int, int]] | None = None) -> str:
    """An HTML table; numbers right-aligned, cells at ``bold`` (row, column) in bold."""
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
           + "</tr>"]
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            cls = ["num"] if isinstance(v, int | float) or _looks_numeric(v) else []
            if bold and (i, j) in bold:
                cls.append("best")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape('' if v is None else str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _looks_numeric(v: Any) -> bool:
    if not isinstance(v, str) or not v:
        return False
    try:
        float(v.rstrip("%").replace(",", ""))
    except ValueError:
        return False
    return True


def html_page(title: str, parts: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_text(text: str, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def pct(v: float | None, digits: int = 1) -> str:
    """0.6123 -> "61.2" (percent points, as the paper's tables); None/NaN -> "-"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.{digits}f}"


# ---------------------------------------------------------------------------- stage metrics
@dataclass(frozen=True)
class StageMetric:
    """One number of one stage of one experiment (``value`` a fraction, None if undefined)."""

    experiment: str
    stage: str
    metric: str
    value: float | None
    split: str | None
    n_images: int | None
    note: str
    source: str

    @property
    def column(self) -> str:
        return f"{self.stage} {self.metric}"


STAGE_FILES: dict[str, str] = {
    "cam_eval/threshold.json": "CAM",
    "irn/metrics/ir_labels.json": "IR labels",
    "irn/metrics/pseudo_masks.json": "Pseudo masks",
    "deeplab/metrics.json": "DeepLab",
}
"""Stage of a metrics file, by its path below ``results/{dataset}/{experiment}/``, in DAG order."""


def split_stage_path(path: PathLike, experiments: Sequence[str] = ()) -> tuple[str, str]:
    """``(experiment, path below the experiment folder)`` of a stage file
    ``.../{experiment}/<stage file>``: the experiment is the deepest folder named in
    ``experiments``, else the folder above a known stage file (:data:`STAGE_FILES`)."""
    parts = Path(path).parts
    names = set(experiments)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in names:
            return parts[i], "/".join(parts[i + 1:])
    posix = Path(path).as_posix()
    for rel in STAGE_FILES:
        if posix.endswith("/" + rel) and len(parts) > len(rel.split("/")):
            return parts[-len(rel.split("/")) - 1], rel
    raise ValueError(f"{path}: no experiment folder (experiments {list(experiments)}) and not a "
                     f"known stage file ({list(STAGE_FILES)})")


def stage_name(rel: str) -> str:
    return STAGE_FILES.get(rel, rel.removesuffix(".json"))


def stage_order(stage: str) -> int:
    names = list(STAGE_FILES.values())
    return names.index(stage) if stage in names else len(names)


def stage_metrics(path: PathLike, experiments: Sequence[str] = ()) -> list[StageMetric]:
    """The numbers of one stage file (empty for a JSON that holds none of them)."""
    experiment, rel = split_stage_path(path, experiments)
    stage = stage_name(rel)
    d = json.loads(Path(path).read_text())
    if not isinstance(d, Mapping):
        return []
    common = dict(experiment=experiment, stage=stage, split=d.get("split"),
                  n_images=d.get("n_images"), source=str(path))
    out: list[StageMetric] = []
    if "best_miou" in d:  # CAM threshold search
        thr = d.get("best_threshold")
        out.append(StageMetric(metric="mIoU", value=d["best_miou"],
                               note="" if thr is None else f"best threshold {thr:.2f}", **common))
        if "miou_at_fixed" in d:
            out.append(StageMetric(metric=f"mIoU @{d.get('fixed_threshold', 0.15):g}",
                                   value=d["miou_at_fixed"], note="fixed threshold", **common))
    elif "fg_precision" in d:  # IR labels: no mIoU (uncertain pixels are left out)
        out.append(StageMetric(metric="fg precision", value=d["fg_precision"],
                               note="confident foreground pixels that are right", **common))
        if "coverage" in d:
            out.append(StageMetric(metric="coverage", value=d["coverage"],
                                   note="pixels with a confident label", **common))
    elif "miou" in d:
        out.append(StageMetric(metric="mIoU", value=d["miou"], note="", **common))
    return out


def collect_stage_metrics(paths: Iterable[PathLike],
                          experiments: Sequence[str] = ()) -> list[StageMetric]:
    """Numbers of every existing stage file, in DAG order; experiments in the given order
    (others after them, by name). Missing files are skipped: the table shows what exists."""
    rows = [m for p in paths if Path(p).is_file() for m in stage_metrics(p, experiments)]
    order = {e: i for i, e in enumerate(experiments)}
    return sorted(rows, key=lambda m: (order.get(m.experiment, len(order)), m.experiment,
                                       stage_order(m.stage)))


def metrics_frame(rows: Sequence[StageMetric]) -> pd.DataFrame:
    """Long table: one row per (experiment, stage, metric)."""
    cols = [f for f in StageMetric.__dataclass_fields__]
    return pd.DataFrame([asdict(r) for r in rows], columns=cols)


def pivot_metrics(rows: Sequence[StageMetric]) -> tuple[list[str], list[str],
                                                         dict[tuple[str, str], float | None]]:
    """``(experiments, columns, {(experiment, column): value})`` in the rows' order."""
    experiments = list(dict.fromkeys(r.experiment for r in rows))
    first: dict[str, tuple[int, str, int]] = {}
    for i, r in enumerate(rows):  # stages in DAG order, a stage's metrics as first seen
        first.setdefault(r.column, (stage_order(r.stage), r.stage, i))
    columns = sorted(first, key=first.__getitem__)
    return experiments, columns, {(r.experiment, r.column): r.value for r in rows}


def write_stage_table(paths: Iterable[PathLike], out_html: PathLike,
                      out_tsv: PathLike | None = None, *, experiments: Sequence[str] = (),
                      title: str = "mIoU per stage and experiment") -> list[StageMetric]:
    """The stage x experiment table (percent, best per column in bold) as HTML, and the long
    table with raw fractions as TSV. Returns the rows."""
    rows = collect_stage_metrics(paths, experiments)
    exps, cols, values = pivot_metrics(rows)
    best: set[tuple[int, int]] = set()
    for j, c in enumerate(cols):
        col = [values.get((e, c)) for e in exps]
        finite = [v for v in col if v is not None]
        if len(finite) > 1:
            best |= {(i, j + 1) for i, v in enumerate(col) if v == max(finite)}
    table = html_table(["experiment", *cols],
                       [[e, *(pct(values.get((e, c))) for c in cols)] for e in exps], bold=best)
    notes = sorted({f"{r.stage}: {r.split} split, {r.n_images} images"
                    for r in rows if r.split is not None})
    parts = [table if rows else "<p>No stage metrics yet.</p>",
             "<p class=\"note\">Values in percent. " + html.escape("; ".join(notes)) + "</p>"]
    write_text(html_page(title, parts), out_html)
    if out_tsv is not None:
        with atomic_path(out_tsv) as tmp:
            metrics_frame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    return rows


def per_class_iou(paths: Iterable[PathLike], experiments: Sequence[str] = (),
                  ) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{stage: {experiment: {class name: IoU}}}`` of the stage files that have per-class IoU
    (CAM at its best threshold, pseudo masks, DeepLab); stages in DAG order."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for p in paths:
        if not Path(p).is_file():
            continue
        experiment, rel = split_stage_path(p, experiments)
        d = json.loads(Path(p).read_text())
        iou = d.get("iou_at_best") if "iou_at_best" in d else d.get("iou")
        if isinstance(iou, Mapping) and iou:
            out.setdefault(stage_name(rel), {})[experiment] = dict(iou)
    order = {e: i for i, e in enumerate(experiments)}
    return {s: dict(sorted(out[s].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
            for s in sorted(out, key=stage_order)}


# ------------------------------------------------------------------------------ top answers
def top_answers_html(corpus_stats: PathLike, out_html: PathLike, n: int = 5) -> dict[str, Any]:
    """The ``n`` most frequent (lemmatised) answers per class and question group, from
    ``corpus_stats.json`` (qaclims.qape.corpus; also printed by ``python -m qaclims.summary``).
    Returns ``{class: {group: [[answer, count], ...]}}`` as shown."""
    stats = json.loads(Path(corpus_stats).read_text())
    top = stats.get("top_answers", {})
    fg, bg = list(stats.get("fg_groups", [])), list(stats.get("bg_groups", []))
    groups = list(dict.fromkeys([*fg, *bg, "fine", "alias", "object", "scene",
                                 *(g for v in top.values() for g in v)]))
    groups = [g for g in groups if any(g in v for v in top.values())]

    def head(g: str) -> str:
        role = "foreground" if g in fg else "background" if g in bg else "not used"
        return f"{g} ({role})"

    shown = {c: {g: [list(a) for a in v.get(g, [])[:n]] for g in groups} for c, v in top.items()}
    rows = [[c, *(", ".join(f"{a} ({k})" for a, k in shown[c][g]) for g in groups)]
            for c in shown]
    summary = (f"{stats.get('pairs_used', '?')} of {stats.get('pairs', '?')} (image, class) pairs "
               f"used, {stats.get('unique_texts', '?')} distinct texts, corpus variant "
               f"{stats.get('variant', '?')}, prompt {stats.get('prompt', '')!r}.")
    write_text(html_page(f"Top {n} VQA answers per class and question group", [
        f"<p class=\"note\">{html.escape(summary)} Counts are (image, class, template) answers "
        "after lemmatisation; foreground groups become the class's foreground texts, "
        "background groups its background texts.</p>",
        html_table(["class", *map(head, groups)], rows)]), out_html)
    return shown


# ------------------------------------------------------------------------------- toy models
_TRAINING_KEYS = ("steps", "stopped_by", "train_seconds", "n_parameters")


def toy_model_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) of a toy model's metrics JSON: its quality numbers (one level of nesting
    for per-group values), training steps/time/size."""
    rows: list[tuple[str, Any]] = []
    for k, v in metrics.get("quality", {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            rows.append((k, v))
        elif k == "per_group" and isinstance(v, Mapping):
            rows += [(f"{k}.{g}", x) for g, x in v.items() if isinstance(x, int | float)]
    training = metrics.get("training", {})
    rows += [(f"training.{k}", training[k]) for k in _TRAINING_KEYS if k in training]
    if "model_bytes" in metrics:
        rows.append(("model_bytes", metrics["model_bytes"]))
    return rows


def _fmt(name: str, v: Any) -> str:
    if isinstance(v, float) and 0 <= v <= 1 and not name.startswith("training."):
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def toy_models_html(models: Mapping[str, PathLike], out_html: PathLike) -> None:
    """One table per toy model (``{title: metrics JSON}``): held-out quality and training."""
    parts = ["<p class=\"note\">The demo's toy models are trained on a synthetic VLP corpus; "
             "these are their scores on its held-out split (fractions in percent).</p>"]
    for title, path in models.items():
        m = json.loads(Path(path).read_text())
        parts.append(f"<h2>{html.escape(title)} ({html.escape(str(m.get('model', '')))})</h2>")
        parts.append(html_table(["metric", "value"],
                                [[k, _fmt(k, v)] for k, v in toy_model_rows(m)]))
    write_text(html_page("Toy models", parts), out_html)


# ---------------------------------------------------------------------------------- dataset
def dataset_html(stats_json: PathLike, out_html: PathLike) -> None:
    """Images per split and per class (``data/stats.json`` of prepare_dataset)."""
    s = json.loads(Path(stats_json).read_text())
    splits = s.get("splits", {})
    split_rows = [[name, v.get("n_images"), v.get("n_with_gt"), v.get("n_unlabelled"),
                   v.get("n_label_pairs")] for name, v in splits.items()]
    names = s.get("classes", [])
    class_rows = [[c, *(splits[sp].get("class_images", {}).get(c, 0) for sp in splits)]
                  for c in names]
    title = (f"Dataset: {s.get('source', '?')}, {s.get('n_images', '?')} images, "
             f"{s.get('num_classes', len(names))} classes")
    write_text(html_page(title, [
        f"<p class=\"note\">{s.get('n_skipped', 0)} images skipped "
        f"{html.escape(json.dumps(s.get('skipped_by_reason') or {}))}.</p>",
        "<h2>Splits</h2>",
        html_table(["split", "images", "with ground truth", "unlabelled", "(image, class) pairs"],
                   split_rows),
        "<h2>Images per class</h2>", html_table(["class", *splits], class_rows)]), out_html)


# --------------------------------------------------------------------------------- runtimes
BENCHMARK_COLUMNS = ("s", "max_rss", "max_vms", "io_in", "io_out", "mean_load", "cpu_time")


def benchmark_rule(rel: Path, rule_names: Sequence[str] = (),
                   experiments: Sequence[str] = ()) -> tuple[str, str]:
    """``(rule, experiment)`` of a benchmark file from its path below the benchmarks folder:
    the deepest path part that is a rule name or starts with one and "_"
    (``train_toy_backbone_resnet18.tsv``); without a match, the deepest part that is neither
    the experiment nor a shard number (``vqa/3.tsv`` -> vqa)."""
    parts = [*rel.parent.parts, rel.stem]
    experiment = parts[0] if len(parts) > 1 and parts[0] in experiments else ""
    rules = sorted(rule_names, key=len, reverse=True)
    for part in reversed(parts):
        for rule in rules:
            if part == rule or part.startswith(rule + "_"):
                return rule, experiment
    rest = [p for p in parts[1 if experiment else 0:] if not p.isdigit()]
    return (rest[-1] if rest else rel.stem), experiment


def read_benchmarks(roots: Iterable[PathLike], rule_names: Sequence[str] = (),
                    experiments: Sequence[str] = ()) -> pd.DataFrame:
    """One row per benchmark file (``**/*.tsv`` under each root; a repeated benchmark gives
    its mean): file, rule, experiment and Snakemake's columns (s, max_rss MB, cpu_time ...)."""
    records = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for f in sorted(root.rglob("*.tsv")):
            df = pd.read_csv(f, sep="\t")
            if df.empty or "s" not in df:
                continue
            rule, exp = benchmark_rule(f.relative_to(root), rule_names, experiments)
            rec = {"file": str(f), "rule": rule, "experiment": exp}
            for c in BENCHMARK_COLUMNS:
                rec[c] = float(pd.to_numeric(df[c], errors="coerce").mean()) if c in df else None
            records.append(rec)
    return pd.DataFrame(records, columns=["file", "rule", "experiment", *BENCHMARK_COLUMNS])


def runtime_summary(bench: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total/mean/max wall seconds, max RSS (MB), total CPU seconds; the most
    expensive rule first."""
    if bench.empty:
        return pd.DataFrame(columns=["rule", "jobs", "total_s", "mean_s", "max_s", "max_rss_mb",
                                     "cpu_s"])
    g = bench.groupby("rule", sort=False)
    out = pd.DataFrame({
        "jobs": g.size(), "total_s": g["s"].sum(), "mean_s": g["s"].mean(),
        "max_s": g["s"].max(), "max_rss_mb": g["max_rss"].max(), "cpu_s": g["cpu_time"].sum(),
    }).reset_index()
    return out.sort_values(["total_s", "rule"], ascending=[False, True]).reset_index(drop=True)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def runtimes_html(bench: pd.DataFrame, out_html: PathLike) -> pd.DataFrame:
    """The per-rule summary and the per-job list as HTML; returns the summary."""
    summary = runtime_summary(bench)
    rows = [[r.rule, int(r.jobs), _hms(r.total_s), f"{r.mean_s:.1f}", f"{r.max_s:.1f}",
             "-" if pd.isna(r.max_rss_mb) else f"{r.max_rss_mb:.0f}",
             "-" if pd.isna(r.cpu_s) else f"{r.cpu_s:.1f}"] for r in summary.itertuples()]
    jobs = [[r.rule, r.experiment, r.file, f"{r.s:.1f}",
             "-" if pd.isna(r.max_rss) else f"{r.max_rss:.0f}"]
            for r in bench.sort_values(["rule", "file"]).itertuples()]
    total = float(bench["s"].sum()) if not bench.empty else 0.0
    write_text(html_page("Runtime per rule (benchmark files)", [
        f"<p class=\"note\">{len(bench)} benchmarked jobs, {_hms(total)} of job wall time in "
        "all (jobs of rules without a <code>benchmark:</code> file are not counted). max RSS in "
        "MB.</p>",
        html_table(["rule", "jobs", "total h:m:s", "mean s", "max s", "max RSS MB",
                    "CPU s"], rows),
        "<h2>Jobs</h2>",
        html_table(["rule", "experiment", "benchmark file", "s", "max RSS MB"], jobs)]),
        out_html)
    return summary
