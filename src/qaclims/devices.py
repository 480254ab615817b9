"""Device choice shared by the GPU-capable rules."""

from __future__ import annotations


def pick_device(preference: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without a GPU is an error."""
    import torch

    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected one of 'auto', 'cpu', 'cuda', got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU "
                           "(CUDA_VISIBLE_DEVICES, driver, or a CPU-only torch build?)")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference
