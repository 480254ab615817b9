"""One image reader for every stage (issue 21 item 4): a file broken after prepare_dataset fails
with its name in every stage's reader; decompression bombs follow on_bad_image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets_factory import make_voc_tree, truncate_file, write_garbage, write_jpeg
from PIL import Image

from qaclims.data.images import ImageReadError, open_image, read_image
from qaclims.data.manifest import DatasetError, read_manifest
from qaclims.data.prepare import BadImageWarning, prepare_dataset


def _readers():
    from qaclims.cam.datasets import load_rgb
    from qaclims.report.overlays import read_rgb as overlay_rgb
    from qaclims.seg.data import read_bgr
    from qaclims.seg.predict import read_rgb

    return {"read_image": read_image, "cam": load_rgb, "deeplab_train": read_bgr,
            "deeplab_predict": read_rgb, "report": overlay_rgb}


@pytest.mark.parametrize("reader", sorted(_readers()))
@pytest.mark.parametrize("breakage", ["truncated", "garbage", "missing"])
def test_every_reader_names_the_broken_image(tmp_path: Path, reader: str, breakage: str) -> None:
    path = tmp_path / "img.jpg"
    write_jpeg(path, 64, 80)
    if breakage == "truncated":
        truncate_file(path, keep=0.5)  # header intact: cv2 used to fill the rest with grey
    elif breakage == "garbage":
        write_garbage(path)
    else:
        path.unlink()
    with pytest.raises(ImageReadError, match=str(path)):
        _readers()[reader](path)


def test_readers_agree_on_a_good_image(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    r = _readers()
    assert np.array_equal(r["read_image"](path), rgb)
    assert r["read_image"](path).flags.writeable  # pydensecrf writes into it
    assert np.array_equal(r["cam"](path), rgb)
    assert np.array_equal(r["deeplab_predict"](path), rgb)
    assert np.array_equal(r["deeplab_train"](path), rgb[:, :, ::-1].astype(np.float32))
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").shape == (5, 7, 3)


def test_open_image_from_bytes_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="named.jpg"):
        open_image(tmp_path / "named.jpg", data=b"not an image")


def test_reader_refuses_a_decompression_bomb(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageReadError, match=rf"{path} is 30x20 = 600 pixels.*bomb"):
            read_image(path)


# Pillow only warns between its limit and twice it, and raises above: both must be refused.
@pytest.mark.parametrize("limit", [1000, 3000])
def test_prepare_handles_decompression_bombs_by_policy(tmp_path: Path, monkeypatch,
                                                      limit: int) -> None:
    tree = make_voc_tree(tmp_path / "VOC2012")
    big = tree.image("2007_000002")
    write_jpeg(big, 60, 80)  # 4800 pixels; the tree's other images have < 1000
    sizes = {p.name: Image.open(p).size for p in big.parent.glob("*.jpg")}
    assert [n for n, (w, h) in sizes.items() if w * h > limit] == [big.name], sizes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    with pytest.raises(DatasetError, match=rf"{big} (is|is refused).*(bomb|decompression)") as err:
        prepare_dataset("voc12", tree.root, tmp_path / "out", workers=1)
    assert [(p.image_id, p.reason) for p in err.value.problems] == [
        ("2007_000002", "decompression_bomb")]
    with pytest.warns(BadImageWarning, match="2007_000002"):
        stats = prepare_dataset("voc12", tree.root, tmp_path / "out", workers=1,
                                on_bad_image="skip")
    assert stats["skipped_by_reason"] == {"decompression_bomb": 1}
    assert "2007_000002" not in set(read_manifest(tmp_path / "out/manifest.parquet").image_id)
