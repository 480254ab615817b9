"""CAM training (stages D0 and D): settings, the step sampler, train_cam / train_ritc on tiny data,
and DDP on CPU (2 gloo ranks equal one process with the global batch).

The tiny inputs (a 16-image synthetic dataset of 64 px, a toy mask-prompt CLIP, a corpus and its
text features) are built by the helpers here; test_resume.py and test_cam_export.py reuse them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qaclims.cam.settings import (
    CamTrainSettings,
    ExportSettings,
    RitcSettings,
    ThresholdSettings,
    ritc_settings,
)

# ---------------------------------------------------------------------------- tiny inputs


def make_tiny_dataset(root: Path, n_train: int = 16, size: int = 64) -> Path:
    """Synthetic VOC-style tree + manifest under ``root``; returns the data folder."""
    from qaclims.data.prepare import prepare_dataset
    from qaclims.data.synthetic import SyntheticSpec, generate_segmentation_dataset

    data = root / "data"
    if not (data / "manifest.parquet").is_file():
        generate_segmentation_dataset(root / "syn", SyntheticSpec(
            n_train=n_train, n_val=4, min_size=size, max_size=size, seed=3))
        prepare_dataset("synthetic", root / "syn", data)
    return data


def tiny_cam_settings(**kw) -> CamTrainSettings:
    base = dict(arch="resnet18", weights=None, batch_size=4, max_steps=2, resize_long=[40, 56],
                crop_size=48, log_every=1, checkpoint_every=0, seed=0, lr=0.01, threads=1)
    base.update(kw)
    return CamTrainSettings.from_dict(base)


def tiny_ritc_settings(**kw) -> RitcSettings:
    base = dict(batch_size=4, max_steps=2, resize_long=[40, 56], crop_size=48, log_every=1,
                checkpoint_every=0, seed=0, lr=0.01, threads=1)
    base.update(kw)
    return RitcSettings.from_dict(base)


def make_tiny_clip_inputs(root: Path, data: Path, skip_image: str | None = None) -> dict:
    """A toy CLIP (saved + reloaded), a corpus and its text features. ``skip_image``: an image
    whose pairs the corpus leaves out (as the authors' code skips pairs without bg answers)."""
    from qaclims.data.manifest import read_classes, read_manifest
    from qaclims.qape.text_features import build_text_features_file
    from qaclims.vlp.clip import load_clip
    from qaclims.vlp.toy_models import build_toy_clip, save_toy_clip

    classes = read_classes(data / "classes.json")
    words = ["a", "photo", "of", "no", "sky", "water", "grass", "big"]
    words += [w for c in classes for w in c.text.split()]
    model = build_toy_clip(words, image_size=32, patch_size=8, width=32, layers=1, text_layers=1,
                           embed_dim=16, heads=2, seed=0)
    files = save_toy_clip(model, root / "clip")
    clip = {"arch": str(files.config), "pretrained": None,
            "mask_checkpoint": str(files.checkpoint)}
    loaded = load_clip(files.config, None, mask_checkpoint=files.checkpoint)
    df = read_manifest(data / "manifest.parquet")
    rows = []
    for image_id, labels in zip(df["image_id"], df["labels"], strict=True):
        if image_id == skip_image:
            continue
        for c in labels:
            t = classes[c - 1].text
            rows += [(image_id, c, "label", f"a photo of {t}."),
                     (image_id, c, "fg", f"a photo of big {t}."),
                     (image_id, c, "bg", "a photo of sky."),
                     (image_id, c, "bg", "a photo of water.")]
    corpus = pd.DataFrame(rows, columns=["image_id", "class_id", "role", "text"])
    corpus_path = root / "corpus.parquet"
    corpus.to_parquet(corpus_path)
    tf_path = root / "text_features.h5"

    def encode(texts):
        with torch.no_grad():
            return loaded.encode_text(texts).numpy()

    build_text_features_file(corpus_path, tf_path, encode, model_id=loaded.model_id,
                             prompt="a photo of {}.")
    return {"clip": clip, "corpus": corpus_path, "text_features": tf_path, "model": loaded}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam_train")
    data = make_tiny_dataset(root)
    return root, data


# ---------------------------------------------------------------------------- settings


def test_settings_defaults_are_the_authors():
    c = CamTrainSettings()
    assert (c.arch, c.batch_size, c.epochs, c.lr, c.crop_size) == ("resnet50", 16, 5, 0.1, 512)
    assert c.momentum == pytest.approx(1e-4) and c.resize_long == (320, 640)
    r = RitcSettings()
    assert (r.batch_size, r.epochs, r.lr, r.loss_weights, r.tau, r.omega) == (
        8, 15, 3.5e-4, (10.0, 8.0, 0.2), 0.7, 0.1)
    assert (r.fg_mix, r.brc_variant, r.mask_mode, r.fat, r.use_bg_text) == (
        "code", "code", "code", True, True)
    # one GPU with the 2-GPU global batch halves the pair sums (method.md 6.6)
    assert r.pair_scale(1) == 0.5 and r.pair_scale(2) == 1.0
    assert CamTrainSettings().total_steps(10582) == (10582 // 16) * 5
    assert RitcSettings().total_steps(10582) == 19830 // 15 * 15


def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"cam.ritc.omgea: unknown key"):
        RitcSettings.from_dict({"omgea": 0.1})
    with pytest.raises(ValueError, match=r"cam.ritc.fg_mix: expected one of"):
        RitcSettings.from_dict({"fg_mix": "mean"})
    with pytest.raises(ValueError, match=r"cam.train_cam.batch_size"):
        CamTrainSettings.from_dict({"batch_size": 0})
    with pytest.raises(ValueError, match=r"cam.train_cam.output_stride: expected one of"):
        CamTrainSettings.from_dict({"output_stride": 32})
    with pytest.raises(ValueError, match=r"experiments.frc_only.loss_weights"):
        ritc_settings({}, {"loss_weights": [10, 0]}, experiment="frc_only")
    with pytest.raises(ValueError, match=r"cam.export.dtype"):
        ExportSettings.from_dict({"dtype": "int4"})
    with pytest.raises(ValueError, match=r"cam.threshold.stop"):
        ThresholdSettings.from_dict({"start": 0.5, "stop": 0.2})


def test_experiment_overrides_and_round_trip():
    base = {"lr": 0.01, "epochs": 2}
    s = ritc_settings(base, {"loss_weights": [10, 0, 0], "fat": False}, experiment="x")
    assert s.loss_weights == (10, 0, 0) and s.fat is False and s.lr == 0.01 and s.epochs == 2
    assert RitcSettings.from_dict(s.to_dict()) == s
    grid = ThresholdSettings(start=0.05, stop=0.59, step=0.01).grid()
    assert len(grid) == 55 and grid[0] == 0.05 and grid[-1] == 0.59


# ---------------------------------------------------------------------------- sampler


def test_step_sampler_ranks_split_the_global_batch_and_resume():
    from qaclims.cam.datasets import StepBatchSampler

    single = list(StepBatchSampler(22, 4, 12, seed=5))
    assert len(single) == 12 and all(len(b) == 4 for b in single)
    # drop_last: an epoch is 5 batches of the 22 images, each image at most once per epoch
    epoch0 = [i for b in single[:5] for i, _ in b]
    assert len(set(epoch0)) == 20
    r0 = list(StepBatchSampler(22, 4, 12, seed=5, rank=0, world_size=2))
    r1 = list(StepBatchSampler(22, 4, 12, seed=5, rank=1, world_size=2))
    for s, a, b in zip(single, r0, r1, strict=True):
        assert a + b == s  # same indices and the same augmentation seeds
    resumed = list(StepBatchSampler(22, 4, 12, seed=5, start_step=7))
    assert resumed == single[7:]
    assert list(StepBatchSampler(22, 4, 12, seed=6)) != single
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(22, 5, 3, seed=0, world_size=2)


# ---------------------------------------------------------------------------- training


def test_train_cam_writes_model_and_curve(tiny, tmp_path, caplog):
    from qaclims.cam.checkpoint import load_cam_network, read_curve_tsv
    from qaclims.cam.networks import CamNet
    from qaclims.cam.train_cam import train_cam

    _, data = tiny
    s = tiny_cam_settings(max_steps=3, bn_calibration_batches=2)
    with caplog.at_level("INFO"):
        out = train_cam(data / "manifest.parquet", data / "classes.json", tmp_path / "m.pth",
                        tmp_path / "curve.tsv", s, split="train")
    assert out["steps"] == 3 and out["n_classes"] == 7 and out["resumed_from"] == 0
    rows = read_curve_tsv(tmp_path / "curve.tsv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert rows[0]["lr"] == pytest.approx(0.01) and rows[2]["lr"] < rows[1]["lr"] < 0.01
    assert "step 3/3 loss" in caplog.text and "images/s" in caplog.text
    assert "re-estimated on 2 batches" in caplog.text
    net, info = load_cam_network(tmp_path / "m.pth", "cam", n_classes=7)
    assert isinstance(net, CamNet) and info["arch"] == "resnet18" and info["stage"] == "train_cam"
    assert info["output_stride"] == net.output_stride == 16
    # calibrated statistics replaced torchvision's 0/1 initialisation
    assert not torch.allclose(net.stage2[0][0].bn1.running_var, torch.ones(128))
    with pytest.raises(ValueError, match="7 classes, the dataset 20"):
        load_cam_network(tmp_path / "m.pth", "ritc", n_classes=20)


def test_train_cam_changes_the_weights_and_is_deterministic(tiny, tmp_path):
    from qaclims.cam.checkpoint import load_model_state
    from qaclims.cam.train_cam import train_cam

    _, data = tiny
    s = tiny_cam_settings(max_steps=2)
    for name in ("a", "b"):
        train_cam(data / "manifest.parquet", data / "classes.json", tmp_path / f"{name}.pth",
                  tmp_path / f"{name}.tsv", s, split="train")
    a, _ = load_model_state(tmp_path / "a.pth")
    b, _ = load_model_state(tmp_path / "b.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(s.seed)
    from qaclims.cam.networks import CamNet
    from qaclims.vlp.backbones import load_resnet

    init = CamNet(load_resnet("resnet18", None), 7).state_dict()
    assert not torch.equal(init["classifier.weight"], a["classifier.weight"])
    assert torch.equal(init["stage1.0.weight"], a["stage1.0.weight"])  # conv1 frozen


def test_pair_texts(tiny, tmp_path):
    from qaclims.cam.datasets import split_images
    from qaclims.cam.train_ritc import build_pair_texts
    from qaclims.data.manifest import read_classes
    from qaclims.qape.text_features import load_text_features

    root, data = tiny
    images = split_images(data / "manifest.parquet", "train", 7)
    skip = images.image_ids[0]
    inputs = make_tiny_clip_inputs(tmp_path, data, skip_image=skip)
    tf = load_text_features(inputs["text_features"])
    corpus = pd.read_parquet(inputs["corpus"])
    classes = read_classes(data / "classes.json")
    texts = build_pair_texts(images, corpus, tf, classes, RitcSettings())
    assert texts.stats["pairs_skipped"] == int(images.labels[0].sum())
    idx = torch.arange(len(images))
    fg, bg, mask = texts.batch(idx)
    labels = torch.from_numpy(images.labels) > 0
    assert not mask[0].any()                         # the skipped image: no texts
    assert (mask[1:].any(-1) == labels[1:]).all()    # every other labelled pair has 2 bg texts
    assert (mask.sum(-1)[1:][labels[1:]] == 2).all()
    n, k = (int(v) for v in torch.nonzero(labels[1:])[0])
    n += 1
    t = classes[k].text
    expected = 0.5 * tf[f"a photo of {t}."] + 0.5 * tf[f"a photo of big {t}."]
    np.testing.assert_allclose(fg[n, k].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(bg[n, k, 0].numpy(), tf["a photo of sky."], atol=1e-6)
    paper = build_pair_texts(images, corpus, tf, classes, RitcSettings(fg_mix="paper"))
    np.testing.assert_allclose(paper.batch(idx)[0][n, k].numpy(), expected, atol=1e-6)
    label_only = build_pair_texts(images, corpus, tf, classes, RitcSettings(fg_mix="label_only"))
    np.testing.assert_allclose(label_only.batch(idx)[0][n, k].numpy(),
                               tf[f"a photo of {t}."], atol=1e-6)
    # no QAPE background texts: "no {class}", encoded on the fly, for every labelled pair
    model = inputs["model"]

    def encode(texts_):
        with torch.no_grad():
            return model.encode_text(texts_).numpy()

    nobg = build_pair_texts(images, corpus, tf, classes, RitcSettings(use_bg_text=False), encode)
    _, bg2, mask2 = nobg.batch(idx)
    assert (mask2[..., 0] == labels).all() and mask2.shape[-1] == 1
    v = encode([f"a photo of no {t}."])[0]
    np.testing.assert_allclose(bg2[n, k, 0].numpy(), v / np.linalg.norm(v), atol=1e-5)
    with pytest.raises(KeyError, match="no text encoder"):
        build_pair_texts(images, corpus, tf, classes, RitcSettings(use_bg_text=False))


def test_train_ritc_from_the_baseline(tiny, tmp_path):
    from qaclims.cam.checkpoint import load_cam_network, load_model_state, read_curve_tsv
    from qaclims.cam.train_cam import train_cam
    from qaclims.cam.train_ritc import train_ritc

    root, data = tiny
    inputs = make_tiny_clip_inputs(tmp_path, data)
    man, cls = data / "manifest.parquet", data / "classes.json"
    # a stride-8 baseline: RITC and its model file keep the stride
    train_cam(man, cls, tmp_path / "cam.pth", tmp_path / "cam.tsv",
              tiny_cam_settings(max_steps=1, output_stride=8), split="train")
    args = (man, cls, inputs["corpus"], inputs["text_features"], tmp_path / "cam.pth",
            inputs["clip"])
    out = train_ritc(*args, tmp_path / "ritc.pth", tmp_path / "ritc.tsv",
                     tiny_ritc_settings(), split="train")
    assert out["steps"] == 2 and out["texts"]["pairs_skipped"] == 0
    rows = read_curve_tsv(tmp_path / "ritc.tsv")
    assert set(rows[0]) >= {"step", "loss", "frc", "brc", "reg", "pairs", "lr"}
    for r in rows:
        assert r["pairs"] >= 4  # every image has a label, all pairs have texts
        assert r["loss"] == pytest.approx(0.5 * (10 * r["frc"] + 8 * r["brc"]) + 0.2 * r["reg"],
                                          rel=1e-5)
    init, _ = load_model_state(tmp_path / "cam.pth")
    trained, info = load_model_state(tmp_path / "ritc.pth")
    assert info["stage"] == "train_ritc" and set(init) == set(trained)
    assert info["output_stride"] == out["output_stride"] == 8
    net, _ = load_cam_network(tmp_path / "ritc.pth", "ritc", n_classes=7)
    assert net.output_stride == 8
    assert not torch.equal(init["classifier.weight"], trained["classifier.weight"])
    # BN in training mode: running statistics moved
    assert not torch.equal(init["stage2.0.0.bn1.running_mean"],
                           trained["stage2.0.0.bn1.running_mean"])
    # REG only (FRC/BRC weights 0): the loss is exactly 0.2 * mean(P)
    train_ritc(*args, tmp_path / "reg.pth", tmp_path / "reg.tsv",
               tiny_ritc_settings(loss_weights=[0, 0, 0.2], fat=False, max_steps=1),
               split="train")
    r = read_curve_tsv(tmp_path / "reg.tsv")[0]
    assert r["loss"] == pytest.approx(0.2 * r["reg"], rel=1e-6)
    # a baseline with another class count does not load
    from qaclims.cam.checkpoint import save_model

    bad = {k: v for k, v in init.items()}
    bad["classifier.weight"] = torch.zeros(5, *init["classifier.weight"].shape[1:])
    save_model(tmp_path / "bad.pth", bad, arch="resnet18", n_classes=5, stage="train_cam")
    with pytest.raises(ValueError, match="5 classes"):
        train_ritc(*args[:4], tmp_path / "bad.pth", inputs["clip"], tmp_path / "x.pth",
                   tmp_path / "x.tsv", tiny_ritc_settings(), split="train")


# ---------------------------------------------------------------------------- DDP on CPU


def test_ddp_two_gloo_ranks_equal_one_process(tiny, tmp_path):
    """RITC with SyncBN: 2 ranks x 2 images == 1 process x 4 images (pair_scale 1 vs 0.5)."""
    from qaclims.cam.checkpoint import load_model_state, read_curve_tsv
    from qaclims.cam.train_cam import train_cam
    from qaclims.cam.train_ritc import train_ritc

    root, data = tiny
    inputs = make_tiny_clip_inputs(tmp_path, data)
    man, cls = data / "manifest.parquet", data / "classes.json"
    train_cam(man, cls, tmp_path / "cam.pth", tmp_path / "cam.tsv", tiny_cam_settings(max_steps=1),
              split="train")
    args = (man, cls, inputs["corpus"], inputs["text_features"], tmp_path / "cam.pth",
            inputs["clip"])
    s = tiny_ritc_settings(max_steps=1, lr=0.05, threads=1)
    for world in (1, 2):
        train_ritc(*args, tmp_path / f"w{world}.pth", tmp_path / f"w{world}.tsv", s,
                   split="train", world_size=world)
    c1 = read_curve_tsv(tmp_path / "w1.tsv")[0]
    c2 = read_curve_tsv(tmp_path / "w2.tsv")[0]
    assert c1["loss"] == pytest.approx(c2["loss"], rel=1e-4)
    assert c1["reg"] == pytest.approx(c2["reg"], rel=1e-4)
    a, _ = load_model_state(tmp_path / "w1.pth")
    b, _ = load_model_state(tmp_path / "w2.pth")
    init, _ = load_model_state(tmp_path / "cam.pth")
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
        if a[k].is_floating_point() and not torch.equal(a[k], init[k]):
            moved += 1
    assert moved > 20  # the step changed many tensors (weights and BN statistics) alike
