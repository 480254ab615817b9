"""Cluster time limits, retries and provenance that cannot cost a finished output (issue 21
item 7). The SLURM runs themselves are in test_slurm.py (root and a cluster); here the profile's
content and the arithmetic the rules use."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from test_provenance import FakeJob

from qaclims import provenance
from qaclims.cluster import retry_minutes
from qaclims.provenance import record_provenance, sidecar_path

ROOT = Path(__file__).resolve().parents[1]


def test_profile_retries_and_reruns_incomplete_jobs() -> None:
    profile = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    assert profile["retries"] >= 2
    assert profile["rerun-incomplete"] is True and profile["keep-going"] is True


def test_retry_runtime_grows_but_stays_under_the_partition_limit() -> None:
    assert [retry_minutes(90, a) for a in (1, 2, 3)] == [90, 180, 270]
    assert [retry_minutes(90, a, max_minutes=240) for a in (1, 2, 3)] == [90, 180, 240]
    assert retry_minutes(600, 1, max_minutes=240) == 240  # even a first attempt fits
    with pytest.raises(ValueError, match="attempt"):
        retry_minutes(10, 0)


def test_the_rules_cap_their_runtimes() -> None:
    """Every runtime that grows with the attempt goes through runtime_limit (the cap)."""
    rules = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    # a runtime string built as "{... * attempt}m" grows without a cap
    assert not re.findall(r".*\* attempt\}m.*", rules)
    assert len(re.findall(r"runtime=(scaled_runtime\(|lambda wc, attempt: runtime_limit\()",
                          rules)) >= 9
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    cap = schema["properties"]["compute"]["properties"]["max_runtime_minutes"]
    assert cap["default"] is None and cap["minimum"] == 1 and cap["description"]


def _job(tmp_path: Path) -> tuple[FakeJob, Path]:
    model = tmp_path / "model.pth"
    model.write_bytes(b"hours of training")
    return FakeJob(inputs={}, outputs={"model": str(model)}, params={}), model


@pytest.mark.parametrize("where", ["record", "sidecar"])
def test_failing_provenance_keeps_the_finished_output(tmp_path, monkeypatch, caplog,
                                                      where) -> None:
    job, model = _job(tmp_path)
    record_provenance(job)  # an earlier run's sidecar
    assert sidecar_path(model).is_file()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(provenance, "code_version" if where == "record" else "write_sidecar",
                        broken)
    with caplog.at_level(logging.ERROR):
        assert record_provenance(job) == []  # used to raise: the job failed, the model deleted
    assert model.read_bytes() == b"hours of training"
    assert f"provenance of {model} not recorded" in caplog.text and "No space" in caplog.text
    assert not sidecar_path(model).exists()  # a stale record cannot describe the new file
