"""What makes two runs of the same commit and config give the same bits, in one place.

Every rule that runs torch calls :func:`configure_torch` with the thread count that reached it
through ``params`` (the stage's ``threads`` key, else ``compute.torch_threads``), never with the
thread count Snakemake granted the job: that one follows ``--cores`` and the machine, and torch's
CPU kernels sum in per-thread blocks (a ResNet's conv weight gradients differ in the last bits
between 1 and 2 threads: measured), so a different thread count is a different result.

Measured on this project's CPU pipeline: seeds, data order and augmentation were already fixed
per step; the remaining drift came from thread counts that followed the machine, training that
stopped on a time guard, and ``torch.save`` to randomly named temporary files (the zip records
carry the file name, so equal weights got different checksums and model ids).
"""

from __future__ import annotations

import os


def configure_torch(threads: int | None, *, deterministic: bool = True) -> None:
    """Pin torch's intra-op threads (None: leave them) and, with ``deterministic``, select
    deterministic kernels.

    ``torch.use_deterministic_algorithms(True, warn_only=True)``: on the CPU it changes nothing
    measurable; on CUDA it picks deterministic cuBLAS/cuDNN paths and *warns* (instead of
    stopping a job hours in) where an op has none, e.g. a bilinear upsampling's backward.
    """
    import torch

    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"torch threads: expected >= 1, got {threads!r}")
        torch.set_num_threads(int(threads))
    if deterministic:
        # cuBLAS reads this when it first initialises; a no-op on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class TimeGuardExceeded(RuntimeError):
    """A training passed its ``max_minutes`` guard: it stops with an error instead of saving
    weights from fewer steps than configured (a step count that follows the machine's speed
    would make the weights, and everything downstream, differ from run to run)."""


def check_time_guard(elapsed_minutes: float, max_minutes: float, *, what: str, step: int,
                     max_steps: int, key: str) -> None:
    """Raise :class:`TimeGuardExceeded` once ``elapsed_minutes`` passes ``max_minutes``."""
    if elapsed_minutes > max_minutes:
        raise TimeGuardExceeded(
            f"{what}: {elapsed_minutes:.1f} min passed the time guard {key} = {max_minutes} "
            f"at step {step} of {max_steps}. Weights from fewer steps would differ from run to "
            f"run, so none are saved: raise {key} (the step count decides the weights) or "
            f"lower max_steps.")
