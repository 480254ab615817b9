"""IRN stage drivers: IR labels and pseudo masks per shard from CAM files, their evaluations,
the settings, and bad input (errors that name the image, nothing written).

Inputs are tiny: a synthetic VOC-style dataset of 64 px images, CAMs made from the ground truth
(a blurred class mask, written with the CAM store), an untrained ResNet-18 IRN model.
test_irn_train.py reuses the builders.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qaclims.cam.cam_store import FORMAT, CamShardWriter
from qaclims.data.manifest import read_manifest, write_manifest
from qaclims.irn.pipeline import (
    evaluate_ir_labels,
    evaluate_pseudo_masks,
    ir_labels_shard,
    label_files,
    pseudo_masks_from_walks,
    random_walk_shard,
    search_walk_threshold,
    shard_rows,
)
from qaclims.irn.settings import (
    IrLabelSettings,
    IrnTrainSettings,
    RandomWalkSettings,
    irn_reference_threshold,
    irn_settings,
    resolve_thresholds,
)
from qaclims.qape.pairs import shard_of
from qaclims.store import read_label_png

SPLITS = ["train", "train_aug"]
N_SHARDS = 2
N_CLASSES = 7  # the synthetic generator's default classes


# ---------------------------------------------------------------------------- builders


def make_irn_data(base: Path) -> Path:
    """8 training + 2 val synthetic images of 64 px with manifest (built once per session)."""
    from qaclims.data.prepare import prepare_dataset
    from qaclims.data.synthetic import SyntheticSpec, generate_segmentation_dataset

    data = base / "irn_data"
    if not (data / "manifest.parquet").is_file():
        generate_segmentation_dataset(base / "irn_syn", SyntheticSpec(
            n_train=8, n_val=2, min_size=64, max_size=72, seed=5))
        prepare_dataset("synthetic", base / "irn_syn", data)
    return data


def cams_from_gt(gt: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """(strided, high_res) CAMs of the image's classes: the blurred GT mask, max-normalised."""
    h, w = gt.shape
    maps = [F.avg_pool2d(torch.from_numpy((gt == c).astype(np.float32))[None, None], 9, 1, 4,
                         count_include_pad=False)[0, 0] for c in labels]
    if not maps:
        return (np.zeros((0, (h - 1) // 4 + 1, (w - 1) // 4 + 1), np.float32),
                np.zeros((0, h, w), np.float32))
    high = torch.stack(maps)
    high = high / (high.flatten(1).amax(1)[:, None, None] + 1e-5)
    strided = F.interpolate(high[None], size=((h - 1) // 4 + 1, (w - 1) // 4 + 1),
                            mode="bilinear", align_corners=False)[0]
    return strided.numpy(), high.numpy()


def write_fake_cams(data: Path, out: Path, n_shards: int = N_SHARDS) -> list[Path]:
    """cams/{shard}.h5 (uint8, the export's default) for every image of the manifest."""
    df = read_manifest(data / "manifest.parquet")
    paths = []
    for s in range(n_shards):
        path = out / f"{s}.h5"
        with CamShardWriter(path) as w:
            for row in df.itertuples():
                if shard_of(row.image_id, n_shards) == s:
                    strided, high = cams_from_gt(read_label_png(row.gt_path), row.labels)
                    w.add(row.image_id, row.labels, strided, high)
        paths.append(path)
    return paths


def write_raw_cams(path: Path, entries: dict) -> None:
    """A float32 CAM file in the store's layout, without the writer's checks (bad input)."""
    with h5py.File(path, "w") as f:
        f.attrs.update(format=FORMAT, version=1, dtype="float32", n_images=len(entries))
        g = f.create_group("images")
        for image_id, (keys, strided, high) in entries.items():
            e = g.create_group(image_id)
            e.attrs["height"], e.attrs["width"] = high.shape[1:]
            e.create_dataset("keys", data=np.asarray(keys, np.int16))
            e.create_dataset("strided", data=strided.astype(np.float32))
            e.create_dataset("high_res", data=high.astype(np.float32))


def make_irn_model(path: Path, seed: int = 0) -> Path:
    """An untrained ResNet-18 IRN model file (random backbone and branches)."""
    import torchvision

    from qaclims.cam.checkpoint import save_model
    from qaclims.irn.networks import EdgeDisplacementNet

    torch.manual_seed(seed)
    net = EdgeDisplacementNet(torchvision.models.resnet18(weights=None))
    net.set_mean_shift(torch.tensor([0.5, -0.25]))
    save_model(path, net.state_dict(), arch="resnet18", n_classes=N_CLASSES, stage="train_irn")
    return path


def expected_ids(data: Path, shard: int, splits=SPLITS) -> set[str]:
    df = shard_rows(read_manifest(data / "manifest.parquet"), splits, shard, N_SHARDS)
    return set(df["image_id"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    data = make_irn_data(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("irn_pipeline")
    cams = write_fake_cams(data, root / "cams")
    for s in range(N_SHARDS):
        ir_labels_shard(data / "manifest.parquet", data / "classes.json", cams[s],
                        root / f"ir_labels/{s}", splits=SPLITS, shard=s, n_shards=N_SHARDS)
    model = make_irn_model(root / "irn.pth")
    return data, root, cams, model


def _rw(inputs, out, shard, **kw):
    data, _, cams, model = inputs
    return random_walk_shard(data / "manifest.parquet", data / "classes.json", cams[shard], model,
                             out, splits=SPLITS, shard=shard, n_shards=N_SHARDS, **kw)


# ---------------------------------------------------------------------------- settings


def test_settings_defaults_are_the_authors_and_bad_values_are_named():
    ir, tr, rw = irn_settings(None)
    assert (ir.fg_threshold, ir.bg_threshold) == (0.30, 0.10)  # QA-CLIMS (IRN: bg 0.05)
    assert ir.crf == {"t": 10, "gaussian_sxy": 3.0, "gaussian_compat": 3.0,
                      "bilateral_sxy": 50.0, "bilateral_srgb": 5.0, "bilateral_compat": 10.0,
                      "gt_prob": 0.7}
    assert (tr.arch, tr.weights, tr.batch_size, tr.crop_size, tr.epochs) == (
        "resnet50", "imagenet", 32, 512, 3)
    assert (tr.lr, tr.displacement_lr_mult, tr.weight_decay, tr.radius) == (0.1, 10.0, 1e-4, 10)
    assert tr.scale_range == (0.5, 1.5) and tr.momentum == pytest.approx(1e-4)
    assert tr.total_steps(10582) == 990  # method.md 9.2
    assert (rw.beta, rw.exp_times, rw.radius, rw.bg_threshold) == (10.0, 8, 5, 0.20)
    # round trip through the params form, a partial CRF section is completed
    ir2 = IrLabelSettings.from_dict({"crf": {"t": 3}})
    assert ir2.crf_params().t == 3 and ir2.crf["gt_prob"] == 0.7
    assert IrLabelSettings.from_dict(ir2.to_dict()) == ir2
    assert IrnTrainSettings.from_dict(tr.to_dict()) == tr
    with pytest.raises(ValueError, match=r"irn\.train\.crop_sise: unknown key"):
        IrnTrainSettings.from_dict({"crop_sise": 256})
    with pytest.raises(ValueError, match=r"irn\.train\.crop_size: expected a multiple of 4 >= 76"):
        IrnTrainSettings.from_dict({"crop_size": 72})
    assert IrnTrainSettings.from_dict({"crop_size": 44, "radius": 5}).crop_size == 44
    with pytest.raises(ValueError, match=r"irn\.ir_labels\.fg_threshold"):
        IrLabelSettings.from_dict({"fg_threshold": 0.05})  # below bg_threshold 0.10
    with pytest.raises(ValueError, match=r"irn\.ir_labels\.crf: unknown CRF parameters"):
        IrLabelSettings.from_dict({"crf": {"iterations": 3}})
    with pytest.raises(ValueError, match=r"irn\.random_walk\.memory_budget_mb"):
        RandomWalkSettings.from_dict({"memory_budget_mb": 0})
    with pytest.raises(ValueError, match=r"irn\.walk: unknown key"):
        irn_settings({"walk": {}})


def test_thresholds_follow_the_cam_threshold_search(tmp_path, caplog):
    caplog.set_level("INFO", logger="qaclims.irn.settings")
    ir, _, rw = irn_settings(None)
    assert resolve_thresholds(ir, None) == (ir, {})  # default: as configured
    thr = tmp_path / "threshold.json"
    thr.write_text(json.dumps({"best_threshold": 0.55}))
    ir2, info = resolve_thresholds(ir, 0.15, thr)
    assert (ir2.fg_threshold, ir2.bg_threshold) == (pytest.approx(0.70), pytest.approx(0.50))
    assert info == {"reference_cam_threshold": 0.15, "best_cam_threshold": 0.55,
                    "threshold_shift": 0.4}
    assert ir2.crf == ir.crf
    assert "thresholds shifted by the CAM threshold search" in caplog.text
    # a rule's input list (one file, or none) works like the path
    assert resolve_thresholds(ir, 0.15, [thr]) == (ir2, info)
    rw2, _ = resolve_thresholds(rw, 0.15, thr)
    assert rw2.bg_threshold == pytest.approx(0.60) and rw2.beta == rw.beta
    # clipped into [0.01, 0.99], the order kept
    thr.write_text(json.dumps({"best_threshold": 0.95}))
    ir3, _ = resolve_thresholds(ir, 0.15, thr)
    assert (ir3.fg_threshold, ir3.bg_threshold) == (0.99, pytest.approx(0.90))
    thr.write_text(json.dumps({"best_threshold": 0.01}))
    assert resolve_thresholds(ir, 0.15, thr)[0].bg_threshold == 0.01
    # bad input names the file or the key
    thr.write_text(json.dumps({"miou": 0.3}))
    with pytest.raises(ValueError, match="threshold.json: cannot read best_threshold"):
        resolve_thresholds(ir, 0.15, thr)
    with pytest.raises(ValueError, match="no cam_eval/threshold.json"):
        resolve_thresholds(ir, 0.15, None)
    with pytest.raises(ValueError, match="no cam_eval/threshold.json"):
        resolve_thresholds(ir, 0.15, [])
    assert irn_reference_threshold({"reference_cam_threshold": 0.15}) == 0.15
    assert irn_reference_threshold({}) is None
    with pytest.raises(ValueError, match=r"irn\.reference_cam_threshold"):
        irn_settings({"reference_cam_threshold": 1.5})


# ---------------------------------------------------------------------------- IR labels


def test_ir_labels_cover_every_image_and_match_the_library(inputs):
    from qaclims.cam.cam_store import CamStore
    from qaclims.cam.datasets import load_rgb
    from qaclims.irn.ir_labels import make_ir_label

    data, root, cams, _ = inputs
    df = read_manifest(data / "manifest.parquet").set_index("image_id")
    for s in range(N_SHARDS):
        files = label_files(root / f"ir_labels/{s}")
        assert set(files) == expected_ids(data, s)  # every image of the shard, nothing else
    files = label_files([root / f"ir_labels/{s}" for s in range(N_SHARDS)])
    assert len(files) == 8
    image_id = sorted(files)[0]
    label = read_label_png(files[image_id])
    row = df.loc[image_id]
    keys, high = CamStore(cams).high_res(image_id)
    ref = make_ir_label(load_rgb(row.image_path), high, keys, image_id=image_id)
    np.testing.assert_array_equal(label, ref)
    assert set(np.unique(label)) <= {0, 255, *row.labels}
    assert 255 in label and (label > 0).any() and (label == 0).any()
    from PIL import Image

    with Image.open(files[image_id]) as im:
        assert im.mode == "P"  # VOC palette PNG


def test_ir_label_metrics_json(inputs, tmp_path):
    data, root, _, _ = inputs
    dirs = [root / f"ir_labels/{s}" for s in range(N_SHARDS)]
    out = evaluate_ir_labels(data / "manifest.parquet", data / "classes.json", dirs,
                             tmp_path / "ir.json", split="train",
                             settings={"fg_threshold": 0.3})
    saved = json.loads((tmp_path / "ir.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert saved["stage"] == "ir_labels" and saved["split"] == "train"
    assert saved["n_images"] == 8 and saved["settings"] == {"fg_threshold": 0.3}
    assert saved["class_names"][0] == "background" and len(saved["class_names"]) == 8
    for key in ("fg_precision", "bg_precision", "coverage", "fg_coverage", "per_class",
                "counts", "n_uncertain"):
        assert key in saved
    # CAMs made from the ground truth: the confident pixels are nearly all right
    assert saved["fg_precision"] > 0.9 and saved["bg_precision"] > 0.9
    assert 0.3 < saved["coverage"] < 1.0 and saved["n_uncertain"] > 0


def test_ir_labels_are_deterministic(inputs, tmp_path):
    data, root, cams, _ = inputs
    ir_labels_shard(data / "manifest.parquet", data / "classes.json", cams[0], tmp_path / "again",
                    splits=SPLITS, shard=0, n_shards=N_SHARDS)
    a, b = label_files(root / "ir_labels/0"), label_files(tmp_path / "again")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].read_bytes() == b[k].read_bytes()


# ---------------------------------------------------------------------------- bad input


def _bad_cams(data: Path, image_id: str, case: str) -> dict:
    df = read_manifest(data / "manifest.parquet").set_index("image_id")
    entries = {}
    for iid, row in df.iterrows():
        strided, high = cams_from_gt(read_label_png(row.gt_path), row.labels)
        entries[iid] = (list(row.labels), strided, high)
    keys, strided, high = entries[image_id]
    if case == "missing":
        del entries[image_id]
    elif case == "size":
        entries[image_id] = (keys, strided[:, :-1], high[:, :-3])
    elif case == "nan":
        high = high.copy()
        high[0, 5, 5] = np.nan
        strided = strided.copy()
        strided[0, 1, 1] = np.nan
        entries[image_id] = (keys, strided, high)
    elif case == "keys":
        entries[image_id] = ([k % N_CLASSES + 1 for k in keys], strided, high)
    return entries


@pytest.mark.parametrize(("case", "match"), [
    ("missing", "no CAM in"),
    ("size", "CAM of size"),
    ("nan", "NaN"),
    ("keys", "differ from its labels"),
])
@pytest.mark.parametrize("stage", ["ir_labels", "random_walk"])
def test_bad_cams_raise_naming_the_image_and_write_nothing(inputs, tmp_path, case, match, stage):
    data, _, _, model = inputs
    image_id = sorted(expected_ids(data, 1))[1]
    cams = tmp_path / "bad.h5"
    write_raw_cams(cams, _bad_cams(data, image_id, case))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match) as err:
        if stage == "ir_labels":
            ir_labels_shard(data / "manifest.parquet", data / "classes.json", cams, out,
                            splits=SPLITS, shard=1, n_shards=N_SHARDS)
        else:
            random_walk_shard(data / "manifest.parquet", data / "classes.json", cams, model,
                              out, splits=SPLITS, shard=1, n_shards=N_SHARDS)
    assert image_id in str(err.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [cams]  # no half-written folder


def test_memory_budget_too_small_names_the_image(inputs, tmp_path):
    with pytest.raises(MemoryError, match=r"image syn_\d+: random walk on a \d+x\d+ map"):
        _rw(inputs, tmp_path / "out", 0, settings=RandomWalkSettings(memory_budget_mb=1))
    assert not (tmp_path / "out").exists()


def test_unknown_split_and_missing_eval_mask_are_errors(inputs, tmp_path):
    data, root, cams, _ = inputs
    with pytest.raises(ValueError, match="split 'trian' is not in the manifest"):
        ir_labels_shard(data / "manifest.parquet", data / "classes.json", cams[0], tmp_path / "x",
                        splits=["trian"], shard=0, n_shards=N_SHARDS)
    missing = sorted(expected_ids(data, 1))[0]
    with pytest.raises(ValueError, match=f"image {missing} of split 'train': no IR label PNG"):
        evaluate_ir_labels(data / "manifest.parquet", data / "classes.json",
                           [root / "ir_labels/0"], tmp_path / "m.json", split="train")
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------------------- random walk


@pytest.fixture(scope="module")
def masks(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    for s in range(N_SHARDS):
        _rw(inputs, out / str(s), s)
    return out


def test_pseudo_masks_cover_every_image_and_match_the_library(inputs, masks):
    from qaclims.cam.augment import normalize_imagenet
    from qaclims.cam.cam_store import CamStore
    from qaclims.cam.datasets import load_rgb
    from qaclims.irn.random_walk import infer_edge, pseudo_mask, random_walk
    from qaclims.irn.train_irn import load_irn_network

    data, _, cams, model = inputs
    for s in range(N_SHARDS):
        assert set(label_files(masks / str(s))) == expected_ids(data, s)
    df = read_manifest(data / "manifest.parquet").set_index("image_id")
    image_id = sorted(expected_ids(data, 0))[0]
    row = df.loc[image_id]
    net, info = load_irn_network(model)
    assert info["stage"] == "train_irn"
    net.eval()
    keys, strided, _ = CamStore(cams).get(image_id)
    img = load_rgb(row.image_path)
    edge = infer_edge(net, torch.from_numpy(normalize_imagenet(img).transpose(2, 0, 1).copy()))
    ref = pseudo_mask(random_walk(strided, edge), keys, img.shape[:2], 0.20)
    got = read_label_png(masks / f"0/{image_id}.png")
    np.testing.assert_array_equal(got, ref)
    assert got.shape == (row.height, row.width) and set(np.unique(got)) <= {0, *row.labels}
    assert 255 not in got


def test_pseudo_masks_are_deterministic_and_parallel_equals_sequential(inputs, masks, tmp_path):
    _rw(inputs, tmp_path / "par", 1, workers=2)
    a, b = label_files(masks / "1"), label_files(tmp_path / "par")
    assert a.keys() == b.keys() and len(a) > 1
    for k in a:
        assert a[k].read_bytes() == b[k].read_bytes(), k


def test_pseudo_mask_metrics_json(inputs, masks, tmp_path):
    data, _, _, _ = inputs
    out = evaluate_pseudo_masks(data / "manifest.parquet", data / "classes.json",
                                [masks / "0", masks / "1"], tmp_path / "pm.json", split="train",
                                settings={"bg_threshold": 0.2})
    saved = json.loads((tmp_path / "pm.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert (saved["stage"], saved["split"], saved["n_images"]) == ("pseudo_masks", "train", 8)
    for key in ("miou", "iou", "precision", "recall", "confusion", "class_names", "settings"):
        assert key in saved
    assert len(saved["confusion"]) == N_CLASSES + 1
    # the same numbers by hand: every train image's mask against its ground truth
    from qaclims.metrics import ConfusionMatrix

    cm = ConfusionMatrix(N_CLASSES + 1)
    files = label_files([masks / "0", masks / "1"])
    for row in shard_rows(read_manifest(data / "manifest.parquet"), ["train"]).itertuples():
        cm.update(read_label_png(row.gt_path), read_label_png(files[row.image_id]))
    assert saved["confusion"] == cm.matrix.tolist()
    assert saved["miou"] == pytest.approx(cm.miou()) and 0 < saved["miou"] < 1


def test_images_without_classes_get_background_without_a_cam(inputs, tmp_path):
    """COCO: images of ``train_unlabelled`` have no classes and no CAM; they still get an
    (all-background) pseudo mask, and so does an image whose CAM entry has no classes."""
    data, _, _, model = inputs
    df = read_manifest(data / "manifest.parquet")
    shard_ids = sorted(expected_ids(data, 0))
    unlabelled, no_keys = shard_ids[:2]
    for iid in (unlabelled, no_keys):
        i = df.index[df["image_id"] == iid][0]
        df.at[i, "labels"] = []
        df.at[i, "splits"] = ["train_unlabelled"]
    write_manifest(df, tmp_path / "manifest.parquet", num_classes=N_CLASSES)
    # the shard's CAMs: none for the first image, an entry without classes for the second
    full = tmp_path / "cams.h5"
    with CamShardWriter(full) as w:
        for row in df.itertuples():
            if row.image_id in shard_ids and row.image_id != unlabelled:
                w.add(row.image_id, row.labels,
                      *cams_from_gt(read_label_png(row.gt_path), row.labels))
    sizes = df.set_index("image_id")
    out = tmp_path / "masks"
    summary = random_walk_shard(tmp_path / "manifest.parquet", data / "classes.json", full, model,
                                out, splits=SPLITS, shard=0, n_shards=N_SHARDS)
    files = label_files(out)
    assert set(files) == set(shard_ids) and summary["n_images"] == len(shard_ids)
    for iid in (unlabelled, no_keys):
        m = read_label_png(files[iid])
        assert m.shape == (sizes.loc[iid, "height"], sizes.loc[iid, "width"]) and not m.any()
    assert summary["n_all_background"] >= 2
    # without include_unlabelled the unlabelled images are not part of the shard
    out2 = tmp_path / "masks2"
    random_walk_shard(tmp_path / "manifest.parquet", data / "classes.json", full, model, out2,
                      splits=SPLITS, shard=0, n_shards=N_SHARDS, include_unlabelled=False)
    assert set(label_files(out2)) == set(shard_ids) - {unlabelled, no_keys}
    # IR labels: an image with a class-less CAM entry is confident background
    ir = tmp_path / "ir"
    ir_labels_shard(tmp_path / "manifest.parquet", data / "classes.json", full, ir,
                    splits=["train", "train_unlabelled"], shard=0, n_shards=N_SHARDS)
    assert not read_label_png(ir / f"{no_keys}.png").any()
    assert not read_label_png(ir / f"{unlabelled}.png").any()


# ---------------------------------------------------------------------------- walk files


@pytest.fixture(scope="module")
def walks(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("walks")
    for s in range(N_SHARDS):
        _rw(inputs, None, s, walk_out=out / f"{s}.h5", workers=2 if s else 1)
    return [out / f"{s}.h5" for s in range(N_SHARDS)]


@pytest.mark.parametrize("threshold", [0.2, 0.35])
def test_masks_from_walk_files_equal_the_direct_masks(inputs, walks, tmp_path, threshold):
    data, _, _, _ = inputs
    for s in range(N_SHARDS):
        _rw(inputs, tmp_path / f"direct/{s}", s,
            settings=RandomWalkSettings(bg_threshold=threshold))
        summary = pseudo_masks_from_walks(data / "manifest.parquet", data / "classes.json", walks,
                                          tmp_path / f"later/{s}", splits=SPLITS,
                                          bg_threshold=threshold, shard=s, n_shards=N_SHARDS)
        a, b = label_files(tmp_path / f"direct/{s}"), label_files(tmp_path / f"later/{s}")
        assert a.keys() == b.keys() and summary["n_images"] == len(a) > 1
        # float16 walk files: a pixel may only flip where its map is within 1e-3 of the threshold
        for k in a:
            x, y = read_label_png(a[k]), read_label_png(b[k])
            assert (x != y).mean() < 0.01, k


def test_walk_threshold_search_scores_the_masks_it_would_write(inputs, walks, tmp_path):
    data, _, _, _ = inputs
    grid = [round(0.05 * i, 2) for i in range(1, 19)]
    out = search_walk_threshold(data / "manifest.parquet", data / "classes.json", walks,
                                tmp_path / "wt.json", split="train", thresholds=grid,
                                fixed_threshold=0.2)
    assert json.loads((tmp_path / "wt.json").read_text())["best_threshold"] == out["best_threshold"]
    assert out["stage"] == "walk_threshold" and out["n_images"] == 8
    assert out["best_miou"] >= out["miou_at_fixed"] and out["best_miou"] == max(out["miou"])
    # the masks written at the best threshold score exactly the searched mIoU
    best = out["best_threshold"]
    for s in range(N_SHARDS):
        pseudo_masks_from_walks(data / "manifest.parquet", data / "classes.json", walks,
                                tmp_path / f"m/{s}", splits=SPLITS, bg_threshold=best, shard=s,
                                n_shards=N_SHARDS)
    scored = evaluate_pseudo_masks(data / "manifest.parquet", data / "classes.json",
                                   [tmp_path / "m/0", tmp_path / "m/1"], tmp_path / "pm.json",
                                   split="train")
    assert scored["miou"] == pytest.approx(out["best_miou"])


def test_walk_file_rejects_a_wrong_map_size(tmp_path):
    from qaclims.irn.walk_store import WalkShardWriter

    expected = r"image a: walked maps \(1, 3, 3\), expected \(1, 2, 2\)"
    with pytest.raises(ValueError, match=expected), WalkShardWriter(tmp_path / "w.h5") as w:
        w.add("a", [1], np.zeros((1, 3, 3)), (8, 8))
    assert not (tmp_path / "w.h5").exists()


def test_walk_threshold_is_the_searched_one_or_the_shifted_configured_one(tmp_path):
    from qaclims.irn.settings import walk_bg_threshold

    cam_eval = tmp_path / "threshold.json"
    cam_eval.write_text(json.dumps({"best_threshold": 0.10}))
    searched = tmp_path / "walk_threshold.json"
    searched.write_text(json.dumps({"best_threshold": 0.42}))
    settings = RandomWalkSettings(bg_threshold=0.25)
    assert walk_bg_threshold(settings, None) == (0.25, {"walk_threshold_search": False,
                                                        "bg_threshold": 0.25})
    t, info = walk_bg_threshold(settings, 0.15, [str(cam_eval)], [])
    assert t == pytest.approx(0.20) and info["threshold_shift"] == pytest.approx(-0.05)
    assert walk_bg_threshold(settings, 0.15, [str(cam_eval)], [str(searched)])[0] == 0.42
    searched.write_text(json.dumps({"best_threshold": 1.5}))
    with pytest.raises(ValueError, match=r"walk_threshold.json: best_threshold must be"):
        walk_bg_threshold(settings, 0.15, [str(cam_eval)], [str(searched)])
