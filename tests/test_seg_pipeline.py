"""The DeepLab stage's rule steps (qaclims.seg.pipeline): training labels from shard folders or
the ground truth, train -> predict -> evaluate on a tiny dataset, the VOC test layout."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_seg_data import make_seg_manifest

from qaclims.data.manifest import ClassInfo, write_classes
from qaclims.seg.optim import poly_lr
from qaclims.seg.pipeline import (
    evaluate_deeplab,
    gather_training_labels,
    run_predict_deeplab,
    run_train_deeplab,
    run_voc_test_submission,
    write_loss_curve,
)
from qaclims.seg.train import DeepLabSettings
from qaclims.store import read_label_png, write_label_png

TRAIN = {"arch": "resnet18", "weights": None, "batch_size": 2, "iter_size": 1,
         "iterations": 3, "crop": 32, "scales": [1.0], "bn_calibration_batches": 1,
         "lr": 1e-3, "save_every": 2, "log_every": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(manifest, classes.json, GT label dir): 4 images in train and val, 2 classes."""
    manifest, labels = make_seg_manifest(tmp_path / "data", n=4, size=(30, 36),
                                         splits=("train", "val"))
    classes = tmp_path / "data" / "classes.json"
    write_classes([ClassInfo(1, "red", "red"), ClassInfo(2, "blue", "blue")], classes, "test")
    return manifest, classes, labels


def _split_into_shards(labels: Path, root: Path) -> list[Path]:
    shards = [root / "0", root / "1"]
    for d in shards:
        d.mkdir(parents=True)
    for i, png in enumerate(sorted(labels.glob("*.png"))):
        shutil.copyfile(png, shards[i % 2] / png.name)
    return shards


def test_gather_labels_from_shards_and_ground_truth(tmp_path: Path, data) -> None:
    manifest, _, labels = data
    shards = _split_into_shards(labels, tmp_path / "masks")
    out = tmp_path / "train_labels"
    summary = gather_training_labels(manifest, "train", out, source_dirs=shards)
    assert summary == {"split": "train", "n_images": 4, "source": "pseudo_masks"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in labels.iterdir())
    for png in labels.iterdir():
        assert (read_label_png(out / png.name) == read_label_png(png)).all()
        assert not (out / png.name).is_symlink()
    # the ground truth replaces what was there
    (shards[0] / "img_000.png").unlink()
    gt = gather_training_labels(manifest, "train", out, ground_truth=True)
    assert gt["source"] == "ground_truth" and len(list(out.iterdir())) == 4
    # a missing mask names it, and the previous folder stays as it was
    with pytest.raises(FileNotFoundError, match=r"1 of 4 images of split 'train' have no "
                       r"pseudo masks.*img_000"):
        gather_training_labels(manifest, "train", out, source_dirs=shards)
    assert len(list(out.iterdir())) == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".train_labels")] == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gather_training_labels(manifest, "train", out, source_dirs=[tmp_path / "nope"])
    with pytest.raises(ValueError, match="no image in split 'test'"):
        gather_training_labels(manifest, "test", out, ground_truth=True)


def test_gather_ground_truth_needs_every_mask(tmp_path: Path) -> None:
    manifest, _ = make_seg_manifest(tmp_path / "d", n=2, splits=("train",), with_gt=False)
    with pytest.raises(FileNotFoundError, match="no ground-truth masks"):
        gather_training_labels(manifest, "train", tmp_path / "out", ground_truth=True)


def test_loss_curve_tsv(tmp_path: Path) -> None:
    s = DeepLabSettings(n_classes=3, iterations=20, lr=1e-3)
    write_loss_curve([3.0, 2.5] + [1.0] * 18, s, tmp_path / "c.tsv")
    lines = (tmp_path / "c.tsv").read_text().splitlines()
    assert lines[0] == "iteration\tloss\tlr" and len(lines) == 21
    assert lines[1].split("\t") == ["1", "3", "0.001"]
    it, loss, lr = lines[11].split("\t")
    assert (it, float(loss)) == ("11", 1.0)
    assert float(lr) == pytest.approx(poly_lr(1e-3, 10, 20, 0.9, 10), rel=1e-5)


def test_train_predict_evaluate(tmp_path: Path, data) -> None:
    manifest, classes, labels = data
    resume = tmp_path / "_resume" / "train_deeplab"
    model, curve = tmp_path / "deeplab" / "model.pth", tmp_path / "deeplab" / "loss_curve.tsv"
    summary = run_train_deeplab(manifest, classes, labels, model, curve, train=TRAIN,
                                split="train", init=None, resume_dir=resume, device="cpu",
                                world_size=4, threads=1)
    assert summary["iterations"] == 3 and summary["world_size"] == 1  # CPU: one process
    assert np.isfinite(summary["final_loss"]) and "loss_curve" not in summary
    assert model.is_file() and not resume.exists()  # the state goes once the model is there
    rows = [r.split("\t") for r in curve.read_text().splitlines()]
    assert rows[0] == ["iteration", "loss", "lr"] and [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert float(rows[-1][1]) == pytest.approx(summary["final_loss"], rel=1e-4)
    payload = torch.load(model, map_location="cpu", weights_only=True)
    assert payload["n_classes"] == 3 and payload["arch"] == "resnet18"
    # random init is torchvision-layout: "auto" resolved to ImageNet input, read back at predict
    assert payload["meta"]["input_norm"] == "imagenet"
    from qaclims.seg.pipeline import checkpoint_input

    assert checkpoint_input(model)[1] == "imagenet"

    pred = tmp_path / "deeplab" / "predictions" / "val"
    out = run_predict_deeplab(model, manifest, "val", pred, threads=1,
                              predict={"crf": True, "crf_params": {"iterations": 1},
                                       "flip": True, "scales": [0.5]})
    assert out["n_images"] == 4 and out["flip"] and out["crf"]["iterations"] == 1
    pngs = sorted(pred.glob("*.png"))
    assert [p.stem for p in pngs] == ["img_000", "img_001", "img_002", "img_003"]
    assert all(read_label_png(p).shape == (30, 36) for p in pngs)
    assert all(read_label_png(p).max() <= 2 for p in pngs)

    metrics = tmp_path / "deeplab" / "metrics.json"
    m = evaluate_deeplab(manifest, classes, pred, metrics, split="val", settings={"crf": True})
    on_disk = json.loads(metrics.read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert on_disk["stage"] == "deeplab" and on_disk["split"] == "val"
    assert on_disk["n_images"] == 4 and on_disk["class_names"] == ["background", "red", "blue"]
    assert 0 <= on_disk["miou"] <= 1 and set(on_disk["iou"]) == {"background", "red", "blue"}
    assert on_disk["settings"] == {"crf": True}

    # perfect predictions score 1: the metric reads the right files against the right GT
    perfect = tmp_path / "perfect"
    for png in labels.iterdir():
        lab = read_label_png(png)
        write_label_png(np.where(lab == 255, 0, lab).astype(np.uint8), perfect / png.name)
    assert evaluate_deeplab(manifest, classes, perfect, tmp_path / "p.json",
                            split="val")["miou"] == pytest.approx(1.0)


def test_voc_test_submission(tmp_path: Path) -> None:
    manifest, _ = make_seg_manifest(tmp_path / "d", n=2, splits=("test",), with_gt=False)
    pred = tmp_path / "pred"
    for i in range(2):
        write_label_png(np.full((40, 48), i + 1, np.uint8), pred / f"img_{i:03d}.png")
    dest = run_voc_test_submission(manifest, "test", pred, tmp_path / "voc_test",
                                   tmp_path / "voc_test" / "results.tar.gz")
    assert dest == tmp_path / "voc_test/results/VOC2012/Segmentation/comp6_test_cls"
    assert sorted(p.name for p in dest.iterdir()) == ["img_000.png", "img_001.png"]
    with tarfile.open(tmp_path / "voc_test" / "results.tar.gz") as tar:
        assert len(tar.getnames()) == 2
    (pred / "img_001.png").unlink()
    with pytest.raises(FileNotFoundError, match="img_001"):
        run_voc_test_submission(manifest, "test", pred, tmp_path / "v2", tmp_path / "v2.tgz")


def test_predict_resumes_after_a_kill(tmp_path: Path, data, monkeypatch) -> None:
    """A killed or preempted predict_deeplab keeps its finished PNGs outside the declared output
    (which Snakemake deletes) and the rerun predicts only the rest (issue 21 item 7)."""
    import qaclims.seg.predict as predict_module

    manifest, classes, labels = data
    model = tmp_path / "model.pth"
    run_train_deeplab(manifest, classes, labels, model, tmp_path / "curve.tsv", train=TRAIN,
                      split="train", init=None, resume_dir=None, device="cpu", threads=1)
    settings = {"crf": False, "flip": False}
    ref = tmp_path / "ref" / "val"
    run_predict_deeplab(model, manifest, "val", ref, threads=1, predict=settings)

    pred = tmp_path / "deeplab" / "predictions" / "val"
    written = []
    original = predict_module.write_label_png

    def killed_after_two(label, path):
        if len(written) == 2:
            raise KeyboardInterrupt("preempted")
        written.append(Path(path).name)
        original(label, path)

    with monkeypatch.context() as m:
        m.setattr(predict_module, "write_label_png", killed_after_two)
        with pytest.raises(KeyboardInterrupt):
            run_predict_deeplab(model, manifest, "val", pred, threads=1, predict=settings)
    assert not pred.exists()  # nothing that looks finished
    shutil.rmtree(pred, ignore_errors=True)  # what Snakemake does with the declared output
    out = run_predict_deeplab(model, manifest, "val", pred, threads=1, predict=settings)
    assert out["n_images"] == 4 and out["n_predicted"] == 2
    assert sorted(p.name for p in pred.iterdir()) == sorted(p.name for p in ref.iterdir())
    for png in ref.iterdir():
        assert np.array_equal(read_label_png(png), read_label_png(pred / png.name))
    assert not (pred.parent / ".val.partial").exists()
    # other settings never reuse a partial result
    with monkeypatch.context() as m:
        written.clear()
        m.setattr(predict_module, "write_label_png", killed_after_two)
        with pytest.raises(KeyboardInterrupt):
            run_predict_deeplab(model, manifest, "val", tmp_path / "b", threads=1,
                                predict={**settings, "flip": True})
    assert run_predict_deeplab(model, manifest, "val", tmp_path / "b", threads=1,
                               predict=settings)["n_predicted"] == 4
