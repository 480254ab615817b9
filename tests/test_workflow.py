"""End-to-end: the tiny config through Snakemake, in a scratch working directory."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from qaclims.compare_runs import compare_trees
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
def test_a_second_run_on_one_core_gives_the_same_bits(tiny_run: Path, tmp_path_factory) -> None:
    """Same commit and config in a fresh folder with --cores 1 instead of 2: every artifact
    (toy weights, answers, CAMs, masks, model files, metrics, tables) is identical; only
    timings, logs and provenance sidecars may differ. Runs before the tests that edit tiny_run."""
    again = tmp_path_factory.mktemp("tiny_again")
    snakemake(again, "--cores", "1")
    diffs = compare_trees(tiny_run, again)
    assert not diffs, "\n".join(f"{d.path}: {d.detail}" for d in diffs[:5])
    table = "results/tiny/summary/miou_table.json"
    assert (tiny_run / table).read_bytes() == (again / table).read_bytes()


@pytest.mark.slow
def test_tiny_run_goes_through_cams_and_irn(tiny_run: Path) -> None:
    """Baseline and full method each get CAMs, a threshold curve, IR labels and pseudo masks."""
    from qaclims.cam.cam_store import CamStore
    from qaclims.data.manifest import read_manifest, split_view

    res = tiny_run / "results" / "tiny"
    train_ids = set(split_view(read_manifest(res / "data" / "manifest.parquet"),
                               "train_aug")["image_id"])
    for exp in ("baseline", "qa_clims"):
        thr = json.loads((res / exp / "cam_eval" / "threshold.json").read_text())
        assert len(thr["thresholds"]) == len(thr["miou"]) > 50
        assert 0.0 < thr["best_miou"] <= 1.0 and thr["best_miou"] == max(thr["miou"])
        ids = set()
        for shard in (res / exp / "cams").glob("*.h5"):
            ids |= set(CamStore(shard).image_ids)
        assert train_ids <= ids
        masks = json.loads((res / exp / "irn" / "metrics" / "pseudo_masks.json").read_text())
        assert 0.0 < masks["miou"] <= 1.0
        n_png = sum(len(list(d.glob("*.png"))) for d in (res / exp / "irn" / "pseudo_masks")
                    .iterdir() if d.is_dir())
        assert n_png == masks["n_images"] > 0
        # tiny.yaml sets irn.reference_cam_threshold 0.15: the walk's threshold followed the
        # experiment's own threshold search
        assert masks["settings"]["best_cam_threshold"] == thr["best_threshold"]
        assert masks["settings"]["bg_threshold"] == pytest.approx(
            min(0.99, max(0.01, 0.20 + thr["best_threshold"] - 0.15)), abs=1e-4)
    table = (res / "summary" / "cam_miou.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in table[1:]] == ["baseline", "qa_clims"]


@pytest.mark.slow
def test_tiny_run_reaches_deeplab_and_the_tables(tiny_run: Path) -> None:
    res = tiny_run / "results" / "tiny"
    for exp in ("qa_clims", "gt"):
        metrics = json.loads((res / exp / "deeplab" / "metrics.json").read_text())
        assert 0.0 <= metrics["miou"] <= 1.0 and metrics["n_images"] == 8
    table = pd.read_csv(res / "report" / "miou_table.tsv", sep="\t")
    stages = set(zip(table.iloc[:, 0], table.iloc[:, 1], strict=True))
    assert {("baseline", "CAM"), ("qa_clims", "Pseudo masks"), ("qa_clims", "DeepLab")} <= stages
    assert "qa_clims" in (res / "summary" / "miou_table.md").read_text()


@pytest.mark.slow
def test_every_artifact_has_provenance(tiny_run: Path) -> None:
    res = tiny_run / "results" / "tiny"
    meta = json.loads((res / "data" / "manifest.parquet.meta.json").read_text())
    assert meta["rule"] == "prepare_dataset" and len(meta["artifact"]["sha256"]) == 64
    assert meta["packages"]["torch"]
    shard = json.loads((res / "qa_clims" / "irn" / "pseudo_masks" / "0.meta.json").read_text())
    assert shard["artifact"]["kind"] == "directory"
    snap = yaml.safe_load((res / "config.snapshot.yaml").read_text())
    assert snap["dataset"]["name"] == "tiny"


@pytest.mark.slow
def test_report_renders_with_its_figures(tiny_run: Path) -> None:
    out = tiny_run / "report.zip"
    snakemake(tiny_run, "--report", str(out))
    with zipfile.ZipFile(out) as z:
        names = {Path(n).name for n in z.namelist()}
    expected = {"report.html", "miou_table.html", "class_iou.png", "threshold_curves.png",
                "loss_curves.png", "qa_clims.png", "baseline.png", "top_answers.html",
                "runtimes.png", "config.snapshot.yaml"}
    assert expected <= names, sorted(expected - names)


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


def test_seeds_target_runs_every_training_stage_per_seed(tmp_path: Path) -> None:
    """`snakemake seeds` with seeds [0, 2]: the baseline, qa_clims, their IRN and the DeepLabs
    run once per seed offset (seeded runs named '-seed2'); data, answers and toy models once."""
    cfg = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    cfg["seeds"] = [0, 2]
    cfg["seg"]["experiments"] = ["baseline", "qa_clims", "gt"]
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "seeds.yaml"), "-n", "seeds", "--quiet", "rules"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {m.group(1): int(m.group(2))
              for m in re.finditer(r"(?m)^(\w+)\s+(\d+)$", proc.stdout + proc.stderr)}
    assert counts["train_cam"] == 2 and counts["train_ritc"] == 2
    assert counts["train_irn"] == 4 and counts["train_deeplab"] == 6  # baseline, qa_clims, gt
    assert counts["vqa"] == 2 and counts["train_toy_clip"] == 1 and counts["seed_table"] == 1
    plan = subprocess.run([*cmd[:-3], "-n", "seeds", "--quiet", "reason"] , capture_output=True,
                          text=True, timeout=600)
    assert "results/tiny/qa_clims-seed2/ritc/model.pth" in plan.stdout + plan.stderr


def test_ablations_are_one_target_sharing_the_answers(tmp_path: Path) -> None:
    """`snakemake ablations` plans every declared ablation; corpus overrides get their own
    corpus and text features from the shared answers, never a VQA job of their own."""
    proc = snakemake(tmp_path, "-n", "ablations", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    counts = {m.group(1): int(m.group(2))
              for m in re.finditer(r"(?m)^(\w+)\s+(\d+)$", out)}
    assert counts["train_ritc"] == 15          # qa_clims + the 14 default ablations
    assert counts["experiment_corpus"] == 5    # fg_fine, fg_alias, bg_object, bg_scene, fg_bg_obj
    assert counts["experiment_text_features"] == 5
    assert counts["vqa"] == 2                  # the tiny config's 2 shards, shared
    assert counts["ablation_table"] == 1
