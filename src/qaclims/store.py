"""File I/O shared by every stage: atomic writes, Parquet tables, JSON and VOC palette PNGs.

Every writer goes through :func:`atomic_path`: the data is written to a temporary file beside the
target and renamed over it only once complete, so a killed job never leaves a file that looks
finished (Snakemake would otherwise treat a half-written output of a killed job as complete
when it is rerun with ``--keep-incomplete`` or by hand).

``tempfile.mkstemp``/``mkdtemp`` create 0600 files and 0700 folders whatever the umask: renamed
into place they would make every result private to its owner, so collaborators on a cluster
could not read results or share caches. :func:`temp_file` and :func:`temp_dir` give the temporary
the mode a plain ``open``/``mkdir`` would have had (0666/0777 less the umask).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike[str]


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` both sets
    and returns it, which would race with threads creating files meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask


def temp_file(directory: PathLike, prefix: str = "", suffix: str = "") -> Path:
    """A new empty temporary file in ``directory`` with the umask's mode (not mkstemp's 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def temp_dir(directory: PathLike, prefix: str = "") -> Path:
    """A new empty temporary folder in ``directory`` with the umask's mode (not mkdtemp's
    0700), so it can be renamed into place as a shared output."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched. The suffix
    of the temporary file defaults to the target's, so format sniffing by extension still works.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temp_file(target.parent, prefix=f".{target.name}.",
                         suffix=suffix if suffix is not None else target.suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def save_torch(obj: Any, path: PathLike) -> None:
    """``torch.save`` through an open file. Given a path, torch names the zip's records after the
    file (``.model.pth.x8k2/data.pkl``), and atomic writes use random temporary names: equal
    weights then got different bytes and checksums, so model ids and every hash built on them
    differed between identical runs. Through a file object the records are ``archive/...``."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


def write_json(data: Any, path: PathLike, indent: int = 2) -> None:
    """Write ``data`` as JSON atomically; numpy scalars and arrays are converted."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, default=_json_default) + "\n")


def read_json(path: PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_parquet(df: Any, path: PathLike) -> None:
    """Write a pandas DataFrame to Parquet (zstd) atomically, without the index."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, compression="zstd")


@functools.lru_cache(maxsize=1)
def _voc_palette_list() -> tuple[int, ...]:
    return tuple(voc_palette().tolist())


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map as a flat array of 768 ints (index 255 = ignore, light)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette.reshape(-1)


def write_label_png(label: np.ndarray, path: PathLike) -> None:
    """Write a uint8 label map (0 bg, 1..K classes, 255 ignore) as a VOC palette PNG, atomically."""
    from PIL import Image

    if label.ndim != 2:
        raise ValueError(f"{path}: label map must be 2-D, got shape {label.shape}")
    img = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    img.putpalette(list(_voc_palette_list()))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a label PNG as its palette indices (uint8, H x W). RGB PNGs are rejected."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette or grey label PNG, got mode {img.mode}")
        return np.array(img, dtype=np.uint8)
