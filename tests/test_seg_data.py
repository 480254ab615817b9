"""DeepLab training data: augmentation, dataset over manifest + label PNGs, seeded draw stream."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qaclims.data.manifest import ManifestRecord, write_manifest
from qaclims.seg.data import (
    MEAN_BGR,
    DrawBatchSampler,
    SegTrainDataset,
    augment,
    rows_for_split,
    training_data_fingerprint,
)
from qaclims.store import write_label_png

# class colours (RGB) of the tiny scenes: background grey, class 1 red, class 2 blue
COLOURS = {0: (128, 128, 128), 1: (220, 30, 30), 2: (30, 30, 220)}


def make_seg_manifest(root: Path, n: int = 4, size: tuple[int, int] = (40, 48),
                      splits: tuple[str, ...] = ("train",), with_gt: bool = True,
                      ) -> tuple[Path, Path]:
    """n images (one red and/or blue rectangle on grey) + their label PNGs in root/labels.

    Returns (manifest path, label dir). Ground truth = the same PNGs when ``with_gt``.
    """
    h, w = size
    rng = np.random.default_rng(1)
    records = []
    label_dir = root / "labels"
    for i in range(n):
        label = np.zeros((h, w), np.uint8)
        cls = 1 + i % 2
        top, left = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
        label[top:top + h // 3, left:left + w // 3] = cls
        if i % 3 == 2:
            label[-8:-2, -10:-2] = 3 - cls
        label[0, :3] = 255
        image = np.zeros((h, w, 3), np.uint8)
        for c, rgb in COLOURS.items():
            image[label == c] = rgb
        image[label == 255] = COLOURS[0]
        image = np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255)
        image_id = f"img_{i:03d}"
        path = root / "images" / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(path)  # lossless: colours stay exact
        write_label_png(label, label_dir / f"{image_id}.png")
        labels = sorted({int(v) for v in np.unique(label) if 0 < v < 255})
        records.append(ManifestRecord(
            image_id=image_id, splits=list(splits), image_path=str(path), height=h, width=w,
            labels=labels, has_gt=with_gt,
            gt_path=str(label_dir / f"{image_id}.png") if with_gt else None))
    manifest = root / "manifest.parquet"
    write_manifest(records, manifest, num_classes=2)
    return manifest, label_dir


# -- augment -----------------------------------------------------------------------------------
def test_augment_pads_with_mean_and_ignore_then_crops() -> None:
    image = np.full((10, 12, 3), 7.0, np.float32)
    label = np.ones((10, 12), np.uint8)
    out_img, out_lab = augment(image, label, scales=[1.0], crop=16, flip=False,
                               rng=random.Random(0))
    assert out_img.shape == (16, 16, 3) and out_img.dtype == np.float32
    assert out_lab.shape == (16, 16) and out_lab.dtype == np.uint8
    # image at the top-left, padding bottom/right: mean colour / ignore
    assert (out_img[:10, :12] == 7.0).all() and (out_lab[:10, :12] == 1).all()
    assert np.allclose(out_img[10:, :], MEAN_BGR) and np.allclose(out_img[:, 12:], MEAN_BGR)
    assert (out_lab[10:, :] == 255).all() and (out_lab[:, 12:] == 255).all()


def test_augment_flip_moves_padding_to_the_left() -> None:
    image = np.zeros((10, 12, 3), np.float32)
    label = np.ones((10, 12), np.uint8)
    flipped = [augment(image, label, scales=[1.0], crop=16, flip=True,
                       rng=random.Random(seed))[1] for seed in range(20)]
    left_pad = [lab for lab in flipped if (lab[:10, :4] == 255).all()]
    right_pad = [lab for lab in flipped if (lab[:10, 12:] == 255).all()]
    assert left_pad and right_pad and len(left_pad) + len(right_pad) == 20


def test_augment_scale_and_crop_window() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (40, 60, 3)).astype(np.float32)
    label = rng.integers(0, 3, (40, 60)).astype(np.uint8)
    img, lab = augment(image, label, scales=[0.5], crop=16, flip=False, rng=random.Random(3))
    assert img.shape == (16, 16, 3) and lab.shape == (16, 16)
    assert set(np.unique(lab)) <= {0, 1, 2}  # nearest: no new label values, no padding
    # the crop is a window of the 20x30 rescaled image at the drawn offsets
    r = random.Random(3)
    r.choice([0.5])
    top, left = r.randint(0, 20 - 16), r.randint(0, 30 - 16)
    small = np.asarray(Image.fromarray(label).resize((30, 20), Image.Resampling.NEAREST))
    assert (lab == small[top:top + 16, left:left + 16]).all()


def test_augment_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        augment(np.zeros((4, 4, 3), np.float32), np.zeros((4, 5), np.uint8), scales=[1.0],
                crop=4, rng=random.Random(0))


# -- dataset -----------------------------------------------------------------------------------
def test_dataset_items_are_mean_subtracted_chw(tmp_path: Path) -> None:
    manifest, labels = make_seg_manifest(tmp_path, n=2, size=(20, 24))
    ds = SegTrainDataset(rows_for_split(manifest, "train"), labels, crop=32, scales=[1.0],
                         flip=False, seed=0)
    image, label = ds[(0, 5)]
    assert tuple(image.shape) == (3, 32, 32) and str(image.dtype) == "torch.float32"
    assert tuple(label.shape) == (32, 32) and str(label.dtype) == "torch.int64"
    # padding: mean colour minus mean = 0, label 255
    assert image[:, 20:, :].abs().max().item() < 1e-4
    assert (label[20:, :] == 255).all() and (label[:, 24:] == 255).all()
    # content: BGR order, mean subtracted (grey background pixel near 128 - mean)
    bg = (label[:20, :24] == 0).numpy()
    b = image[0, :20, :24].numpy()[bg].mean() + MEAN_BGR[0]
    assert abs(b - 128) < 12


def test_dataset_is_deterministic_per_draw(tmp_path: Path) -> None:
    manifest, labels = make_seg_manifest(tmp_path, n=2, size=(40, 48))
    rows = rows_for_split(manifest, "train")
    a = SegTrainDataset(rows, labels, crop=24, scales=[0.75, 1.0, 1.5], seed=3)
    b = SegTrainDataset(rows, labels, crop=24, scales=[0.75, 1.0, 1.5], seed=3)
    for draw in range(4):
        assert (a[(1, draw)][0] == b[(1, draw)][0]).all()
        assert (a[(1, draw)][1] == b[(1, draw)][1]).all()
    differ = [not (a[(1, d)][0] == a[(1, 0)][0]).all() for d in range(1, 8)]
    assert any(differ)
    c = SegTrainDataset(rows, labels, crop=24, scales=[0.75, 1.0, 1.5], seed=4)
    assert any(not (c[(1, d)][0] == a[(1, d)][0]).all() for d in range(8))


def test_dataset_reports_missing_and_mis_sized_labels(tmp_path: Path) -> None:
    manifest, labels = make_seg_manifest(tmp_path, n=3)
    rows = rows_for_split(manifest, "train")
    (labels / "img_001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 label PNGs missing.*img_001\.png"):
        SegTrainDataset(rows, labels)
    write_label_png(np.zeros((5, 5), np.uint8), labels / "img_001.png")
    ds = SegTrainDataset(rows, labels, crop=16)
    with pytest.raises(ValueError, match=r"img_001\.png: label size \(5, 5\)"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="label directory"):
        SegTrainDataset(rows, tmp_path / "nope")
    with pytest.raises(ValueError, match="no image in split 'val'"):
        rows_for_split(manifest, "val")


def test_fingerprint_follows_label_content(tmp_path: Path) -> None:
    manifest, labels = make_seg_manifest(tmp_path, n=2)
    ds = SegTrainDataset(rows_for_split(manifest, "train"), labels)
    before = training_data_fingerprint(ds)
    assert training_data_fingerprint(ds) == before
    write_label_png(np.zeros((40, 48), np.uint8), labels / "img_000.png")
    assert training_data_fingerprint(ds) != before


# -- sampler -----------------------------------------------------------------------------------
def test_sampler_stream_covers_epochs_and_resumes() -> None:
    s = DrawBatchSampler(n=5, batch_size=2, seed=7)
    it = iter(s)
    batches = [next(it) for _ in range(5)]  # 10 draws = 2 epochs
    draws = [d for b in batches for _, d in b]
    assert draws == list(range(10))
    idx = [i for b in batches for i, _ in b]
    assert sorted(idx[:5]) == list(range(5)) and sorted(idx[5:]) == list(range(5))
    assert idx[:5] != idx[5:]  # a new order each epoch
    resumed = iter(DrawBatchSampler(n=5, batch_size=2, seed=7, start_batch=3))
    assert next(resumed) == batches[3] and next(resumed) == batches[4]
    other = DrawBatchSampler(n=5, batch_size=2, seed=8)
    assert [other.batch(k) for k in range(5)] != batches


def test_sampler_ranks_partition_the_global_batch() -> None:
    single = DrawBatchSampler(n=7, batch_size=4, seed=1)
    r0 = DrawBatchSampler(n=7, batch_size=2, seed=1, rank=0, world_size=2)
    r1 = DrawBatchSampler(n=7, batch_size=2, seed=1, rank=1, world_size=2)
    for k in range(4):
        assert sorted(r0.batch(k) + r1.batch(k), key=lambda t: t[1]) == single.batch(k)
    with pytest.raises(ValueError):
        DrawBatchSampler(n=7, batch_size=2, rank=2, world_size=2)


def test_network_input_styles() -> None:
    from qaclims.seg.data import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, network_input

    bgr = np.zeros((2, 3, 3), np.float32)
    bgr[0, 0] = (255.0, 0.0, 51.0)  # B, G, R
    caffe = network_input(bgr, "caffe")
    assert np.allclose(caffe[0, 0], np.array((255.0, 0.0, 51.0)) - np.array(MEAN_BGR))
    imnet = network_input(bgr, "imagenet")
    rgb = np.array((0.2, 0.0, 1.0))  # channels now R, G, B in [0, 1]
    assert np.allclose(imnet[0, 0], (rgb - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB, atol=1e-6)
    mean_pixel = (np.array(IMAGENET_MEAN_RGB)[::-1] * 255).astype(np.float32)[None, None]
    assert np.abs(network_input(mean_pixel, "imagenet")).max() < 1e-5  # padding maps to 0
    with pytest.raises(ValueError, match="input_norm"):
        network_input(bgr, "rgb")


def test_dataset_serves_imagenet_normalised_rgb(tmp_path: Path) -> None:
    manifest, labels = make_seg_manifest(tmp_path, n=2, size=(20, 24))
    rows = rows_for_split(manifest, "train")
    caffe = SegTrainDataset(rows, labels, crop=32, scales=[1.0], flip=False, seed=0)
    imnet = SegTrainDataset(rows, labels, crop=32, scales=[1.0], flip=False, seed=0,
                            input_norm="imagenet")
    a, _ = caffe[(0, 5)]
    b, _ = imnet[(0, 5)]
    from qaclims.seg.data import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    bgr = a[:, :20, :24].numpy() + np.array(MEAN_BGR, np.float32)[:, None, None]
    expect = (bgr[::-1] / 255 - np.array(IMAGENET_MEAN_RGB)[:, None, None]) \
        / np.array(IMAGENET_STD_RGB)[:, None, None]
    assert np.allclose(b[:, :20, :24].numpy(), expect, atol=1e-4)
    with pytest.raises(ValueError, match="input_norm"):
        SegTrainDataset(rows, labels, crop=32, input_norm="bgr")
