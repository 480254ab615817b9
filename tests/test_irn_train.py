"""IRN training (stage G2): the affinity dataset, a 3-step run on tiny data that resumes exactly
after a kill or SIGTERM, the mean shift, the model file and the loss curve."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from test_irn_pipeline import (
    N_CLASSES,
    N_SHARDS,
    SPLITS,
    make_irn_data,
    write_fake_cams,
)

from qaclims.cam.optim import PolyOptimizer
from qaclims.cam.train_cam import TrainingPreempted
from qaclims.data.manifest import read_manifest, split_view
from qaclims.irn.datasets import AffinityDataset, top_left_crop
from qaclims.irn.pipeline import ir_labels_shard, label_files
from qaclims.irn.settings import IrnTrainSettings
from qaclims.irn.train_irn import load_irn_network, mean_displacement, train_irn
from qaclims.store import write_label_png

CROP = 80  # the smallest multiple of 4 that leaves radius-10 pairs on the stride-4 map


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The tiny dataset with IR labels for every training image (two shard folders)."""
    data = make_irn_data(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("irn_train")
    cams = write_fake_cams(data, root / "cams")
    dirs = []
    for s in range(N_SHARDS):
        dirs.append(root / f"ir_labels/{s}")
        ir_labels_shard(data / "manifest.parquet", data / "classes.json", cams[s], dirs[-1],
                        splits=SPLITS, shard=s, n_shards=N_SHARDS)
    return data, dirs


def tiny_irn_settings(**kw) -> IrnTrainSettings:
    base = dict(arch="resnet18", weights=None, batch_size=2, max_steps=3, crop_size=CROP,
                log_every=1, checkpoint_every=0, seed=0, threads=1, momentum=0.9)
    base.update(kw)
    return IrnTrainSettings.from_dict(base)


def _dataset(data, dirs, **kw) -> AffinityDataset:
    df = split_view(read_manifest(data / "manifest.parquet"), "train_aug")
    args = dict(crop_size=CROP, scale_range=(0.5, 1.5), hflip=True, radius=10)
    args.update(kw)
    return AffinityDataset(df["image_id"].tolist(), df["image_path"].tolist(), label_files(dirs),
                           N_CLASSES, **args)


# ---------------------------------------------------------------------------- dataset


def test_affinity_samples_are_seeded_and_labelled_like_the_path_index(labelled):
    data, dirs = labelled
    ds = _dataset(data, dirs)
    x, bg_pos, fg_pos, neg = ds[(0, 123)]
    pi = ds.path_index
    assert pi.size == (CROP // 4, CROP // 4)
    assert x.shape == (3, CROP, CROP) and x.dtype == torch.float32
    assert bg_pos.shape == fg_pos.shape == neg.shape == (pi.n_directions, pi.n_src)
    assert bg_pos.dtype == torch.bool
    # a pair is at most one of the three; padding and uncertain pixels leave pairs unlabelled
    assert not (bg_pos & fg_pos).any() and not ((bg_pos | fg_pos) & neg).any()
    assert (bg_pos | fg_pos | neg).float().mean() < 1
    # the same seed gives the same sample, another seed another one
    again = ds[(0, 123)]
    assert all(torch.equal(a, b) for a, b in zip(again, (x, bg_pos, fg_pos, neg), strict=True))
    assert not torch.equal(ds[(0, 124)][0], x)
    # the pair labels are those of the reduced (x0.25 nearest) augmented label
    img, label = ds.load(0)
    x2, reduced = ds.augment(img, label, random.Random(123))
    assert reduced.shape == (CROP // 4, CROP // 4)
    np.testing.assert_array_equal(x2, x.numpy())
    ref = pi.affinity_labels(reduced)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(ref, (bg_pos, fg_pos, neg),
                                                             strict=True))


def test_crop_pads_image_with_zero_and_label_with_ignore(labelled):
    data, dirs = labelled
    ds = _dataset(data, dirs, crop_size=200, scale_range=(1.0, 1.0), hflip=False)
    img, label = ds.load(0)
    x, reduced = ds.augment(img, label, random.Random(0))
    h, w = img.shape[:2]
    # the 64-72 px image lies somewhere inside the 200 px crop; the rest is padding
    assert (x == 0).all(axis=0).sum() >= 200 * 200 - h * w
    assert (reduced == 255).sum() >= 50 * 50 - ((h + 3) // 4 + 1) * ((w + 3) // 4 + 1)
    tl = top_left_crop(np.ones((3, 5, 2)), 4, fill=-1.0)
    assert tl.shape == (4, 4, 2) and (tl[:3, :4] == 1).all() and (tl[3] == -1).all()


def test_bad_ir_labels_name_the_image(labelled, tmp_path):
    data, dirs = labelled
    files = label_files(dirs)
    df = split_view(read_manifest(data / "manifest.parquet"), "train_aug")
    first = df["image_id"].iloc[0]
    with pytest.raises(ValueError, match=f"image {first}: no IR label PNG"):
        AffinityDataset(df["image_id"].tolist(), df["image_path"].tolist(),
                        {k: v for k, v in files.items() if k != first}, N_CLASSES)
    small = tmp_path / "small.png"
    write_label_png(np.zeros((10, 10), np.uint8), small)
    ds = AffinityDataset([first], [df["image_path"].iloc[0]], {first: small}, N_CLASSES,
                         crop_size=CROP)
    with pytest.raises(ValueError, match=f"image {first}: IR label .* is 10x10"):
        ds[(0, 0)]
    wrong = tmp_path / "wrong.png"
    write_label_png(np.full((df["height"].iloc[0], df["width"].iloc[0]), 9, np.uint8), wrong)
    ds = AffinityDataset([first], [df["image_path"].iloc[0]], {first: wrong}, N_CLASSES,
                         crop_size=CROP)
    with pytest.raises(ValueError, match=f"image {first}: IR label .* holds 9, expected 0..7"):
        ds[(0, 0)]


# ---------------------------------------------------------------------------- training


def _train(data, dirs, out, resume_root, settings):
    return train_irn(data / "manifest.parquet", data / "classes.json", dirs, out / "irn.pth",
                     out / "curve.json", settings, split="train_aug", resume_root=resume_root)


@pytest.fixture(scope="module")
def reference(labelled, tmp_path_factory):
    data, dirs = labelled
    out = tmp_path_factory.mktemp("irn_ref")
    summary = _train(data, dirs, out, out / "resume", tiny_irn_settings())
    return out, summary


def _interrupt_at(monkeypatch, step: int, how: str) -> None:
    """Make optimiser step ``step`` (0-based) crash (a kill) or deliver SIGTERM."""
    original = PolyOptimizer.step

    def step_fn(self, closure=None):
        if self.global_step == step:
            if how == "crash":
                raise RuntimeError("simulated kill")
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, closure)

    monkeypatch.setattr(PolyOptimizer, "step", step_fn)


def _state(path):
    net, info = load_irn_network(path)
    return net.state_dict(), info


def test_model_file_curve_and_mean_shift(labelled, reference):
    data, _ = labelled
    out, summary = reference
    curve = json.loads((out / "curve.json").read_text())
    assert [r["step"] for r in curve["curve"]] == [1, 2, 3]
    for key in ("loss", "pos_aff", "neg_aff", "dp_fg", "dp_bg", "lr", "seconds"):
        assert all(np.isfinite(r[key]) for r in curve["curve"]), key
    row = curve["curve"][0]
    assert row["loss"] == pytest.approx((row["pos_aff"] + row["neg_aff"]) / 2
                                        + (row["dp_fg"] + row["dp_bg"]) / 2, rel=1e-5)
    assert curve["curve"][0]["lr"] == 0.1 and curve["curve"][1]["lr"] < 0.1  # poly decay
    assert curve["settings"]["crop_size"] == CROP and curve["steps"] == 3
    assert summary["n_images"] == 8 and summary["resumed_from"] == 0
    net, info = load_irn_network(out / "irn.pth")
    assert info["arch"] == "resnet18" and info["meta"]["stage"] == "train_irn"
    # the mean shift is the mean raw displacement over the training images (top-left crops)
    shift = net.mean_shift.running_mean.clone()
    assert torch.allclose(shift, torch.tensor(summary["mean_shift"]))
    assert shift.abs().sum() > 0
    paths = split_view(read_manifest(data / "manifest.parquet"), "train_aug")["image_path"]
    again = mean_displacement(net, paths.tolist(), crop_size=CROP, batch_size=2)
    assert torch.allclose(again, shift, atol=1e-6)
    assert torch.equal(net.mean_shift.running_mean, shift)  # the pass leaves the shift as it was
    # at inference the shift is subtracted: the mean displacement becomes ~0
    net.eval()
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(
        top_left_crop(np.zeros((CROP, CROP, 3), np.float32), CROP).transpose(2, 0, 1)))])
    net.train()
    raw = net(x)[1].mean(dim=(0, 2, 3))
    net.eval()
    shifted = net(x)[1].mean(dim=(0, 2, 3))
    assert torch.allclose(raw - shift, shifted, atol=1e-5)


@pytest.mark.parametrize("how", ["crash", "sigterm"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(labelled, reference, tmp_path,
                                                             monkeypatch, how):
    data, dirs = labelled
    ref_out, _ = reference
    settings = tiny_irn_settings(checkpoint_every=1)  # not in the hash: same run as reference
    out, root = tmp_path / "run", tmp_path / "resume"
    with monkeypatch.context() as m:
        _interrupt_at(m, 2, how)
        with pytest.raises(RuntimeError if how == "crash" else TrainingPreempted):
            _train(data, dirs, out, root, settings)
    assert not (out / "irn.pth").exists() and not (out / "curve.json").exists()
    (state_dir,) = [p for p in root.iterdir() if p.is_dir()]
    saved = torch.load(state_dir / "state.pt", weights_only=False)
    # a crash during step 3 keeps the checkpoint of step 2; SIGTERM saves after step 3
    assert saved["step"] == (2 if how == "crash" else 3)

    summary = _train(data, dirs, out, root, settings)
    assert summary["resumed_from"] == saved["step"]
    ref_sd, _ = _state(ref_out / "irn.pth")
    got_sd, _ = _state(out / "irn.pth")
    assert ref_sd.keys() == got_sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], got_sd[k]), k
    ref_curve = json.loads((ref_out / "curve.json").read_text())["curve"]
    got_curve = json.loads((out / "curve.json").read_text())["curve"]
    assert [r["loss"] for r in got_curve] == [r["loss"] for r in ref_curve]
    assert not state_dir.exists()  # cleared once the outputs are written


def test_changed_settings_do_not_resume_a_stale_state(labelled, tmp_path, monkeypatch):
    data, dirs = labelled
    out, root = tmp_path / "run", tmp_path / "resume"
    with monkeypatch.context() as m:
        _interrupt_at(m, 2, "crash")
        with pytest.raises(RuntimeError):
            _train(data, dirs, out, root, tiny_irn_settings(checkpoint_every=1, max_steps=4))
    summary = _train(data, dirs, out, root, tiny_irn_settings(lr=0.05, max_steps=4))
    assert summary["resumed_from"] == 0
