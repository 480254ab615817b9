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


def _jobs_to_run(proc: subprocess.CompletedProcess) -> set[str]:
    """Rule names of a dry run's job table."""
    out, rules, in_table = proc.stdout + proc.stderr, set(), False
    for line in out.splitlines():
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


@pytest.mark.slow
def test_non_vqa_change_reruns_no_vqa_job(tiny_run: Path) -> None:
    proc = snakemake(tiny_run, "-n", "--config", "qape={'corpus': {'variant': 'paper'}}")
    jobs = _jobs_to_run(proc)
    assert "corpus" in jobs and "vqa" not in jobs, jobs


@pytest.mark.slow
def test_editing_one_template_asks_one_question_per_pair(tiny_run: Path) -> None:
    """The answer cache makes a template edit cost one model call per (image, class) pair."""
    questions = (ROOT / "config" / "questions.yaml").read_text()
    old = "What is another name for this {}?"
    assert old in questions
    edited = tiny_run / "config" / "questions.yaml"
    edited.parent.mkdir(exist_ok=True)
    edited.write_text(questions.replace(old, "What else is this {} called?"))
    snakemake(tiny_run, "--cores", "2")  # the changed questions input reruns every vqa shard
    asked, pairs = 0, 0
    for log in sorted((tiny_run / "results" / "tiny" / "logs" / "vqa").glob("*.log")):
        stats = [line for line in log.read_text().splitlines() if "done on" in line][-1]
        asked += int(stats.split("'engine_questions': ")[1].split(",")[0])
        pairs += int(stats.split("'pairs': ")[1].split(",")[0])
    assert pairs > 0
    assert asked == pairs  # not 16 per pair
    answers = pd.concat(pd.read_parquet(p) for p in
                        (tiny_run / "results" / "tiny" / "qape" / "answers").glob("*.parquet"))
    assert (answers["question"].str.startswith("What else is this")).sum() == pairs
