"""device: auto takes a GPU only when the job requested one (issue 21 item 8)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from qaclims.devices import job_device, pick_device


@pytest.fixture
def gpus_visible(monkeypatch):
    """torch sees two GPUs (a shared node whose GPUs this job may not have been given)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_leaves_unrequested_gpus_alone(gpus_visible) -> None:
    assert pick_device("auto", gpus=0) == "cpu"
    assert pick_device("auto", gpus=1) == "cuda"
    assert pick_device("auto") == "cuda"  # by hand: no resource to go by
    assert pick_device("cpu", gpus=1) == "cpu"


def test_cuda_in_a_job_without_gpus_names_the_rule(gpus_visible) -> None:
    with pytest.raises(RuntimeError, match=r"rule train_cam requested no GPU "
                                           r"\(compute.gpus.train_cam is 0\)"):
        pick_device("cuda", gpus=0, rule="train_cam")
    assert pick_device("cuda", gpus=2) == "cuda"


def test_no_visible_gpu(monkeypatch) -> None:
    # what torch reports under CUDA_VISIBLE_DEVICES="" (or on a CPU node)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert pick_device("auto", gpus=1) == "cpu"
    with pytest.raises(RuntimeError, match="torch sees no GPU.*CUDA_VISIBLE_DEVICES=''"):
        pick_device("cuda", gpus=1)
    with pytest.raises(ValueError, match="device: expected one of"):
        pick_device("gpu")


def test_job_device_reads_the_gpu_resource(gpus_visible) -> None:
    def job(gpu: int | None) -> SimpleNamespace:
        resources = {} if gpu is None else {"gpu": gpu}
        return SimpleNamespace(params=SimpleNamespace(device="auto"), resources=resources,
                               rule="export_cams")

    assert job_device(job(0)) == "cpu"
    assert job_device(job(None)) == "cpu"  # a rule that declares no gpu resource
    assert job_device(job(1)) == "cuda"
