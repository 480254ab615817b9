"""Safe checkpoint I/O shared by every stage: loading, resumable saving, RNG states.

Loading. Every ``.pth``/``.pt`` is read with ``torch.load(weights_only=True)``: a full unpickle
runs whatever code a crafted file names, so it is never done on a file a loader is handed. A file
that needs more than tensors and plain containers (a detectron2 checkpoint holding numpy arrays)
is refused with :class:`UnsafeCheckpointError`; third-party files of that kind are converted once,
after their checksum is verified, by ``fetch_weights`` (:func:`qaclims.vlp.weights.convert_asset`).
A truncated or otherwise unreadable file raises :class:`CheckpointError` naming it (torch's own
message names no file).

Resumable state. :func:`save_resumable` writes the new state beside the current one and renames
it into place, keeping the previous state as ``<name>.prev``; :func:`load_resumable` falls back to
that previous state when the current one cannot be read (a disk that filled up, a file copied
half-way), so a retry resumes from the last good state instead of failing the same way each time
or starting from zero.

RNG states. numpy's legacy state is a tuple holding an ndarray, which ``weights_only`` refuses:
:func:`rng_state` stores it as a tensor, :func:`set_rng_state` turns it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qaclims.store import atomic_path, save_torch

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "discard_resumable",
    "load_resumable",
    "previous_path",
    "rng_state",
    "safe_load",
    "save_resumable",
    "set_rng_state",
]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint file cannot be read (truncated, corrupt, empty); the message names it."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs a full unpickle (arbitrary code) to load: refused."""


def safe_load(path: PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Raises :class:`FileNotFoundError`, :class:`UnsafeCheckpointError` (the file names a Python
    object a weights-only load does not allow - running it could execute code) or
    :class:`CheckpointError` (truncated or corrupt).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        # torch wraps every refusal in "Weights only load failed"; one that names a Python
        # global (a class or function to call) is a file that wants code run, anything else
        # (an unknown opcode) is garbage
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise UnsafeCheckpointError(
                f"{what} {path} refused: it holds Python objects beyond tensors and plain "
                f"containers (it names {found.group(1)}), and loading it would run a full "
                "unpickle, which can execute arbitrary code. Only load files you made or whose "
                "checksum fetch_weights verified; third-party checkpoints are converted by "
                "fetch_weights."
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text, re.S)
        reason = " ".join((detail.group(1) if detail else text).split("\n\n")[0].split())
        raise CheckpointError(f"{what} {path}: not a readable torch checkpoint ({reason})"
                              ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = (str(err).splitlines() or [""])[0] or type(err).__name__
        raise CheckpointError(f"{what} {path}: not a readable torch checkpoint (truncated or "
                              f"corrupt? {first})") from err


def previous_path(path: PathLike) -> Path:
    """Where :func:`save_resumable` keeps the state before the current one."""
    p = Path(path)
    return p.with_name(p.name + ".prev")


def save_resumable(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then keep the old file as
    ``<path>.prev`` and rename the new one into place. A kill at any point leaves at least one
    complete state (between the two renames only ``.prev``, which :func:`load_resumable` reads).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        save_torch(obj, tmp)
        if path.is_file():
            os.replace(path, previous_path(path))


def load_resumable(path: PathLike, what: str = "resume state") -> tuple[Any, Path] | None:
    """``(state, the file it came from)`` of the newest readable state, or None when neither
    ``path`` nor ``<path>.prev`` exists.

    A current state that cannot be read is logged (naming it) and the previous one is used; when
    no state can be read, :class:`CheckpointError` names every file tried and how to start over.
    A state refused as unsafe is never skipped silently.
    """
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.is_file()]
    if not candidates:
        return None
    errors = []
    for p in candidates:
        try:
            state = safe_load(p, what)
        except UnsafeCheckpointError as err:
            # e.g. a state written by an older version of this code: refuse, never run it
            raise UnsafeCheckpointError(
                f"{err} Delete {path.parent} to start this run from zero.") from None
        except CheckpointError as err:
            log.warning("%s; trying the previous state", err)
            errors.append(str(err))
            continue
        if p != path:
            log.warning("resuming from the previous state %s (the newer %s is unreadable)", p,
                        path)
        return state, p
    raise CheckpointError(
        "no readable " + what + ": " + "; ".join(errors)
        + f". Delete {path.parent} to start this run from zero."
    )


def discard_resumable(path: PathLike) -> None:
    """Remove a state and its previous copy."""
    for p in (Path(path), previous_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# ---------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy (legacy global) and Python RNG states, in types a
    weights-only load accepts."""
    import numpy as np
    import torch

    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "key": torch.from_numpy(np.asarray(key, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
