"""store: atomic writes honour the umask (issue 21 item 2)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qaclims.store import current_umask, temp_dir, write_json, write_label_png


@pytest.fixture
def umask() -> Iterator[callable]:
    saved = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing(umask) -> None:
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"),
                         [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_outputs_get_the_umask_mode(tmp_path: Path, umask, mask: int, file_mode: int,
                                    dir_mode: int) -> None:
    from qaclims.irn.pipeline import staged_directory
    from qaclims.metrics import ConfusionMatrix
    from qaclims.vlp.weights import write_sidecar

    umask(mask)
    write_json({"a": 1}, tmp_path / "x.json")
    write_label_png(np.zeros((3, 4), np.uint8), tmp_path / "m.png")
    ConfusionMatrix(3).save(tmp_path / "c.npz")
    (tmp_path / "w.bin").write_bytes(b"w")
    write_sidecar(tmp_path / "w.bin", {"w.bin": "00"})
    with staged_directory(tmp_path / "shard") as d:
        write_json({}, d / "inside.json")
    for name in ("x.json", "m.png", "c.npz", "w.bin.sha256"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "shard") == dir_mode
    assert mode(tmp_path / "shard" / "inside.json") == file_mode
    assert mode(temp_dir(tmp_path, prefix=".t")) == dir_mode
