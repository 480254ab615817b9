"""Report figures and tables on tiny stage files built here (qaclims.report)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from qaclims.cam.cam_store import CamShardWriter
from qaclims.cam.checkpoint import write_curve_tsv
from qaclims.data.manifest import ClassInfo, ManifestRecord, write_classes, write_manifest
from qaclims.report import figures, overlays, tables
from qaclims.report.snapshot import write_config_snapshot
from qaclims.store import write_json, write_label_png

NAMES = ["background", "cat", "dog"]
EXPERIMENTS = ["baseline", "qa_clims"]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def threshold_json(best: float, best_thr: float, fixed: float, iou: list) -> dict:
    t = [0.05, 0.10, 0.15, 0.20]
    return {"split": "train", "n_images": 3, "thresholds": t,
            "miou": [best - 0.1, best - 0.05, fixed, best][: len(t)],
            "best_threshold": best_thr, "best_miou": best, "fixed_threshold": 0.15,
            "miou_at_fixed": fixed, "class_names": NAMES,
            "iou_at_best": dict(zip(NAMES, iou, strict=True)),
            "iou_at_fixed": dict(zip(NAMES, iou, strict=True))}


@pytest.fixture()
def stage_files(tmp_path: Path) -> list[Path]:
    """results/tiny/{baseline,qa_clims}/ with CAM, IR-label, pseudo-mask and DeepLab metrics."""
    res = tmp_path / "results" / "tiny"
    files = []
    for e, (cam, pm, dl) in zip(EXPERIMENTS, [(0.48, 0.55, 0.60), (0.5123, 0.58, 0.64)],
                                strict=True):
        f = res / e / "cam_eval" / "threshold.json"
        write_json(threshold_json(cam, 0.2, cam - 0.02, [0.8, cam, None]), f)
        files.append(f)
        f = res / e / "irn" / "metrics" / "ir_labels.json"
        write_json({"stage": "ir_labels", "split": "train", "n_images": 3,
                    "fg_precision": 0.9, "coverage": 0.7}, f)
        files.append(f)
        f = res / e / "irn" / "metrics" / "pseudo_masks.json"
        write_json({"stage": "pseudo_masks", "split": "train", "n_images": 3, "miou": pm,
                    "iou": dict(zip(NAMES, [0.9, pm, 0.3], strict=True))}, f)
        files.append(f)
        f = res / e / "deeplab" / "metrics.json"
        write_json({"split": "val", "n_images": 2, "miou": dl,
                    "iou": dict(zip(NAMES, [0.9, dl, 0.4], strict=True))}, f)
        files.append(f)
    return files


def test_stage_table(stage_files: list[Path], tmp_path: Path) -> None:
    out_html, out_tsv = tmp_path / "r" / "miou.html", tmp_path / "r" / "miou.tsv"
    missing = tmp_path / "results" / "tiny" / "qa_clims" / "deeplab" / "test_metrics.json"
    rows = tables.write_stage_table([*reversed(stage_files), missing], out_html, out_tsv,
                                    experiments=EXPERIMENTS)
    # experiments in the given order, stages in DAG order, whatever the input order
    assert [(r.experiment, r.column) for r in rows[:6]] == [
        ("baseline", "CAM mIoU"), ("baseline", "CAM mIoU @0.15"),
        ("baseline", "IR labels fg precision"), ("baseline", "IR labels coverage"),
        ("baseline", "Pseudo masks mIoU"), ("baseline", "DeepLab mIoU")]
    tsv = pd.read_csv(out_tsv, sep="\t")
    assert len(tsv) == 12
    cam = tsv[(tsv.experiment == "qa_clims") & (tsv.metric == "mIoU") & (tsv.stage == "CAM")]
    assert cam["value"].item() == pytest.approx(0.5123)
    assert cam["note"].item() == "best threshold 0.20"
    assert tsv[tsv.stage == "DeepLab"]["split"].unique().tolist() == ["val"]
    html = out_html.read_text()
    assert '<td class="num best">51.2</td>' in html  # best CAM mIoU in bold
    assert "<td class=\"num\">48.0</td>" in html
    assert "DeepLab: val split, 2 images" in html
    assert "<th>Pseudo masks mIoU</th>" in html


def test_experiment_found_without_names(tmp_path: Path) -> None:
    p = tmp_path / "res" / "x" / "irn" / "metrics" / "pseudo_masks.json"
    assert tables.split_stage_path(p) == ("x", "irn/metrics/pseudo_masks.json")
    assert tables.split_stage_path(tmp_path / "x" / "new" / "m.json", ["x"]) == ("x", "new/m.json")
    with pytest.raises(ValueError, match="no experiment folder"):
        tables.split_stage_path(tmp_path / "x" / "new" / "m.json")


def test_class_iou_figure(stage_files: list[Path], tmp_path: Path) -> None:
    per_class = tables.per_class_iou(stage_files, EXPERIMENTS)
    assert list(per_class) == ["CAM", "Pseudo masks", "DeepLab"]  # IR labels have no IoU
    assert per_class["CAM"]["qa_clims"] == {"background": 0.8, "cat": 0.5123, "dog": None}
    out = tmp_path / "class_iou.png"
    figures.plot_class_iou(per_class, out)
    w, h = png_size(out)
    assert w > 500 and h > 3 * 250  # three stage panels
    figures.plot_class_iou({}, tmp_path / "empty.png")
    assert png_size(tmp_path / "empty.png")[1] < 200


def test_threshold_curves(stage_files: list[Path], tmp_path: Path) -> None:
    thr = {e: f for e, f in zip(EXPERIMENTS, stage_files[::4], strict=True)}
    out = tmp_path / "thr.png"
    figures.plot_threshold_curves(thr, out)
    assert png_size(out)[0] > 500


def test_loss_curves(tmp_path: Path) -> None:
    cam = tmp_path / "baseline" / "cam" / "loss_curve.tsv"
    write_curve_tsv([{"step": i + 1, "loss": 1 / (i + 1), "lr": 0.1, "seconds": i}
                     for i in range(30)], cam)
    ritc = tmp_path / "qa_clims" / "ritc" / "loss_curve.tsv"
    write_curve_tsv([{"step": i + 1, "loss": 2.0 - i / 50, "cls": 1.0, "frc": 0.5 - i / 100,
                      "pairs": 12, "lr": 0.1} for i in range(40)], ritc)
    irn = tmp_path / "qa_clims" / "irn" / "loss_curve.json"
    write_json({"steps": 3, "curve": [{"step": s, "loss": 3.0 - s, "edge": 1.0, "lr": 0.1}
                                      for s in (1, 2, 3)]}, irn)
    df = figures.read_loss_curve(irn)
    assert figures.loss_columns(df) == ["loss", "edge"]
    assert figures.loss_columns(figures.read_loss_curve(ritc)) == ["loss", "cls", "frc"]
    assert [figures.stage_label(p) for p in (cam, ritc, irn)] == [
        "baseline: CAM", "qa_clims: RITC", "qa_clims: IRN"]
    out = tmp_path / "loss.png"
    figures.plot_loss_curves({figures.stage_label(p): p for p in (cam, ritc, irn)}, out)
    w, h = png_size(out)
    assert w > 3 * 400 and h < 500  # three panels in one row


def test_top_answers(tmp_path: Path) -> None:
    stats = {"variant": "code", "prompt": "a photo of {}.", "fg_groups": ["fine", "alias"],
             "bg_groups": ["object", "scene"], "pairs": 10, "pairs_used": 9, "unique_texts": 7,
             "top_answers": {"aeroplane": {"fine": [["jet", 354], ["propeller plane", 264]],
                                           "object": [["sky", 9], ["cloud", 5], ["boat", 1]]}}}
    write_json(stats, tmp_path / "corpus_stats.json")
    shown = tables.top_answers_html(tmp_path / "corpus_stats.json", tmp_path / "top.html", n=2)
    assert shown["aeroplane"]["object"] == [["sky", 9], ["cloud", 5]]
    html = (tmp_path / "top.html").read_text()
    assert "jet (354), propeller plane (264)" in html
    assert "boat" not in html
    assert "<th>object (background)</th>" in html and "<th>fine (foreground)</th>" in html
    assert "9 of 10 (image, class) pairs" in html


def test_runtimes(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s in [("vqa/0.tsv", 10.0), ("vqa/1.tsv", 20.0), ("train_cam.tsv", 100.0),
                   ("qa_clims/irn/random_walk/0.tsv", 5.0), ("qa_clims/train_ritc.tsv", 50.0)]:
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + f"{s}\t0:00:10\t500\t900\t1\t1\t0\t0\t90\t{s / 2}\n")
    toy = tmp_path / "toy" / "benchmarks"
    toy.mkdir(parents=True)
    (toy / "train_toy_vqa.tsv").write_text(header + "40\t0:00:40\t700\t900\t1\t1\t0\t0\t90\t25\n")
    (toy / "train_toy_backbone_resnet18.tsv").write_text(
        header + "1\t0:00:01\t700\t900\t1\t1\t0\t0\t90\t1\n")
    df = tables.read_benchmarks([bench, toy, tmp_path / "none"],
                                rule_names=["vqa", "train_cam", "random_walk", "train_ritc",
                                            "train_toy_backbone"], experiments=EXPERIMENTS)
    assert len(df) == 7
    by_file = {Path(f).relative_to(tmp_path).as_posix(): (r, e)
               for f, r, e in zip(df.file, df.rule, df.experiment, strict=True)}
    assert by_file["benchmarks/qa_clims/irn/random_walk/0.tsv"] == ("random_walk", "qa_clims")
    assert by_file["benchmarks/vqa/1.tsv"] == ("vqa", "")
    assert by_file["toy/benchmarks/train_toy_vqa.tsv"] == ("train_toy_vqa", "")  # not listed
    assert by_file["toy/benchmarks/train_toy_backbone_resnet18.tsv"] == ("train_toy_backbone", "")
    summary = tables.runtimes_html(df, tmp_path / "rt.html")
    assert summary["rule"].tolist() == ["train_cam", "train_ritc", "train_toy_vqa", "vqa",
                                       "random_walk", "train_toy_backbone"]
    vqa = summary[summary.rule == "vqa"].iloc[0]
    assert (vqa.jobs, vqa.total_s, vqa.max_s, vqa.cpu_s) == (2, 30.0, 20.0, 15.0)
    assert "0:01:40" in (tmp_path / "rt.html").read_text()  # train_cam total
    figures.plot_runtimes(summary, tmp_path / "rt.png")
    assert png_size(tmp_path / "rt.png")[1] > 200


def test_dataset_and_toy_tables(tmp_path: Path) -> None:
    stats = {"source": "synthetic", "num_classes": 2, "classes": ["cat", "dog"], "n_images": 5,
             "n_skipped": 0, "skipped_by_reason": {},
             "splits": {"train": {"n_images": 4, "n_with_gt": 4, "n_unlabelled": 0,
                                  "n_label_pairs": 6, "class_images": {"cat": 3, "dog": 3}},
                        "val": {"n_images": 1, "n_with_gt": 1, "n_unlabelled": 0,
                                "n_label_pairs": 1, "class_images": {"dog": 1}}}}
    write_json(stats, tmp_path / "stats.json")
    tables.dataset_html(tmp_path / "stats.json", tmp_path / "d.html")
    html = (tmp_path / "d.html").read_text()
    assert "Dataset: synthetic, 5 images, 2 classes" in html
    assert '<tr><td>cat</td><td class="num">3</td><td class="num">0</td></tr>' in html

    vqa = {"model": "toy_blip_vqa", "quality": {"split": "heldout", "exact_match": 0.856,
                                                "per_group": {"fine": 0.88}, "n_images": 711},
           "training": {"steps": 1500, "train_seconds": 541.1, "loss_curve": [1, 2]},
           "model_bytes": 6390459}
    write_json(vqa, tmp_path / "vqa.json")
    assert tables.toy_model_rows(vqa) == [("exact_match", 0.856), ("per_group.fine", 0.88),
                                          ("n_images", 711), ("training.steps", 1500),
                                          ("training.train_seconds", 541.1),
                                          ("model_bytes", 6390459)]
    tables.toy_models_html({"BLIP VQA": tmp_path / "vqa.json"}, tmp_path / "t.html")
    html = (tmp_path / "t.html").read_text()
    assert "85.6%" in html and "6,390,459" in html and "BLIP VQA (toy_blip_vqa)" in html


def test_config_snapshot_round_trip(tmp_path: Path) -> None:
    config = {"run_name": "x", "dataset": {"name": "tiny", "splits": {"train": "train_aug"}},
              "experiments": {"qa_clims": {"ritc": {"lr": 0.1}}}, "paths": (Path("a"),)}
    write_config_snapshot(config, tmp_path / "config.snapshot.yaml")
    text = (tmp_path / "config.snapshot.yaml").read_text()
    assert text.startswith("# The config this run used")
    loaded = yaml.safe_load(text)
    assert loaded == {**config, "paths": ["a"]}
    assert list(loaded) == list(config)  # the config's own key order


# ---------------------------------------------------------------------------------- overlays
def make_overlay_inputs(tmp: Path) -> dict:
    """4 images (2 with ground truth + CAMs), their CAM shards, pseudo masks and VQA corpus."""
    classes = [ClassInfo(1, "cat", "cat"), ClassInfo(2, "dog", "dog")]
    write_classes(classes, tmp / "classes.json", source="synthetic")
    records, h, w = [], 20, 24
    rng = np.random.default_rng(0)
    for k in range(4):
        image_id = f"img{k}"
        img = tmp / "images" / f"{image_id}.jpg"
        img.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img)
        gt = tmp / "gt" / f"{image_id}.png"
        label = np.zeros((h, w), np.uint8)
        label[5:15, 5:15] = 1 + k % 2
        write_label_png(label, gt)
        records.append(ManifestRecord(image_id, ["train"], str(img), h, w, [1 + k % 2],
                                      k < 3, str(gt) if k < 3 else None))
    write_manifest(records, tmp / "manifest.parquet", num_classes=2)
    cams = {}
    for name in ("baseline", "qa_clims"):
        cams[name] = [tmp / name / "cams" / f"{s}.h5" for s in (0, 1)]
        for s, ids in enumerate([["img0", "img1"], ["img3"]]):  # img2 has no CAMs
            with CamShardWriter(cams[name][s]) as wr:
                for image_id in ids:
                    k = int(image_id[-1])
                    cam = np.zeros((1, h, w), np.float32)
                    cam[0, 4:16, 4:16] = 0.9
                    wr.add(image_id, [1 + k % 2], cam[:, ::4, ::4], cam)
    masks = tmp / "qa_clims" / "pseudo_masks" / "0"
    label = np.zeros((h, w), np.uint8)
    label[6:14, 6:14] = 1
    write_label_png(label, masks / "img0.png")
    corpus = pd.DataFrame({
        "image_id": ["img0", "img0", "img0", "img0", "img1"],
        "class_id": [1, 1, 1, 1, 2], "role": ["label", "fg", "fg", "bg", "fg"],
        "group": [None, "fine", "alias", "scene", "fine"],
        "template_id": [None, "fg_kind", "fg_also", "bg_scene", "fg_kind"],
        "answer": ["cat", "tabby cat", "kitten", "sofa", "puppy"],
        "text": ["a photo of cat.", "a photo of tabby cat.", "a photo of kitten.",
                 "a photo of sofa.", "a photo of puppy."]})
    corpus.to_parquet(tmp / "corpus.parquet", index=False)
    return {"manifest": tmp / "manifest.parquet", "classes": tmp / "classes.json",
            "cams": cams, "masks": [masks, tmp / "qa_clims" / "pseudo_masks" / "1"],
            "corpus": tmp / "corpus.parquet"}


def test_pick_samples_prefers_images_with_texts() -> None:
    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "has_gt": [True] * 9 + [False],
                         "labels": [[1]] * 8 + [[], [1]]})
    avail = {f"i{k}" for k in range(10)}
    assert overlays.pick_samples(rows, avail, None, 3) == ["i0", "i4", "i7"]  # evenly spaced
    assert overlays.pick_samples(rows, avail, {"i5", "i6", "i9"}, 2) == ["i5", "i6"]
    assert overlays.pick_samples(rows, {"i1"}, None, 3) == ["i1"]


def test_overlays(tmp_path: Path) -> None:
    d = make_overlay_inputs(tmp_path)
    texts = overlays.vqa_texts(d["corpus"], ["img0", "img1"])
    assert texts["img0"] == {1: {"fg": ["tabby cat", "kitten"], "bg": ["sofa"]}}
    out = tmp_path / "overlays" / "qa_clims.png"
    ids = overlays.plot_overlays(d["manifest"], d["classes"], d["cams"]["qa_clims"], out,
                                 split="train", corpus=d["corpus"],
                                 baseline_cam_files=d["cams"]["baseline"], mask_dirs=d["masks"],
                                 n_images=4, experiment="qa_clims")
    # img2 has no CAMs, img3 no ground truth; img0 and img1 have VQA texts
    assert ids == ["img0", "img1"]
    w, h = png_size(out)
    assert w > h > 300
    assert overlays.find_mask(d["masks"], "img0") == d["masks"][0] / "img0.png"
    assert overlays.find_mask(d["masks"], "img1") is None

    base = tmp_path / "overlays" / "baseline.png"
    assert overlays.plot_overlays(d["manifest"], d["classes"], d["cams"]["baseline"], base,
                                  split="train", n_images=1) == ["img0"]
    assert png_size(base)[0] < w  # no baseline and pseudo-mask columns


def test_overlay_colours() -> None:
    image = np.zeros((2, 2, 3), np.float32)
    label = np.array([[0, 1], [2, 255]], np.uint8)
    out = overlays.label_overlay(image, label, alpha=1.0)
    assert out[0, 0].tolist() == [0, 0, 0]  # background untouched
    assert out[0, 1] == pytest.approx(np.array([128, 0, 0]) / 255)  # VOC class 1
    heat = overlays.heat_overlay(image, np.ones((1, 2, 2), np.float32), alpha=1.0)
    assert heat[0, 0, 0] > 0.4 and heat[0, 0, 2] < 0.1  # jet(1) is dark red


def test_report_json_is_plain(stage_files: list[Path]) -> None:
    """The stage files the table reads are the shapes the stages write (sanity of the fixture)."""
    d = json.loads(stage_files[0].read_text())
    assert {"best_miou", "best_threshold", "miou_at_fixed", "iou_at_best"} <= set(d)
