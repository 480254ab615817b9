"""Plain-text summary of a results folder, printed at the end of ``make demo``.

    python -m qaclims.summary results/synthetic

Each section reads one artifact of a stage. An artifact that has not been produced yet is listed
as missing instead of being left out without a word.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def dataset_section(results: Path) -> str | None:
    stats_path = results / "data" / "stats.json"
    if not stats_path.is_file():
        return None
    stats = json.loads(stats_path.read_text())
    splits = stats["splits"]
    out = [f"Dataset ({stats['source']}): {stats['n_images']} images, {stats['num_classes']} "
           f"classes, {stats['n_skipped']} skipped {stats['skipped_by_reason'] or ''}".rstrip()]
    out.append(_table(
        [[s, v["n_images"], v["n_with_gt"], v["n_unlabelled"],
          " ".join(f"{k}:{n}" for k, n in v["labels_per_image"].items())]
         for s, v in splits.items()],
        ["split", "images", "with gt", "unlabelled", "labels per image (n:images)"],
    ))
    names = stats["classes"]
    out.append("\nImages per class")
    out.append(_table([[c, *(splits[s]["class_images"][c] for s in splits)] for c in names],
                      ["class", *splits]))
    cooc_path = results / "data" / "cooccurrence.tsv"
    if cooc_path.is_file():
        cooc = pd.read_csv(cooc_path, sep="\t")
        split = "train_aug" if "train_aug" in set(cooc["split"]) else cooc["split"].iloc[0]
        sub = cooc[cooc["split"] == split]
        mat = {(r.class_a, r.class_b): r.n_images for r in sub.itertuples()}
        rows = [[a, *(mat.get((a, b), mat.get((b, a), 0)) for b in names)] for a in names]
        out.append(f"\nClass co-occurrence ({split}: images holding both classes)")
        out.append(_table(rows, ["", *names]))
    return "\n".join(out)


def toy_models_section(toy: Path) -> str | None:
    vqa_path, clip_path = toy / "blip_vqa_metrics.json", toy / "clip_metrics.json"
    if not (vqa_path.is_file() and clip_path.is_file()):
        return None
    vqa, clip = json.loads(vqa_path.read_text()), json.loads(clip_path.read_text())
    q, c = vqa["quality"], clip["quality"]
    groups = " ".join(f"{g} {v:.1%}" for g, v in q["per_group"].items())
    return "\n".join([
        f"Toy models ({toy})",
        f"  BLIP VQA: held-out exact match {q['exact_match']:.1%} ({groups}); "
        f"{vqa['training']['n_parameters']:,} parameters, {vqa['training']['steps']} steps "
        f"(stopped by {vqa['training']['stopped_by']}) in {vqa['training']['train_seconds']:.0f} s",
        f"  CLIP: masked-object class {c['object_class_accuracy']:.1%}, masked-context "
        f"{c['context_accuracy']:.1%}, object region prefers class over its context "
        f"{c['object_vs_context']:.1%}; {clip['training']['n_parameters']:,} parameters, "
        f"{clip['training']['steps']} steps in {clip['training']['train_seconds']:.0f} s",
    ])


def qape_section(results: Path) -> str | None:
    path = results / "qape" / "corpus_stats.json"
    if not path.is_file():
        return None
    stats = json.loads(path.read_text())
    out = [f"QAPE corpus: {stats['pairs_used']} of {stats['pairs']} (image, class) pairs used, "
           f"{stats['empty_background_pairs']} without background text, "
           f"{stats['unique_texts']} distinct texts ({stats['variant']} variant)",
           "Top answers per class and question group (answer:count)"]
    rows = []
    for cls, groups in stats["top_answers"].items():
        rows.append([cls, *(" ".join(f"{a}:{n}" for a, n in groups.get(g, [])[:3])
                            for g in ("fine", "alias", "object", "scene"))])
    out.append(_table(rows, ["class", "fine", "alias", "object", "scene"]))
    return "\n".join(out)


def runtime_section(results: Path, toy: Path | None = None) -> str | None:
    """Wall time per rule from the benchmark files, the most expensive rule first."""
    import re

    from qaclims.report.tables import read_benchmarks, runtime_summary

    rules_dir = Path(__file__).resolve().parents[2] / "workflow" / "rules"
    rule_names = sorted({m.group(1) for f in rules_dir.glob("*.smk")
                         for m in re.finditer(r"(?m)^\s*(?:local)?rule (\w+):", f.read_text())})
    roots = [results / "benchmarks"] + ([toy / "benchmarks"] if toy is not None else [])
    bench = read_benchmarks(roots, rule_names)
    if bench.empty:
        return None
    summary = runtime_summary(bench)
    total = float(summary["total_s"].sum())
    rows = [[r.rule, r.jobs, f"{r.total_s / 60:.1f}", f"{100 * r.total_s / total:.0f}%",
             f"{r.max_s / 60:.1f}"] for r in summary.itertuples()]
    return "\n".join([
        f"Job wall time per rule ({total / 60:.1f} min over {len(bench)} benchmarked jobs; "
        "jobs run side by side where cores allow)",
        _table(rows, ["rule", "jobs", "total min", "share", "longest job min"]),
    ])


SECTIONS: dict[str, tuple[str, Callable[[Path], str | None]]] = {
    "dataset": ("data/stats.json", dataset_section),
    "qape": ("qape/corpus_stats.json", qape_section),
}


def summarise(results: Path, toy: Path | None = None) -> str:
    parts, missing = [], []
    if toy is not None:
        text = toy_models_section(toy)
        if text is None:
            missing.append(f"toy models ({toy}/*_metrics.json)")
        else:
            parts.append(text)
    for name, (artifact, section) in SECTIONS.items():
        text = section(results)
        if text is None:
            missing.append(f"{name} ({results / artifact})")
        else:
            parts.append(text)
    runtimes = runtime_section(results, toy)
    if runtimes is not None:
        parts.append(runtimes)
    if missing:
        parts.append("Not produced yet: " + ", ".join(missing))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results/{dataset} folder")
    parser.add_argument("--toy", type=Path, help="toy models folder, resources/weights/toy/{name}")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"no results folder at {args.results}")
    print(summarise(args.results, args.toy))


if __name__ == "__main__":
    main()
