"""The real configs plan their whole DAG (snakemake -n) against a small fake dataset in the real
layout: what a user with VOC 2012 and the real weights would start from. No job runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from datasets_factory import make_voc_tree

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
VOC = ROOT / "config" / "voc12.yaml"


def dry_run(workdir: Path, *args: str) -> tuple[int, str]:
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(VOC), "-n", "--quiet", "rules", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def planned(output: str) -> set[str]:
    """Rule names of the job-count table that `--quiet rules` prints."""
    rules, started = set(), False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            started = True
        elif started and parts and parts[0] != "total" and set(parts[0]) - {"-"}:
            rules.add(parts[0])
        elif started and parts and parts[0] == "total":
            break
    return rules


def _voc(workdir: Path) -> Path:
    root = workdir / "resources/data/VOCdevkit/VOC2012"
    make_voc_tree(root)  # JPEGImages, Annotations, SegmentationClass(Aug), ImageSets/Segmentation
    return root


def test_voc12_config_dry_runs_on_a_voc_tree(tmp_path: Path) -> None:
    _voc(tmp_path)
    rc, out = dry_run(tmp_path)
    assert rc == 0, out[-6000:]
    jobs = planned(out)
    expected = {"fetch_weights", "prepare_dataset", "vqa", "corpus", "text_features",
                "train_cam", "train_ritc", "export_cams", "search_threshold", "ir_labels",
                "train_irn", "random_walk", "train_deeplab", "predict_deeplab", "eval_deeplab",
                "final_table"}
    assert expected <= jobs, f"missing {expected - jobs} in {sorted(jobs)}"
    assert "import_baseline_cam" not in jobs
    assert not (tmp_path / "results").exists()


def test_voc12_from_the_authors_baseline_checkpoint(tmp_path: Path) -> None:
    _voc(tmp_path)
    ckpt = tmp_path / "resources/weights/cam-baseline-voc12/res50_cam.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"stand-in: a dry run does not read it")
    rc, out = dry_run(tmp_path, "--config",
                      f"cam={{'baseline_checkpoint': '{ckpt.relative_to(tmp_path)}'}}")
    assert rc == 0, out[-6000:]
    jobs = planned(out)
    assert {"import_baseline_cam", "train_ritc", "export_cams"} <= jobs, sorted(jobs)
    assert "train_cam" not in jobs  # the given checkpoint replaces the baseline training
