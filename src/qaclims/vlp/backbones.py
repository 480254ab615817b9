"""torchvision ResNet backbones with explicit, checked weight loading (method.md 5, 6.1, 9).

``load_resnet(arch, weights)`` builds a plain torchvision ResNet and fills it from

- a local state-dict file (what the workflow passes: ``resources/weights/torchvision/...``),
- ``"imagenet"``: torchvision's own file in ``$TORCH_HOME/hub/checkpoints`` - the legacy name
  used by IRN/CLIMS (``resnet50-19c8e357.pth``) or the current one (``resnet50-0676ba61.pth``),
  whichever is there; nothing is downloaded here (that is the fetch_weights rule's job),
- ``None``: random initialisation (logged as a warning - only for tests and toy runs).

The state dict must match the architecture: missing, unexpected or mis-shaped keys raise a
``ValueError`` naming them. Two kinds of missing keys are tolerated (and logged): the ``fc.*``
head, because backbone-only files drop it, and BatchNorm ``num_batches_tracked`` buffers, because
torchvision's legacy files - the ``resnet50-19c8e357.pth`` that IRN/CLIMS/QA-CLIMS load - predate
that buffer (torch 0.4.1). It only counts batches for ``momentum=None`` averaging, which neither
torchvision's BN (momentum 0.1) nor the frozen BN of the CAM/IRN/DeepLab networks uses.
Stride changes and frozen BN belong to the networks that use these backbones (the cam/irn/seg
stages), not here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from qaclims.vlp.weights import WeightsMissingError, file_sha256

log = logging.getLogger(__name__)

ResNetArch = Literal["resnet18", "resnet34", "resnet50", "resnet101"]

#: torchvision ImageNet file names: (legacy name used by IRN/CLIMS, current IMAGENET1K_V1 name).
IMAGENET_FILES: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"),
    "resnet34": ("resnet34-333f7ec4.pth", "resnet34-b627a593.pth"),
    "resnet50": ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
    "resnet101": ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth"),
}
TORCHVISION_URL = "https://download.pytorch.org/models/{}"
#: BatchNorm buffer absent from files saved before torch 0.4.1 (torchvision's legacy weights).
BN_COUNTER = "num_batches_tracked"


def torch_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's default cache for model weights)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_resnet_weights(arch: ResNetArch, weights: str | os.PathLike[str] | None
                           ) -> Path | None:
    """The file that ``weights`` names for ``arch`` (None for random init).

    Raises :class:`WeightsMissingError` with the URL and the destination when it is not there.
    """
    if weights is None:
        return None
    if str(weights) == "imagenet":
        ckpt_dir = torch_checkpoint_dir()
        for name in IMAGENET_FILES[arch]:
            if (ckpt_dir / name).is_file():
                return ckpt_dir / name
        legacy, current = IMAGENET_FILES[arch]
        raise WeightsMissingError(
            f"ImageNet weights for {arch} not found in {ckpt_dir} (looked for {legacy} and "
            f"{current}). Put either file there, e.g. download {TORCHVISION_URL.format(legacy)} "
            f"to {ckpt_dir / legacy} on a machine with network, or pass a local file path "
            f"(the fetch_weights rule stores it under resources/weights/torchvision/)."
        )
    path = Path(weights)
    if not path.is_file():
        hint = ""
        if path.name in {n for names in IMAGENET_FILES.values() for n in names}:
            hint = f" Download {TORCHVISION_URL.format(path.name)} to {path}"
        from qaclims.vlp.weights import find_asset_for_path

        asset = find_asset_for_path(path)
        if asset is not None:
            hint = (f" It is asset {asset.name!r}: run the fetch_weights rule, or "
                    f"{asset.how_to_get(path)}.")
        raise WeightsMissingError(f"ResNet weights file {path} does not exist.{hint}")
    return path


def load_resnet(arch: ResNetArch, weights: str | os.PathLike[str] | None):
    """A torchvision ``ResNet`` of ``arch`` with ``weights`` loaded and checked (see module doc).

    Returned in train mode with all parameters trainable, like torchvision's constructors.
    """
    import torch
    import torchvision

    if arch not in IMAGENET_FILES:
        raise ValueError(f"unknown ResNet arch {arch!r}; one of {sorted(IMAGENET_FILES)}")
    model = getattr(torchvision.models, arch)(weights=None)
    path = resolve_resnet_weights(arch, weights)
    if path is None:
        log.warning("%s: random initialisation (no weights given)", arch)
        return model
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    check_state_dict(model, state, source=f"{path} ({arch})", optional_prefixes=("fc.",),
                     optional_suffixes=(BN_COUNTER,))
    model.load_state_dict(state, strict=False)
    log.info("%s: loaded %s (sha256 %s)", arch, path, file_sha256(path)[:12])
    return model


def check_state_dict(model, state: dict, *, source: str,
                     optional_prefixes: tuple[str, ...] = (),
                     optional_suffixes: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming missing, unexpected and mis-shaped keys of ``state``.

    Keys that start with one of ``optional_prefixes`` or end with one of ``optional_suffixes``
    may be missing (logged).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    counters = [k for k in missing if optional_suffixes and k.endswith(optional_suffixes)]
    missing = [k for k in missing if k not in counters]
    tolerated = [k for k in missing if k.startswith(optional_prefixes)]
    missing = [k for k in missing if not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_short(shapes)}")
        raise ValueError(f"state dict from {source} does not match the model: " + "; ".join(parts))
    if tolerated:
        log.warning("%s: no %s keys; those stay randomly initialised", source,
                    "/".join(optional_prefixes))
    if counters:
        log.info("%s: no %s buffers (%d; a pre-0.4.1 torchvision file); they start at 0",
                 source, "/".join(optional_suffixes), len(counters))


def _short(items: list[str], n: int = 8) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
