"""The DeepLab rules in the DAG: a dry run of the tiny config plans them, and bad seg settings
fail before any job. No job runs here, so it takes seconds (tests/test_workflow.py runs the tiny
workflow itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TINY = ROOT / "config" / "tiny.yaml"
SEG_RULES = {"deeplab_labels", "train_deeplab", "predict_deeplab", "eval_deeplab", "final_table"}


def dry_run(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (TINY,)
            ) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configfiles), "-n", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def planned_rules(output: str) -> set[str]:
    """Rule names in the 'Job stats' table of a dry run."""
    rules, in_table = set(), False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if not set(parts[0]) <= {"-"}:
                rules.add(parts[0])
    return rules


def test_dry_run_plans_the_deeplab_stage(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, "results/tiny/summary/miou_table.md")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    jobs = planned_rules(out)
    assert jobs >= SEG_RULES, f"missing {SEG_RULES - jobs} in {sorted(jobs)}"
    # tiny trains on the full method's pseudo masks and on the ground truth
    for experiment in ("qa_clims", "gt"):
        assert f"results/tiny/{experiment}/deeplab/model.pth" in out
        assert f"results/tiny/{experiment}/deeplab/metrics.json" in out
        assert f"results/tiny/{experiment}/deeplab/predictions/val" in out
    assert "results/tiny/qa_clims/irn/pseudo_masks/0" in out  # labels come from the IRN masks
    assert "results/tiny/gt/irn" not in out  # ...but not for the ground truth
    assert "deeplab_voc_test" not in jobs  # a synthetic dataset has no VOC test split
    assert not (tmp_path / "results").exists()


def test_bad_seg_config_fails_before_any_job(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, "--config", "seg={'train': {'loss': 'dice'}}")
    assert proc.returncode != 0
    assert "seg.train.loss" in proc.stdout + proc.stderr
    proc = dry_run(tmp_path, "--config", "seg={'experiments': ['nope']}")
    assert proc.returncode != 0
    assert "seg.experiments" in proc.stdout + proc.stderr
    # tiny's batch of 2 cannot be split over 3 DDP ranks
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text("compute:\n  gpus: {train_deeplab: 3}\n")
    proc = dry_run(tmp_path, configfiles=(TINY, gpus))
    assert proc.returncode != 0
    assert "seg.train.batch_size: expected a multiple of compute.gpus.train_deeplab (3)" in (
        proc.stdout + proc.stderr)
    assert not (tmp_path / "results").exists()
