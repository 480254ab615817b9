"""DeepLab inference: full-size MSC softmax, flip, dense CRF, palette PNGs, VOC server layout."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_seg_data import make_seg_manifest

from qaclims.seg.networks import MSC, build_deeplab, calibrate_batchnorm
from qaclims.seg.predict import (
    MEAN_BGR,
    CrfParams,
    crf_image,
    dense_crf,
    predict_image,
    predict_probs,
    predict_split,
    score_split,
    write_voc_test_layout,
)
from qaclims.store import read_label_png, write_label_png


@pytest.fixture(autouse=True)
def _one_thread():
    # OpenMP threads spin-wait badly when the 2 cores are shared: 1 thread is 20x faster here
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model() -> MSC:
    torch.manual_seed(0)
    net = build_deeplab("resnet18", 3, None)
    calibrate_batchnorm(net, [torch.randn(2, 3, 48, 48) * 60])  # unsaturated softmax
    return net.eval()


def _constant(model: MSC, cls: int) -> MSC:
    """Make every pixel's logits favour ``cls`` (ASPP weights 0, bias one-hot)."""
    with torch.no_grad():
        for conv in model.base.aspp.children():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.bias[cls] = 5.0
    return model


def _image(h: int = 37, w: int = 45, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predict_image_size_and_values(model: MSC) -> None:
    label = predict_image(_constant(model, 2), _image())
    assert label.shape == (37, 45) and label.dtype == np.uint8 and (label == 2).all()
    grey = predict_image(model, _image()[:, :, 0])
    assert grey.shape == (37, 45) and (grey == 2).all()
    assert (predict_image(model, _image(), flip=True, crf=CrfParams()) == 2).all()
    with pytest.raises(TypeError, match="uint8"):
        predict_image(model, _image().astype(np.float32))


def test_predict_probs_is_the_upsampled_softmax_of_bgr_minus_mean(model: MSC) -> None:
    img = _image()
    probs = predict_probs(model, img)
    bgr = img[:, :, ::-1].astype(np.float32) - np.asarray(MEAN_BGR, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        logits = F.interpolate(model(x), size=(37, 45), mode="bilinear", align_corners=False)
    assert torch.allclose(probs, F.softmax(logits, 1)[0], atol=1e-5)
    assert torch.allclose(probs.sum(0), torch.ones(37, 45), atol=1e-5)
    # flip: the average of the image's and the mirror image's softmax, mirrored back
    mirrored = predict_probs(model, np.ascontiguousarray(img[:, ::-1]))
    both = predict_probs(model, img, flip=True)
    assert torch.allclose(both, (probs + mirrored.flip(-1)) / 2, atol=1e-5)
    assert (both - probs).abs().max() > 0.01


def test_dense_crf_snaps_noisy_probabilities_to_colour_regions() -> None:
    h, w = 40, 40
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :20] = (200, 30, 30)
    img[:, 20:] = (30, 30, 200)
    truth = np.where(np.arange(w) < 20, 1, 2)[None].repeat(h, 0)
    rng = np.random.default_rng(0)
    p1 = np.where(truth == 1, 0.55, 0.35) + rng.normal(0, 0.12, (h, w))
    p1 = np.clip(p1, 0.05, 0.9)
    probs = np.stack([np.full((h, w), 0.05), p1, 0.95 - p1]).astype(np.float32)
    before = (probs.argmax(0) == truth).mean()
    refined = dense_crf(img, probs, CrfParams())
    after = (refined.argmax(0) == truth).mean()
    assert refined.shape == probs.shape and before < 0.85 and after > 0.97
    confident = np.stack([truth == k for k in range(3)]).astype(np.float32) * 0.9 + 0.033
    assert (dense_crf(img, confident).argmax(0) == truth).all()
    with pytest.raises(ValueError, match="do not match image"):
        dense_crf(img[:10], probs)


def test_authors_crf_image_quirk() -> None:
    img = np.array([[[0, 0, 0], [200, 150, 110]]], np.uint8)
    assert (crf_image(img, CrfParams()) == img).all()
    quirk = crf_image(img, CrfParams(authors_image=True))
    # BGR minus mean, truncated, wrapped to 8 bits: (-104.008, -116.669, -122.675) -> 152, 140, 134
    assert quirk[0, 0].tolist() == [152, 140, 134]
    assert quirk[0, 1].tolist() == [5, 33, 77]  # (110-104.0, 150-116.7, 200-122.7) truncated


def test_predict_split_writes_palette_pngs(tmp_path: Path, model: MSC) -> None:
    manifest, _ = make_seg_manifest(tmp_path / "data", n=3, size=(30, 34), splits=("val",))
    out = tmp_path / "pred"
    summary = predict_split(model, manifest, "val", out)
    assert summary["n_images"] == 3 and sorted(p.name for p in out.iterdir()) == [
        "img_000.png", "img_001.png", "img_002.png"]
    for png in out.iterdir():
        with Image.open(png) as im:
            assert im.mode == "P" and im.size == (34, 30)
        values = set(np.unique(read_label_png(png)).tolist())
        assert values <= {0, 1, 2}
    rgb = np.asarray(Image.open(tmp_path / "data/images/img_001.png").convert("RGB"))
    assert (read_label_png(out / "img_001.png") == predict_image(model, rgb)).all()
    # one shard with the CRF, in a worker process: same as in-process
    predict_split(model, manifest, "val", tmp_path / "crf0", crf=CrfParams(iterations=2),
                  image_ids=["img_002"])
    predict_split(model, manifest, "val", tmp_path / "crf1", crf=CrfParams(iterations=2),
                  image_ids=["img_002"], crf_workers=1)
    assert [p.name for p in (tmp_path / "crf1").iterdir()] == ["img_002.png"]
    assert (read_label_png(tmp_path / "crf0/img_002.png")
            == read_label_png(tmp_path / "crf1/img_002.png")).all()
    with pytest.raises(ValueError, match="not in split 'val'"):
        predict_split(model, manifest, "val", out, image_ids=["img_999"])


def test_score_split(tmp_path: Path) -> None:
    manifest, labels = make_seg_manifest(tmp_path / "data", n=3, size=(20, 24), splits=("val",))
    pred = tmp_path / "pred"
    for png in labels.iterdir():
        lab = read_label_png(png)
        write_label_png(np.where(lab == 255, 0, lab).astype(np.uint8), pred / png.name)
    assert score_split(manifest, "val", pred, 3).miou() == pytest.approx(1.0)
    write_label_png(np.zeros((20, 24), np.uint8), pred / "img_000.png")
    assert score_split(manifest, "val", pred, 3).miou() < 0.95
    (pred / "img_001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 predictions missing.*img_001\.png"):
        score_split(manifest, "val", pred, 3)


def test_voc_test_layout(tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    ids = ["2008_000001", "2008_000002"]
    for i, image_id in enumerate(ids):
        write_label_png(np.full((5, 6), i + 1, np.uint8), pred / f"{image_id}.png")
    archive = tmp_path / "results.tar.gz"
    dest = write_voc_test_layout(pred, ids, tmp_path / "server", archive=archive)
    assert dest == tmp_path / "server/results/VOC2012/Segmentation/comp6_test_cls"
    assert sorted(p.name for p in dest.iterdir()) == ["2008_000001.png", "2008_000002.png"]
    assert (read_label_png(dest / "2008_000002.png") == 2).all()
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [
            "results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png",
            "results/VOC2012/Segmentation/comp6_test_cls/2008_000002.png"]
    comp5 = write_voc_test_layout(pred, ids, tmp_path / "cl", competition="comp5")
    assert comp5.name == "comp5_test_cls"
    with pytest.raises(FileNotFoundError, match=r"1 of 3 test predictions missing.*2008_000003"):
        write_voc_test_layout(pred, [*ids, "2008_000003"], tmp_path / "x")
    with pytest.raises(ValueError, match="competition"):
        write_voc_test_layout(pred, ids, tmp_path / "x", competition="comp4")
