"""cams/{shard}.h5: round trip per dtype, atomic single writer, multi-file reader, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from qaclims.cam.cam_store import CamShardWriter, CamStore, dequantize, quantize


def _cams(rng, k: int, h: int, w: int):
    high = rng.random((k, h, w)).astype(np.float32)
    strided = rng.random((k, (h - 1) // 4 + 1, (w - 1) // 4 + 1)).astype(np.float32)
    return strided, high


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 0.0), ("float16", 1e-3),
                                            ("uint8", 0.5 / 200 + 1e-7)])
def test_round_trip_within_the_dtype_resolution(tmp_path, dtype, tol):
    rng = np.random.default_rng(0)
    data = {"img_a": ([1, 3], *_cams(rng, 2, 21, 30)), "img_b": ([7], *_cams(rng, 1, 9, 8))}
    path = tmp_path / f"{dtype}.h5"
    with CamShardWriter(path, dtype=dtype, compression="gzip", attrs={"shard": "0"}) as w:
        for image_id, (keys, strided, high) in data.items():
            w.add(image_id, keys, torch.from_numpy(strided), high)
    with CamStore([path]) as store:
        assert store.image_ids == ["img_a", "img_b"] and len(store) == 2
        assert store.attrs()["dtype"] == dtype and store.attrs()["shard"] == "0"
        for image_id, (keys, strided, high) in data.items():
            k, s, h = store.get(image_id)
            assert k.dtype == np.int64 and k.tolist() == keys
            assert s.dtype == np.float32 and h.dtype == np.float32
            assert s.shape == strided.shape and h.shape == high.shape
            assert np.abs(h - high).max() <= tol and np.abs(s - strided).max() <= tol
            assert store.size(image_id) == high.shape[1:]
    with h5py.File(path) as f:
        assert f["images/img_a/high_res"].dtype == np.dtype(dtype)
        assert f["images/img_a/keys"].dtype == np.int16


def test_uint8_quantisation_keeps_threshold_decisions_exact():
    x = np.array([0.0, 0.004, 0.005, 0.0051, 0.15, 0.1501, 0.999, 1.0, 1.3, -0.1])
    q = quantize(x, "uint8")
    assert q.tolist() == [0, 1, 1, 2, 30, 31, 200, 200, 200, 0]
    assert dequantize(q)[0] == 0 and dequantize(q)[4] == pytest.approx(0.1475)
    # every threshold on the 0.005 grid splits the stored maps as it splits the float maps
    rng = np.random.default_rng(0)
    maps = np.concatenate([rng.random(20000), np.arange(201) / 200 + 1e-9,
                           np.arange(201) / 200 - 1e-9]).clip(0, 1)
    back = dequantize(quantize(maps, "uint8"))
    assert np.abs(back - maps).max() <= 1 / 400 + 1e-7
    for t in np.round(np.arange(0, 1.0, 0.005), 3):
        assert np.array_equal(back > np.float32(t), maps > t), t


def test_compression_shrinks_smooth_maps(tmp_path):
    yy, xx = np.mgrid[0:120, 0:160] / 40.0
    high = np.stack([np.exp(-((yy - 1.5) ** 2 + (xx - c) ** 2)) for c in (1.0, 2.5)])
    high = (high / high.max(axis=(1, 2), keepdims=True)).astype(np.float32)
    strided = high[:, ::4, ::4]
    sizes = {}
    for dtype, comp in (("float32", "none"), ("uint8", "gzip")):
        p = tmp_path / f"{dtype}.h5"
        with CamShardWriter(p, dtype=dtype, compression=comp) as w:
            for i in range(5):
                w.add(f"im{i}", [1, 2], strided, high)
        sizes[dtype] = p.stat().st_size
    assert sizes["uint8"] < 0.3 * sizes["float32"]


def test_writer_is_atomic_and_rejects_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    strided, high = _cams(rng, 2, 8, 8)
    path = tmp_path / "cams" / "0.h5"
    with pytest.raises(RuntimeError, match="boom"), CamShardWriter(path) as w:
        w.add("a", [1, 2], strided, high)
        raise RuntimeError("boom")
    assert not path.exists() and list(path.parent.iterdir()) == []
    with CamShardWriter(path) as w:
        with pytest.raises(ValueError, match="2 keys, 2 strided and 1 full-size"):
            w.add("a", [1, 2], strided, high[:1])
        with pytest.raises(ValueError, match="1-based class ids"):
            w.add("a", [0, 2], strided, high)
        with pytest.raises(ValueError, match="non-finite"):
            w.add("a", [1, 2], strided, np.full_like(high, np.nan))
        with pytest.raises(ValueError, match="HDF5 group name"):
            w.add("a/b", [1, 2], strided, high)
        w.add("a", [1, 2], strided, high)
        with pytest.raises(ValueError, match="added twice"):
            w.add("a", [1, 2], strided, high)
        w.add("empty", [], np.zeros((0, 2, 2), np.float32), np.zeros((0, 8, 8), np.float32))
    with CamStore(path) as store:
        k, s, h = store.get("empty")
        assert k.shape == (0,) and h.shape == (0, 8, 8)
        with pytest.raises(KeyError, match="image nope is not in the CAM files"):
            store.get("nope")


def test_store_reads_several_shards_and_rejects_overlaps(tmp_path):
    rng = np.random.default_rng(2)
    for shard, ids in (("0", ["a", "c"]), ("1", ["b"]), ("2", ["c"])):
        with CamShardWriter(tmp_path / f"{shard}.h5") as w:
            for i in ids:
                w.add(i, [1], *_cams(rng, 1, 6, 6))
    store = CamStore([tmp_path / "0.h5", tmp_path / "1.h5"])
    assert store.image_ids == ["a", "b", "c"] and "b" in store and "d" not in store
    store.close()
    with pytest.raises(ValueError, match="image c is in both"):
        CamStore([tmp_path / "0.h5", tmp_path / "2.h5"])
    with pytest.raises(FileNotFoundError):
        CamStore([tmp_path / "9.h5"])
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("images")
    with pytest.raises(ValueError, match="not a CAM file"):
        CamStore([tmp_path / "other.h5"])
