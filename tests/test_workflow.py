"""End-to-end: the tiny config through Snakemake, in a scratch working directory."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qaclims.data.manifest import read_classes

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(ROOT / "config" / "tiny.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.mark.slow
def test_tiny_run_produces_dataset_contract(tiny_run: Path) -> None:
    data = tiny_run / "results" / "tiny" / "data"
    manifest = pd.read_parquet(data / "manifest.parquet")
    assert len(manifest) == 24 + 8
    assert manifest["labels"].map(len).between(1, 3).all()
    classes = read_classes(data / "classes.json")
    assert [c.id for c in classes] == list(range(1, len(classes) + 1))
    stats = json.loads((data / "stats.json").read_text())
    assert stats  # content checked by the data-stage unit tests


@pytest.mark.slow
def test_rerun_is_a_no_op(tiny_run: Path) -> None:
    proc = snakemake(tiny_run, "-n", "--quiet", "rules")
    assert "Nothing to be done" in proc.stdout + proc.stderr or proc.stdout.strip() == "", (
        proc.stdout + proc.stderr
    )


def test_bad_config_fails_before_any_job(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", "--config", "dataset={'name': 'x', 'source': 'voc12', "
                     "'root': 'missing/VOC2012'}", check=False)
    assert proc.returncode != 0
    assert "config key 'dataset.root'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
