"""Cluster resource arithmetic the workflow's rules use (kept here so it is unit-tested)."""

from __future__ import annotations


def retry_minutes(minutes: float, attempt: int, max_minutes: int | None = None) -> int:
    """The time limit of attempt ``attempt`` (1, 2, ...) of a job that needs ``minutes``: doubled,
    tripled ... on each retry (a job killed for time gets more), but never above ``max_minutes``
    (the partition's limit, ``compute.max_runtime_minutes``) - sbatch rejects a job asking for
    more than its partition allows, so an uncapped retry would fail at submission instead of
    resuming from its checkpoint."""
    if attempt < 1:
        raise ValueError(f"attempt: expected >= 1, got {attempt}")
    if minutes <= 0:
        raise ValueError(f"minutes: expected > 0, got {minutes}")
    wanted = max(1, int(minutes)) * int(attempt)
    return min(wanted, int(max_minutes)) if max_minutes else wanted
