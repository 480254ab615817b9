"""The demo's closing summary reads each stage's artifacts and names the missing ones."""

import json
from pathlib import Path

from qaclims.summary import summarise


def test_summary_lists_missing_artifacts(tmp_path: Path) -> None:
    text = summarise(tmp_path, tmp_path / "toy")
    assert "Not produced yet" in text
    assert "data/stats.json" in text and "toy models" in text


def test_summary_shows_dataset_and_qape_tables(tmp_path: Path) -> None:
    split = {"n_images": 2, "n_with_gt": 2, "n_unlabelled": 0, "labels_per_image": {"1": 2},
             "class_images": {"boat": 1, "car": 1}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stats.json").write_text(json.dumps({
        "source": "synthetic", "n_images": 2, "num_classes": 2, "n_skipped": 0,
        "skipped_by_reason": {}, "classes": ["boat", "car"], "splits": {"train": split}}))
    (tmp_path / "qape").mkdir()
    (tmp_path / "qape" / "corpus_stats.json").write_text(json.dumps({
        "pairs": 2, "pairs_used": 1, "empty_background_pairs": 1, "unique_texts": 5,
        "variant": "code",
        "top_answers": {"boat": {"fine": [["sailboat", 3]], "object": [["water", 7]]}}}))
    text = summarise(tmp_path)
    assert "Dataset (synthetic): 2 images, 2 classes" in text
    assert "water:7" in text and "sailboat:3" in text
    assert "1 of 2 (image, class) pairs used, 1 without background text" in text
    assert "Not produced yet" not in text


def test_summary_puts_the_most_expensive_rule_first(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s in [("vqa/0.tsv", 30.0), ("vqa/1.tsv", 30.0), ("baseline/train_cam.tsv", 240.0),
                   ("qa_clims/export_cams/0.tsv", 120.0)]:
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + f"{s}\t0:00:00\t100\t1\t1\t1\t0\t0\t1\t{s}\n")
    text = summarise(tmp_path)
    lines = text[text.index("Job wall time per rule (7.0 min over 4"):].splitlines()
    assert [ln.split()[0] for ln in lines[3:6]] == ["train_cam", "export_cams", "vqa"]
    assert lines[5].split()[1:4] == ["2", "1.0", "14%"]
