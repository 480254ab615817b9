"""``cams/{shard}.h5``: the exported CAMs of one shard of images (method.md 7).

Layout (HDF5)::

    /                    attrs: format="qaclims.cams", version=1, dtype, levels, offset, n_images,
                         + the writer's extra attrs
    /images/<image_id>/  attrs: height, width
        keys      int16 [K']            1-based class ids of the image's labels
        strided   <dtype> [K', ceil(H/4), ceil(W/4)]
        high_res  <dtype> [K', H, W]

The maps are max-normalised to [0, 1). ``dtype`` (chosen by measurement, see
benchmarks/bench_cam_store.py and the ExportSettings docstring):

* ``uint8`` (default): ``q = ceil(200 x)`` (0..200), read back as 0 for ``q = 0`` and
  ``(q - 0.5) / 200`` otherwise (root attrs ``levels=200``, ``offset=-0.5``). The error is at
  most 1/400, zeros stay zeros, and every comparison with a threshold on the 0.005 grid (0, 0.05,
  0.15, 0.30, ... - the sweep grid and the fixed thresholds of the CAM, IRN label and random-walk
  stages) comes out exactly as on the float maps: ``x > m/200  <=>  q >= m + 1  <=>
  decoded > m/200``. Plain ``round(255 x)`` keeps more levels but moves pixels within 1/510 of a
  threshold to its other side (+0.2 mIoU points at 0.15 in the benchmark);
* ``float16`` / ``float32``: stored as is.

Each dataset is one chunk (one image's maps), compressed with gzip (level from settings), lzf or
nothing. One writer per file: :class:`CamShardWriter` writes to a temporary file beside the target
and renames it on success, so a killed export leaves no file that looks complete.
:class:`CamStore` reads any number of shard files; ``get(image_id)`` returns float32 arrays.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from qaclims.store import atomic_path

FORMAT = "qaclims.cams"
VERSION = 1
DTYPES = ("uint8", "float16", "float32")
PathLike = str | os.PathLike[str]


LEVELS = 200
"""uint8 quantisation levels: a multiple of 200 keeps every threshold on the 0.005 grid exact."""
OFFSET = -0.5


def quantize(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored form of float maps in [0, 1] (values outside are clipped for uint8)."""
    if dtype == "uint8":
        # float64: the product must not round across an integer before the ceil
        q = np.ceil(np.asarray(x, dtype=np.float64) * LEVELS)
        return np.clip(q, 0, LEVELS).astype(np.uint8)
    if dtype in ("float16", "float32"):
        return np.asarray(x, dtype=dtype)
    raise ValueError(f"CAM dtype must be one of {list(DTYPES)}, got {dtype!r}")


def dequantize(q: np.ndarray, levels: int = LEVELS, offset: float = OFFSET) -> np.ndarray:
    """float32 maps from their stored form (uint8: 0 -> 0, q -> (q + offset) / levels)."""
    if q.dtype == np.uint8:
        v = (q.astype(np.float32) + np.float32(offset)) / np.float32(levels)
        return np.where(q == 0, np.float32(0), v)
    return q.astype(np.float32)


class CamShardWriter:
    """Write one ``cams/{shard}.h5`` atomically::

        with CamShardWriter(path, dtype="uint8") as w:
            w.add(image_id, keys, strided, high_res)
    """

    def __init__(self, path: PathLike, dtype: str = "uint8", compression: str = "gzip",
                 compression_level: int = 1, attrs: Mapping[str, Any] | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"CAM dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if compression not in ("gzip", "lzf", "none"):
            raise ValueError(f"compression must be gzip, lzf or none, got {compression!r}")
        self.path = Path(path)
        self.dtype = dtype
        self.compression = None if compression == "none" else compression
        self.level = compression_level if compression == "gzip" else None
        self.attrs = dict(attrs or {})
        self.n_images = 0
        self._stack: ExitStack | None = None
        self._file: Any = None

    def __enter__(self) -> CamShardWriter:
        import h5py

        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(h5py.File(tmp, "w"))
        self._images = self._file.create_group("images")
        return self

    def _dataset(self, group: Any, name: str, data: np.ndarray) -> None:
        if data.size == 0 or self.compression is None:
            group.create_dataset(name, data=data)
        else:
            group.create_dataset(name, data=data, chunks=data.shape,
                                 compression=self.compression, compression_opts=self.level)

    def add(self, image_id: str, keys: Any, strided: Any, high_res: Any) -> None:
        """One image: ``keys`` 1-based class ids, ``strided`` [K', h4, w4], ``high_res``
        [K', H, W] (numpy or torch, values in [0, 1])."""
        if self._file is None:
            raise RuntimeError("use CamShardWriter as a context manager")
        if not image_id or "/" in image_id:
            raise ValueError(f"image id {image_id!r} cannot be an HDF5 group name")
        if image_id in self._images:
            raise ValueError(f"{self.path}: image {image_id} added twice")
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        strided = _numpy(strided)
        high_res = _numpy(high_res)
        if strided.ndim != 3 or high_res.ndim != 3:
            raise ValueError(f"image {image_id}: CAMs must be [K', h, w], got strided "
                             f"{strided.shape} and high_res {high_res.shape}")
        if not (len(keys) == strided.shape[0] == high_res.shape[0]):
            raise ValueError(f"image {image_id}: {len(keys)} keys, {strided.shape[0]} strided "
                             f"and {high_res.shape[0]} full-size maps")
        if len(keys) and (keys.min() < 1 or keys.max() > np.iinfo(np.int16).max):
            raise ValueError(f"image {image_id}: keys must be 1-based class ids, got "
                             f"{keys.tolist()}")
        for name, arr in (("strided", strided), ("high_res", high_res)):
            if arr.size and not np.isfinite(arr).all():
                raise ValueError(f"image {image_id}: {name} CAM has non-finite values")
        g = self._images.create_group(image_id)
        g.attrs["height"], g.attrs["width"] = int(high_res.shape[1]), int(high_res.shape[2])
        g.create_dataset("keys", data=keys.astype(np.int16))
        self._dataset(g, "strided", quantize(strided, self.dtype))
        self._dataset(g, "high_res", quantize(high_res, self.dtype))
        self.n_images += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._stack is not None
        try:
            if exc_type is None:
                f = self._file
                f.attrs["format"] = FORMAT
                f.attrs["version"] = VERSION
                f.attrs["dtype"] = self.dtype
                if self.dtype == "uint8":
                    f.attrs["levels"], f.attrs["offset"] = LEVELS, OFFSET
                f.attrs["n_images"] = self.n_images
                for k, v in self.attrs.items():
                    f.attrs[k] = v
        finally:
            self._file = None
            self._stack.__exit__(exc_type, exc, tb)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class CamStore:
    """Read CAMs from one or more shard files: ``CamStore(paths).get(image_id)``.

    Files are opened read-only on first use and indexed by image id; an image present in two
    files is an error (shards must be disjoint).
    """

    def __init__(self, paths: PathLike | Iterable[PathLike]) -> None:
        import h5py

        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        self._files: list[Any] = []
        self._quant: list[tuple[int, float]] = []
        self._where: dict[str, int] = {}
        for i, p in enumerate(self.paths):
            if not p.is_file():
                raise FileNotFoundError(f"CAM file {p} does not exist")
            f = h5py.File(p, "r")
            self._files.append(f)
            if f.attrs.get("format") != FORMAT:
                raise ValueError(f"{p}: not a CAM file (format attribute "
                                 f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
            self._quant.append((int(f.attrs.get("levels", LEVELS)),
                                float(f.attrs.get("offset", OFFSET))))
            for image_id in f["images"]:
                if image_id in self._where:
                    other = self.paths[self._where[image_id]]
                    raise ValueError(f"image {image_id} is in both {other} and {p}")
                self._where[image_id] = i

    def __enter__(self) -> CamStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._where))

    @property
    def image_ids(self) -> list[str]:
        return sorted(self._where)

    def _group(self, image_id: str) -> tuple[Any, tuple[int, float]]:
        try:
            i = self._where[image_id]
        except KeyError:
            raise KeyError(f"image {image_id} is not in the CAM files "
                           f"{[str(p) for p in self.paths]}") from None
        return self._files[i]["images"][image_id], self._quant[i]

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(keys int64 [K'], strided float32 [K', h4, w4], high_res float32 [K', H, W])``."""
        g, quant = self._group(image_id)
        return (np.asarray(g["keys"][()], dtype=np.int64), dequantize(g["strided"][()], *quant),
                dequantize(g["high_res"][()], *quant))

    def high_res(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, high_res)`` without reading the strided maps."""
        g, quant = self._group(image_id)
        return np.asarray(g["keys"][()], dtype=np.int64), dequantize(g["high_res"][()], *quant)

    def size(self, image_id: str) -> tuple[int, int]:
        g, _ = self._group(image_id)
        return int(g.attrs["height"]), int(g.attrs["width"])

    def attrs(self, index: int = 0) -> dict[str, Any]:
        return {k: (v.item() if hasattr(v, "item") else v)
                for k, v in self._files[index].attrs.items()}
