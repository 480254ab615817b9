"""The table over seeds: mean +- sample std per stage and the per-seed gain over the baseline."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qaclims.seed_table import markdown, mean_std, seed_summary, write_seed_tables


def _rows(base_cam, ours_cam, ours_dl=None):
    rows = [{"experiment": "baseline", "source": "measured", "cam_miou": base_cam},
            {"experiment": "qa_clims", "source": "measured", "cam_miou": ours_cam,
             "deeplab_miou": ours_dl},
            {"experiment": "QA-CLIMS (paper)", "source": "paper", "cam_miou": 67.3}]
    return rows


def test_gain_is_taken_seed_by_seed():
    per_seed = {0: _rows(40.0, 50.0, 45.0), 1: _rows(44.0, 49.0, 47.0), 2: _rows(42.0, 41.0)}
    s = seed_summary(per_seed, baseline="baseline")
    assert s["seeds"] == [0, 1, 2]
    assert [r["experiment"] for r in s["rows"]] == ["baseline", "qa_clims"]  # no paper row
    base = s["rows"][0]["cam_miou"]
    assert base["mean"] == pytest.approx(42.0) and base["std"] == pytest.approx(2.0)
    gain = s["gains"][0]["cam_miou"]
    assert gain["values"] == {0: 10.0, 1: 5.0, 2: -1.0}
    assert gain["n_positive"] == 2 and gain["mean"] == pytest.approx(14 / 3)
    assert s["rows"][1]["deeplab_miou"]["n"] == 2  # seed 2 has no DeepLab value
    assert "deeplab_miou" not in s["gains"][0]  # the baseline has none to compare with
    md = markdown(s, {"fixed": 0.15, "seg": "val"})
    assert "| qa_clims - baseline | +4.7 ± 5.5 (2/3 > 0) |" in md
    assert "| baseline | 1 | 44.0 |" in md


def test_tables_are_written(tmp_path):
    s = seed_summary({0: _rows(40.0, 50.0)}, baseline="baseline")
    write_seed_tables(s, {"fixed": 0.15}, tsv_path=tmp_path / "s.tsv", md_path=tmp_path / "s.md",
                      json_path=tmp_path / "s.json", title="t")
    assert json.loads((tmp_path / "s.json").read_text())["gains"][0]["cam_miou"]["n"] == 1
    assert (tmp_path / "s.tsv").read_text().splitlines()[1].startswith("baseline\tcam_miou\t40.00")


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20))
def test_mean_std_match_the_definition(values):
    mean, std = mean_std(values)
    assert mean == pytest.approx(sum(values) / len(values), abs=1e-9)
    if len(values) == 1:
        assert std == 0.0
    else:
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        assert std == pytest.approx(math.sqrt(var), abs=1e-6)
