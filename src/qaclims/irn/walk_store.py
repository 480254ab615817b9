"""``irn/walk/{shard}.h5``: the random walk's output maps of one shard of images (method.md 9.3).

Layout (HDF5)::

    /                    attrs: format="qaclims.walks", version=1, n_images
    /images/<image_id>/  attrs: height, width
        keys      int16 [K']                 1-based class ids (empty: no class, background)
        rw        float16 [K', ceil(H/4), ceil(W/4)]   the walked maps / their maximum

Keeping the walked maps, not only the masks made from them, lets the background threshold of
the pseudo masks be chosen afterwards (``irn.walk_threshold_search``) exactly as the CAMs'
threshold is: one sweep over the evaluation split, then masks at the chosen threshold. The maps
are divided by their maximum before they are stored (float16 range); the masks divide by the
maximum of the upsampled maps anyway (:func:`qaclims.irn.random_walk.normalised_walk`), so the
scale changes nothing. One writer per file, written to a temporary file and renamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.store import atomic_path

PathLike = str | os.PathLike[str]
FORMAT = "qaclims.walks"
VERSION = 1


class WalkShardWriter:
    """Context manager: ``add`` each image's walked maps, renamed into place on success."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._stack = ExitStack()
        self._file: Any = None
        self._n = 0

    def __enter__(self) -> WalkShardWriter:
        import h5py

        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(h5py.File(tmp, "w"))
        self._file.attrs.update({"format": FORMAT, "version": VERSION})
        self._images = self._file.create_group("images")
        return self

    def add(self, image_id: str, keys: Any, rw: Any, size: tuple[int, int]) -> None:
        """One image: ``keys`` 1-based class ids, ``rw`` [K', h4, w4] (K' = 0: background)."""
        k = np.asarray(keys, dtype=np.int16).reshape(-1)
        h, w = (int(s) for s in size)
        shape = (len(k), (h - 1) // 4 + 1, (w - 1) // 4 + 1)
        arr = np.zeros(shape, np.float32) if rw is None else np.asarray(rw, dtype=np.float32)
        if arr.shape != shape:
            raise ValueError(f"image {image_id}: walked maps {arr.shape}, expected {shape} for "
                             f"{len(k)} classes at {h}x{w}")
        if not np.isfinite(arr).all():
            raise ValueError(f"image {image_id}: walked maps hold NaN or infinite values")
        top = float(arr.max()) if arr.size else 0.0
        if top > 0:
            arr = arr / top
        g = self._images.create_group(image_id)
        g.attrs.update({"height": h, "width": w})
        g.create_dataset("keys", data=k)
        g.create_dataset("rw", data=arr.astype(np.float16), compression="gzip",
                         compression_opts=1)
        self._n += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._file.attrs["n_images"] = self._n
        self._stack.__exit__(exc_type, exc, tb)


class WalkStore:
    """Reads any number of walk shard files; ``get(image_id)`` -> (keys, rw float32, (H, W))."""

    def __init__(self, paths: PathLike | Iterable[PathLike]) -> None:
        import h5py

        self.paths = [Path(paths)] if isinstance(paths, str | os.PathLike) else \
            [Path(p) for p in paths]
        self._files = []
        self._where: dict[str, Any] = {}
        for path in self.paths:
            f = h5py.File(path, "r")
            self._files.append(f)
            if f.attrs.get("format") != FORMAT:
                self.close()
                raise ValueError(f"{path}: not a walk file (format {f.attrs.get('format')!r})")
            for image_id in f["images"]:
                if image_id in self._where:
                    self.close()
                    raise ValueError(f"image {image_id} is in two walk files ({path})")
                self._where[image_id] = f["images"][image_id]

    def __enter__(self) -> WalkStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._where))

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        if image_id not in self._where:
            raise KeyError(f"image {image_id}: no walked maps in {[str(p) for p in self.paths]}")
        g = self._where[image_id]
        return (g["keys"][()].astype(np.int64), g["rw"][()].astype(np.float32),
                (int(g.attrs["height"]), int(g.attrs["width"])))
