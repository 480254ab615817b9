"""Compare two result trees of the same pipeline and name the first artifact whose content differs.

    python -m qaclims.compare_runs results_a/synthetic results_b/synthetic

Two runs of the same commit and config should give the same artifacts bit for bit; when they do
not, the first artifact that differs (in the order run A wrote them: a rule's outputs come after
its inputs) is where the drift entered, and everything after it may just inherit it.

What counts as content: arrays, tables, tensors, pixels and JSON values, not container bytes.
HDF5 object headers carry timestamps, zip-based ``.pth`` files and PNGs carry metadata, so those
are decoded before comparing. Timing fields (seconds, dates, throughput) and files that hold only
timings or provenance (logs, benchmarks, ``*.meta.json`` sidecars, the rendered report) are left
out: they differ between identical runs by nature.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TIMING_KEYS = frozenset({
    "seconds", "minutes", "hours", "elapsed", "elapsed_s", "elapsed_seconds", "wall_s",
    "wall_seconds", "train_seconds", "train_minutes", "runtime", "runtime_s", "started",
    "finished", "timestamp", "time", "date", "created", "images_per_s", "images_per_second",
    "steps_per_s", "questions_per_s", "throughput", "duration", "duration_s", "host", "hostname",
    "pid", "slurm_job_id",
})
"""JSON keys whose values measure time or the machine, not the result."""

TIMING_SUFFIXES = ("_seconds", "_minutes", "_per_s", "_per_second", "_s_per_step", "_time")

SKIP_DIRS = frozenset({"logs", "benchmarks", ".snakemake", "report", "__pycache__", "cache",
                       "_resume"})
"""Folders that hold only timings, logs, rendered views of other artifacts, the answer cache
(entries named by time; their content reaches the answers files) or transient training state."""

SKIP_SUFFIXES = (".meta.json", ".log", ".html", ".zip", ".tmp", ".lock")


@dataclass(frozen=True)
class Roots:
    """The working directories of the two runs: a path under one of them is written with
    ``<root>`` in its place, so two clones in different folders compare equal."""

    a: str
    b: str

    def norm(self, value: Any, side: str) -> Any:
        root = self.a if side == "a" else self.b
        if isinstance(value, str) and root and root in value:
            return value.replace(root, "<root>")
        if isinstance(value, dict):
            return {k: self.norm(v, side) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.norm(v, side) for v in value)
        return value


NO_ROOTS = Roots("", "")


def run_root(tree: Path) -> Path:
    """The working directory a result tree belongs to: the folder that holds ``results/``."""
    tree = tree.resolve()
    if (tree / "results").is_dir():
        return tree
    for parent in tree.parents:
        if parent.name == "results":
            return parent.parent
    return tree


@dataclass(frozen=True)
class Difference:
    """One artifact that differs: its path relative to the tree roots and what differs in it."""

    path: str
    detail: str


def is_timing_key(key: str) -> bool:
    k = key.lower()
    return k in TIMING_KEYS or k.endswith(TIMING_SUFFIXES)


def artifacts(root: Path) -> list[Path]:
    """Comparable files under ``root``, oldest first (the order the run wrote them). A working
    directory (one holding ``results/``) contributes its ``results/`` and ``resources/`` only."""
    if (root / "results").is_dir():
        paths = [p for sub in ("resources", "results") for p in (root / sub).rglob("*")]
    else:
        paths = list(root.rglob("*"))
    out = []
    for path in paths:
        rel = path.relative_to(root)
        if not path.is_file() or any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if path.name.endswith(SKIP_SUFFIXES) or path.name.startswith(".snakemake"):
            continue
        out.append(path)
    return sorted(out, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def strip_timing(value: Any) -> Any:
    """``value`` with every timing key removed, recursively."""
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if not is_timing_key(str(k))}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    return value


def _first_json_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"key {where}/{key} only in {'B' if key not in a else 'A'}"
            found = _first_json_difference(a[key], b[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where or '/'}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_json_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    same = a == b or (isinstance(a, float) and isinstance(b, float)
                      and math.isnan(a) and math.isnan(b))
    return None if same else f"{where or '/'}: {a!r} vs {b!r}"


def _array_difference(name: str, a: np.ndarray, b: np.ndarray) -> str | None:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
    if a.dtype.kind in "fc":
        if np.array_equal(a, b, equal_nan=True):
            return None
    elif np.array_equal(a, b):
        return None
    if a.dtype.kind in "biufc":
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        n = int(np.count_nonzero(diff))
        return f"{name}: {n} of {a.size} values differ, max |a-b| {float(np.nanmax(diff)):.3g}"
    return f"{name}: contents differ"


def _compare_json(a: Path, b: Path, roots: Roots) -> str | None:
    return _first_json_difference(roots.norm(strip_timing(json.loads(a.read_text())), "a"),
                                  roots.norm(strip_timing(json.loads(b.read_text())), "b"))


def _normalised_frame(frame: Any, roots: Roots, side: str) -> Any:
    frame = frame[[c for c in frame.columns if not is_timing_key(str(c))]].copy()
    for col in frame.columns:
        if frame[col].dtype == object or str(frame[col].dtype).startswith("str"):
            frame[col] = frame[col].map(lambda v: roots.norm(v, side))
    return frame


def _compare_frames(fa: Any, fb: Any) -> str | None:
    if list(fa.columns) != list(fb.columns) or len(fa) != len(fb):
        return f"columns/rows {list(fa.columns)} x {len(fa)} vs {list(fb.columns)} x {len(fb)}"
    for col in fa.columns:
        if not fa[col].equals(fb[col]):
            rows = np.flatnonzero((fa[col] != fb[col]).to_numpy())
            first = int(rows[0]) if len(rows) else 0
            return (f"column {col!r}: {len(rows)} rows differ, first row {first}: "
                    f"{fa[col].iloc[first]!r} vs {fb[col].iloc[first]!r}")
    return None


def _compare_parquet(a: Path, b: Path, roots: Roots) -> str | None:
    import pandas as pd

    return _compare_frames(_normalised_frame(pd.read_parquet(a), roots, "a"),
                           _normalised_frame(pd.read_parquet(b), roots, "b"))


def _compare_tsv(a: Path, b: Path, roots: Roots) -> str | None:
    """Tables (loss curves, summaries) with their timing columns left out."""
    import pandas as pd

    sep = "," if a.suffix == ".csv" else "\t"
    try:
        fa, fb = pd.read_csv(a, sep=sep), pd.read_csv(b, sep=sep)
    except (ValueError, pd.errors.ParserError):
        return _compare_bytes(a, b, roots)
    return _compare_frames(_normalised_frame(fa, roots, "a"), _normalised_frame(fb, roots, "b"))


def _h5_items(f: Any) -> Iterator[tuple[str, Any]]:
    import h5py

    names: list[str] = []
    f.visit(names.append)
    yield "/", f
    for name in sorted(names):
        obj = f[name]
        yield name, obj if isinstance(obj, h5py.Dataset | h5py.Group) else None


def _compare_h5(a: Path, b: Path, roots: Roots) -> str | None:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ia, ib = dict(_h5_items(fa)), dict(_h5_items(fb))
        if set(ia) != set(ib):
            only = sorted(set(ia) ^ set(ib))[:3]
            return f"members differ: {only}"
        for name in ia:
            oa, ob = ia[name], ib[name]
            attrs_a = {k: v for k, v in oa.attrs.items() if not is_timing_key(k)}
            attrs_b = {k: v for k, v in ob.attrs.items() if not is_timing_key(k)}
            if set(attrs_a) != set(attrs_b):
                return f"{name}: attributes {sorted(attrs_a)} vs {sorted(attrs_b)}"
            for key in sorted(attrs_a):
                va, vb = attrs_a[key], attrs_b[key]
                if isinstance(va, str | bytes) or isinstance(vb, str | bytes):
                    va, vb = roots.norm(_text(va), "a"), roots.norm(_text(vb), "b")
                    found = None if va == vb else f"{name}@{key}: {va!r} vs {vb!r}"
                else:
                    found = _array_difference(f"{name}@{key}", np.asarray(va), np.asarray(vb))
                if found:
                    return found
            if isinstance(oa, h5py.Dataset):
                found = _array_difference(name, oa[()] if oa.shape != () else np.asarray(oa[()]),
                                          ob[()] if ob.shape != () else np.asarray(ob[()]))
                if found:
                    return found
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj.detach().cpu().numpy() if obj.dtype != torch.bfloat16 else \
            obj.detach().float().cpu().numpy()
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if not is_timing_key(str(k)):
                yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _compare_torch(a: Path, b: Path, roots: Roots) -> str | None:
    import torch

    ta = dict(_tensors(torch.load(a, map_location="cpu", weights_only=True)))
    tb = dict(_tensors(torch.load(b, map_location="cpu", weights_only=True)))
    if set(ta) != set(tb):
        return f"entries differ: {sorted(set(ta) ^ set(tb))[:3]}"
    for name in sorted(ta):
        va, vb = ta[name], tb[name]
        if isinstance(va, np.ndarray) and isinstance(vb, np.ndarray):
            found = _array_difference(name or "/", va, vb)
        else:
            found = _first_json_difference(roots.norm(va, "a"), roots.norm(vb, "b"), name)
        if found:
            return found
    return None


def _compare_image(a: Path, b: Path, roots: Roots) -> str | None:
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        if ia.mode != ib.mode:
            return f"mode {ia.mode} vs {ib.mode}"
        return _array_difference("pixels", np.asarray(ia), np.asarray(ib))


def _compare_bytes(a: Path, b: Path, roots: Roots) -> str | None:
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        return None
    if len(da) != len(db):
        return f"{len(da)} vs {len(db)} bytes"
    first = next(i for i, (x, y) in enumerate(zip(da, db, strict=True)) if x != y)
    return f"bytes differ from offset {first}"


COMPARERS = {
    ".json": _compare_json, ".parquet": _compare_parquet, ".h5": _compare_h5,
    ".hdf5": _compare_h5, ".pth": _compare_torch, ".pt": _compare_torch,
    ".png": _compare_image, ".tsv": _compare_tsv, ".csv": _compare_tsv,
}


def compare_file(a: Path, b: Path, roots: Roots = NO_ROOTS) -> str | None:
    """What differs between two versions of one artifact, or None when their content is equal."""
    comparer = COMPARERS.get(a.suffix.lower(), _compare_bytes)
    try:
        return comparer(a, b, roots)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a difference, not a crash
        return f"could not compare ({type(exc).__name__}: {exc})"


def compare_trees(tree_a: Path, tree_b: Path) -> list[Difference]:
    """Every artifact that differs between the two trees, in the order run A wrote them; files
    present in only one tree are differences too."""
    tree_a, tree_b = Path(tree_a), Path(tree_b)
    for tree in (tree_a, tree_b):
        if not tree.is_dir():
            raise FileNotFoundError(f"result tree {tree} does not exist or is not a folder")
    roots = Roots(str(run_root(tree_a)), str(run_root(tree_b)))
    in_a = artifacts(tree_a)
    rel_a = {p.relative_to(tree_a).as_posix() for p in in_a}
    rel_b = {p.relative_to(tree_b).as_posix() for p in artifacts(tree_b)}
    found = []
    for path in in_a:
        rel = path.relative_to(tree_a).as_posix()
        if rel not in rel_b:
            found.append(Difference(rel, "only in A"))
            continue
        detail = compare_file(path, tree_b / rel, roots)
        if detail:
            found.append(Difference(rel, detail))
    found += [Difference(rel, "only in B") for rel in sorted(rel_b - rel_a)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qaclims.compare_runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree_a", type=Path,
                        help="run A: a working directory (its results/ and resources/) or a "
                             "results folder such as results/synthetic")
    parser.add_argument("tree_b", type=Path, help="the same folder of run B")
    parser.add_argument("--all", action="store_true", help="list every differing artifact")
    args = parser.parse_args(argv)
    diffs = compare_trees(args.tree_a, args.tree_b)
    n_files = len(artifacts(args.tree_a))
    if not diffs:
        print(f"identical: {n_files} artifacts compared (timings, logs and sidecars left out)")
        return 0
    first = diffs[0]
    print(f"first artifact that differs: {first.path}\n  {first.detail}")
    if args.all:
        for d in diffs[1:]:
            print(f"also differs: {d.path}\n  {d.detail}")
    else:
        print(f"{len(diffs) - 1} more of {n_files} differ (--all lists them)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
