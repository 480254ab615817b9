"""CAM export (one file per shard) and threshold search / evaluation on exported CAMs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cam_train import make_tiny_dataset, tiny_cam_settings

from qaclims.cam.cam_store import CamShardWriter, CamStore
from qaclims.cam.settings import ExportSettings, ThresholdSettings
from qaclims.data.manifest import read_manifest, split_view
from qaclims.store import read_label_png


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from qaclims.cam.export import export_cams
    from qaclims.cam.train_cam import train_cam

    root = tmp_path_factory.mktemp("export")
    data = make_tiny_dataset(root, n_train=10, size=64)
    man, cls = data / "manifest.parquet", data / "classes.json"
    train_cam(man, cls, root / "m.pth", root / "c.tsv", tiny_cam_settings(max_steps=1),
              split="train")
    settings = ExportSettings(scales=(1.0, 0.5))
    summaries = [export_cams(man, cls, root / "m.pth", root / f"cams/{s}.h5", splits=["train"],
                             shard=s, n_shards=2, settings=settings) for s in ("0", "1")]
    return root, data, summaries


def test_shards_partition_the_split_and_hold_the_multiscale_cams(exported):
    from qaclims.cam.checkpoint import load_cam_network
    from qaclims.cam.datasets import load_rgb
    from qaclims.cam.inference import multiscale_cam
    from qaclims.qape.pairs import shard_of

    root, data, summaries = exported
    df = split_view(read_manifest(data / "manifest.parquet"), "train")
    ids = [set(CamStore(root / f"cams/{s}.h5").image_ids) for s in ("0", "1")]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(df["image_id"])
    assert all(shard_of(i, 2) == 0 for i in ids[0])
    assert sum(s["n_images"] for s in summaries) == len(df)
    net, _ = load_cam_network(root / "m.pth", "ritc", 7)
    net.eval()
    store = CamStore([root / "cams/0.h5", root / "cams/1.h5"])
    assert store.attrs()["model_stage"] == "train_cam" and store.attrs()["scales"] == "1.0,0.5"
    for row in df.head(3).itertuples():
        keys, strided, high = store.get(row.image_id)
        assert keys.tolist() == sorted(row.labels)  # 1-based, only the image's classes
        assert high.shape == (len(keys), row.height, row.width)
        assert strided.shape == (len(keys), (row.height - 1) // 4 + 1, (row.width - 1) // 4 + 1)
        ref_s, ref_h = multiscale_cam(net, load_rgb(row.image_path), keys, (1.0, 0.5))
        assert np.abs(high - ref_h.numpy()).max() <= 0.5 / 200 + 1e-6
        assert np.abs(strided - ref_s.numpy()).max() <= 0.5 / 200 + 1e-6
        assert high.max() <= 1.0


def test_search_threshold_matches_a_direct_evaluation(exported, tmp_path):
    from qaclims.cam.evaluate import search_threshold
    from qaclims.cam.threshold import cam_to_label
    from qaclims.metrics import ConfusionMatrix

    root, data, _ = exported
    files = [root / "cams/0.h5", root / "cams/1.h5"]
    settings = ThresholdSettings(start=0.05, stop=0.6, step=0.05)
    res = search_threshold(files, data / "manifest.parquet", data / "classes.json",
                           tmp_path / "threshold.json", split="train", settings=settings,
                           out_plot=tmp_path / "threshold.png")
    saved = json.loads((tmp_path / "threshold.json").read_text())
    assert saved["split"] == "train" and saved["n_images"] == 10 and len(saved["miou"]) == 12
    assert saved["fixed_threshold"] == 0.15 and saved["class_names"][0] == "background"
    assert set(saved["iou_at_best"]) == set(saved["class_names"])
    assert (tmp_path / "threshold.png").read_bytes()[:4] == b"\x89PNG"
    cm = ConfusionMatrix(8)
    store = CamStore(files)
    df = split_view(read_manifest(data / "manifest.parquet"), "train")
    for row in df.itertuples():
        keys, _, high = store.get(row.image_id)
        cm.update(read_label_png(row.gt_path), cam_to_label(high, keys, 0.15))
    assert res["miou_at_fixed"] == pytest.approx(cm.miou(), abs=1e-12)
    assert max(m for m in res["miou"] if m is not None) == pytest.approx(res["best_miou"])


def _write_gt_cams(data, path, on: float, off: float, drop: str | None = None) -> None:
    """CAMs made from the ground truth: ``on`` inside each labelled class, ``off`` elsewhere."""
    df = split_view(read_manifest(data / "manifest.parquet"), "train")
    with CamShardWriter(path, dtype="float32", compression="none") as w:
        for row in df.itertuples():
            if row.image_id == drop:
                continue
            gt = read_label_png(row.gt_path)
            keys = sorted(row.labels)
            high = np.stack([np.where(gt == k, on, off) for k in keys]).astype(np.float32)
            w.add(row.image_id, keys, high[:, ::4, ::4], high)


def test_threshold_curve_of_ground_truth_cams(exported, tmp_path):
    from qaclims.cam.evaluate import search_threshold

    _, data, _ = exported
    _write_gt_cams(data, tmp_path / "gt.h5", on=0.6, off=0.2)
    settings = ThresholdSettings(start=0.1, stop=0.7, step=0.1)
    res = search_threshold([tmp_path / "gt.h5"], data / "manifest.parquet",
                           data / "classes.json", tmp_path / "t.json", split="train",
                           settings=settings)
    curve = dict(zip(res["thresholds"], res["miou"], strict=True))
    # below 0.2 every pixel takes a class; in [0.2, 0.6) the GT exactly; from 0.6 on all bg
    assert curve[0.2] == pytest.approx(1.0) and curve[0.5] == pytest.approx(1.0)
    assert curve[0.1] < 0.5 and curve[0.6] < 0.5
    assert res["best_threshold"] == pytest.approx(0.2) and res["miou_at_fixed"] < 0.5
    _write_gt_cams(data, tmp_path / "gt2.h5", on=0.6, off=0.2, drop="syn_000001")
    with pytest.raises(KeyError, match="1 images of the evaluation split have no CAMs"):
        search_threshold([tmp_path / "gt2.h5"], data / "manifest.parquet", data / "classes.json",
                         tmp_path / "t2.json", split="train", settings=settings)
    assert not (tmp_path / "t2.json").exists()
    with pytest.raises(ValueError, match="no images with ground truth"):
        search_threshold([tmp_path / "gt.h5"], data / "manifest.parquet", data / "classes.json",
                         tmp_path / "t3.json", split="nosuchsplit", settings=settings)


def test_export_rejects_a_model_for_other_classes(exported, tmp_path):
    from qaclims.cam.checkpoint import load_model_state, save_model
    from qaclims.cam.export import export_cams

    root, data, _ = exported
    sd, _ = load_model_state(root / "m.pth")
    sd["classifier.weight"] = torch.zeros(3, *sd["classifier.weight"].shape[1:])
    save_model(tmp_path / "bad.pth", sd, arch="resnet18", n_classes=3, stage="x")
    with pytest.raises(ValueError, match="3 classes, the dataset 7"):
        export_cams(data / "manifest.parquet", data / "classes.json", tmp_path / "bad.pth",
                    tmp_path / "c.h5", splits=["train"], shard="0", n_shards=1,
                    settings=ExportSettings())
    assert not (tmp_path / "c.h5").exists()
