"""Provenance sidecars: ``<output>.meta.json`` beside every artifact a rule script writes.

A sidecar says what made the artifact: the rule, its wildcards and params, the sha256 of every
input (a directory: one hash over its sorted relative paths and file hashes), the artifact's own
sha256, the code version (git commit + dirty flag, else the package version), the versions of the
packages that decide results, the device and CUDA version, the host and SLURM job id, and the
start/end time. A ``directory()`` output gets ``<dir>.meta.json`` next to the directory, so the
sidecar never changes the directory's content (or its hash).

Sidecars are not declared outputs and nothing here enters ``params:``, so recording provenance
never makes Snakemake rerun a job. Rule scripts call it last, once their outputs are complete::

    import _srcpath
    ...
    _srcpath.record_provenance(snakemake)   # -> record_provenance(snakemake, started=...)

Hashing reuses the digest in an input's own sidecar when its size and mtime still match, so a
large artifact (CAM shards, fetched weights) is read once, by the job that wrote it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from qaclims.store import atomic_path

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

FORMAT = "qaclims.provenance"
VERSION = 1
SUFFIX = ".meta.json"

PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "transformers", "open_clip_torch", "numpy", "pandas", "pyarrow",
    "h5py", "snakemake",
)
"""Distributions whose versions every sidecar records."""

SLURM_VARS: tuple[str, ...] = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                               "SLURM_JOB_PARTITION", "SLURM_CLUSTER_NAME")

_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------ hashing
def sidecar_path(artifact: PathLike) -> Path:
    """``<artifact>.meta.json``; a directory's is the file next to it: ``dir.meta.json``."""
    return Path(str(os.fspath(artifact)).rstrip("/\\") + SUFFIX)


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _dir_files(path: Path) -> list[tuple[str, Path]]:
    """(posix relative path, file) of every file under ``path``, sorted; Snakemake's marker out."""
    files = [(f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file()]
    return sorted((rel, f) for rel, f in files if rel != ".snakemake_timestamp")


def _stat_signature(path: Path) -> str:
    """Cheap fingerprint of a file or directory: sizes and mtimes (not the contents)."""
    if path.is_dir():
        items = [(rel, f.stat()) for rel, f in _dir_files(path)]
    else:
        items = [("", path.stat())]
    h = hashlib.sha256()
    for rel, st in items:
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def path_digest(path: PathLike, *, reuse_sidecar: bool = True) -> dict[str, Any]:
    """``{"path", "kind", "sha256", "bytes", "n_files"?}`` of a file or a directory.

    A directory's sha256 is the hash of ``"<relative path>\\0<file sha256>\\n"`` over its files in
    sorted order (names and contents count, timestamps do not). With ``reuse_sidecar`` the digest
    recorded in the path's own sidecar is taken when its size/mtime signature still matches.
    A missing path gives ``kind: "missing"`` (no hash) instead of an error.
    """
    p = Path(path)
    out: dict[str, Any] = {"path": os.fspath(path)}
    if not p.exists():
        return {**out, "kind": "missing", "sha256": None, "bytes": None}
    signature = _stat_signature(p)
    if reuse_sidecar:
        cached = _cached_digest(p, signature)
        if cached is not None:
            return {**out, **cached}
    if p.is_dir():
        h, total, files = hashlib.sha256(), 0, _dir_files(p)
        for rel, f in files:
            h.update(f"{rel}\0{file_sha256(f)}\n".encode())
            total += f.stat().st_size
        return {**out, "kind": "directory", "sha256": h.hexdigest(), "bytes": total,
                "n_files": len(files)}
    return {**out, "kind": "file", "sha256": file_sha256(p), "bytes": p.stat().st_size}


def _cached_digest(p: Path, signature: str) -> dict[str, Any] | None:
    side = sidecar_path(p)
    if not side.is_file():
        return None
    try:
        art = json.loads(side.read_text())["artifact"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if art.get("signature") != signature or not art.get("sha256"):
        return None
    return {k: art[k] for k in ("kind", "sha256", "bytes", "n_files") if k in art}


# ------------------------------------------------------------------------------- environment
def code_version(source_dir: PathLike | None = None) -> dict[str, Any]:
    """``{"version", "git_commit", "git_dirty", "package_version", "source"}``.

    ``version`` is ``<commit>`` or ``<commit>-dirty`` inside a git checkout of the package
    (modified tracked files count as dirty), else ``qaclims <package version>``.
    """
    from qaclims import __version__

    src = Path(source_dir) if source_dir is not None else Path(__file__).resolve().parent
    out: dict[str, Any] = {"package_version": __version__, "git_commit": None,
                           "git_dirty": None}
    try:
        commit = _git(src, "rev-parse", "HEAD")
        dirty = bool(_git(src, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {**out, "version": f"qaclims {__version__}", "source": "package"}
    out.update(git_commit=commit, git_dirty=dirty)
    return {**out, "version": commit + ("-dirty" if dirty else ""), "source": "git"}


def _git(cwd: Path, *args: str) -> str:
    res = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                         timeout=30, check=True)
    return res.stdout.strip()


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """The accelerator the job saw. torch is only asked if the job imported it: a job that
    never loaded torch ran on the CPU, and importing it here would cost seconds."""
    out: dict[str, Any] = {"device": "cpu", "torch_loaded": "torch" in sys.modules,
                           "cuda_version": None, "gpus": [],
                           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if not out["torch_loaded"]:
        return out
    torch = sys.modules["torch"]
    try:
        out["cuda_version"] = torch.version.cuda
        if torch.cuda.is_available():
            out["device"] = "cuda"
            out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out["cudnn_version"] = torch.backends.cudnn.version()
    except Exception as exc:  # provenance must never fail a finished job
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def host_info() -> dict[str, Any]:
    return {"host": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "pid": os.getpid(),
            **{k.lower(): os.environ.get(k) for k in SLURM_VARS}}


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ the sidecars
def jsonable(value: Any) -> Any:
    """Params and resources as plain JSON (paths, tuples, sets, numpy scalars, the rest str)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "keys") and callable(value.keys) and list(value.keys()):  # Namedlist
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return jsonable(value.item())
    return str(value)


def _flat(value: Any) -> list[str]:
    if isinstance(value, str | os.PathLike):
        return [os.fspath(value)]
    return [p for v in value for p in _flat(v)]


def named_paths(files: Any) -> list[tuple[str | None, str]]:
    """``(name, path)`` for each path of a Snakemake Namedlist, a mapping or a plain list
    (names None); a named list of paths gives its name to each of them."""
    names: dict[str, str] = {}
    if hasattr(files, "items") and callable(files.items):
        for name, value in files.items():
            for p in _flat(value):
                names.setdefault(p, name)
        if isinstance(files, Mapping):
            files = list(files.values())
    return [(names.get(p), p) for p in _flat(files)]


def _named_dict(nl: Any) -> dict[str, Any]:
    """Named entries of a Namedlist (or a mapping) as JSON; a list without names: positional."""
    if nl is None:
        return {}
    if isinstance(nl, Mapping):
        return {str(k): jsonable(v) for k, v in nl.items()}
    named = {str(k): jsonable(v) for k, v in nl.items()} if hasattr(nl, "items") else {}
    if not named and len(nl):
        named["_positional"] = jsonable(list(nl))
    return named


def build_provenance(*, rule: str, inputs: Any, outputs: Any, params: Any = None,
                     wildcards: Any = None, threads: int | None = None, resources: Any = None,
                     log: Any = None, started: float | None = None,
                     finished: float | None = None) -> dict[str, Any]:
    """The part of the record shared by every output of one job (no per-artifact fields)."""
    finished = time.time() if finished is None else finished
    record: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "rule": rule,
        "wildcards": _named_dict(wildcards), "params": _named_dict(params),
        "threads": threads, "resources": _named_dict(resources),
        "inputs": [{"name": name, **path_digest(p)} for name, p in named_paths(inputs or [])],
        "outputs": [{"name": name, "path": p} for name, p in named_paths(outputs or [])],
        "log": [os.fspath(p) for p in (log or [])],
        "code": code_version(), "packages": package_versions(), "device": device_info(),
        **host_info(),
        "started": _iso(started) if started is not None else None, "finished": _iso(finished),
        "seconds": round(finished - started, 3) if started is not None else None,
    }
    return record


def write_sidecar(artifact: PathLike, record: Mapping[str, Any]) -> Path:
    """Hash ``artifact`` and write ``record`` + that digest to its sidecar, atomically."""
    p = Path(artifact)
    digest = path_digest(p, reuse_sidecar=False)
    if digest["kind"] != "missing":
        digest["signature"] = _stat_signature(p)
    target = sidecar_path(artifact)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps({**record, "artifact": digest}, indent=2, sort_keys=False)
                       + "\n")
    return target


def record_provenance(job: Any, *, started: float | None = None) -> list[Path]:
    """Write one sidecar per output of a finished Snakemake job; returns the sidecar paths.

    ``job`` is the ``snakemake`` object of a rule script (or anything with ``input``,
    ``output``, ``params``, ``wildcards``, ``rule``, ``threads``, ``resources``, ``log``).
    ``started`` is the job's start (epoch seconds); the end is now. Outputs that do not exist
    (an optional output the script legitimately skipped) get no sidecar.

    Never raises (an ``Exception``): it runs after the outputs are complete, and a failing job
    would make Snakemake delete them - hours of training lost over a full disk or an unreadable
    input while hashing. The error is logged naming the output, and a sidecar left from an
    earlier run is removed so it cannot describe the new file.
    """
    outputs = [p for _, p in named_paths(job.output) if Path(p).exists()]
    try:
        record = build_provenance(
            rule=str(getattr(job, "rule", None)), inputs=getattr(job, "input", []),
            outputs=job.output, params=getattr(job, "params", None),
            wildcards=getattr(job, "wildcards", None), threads=getattr(job, "threads", None),
            resources=getattr(job, "resources", None), log=getattr(job, "log", None),
            started=started,
        )
    except Exception as err:  # noqa: BLE001 - see above: the outputs must survive
        for p in outputs:
            _provenance_failed(p, err)
        return []
    written = []
    for p in outputs:
        try:
            written.append(write_sidecar(p, record))
        except Exception as err:  # noqa: BLE001
            _provenance_failed(p, err)
    return written


def _provenance_failed(output: PathLike, err: BaseException) -> None:
    log.error("provenance of %s not recorded (%s: %s); the output is kept", output,
              type(err).__name__, err)
    with contextlib.suppress(OSError):
        sidecar_path(output).unlink()


def read_provenance(artifact: PathLike) -> dict[str, Any]:
    """The sidecar of ``artifact`` (a path to the sidecar itself works too)."""
    p = Path(artifact)
    side = p if p.name.endswith(SUFFIX) else sidecar_path(p)
    return json.loads(side.read_text())
