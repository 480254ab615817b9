"""Pixel pairs within a radius and the paths between them (IRN ``misc/indexing.PathIndex``).

IRN compares every pixel of a stride-4 map with the pixels within a radius of it: during training
(radius 10 on 128x128 crops) to turn the boundary map into pairwise affinities and the
displacement field into pairwise displacements, and in the random walk (radius 5) to build the
transition matrix. Each unordered pair is visited once, through a *direction* ``(dy, dx)`` taken
from one half-plane, exactly as the authors enumerate them:

* ``(0, dx)`` for ``dx = 1 .. r-1``;
* ``(dy, dx)`` for ``dy = 1 .. r-1``, ``dx = -(r-1) .. r-1`` with ``dy**2 + dx**2 < r**2``.

So a direction points right or down (rows grow downwards), the set and its negation cover every
non-zero offset strictly inside the radius exactly once. The *path* of a direction is the set of
grid cells in the bounding box of ``(0, 0)`` and ``(dy, dx)`` whose distance to the line through
them is below one cell; it starts with the destination and ends with the source ``(0, 0)``
(sorted by decreasing L1 norm, stable). The affinity of a pair is ``1 - max(edge on the path)``.

Directions are ordered as in the authors' code: grouped by path length (shortest first), in
search order within a group; ``directions`` therefore equals their ``path_dst``. The sources are
the pixels ``[0, h - m) x [m, w - m)`` with ``m = r - 1`` (every destination of such a pixel lies
in the map), flattened row-major; the authors' ``src_indices`` / ``dst_indices`` follow.

Unlike the authors' ``edge_to_affinity`` this module does not gather with index arrays of shape
``[n_paths, L, n_src]`` (about 160 MB for radius 10 on 128x128); it takes shifted slices of the
map, which is the same arithmetic without the index memory. :meth:`PathIndex.path_indices` still
returns the authors' index layout (the dense random-walk reference uses it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: ir_labels/evaluate users need only numpy
    from torch import Tensor

__all__ = ["PathIndex", "search_paths"]


def search_paths(radius: int) -> list[np.ndarray]:
    """The path of every direction within ``radius``, in the authors' order.

    Each element is an int64 array ``[L, 2]`` of ``(y, x)`` cells: the destination first, the
    source ``(0, 0)`` last. ``radius`` must be an integer >= 2 (radius 1 has no direction).
    """
    if int(radius) != radius or radius < 2:
        raise ValueError(f"radius must be an integer >= 2, got {radius!r}")
    r = int(radius)
    search_dirs = [(0, x) for x in range(1, r)]
    search_dirs += [(y, x) for y in range(1, r) for x in range(-r + 1, r) if x * x + y * y < r * r]

    by_length: dict[int, list[np.ndarray]] = {}
    for dy, dx in search_dirs:
        length_sq = dy * dy + dx * dx
        y0, y1 = sorted((0, dy))
        x0, x1 = sorted((0, dx))
        cells = [
            (y, x)
            for y in range(y0, y1 + 1)
            for x in range(x0, x1 + 1)
            # squared distance of the cell centre to the line through (0,0) and (dy,dx) < 1
            if (dy * x - dx * y) ** 2 < length_sq
        ]
        cells.sort(key=lambda c: -abs(c[0]) - abs(c[1]))  # stable: destination first, source last
        by_length.setdefault(len(cells), []).append(np.asarray(cells, dtype=np.int64))
    return [p for length in sorted(by_length) for p in by_length[length]]


class PathIndex:
    """Pairs of pixels within ``radius`` on an ``size = (h, w)`` map and the paths joining them.

    Attributes:
        radius: the search radius (pairs with squared offset < radius**2).
        size: ``(h, w)`` of the map.
        margin: ``radius - 1``, the border a source pixel keeps from the left, right, bottom.
        paths: per direction, the ``[L, 2]`` path cells (destination first, source last).
        directions: int64 ``[D, 2]`` ``(dy, dx)`` of every direction (authors' ``path_dst``).
        src_shape: ``(h - margin, w - 2 * margin)``, the grid of source pixels.
        src_indices: int64 ``[n_src]`` flat (row-major) indices of the source pixels.
        dst_indices: int64 ``[D, n_src]`` flat indices of each source's destination.
    """

    def __init__(self, radius: int = 10, size: tuple[int, int] = (128, 128)) -> None:
        self.paths = search_paths(radius)
        self.radius = int(radius)
        self.margin = self.radius - 1
        h, w = (int(s) for s in size)
        if h <= self.margin or w <= 2 * self.margin:
            raise ValueError(
                f"map {h}x{w} too small for radius {radius}: need height > {self.margin} and "
                f"width > {2 * self.margin}"
            )
        self.size = (h, w)
        self.directions = np.stack([p[0] for p in self.paths]).astype(np.int64)
        self.src_shape = (h - self.margin, w - 2 * self.margin)
        full = np.arange(h * w, dtype=np.int64).reshape(h, w)
        self.src_indices = self._window(full, 0, 0).reshape(-1)
        self.dst_indices = np.stack(
            [self._window(full, int(dy), int(dx)).reshape(-1) for dy, dx in self.directions]
        )

    @property
    def n_directions(self) -> int:
        return len(self.paths)

    @property
    def n_src(self) -> int:
        return self.src_shape[0] * self.src_shape[1]

    def _window(self, a, dy: int, dx: int):
        """``a[..., dy:dy+ch, m+dx:m+dx+cw]``: the source grid shifted by ``(dy, dx)``."""
        ch, cw = self.src_shape
        m = self.margin
        return a[..., dy:dy + ch, m + dx:m + dx + cw]

    def _check_map(self, shape: tuple[int, ...], what: str) -> None:
        if tuple(shape[-2:]) != self.size:
            raise ValueError(f"{what} of size {tuple(shape[-2:])}, PathIndex built for {self.size}")

    # -- labels ---------------------------------------------------------------------------------
    def affinity_labels(
        self, label: np.ndarray, ignore_index: int = 255,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pair labels of a stride-4 label map ``[h, w]`` (0 bg, 1..K classes, 255 ignore).

        Returns bool arrays ``(bg_pos, fg_pos, neg)``, each ``[D, n_src]``: a pair is valid when
        both labels are below ``ignore_index``; ``bg_pos`` = valid, equal and 0; ``fg_pos`` =
        valid, equal and > 0; ``neg`` = valid and different.
        """
        label = np.asarray(label)
        if label.ndim != 2:
            raise ValueError(f"expected a label map [h, w], got shape {label.shape}")
        self._check_map(label.shape, "label map")
        flat = label.reshape(-1).astype(np.int64)
        frm = flat[self.src_indices][None, :]
        to = flat[self.dst_indices]
        valid = (frm < ignore_index) & (to < ignore_index)
        equal = frm == to
        bg_pos = valid & equal & (frm == 0)
        fg_pos = valid & equal & (frm > 0)
        neg = valid & ~equal
        return bg_pos, fg_pos, neg

    # -- maps -> pairs (torch) ----------------------------------------------------------------
    def edge_to_affinity(self, edge: Tensor) -> Tensor:
        """Affinity ``1 - max(edge along the path)`` of every pair.

        ``edge``: boundary probabilities ``[N, h, w]`` (or ``[N, 1, h, w]``).
        Returns ``[N, D, n_src]``, differentiable with respect to ``edge``.
        """
        import torch

        if edge.dim() == 4:
            if edge.shape[1] != 1:
                raise ValueError(f"expected one edge channel, got shape {tuple(edge.shape)}")
            edge = edge[:, 0]
        if edge.dim() != 3:
            raise ValueError(f"expected edge [N, h, w], got shape {tuple(edge.shape)}")
        self._check_map(edge.shape, "edge map")
        out = []
        for path in self.paths:
            cells = torch.stack([self._window(edge, int(y), int(x)) for y, x in path], dim=1)
            out.append(cells.amax(dim=1).flatten(1))
        return 1.0 - torch.stack(out, dim=1)

    def to_displacement(self, disp: Tensor) -> Tensor:
        """Pairwise displacement ``disp[src] - disp[dst]``: ``[N, C, h, w]`` ->
        ``[N, C, D, n_src]``."""
        import torch

        if disp.dim() != 4:
            raise ValueError(f"expected displacement [N, C, h, w], got shape {tuple(disp.shape)}")
        self._check_map(disp.shape, "displacement map")
        src = self._window(disp, 0, 0)
        dst = torch.stack([self._window(disp, int(y), int(x)) for y, x in self.directions], dim=2)
        return (src.unsqueeze(2) - dst).flatten(3)

    def displacement_target(self) -> Tensor:
        """``[1, 2, D, 1]`` float32 ``(dy, dx)`` of each direction: the displacement a pair of
        one instance should show (both pixels then point at the same centre)."""
        import torch

        return torch.from_numpy(self.directions.T.astype(np.float32))[None, :, :, None]

    # -- the authors' index layout --------------------------------------------------------------
    def path_indices(self) -> list[np.ndarray]:
        """Flat indices of the path cells, grouped by path length as in the authors' code:
        one int64 array ``[n_paths, L, n_src]`` per length, shortest first."""
        h, w = self.size
        full = np.arange(h * w, dtype=np.int64).reshape(h, w)
        groups: dict[int, list[np.ndarray]] = {}
        for path in self.paths:
            groups.setdefault(len(path), []).append(
                np.stack([self._window(full, int(y), int(x)).reshape(-1) for y, x in path])
            )
        return [np.stack(groups[length]) for length in sorted(groups)]
