"""Device choice shared by the GPU-capable rules."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def pick_device(preference: str = "auto", gpus: int | None = None, rule: str = "") -> str:
    """"cpu" or "cuda" for a job.

    ``gpus``: the GPUs the job asked the scheduler for (the rule's ``gpu`` resource; None when
    called by hand). On a shared node torch may see GPUs the job was not given (a local run, a
    cluster that does not confine devices): "auto" then takes one only when the job requested
    one, so a CPU job never lands on a colleague's GPU. torch already sees only the devices in
    ``CUDA_VISIBLE_DEVICES`` (set by SLURM for a job with GPUs; "" or "-1" hide them all).
    "cuda" without a visible GPU, or in a job that requested none, is an error.
    """
    import torch

    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected one of 'auto', 'cpu', 'cuda', got {preference!r}")
    if gpus is not None and int(gpus) < 0:
        raise ValueError(f"gpus: expected a count >= 0, got {gpus!r}")
    if preference == "cpu":
        return "cpu"
    requested = gpus is None or int(gpus) > 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preference == "cuda":
        if not requested:
            raise RuntimeError(
                f"compute.device is 'cuda' but {f'rule {rule}' if rule else 'this job'} "
                f"requested no GPU (compute.gpus.{rule or '<rule>'} is 0): it would run on a GPU "
                "the scheduler did not give it. Set compute.gpus for the rule, or device: auto")
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no GPU "
                               f"(CUDA_VISIBLE_DEVICES={visible!r}, driver, or a CPU-only "
                               "torch build?)")
        return "cuda"
    if not requested:
        if torch.cuda.is_available():
            log.info("%s requested no GPU: running on the CPU although torch sees %d GPU(s)",
                     rule or "job", torch.cuda.device_count())
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def job_device(smk: object) -> str:
    """:func:`pick_device` for a Snakemake job: ``params.device``, the ``gpu`` resource the job
    requested and its rule name (a duck-typed ``snakemake`` object, so no Snakemake import)."""
    resources = smk.resources  # type: ignore[attr-defined]
    return pick_device(smk.params.device, resources.get("gpu", 0),  # type: ignore[attr-defined]
                       smk.rule)  # type: ignore[attr-defined]
