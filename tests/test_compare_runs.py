"""compare_runs: the first artifact whose content differs between two result trees, with
timings, sidecars and the working directory's own path left out."""

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from qaclims.compare_runs import compare_trees, main
from qaclims.store import save_torch, write_label_png


def _tree(root: Path, *, weight: float = 1.0, seconds: float = 1.0, miou: float = 0.5,
          mask_value: int = 1) -> Path:
    res = root / "results" / "toy"
    (res / "data").mkdir(parents=True)
    pd.DataFrame({"image_id": ["a", "b"],
                  "image_path": [str(root / "img" / "a.jpg"), str(root / "img" / "b.jpg")]}
                 ).to_parquet(res / "data" / "manifest.parquet")
    time.sleep(0.01)  # distinct modification times: the order the run wrote them
    (res / "cam").mkdir()
    save_torch({"model": {"w": torch.full((2, 2), weight)},
                "meta": {"seconds": seconds, "data": str(root / "x")}}, res / "cam" / "model.pth")
    (res / "cam" / "loss_curve.tsv").write_text(f"step\tloss\tseconds\n1\t0.5\t{seconds}\n")
    time.sleep(0.01)
    with h5py.File(res / "cams.h5", "w") as f:
        f.attrs["model_id"] = "m@1"
        f.create_dataset("a", data=np.arange(6, dtype=np.uint8).reshape(2, 3))
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1] = mask_value
    write_label_png(mask, res / "masks" / "a.png")
    time.sleep(0.01)
    (res / "metrics.json").write_text(json.dumps(
        {"miou": miou, "train_seconds": seconds, "per_class": [miou, 1.0]}))
    (res / "metrics.json.meta.json").write_text(json.dumps({"finished": seconds}))
    (res / "logs").mkdir()
    (res / "logs" / "x.log").write_text(f"took {seconds} s")
    return res


def test_identical_runs_in_different_folders_compare_equal(tmp_path):
    a = _tree(tmp_path / "a", seconds=1.0)
    b = _tree(tmp_path / "b", seconds=7.5)  # other timings, logs, sidecars and root folder
    assert compare_trees(a, b) == []
    assert compare_trees(tmp_path / "a", tmp_path / "b") == []  # working directories
    assert main([str(a), str(b)]) == 0


def test_first_difference_is_the_earliest_written_artifact(tmp_path, capsys):
    a = _tree(tmp_path / "a")
    b = _tree(tmp_path / "b", weight=1.0 + 1e-6, miou=0.51)  # weights drifted, metrics follow
    diffs = compare_trees(a, b)
    assert [d.path for d in diffs] == ["cam/model.pth", "metrics.json"]
    assert "/model/w: 4 of 4 values differ" in diffs[0].detail
    assert "/miou: 0.5 vs 0.51" in diffs[1].detail
    assert main([str(a), str(b)]) == 1
    assert "first artifact that differs: cam/model.pth" in capsys.readouterr().out


def test_pixels_tables_and_missing_files_are_differences(tmp_path):
    a = _tree(tmp_path / "a")
    b = _tree(tmp_path / "b", mask_value=2)
    (b / "extra.json").write_text("{}")
    (b / "cam" / "loss_curve.tsv").write_text("step\tloss\tseconds\n1\t0.25\t3\n")
    os.utime(b / "cam" / "loss_curve.tsv")
    found = {d.path: d.detail for d in compare_trees(a, b)}
    assert "pixels: 1 of 16 values differ" in found["masks/a.png"]
    assert "column 'loss'" in found["cam/loss_curve.tsv"]
    assert found["extra.json"] == "only in B"
