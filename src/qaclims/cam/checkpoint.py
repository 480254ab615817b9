"""Model checkpoints, resumable training state and loss curves (shared by every training stage).

Model files (the declared outputs of the training rules) are ``torch.save`` dicts
``{"state_dict", "arch", "n_classes", "stage", "meta"}`` written atomically.
:func:`load_model_state` also reads the authors' plain state dicts (``res50_cam.pth``,
``res50_qa_clims.pth``), inferring the ResNet depth from the keys.

Resumable state lives *outside* the declared outputs, in ``<resume_root>/<hash>/state.pt``, where
``hash`` is :func:`params_hash` of the settings and the input files' SHA-256. A rerun with the same
params and inputs (after preemption, a kill, a node failure) continues from the last saved step;
a change of any param or input gives another hash, so a stale state is never resumed. Writes are
atomic (temp file + rename) and keep the previous state as ``state.pt.prev``: a state that cannot
be read (a disk that filled up) is named in the log and the previous one resumed
(:mod:`qaclims.torch_io`). ``params.json`` beside the state records what the hash stands for.
Every file is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qaclims.store import atomic_path, save_torch, write_json
from qaclims.torch_io import load_resumable, previous_path, safe_load, save_resumable

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
STATE_FILE = "state.pt"
PARAMS_FILE = "params.json"
HASH_LEN = 16


# ---------------------------------------------------------------------------- params hash


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def params_hash(params: Mapping[str, Any], files: Iterable[PathLike] = ()) -> str:
    """Hex digest (16 chars) of the canonical JSON of ``params`` plus the SHA-256 of ``files``.

    File *contents* count, not their paths or times: a retrained baseline (new bytes) gives a
    new hash, a copied workspace the same one.
    """
    from qaclims.vlp.weights import file_sha256

    payload = {"params": _canonical(dict(params)),
               "files": sorted(file_sha256(f) for f in files)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


class ResumeState:
    """The resumable state of one training run: ``<root>/<params_hash>/state.pt``."""

    def __init__(self, root: PathLike, params: Mapping[str, Any],
                 files: Sequence[PathLike] = ()) -> None:
        self.hash = params_hash(params, files)
        self.dir = Path(root) / self.hash
        self.path = self.dir / STATE_FILE
        self._params = {"params": _canonical(dict(params)), "files": [str(f) for f in files]}

    def exists(self) -> bool:
        """A state (current or previous) is on disk."""
        return self.path.is_file() or previous_path(self.path).is_file()

    def load(self) -> dict[str, Any] | None:
        """The newest readable saved state (on CPU), or None when there is none yet. Raises
        :class:`~qaclims.torch_io.CheckpointError` naming the files when none can be read."""
        found = load_resumable(self.path)
        if found is None:
            return None
        state, path = found
        log.info("resuming from %s (step %s)", path, state.get("step"))
        return state

    def save(self, state: Mapping[str, Any]) -> None:
        """Write beside the current state and rename (the previous one is kept as ``.prev``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / PARAMS_FILE).is_file():
            write_json(self._params, self.dir / PARAMS_FILE)
        save_resumable(dict(state), self.path)

    def clear(self) -> None:
        """Remove this run's state (after its outputs are written): checkpoints are large."""
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------- model files


def save_model(path: PathLike, state_dict: Mapping[str, Any], *, arch: str, n_classes: int,
               stage: str, meta: Mapping[str, Any] | None = None,
               output_stride: int = 16) -> None:
    """Write a model file atomically (tensors moved to CPU)."""

    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = {"state_dict": sd, "arch": arch, "n_classes": int(n_classes), "stage": stage,
               "meta": dict(meta or {}), "output_stride": int(output_stride)}
    with atomic_path(path) as tmp:
        save_torch(payload, tmp)


def infer_arch(state: Mapping[str, Any]) -> str:
    """ResNet depth of a CAM-network state dict from its keys (layer3 blocks, block type)."""
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("stage3.0.")}
    if not blocks:
        raise ValueError("not a CAM network state dict: no stage3.0.* keys")
    n = max(blocks) + 1
    bottleneck = any(k.startswith("stage3.0.0.conv3.") for k in state)
    table = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50",
             (True, 23): "resnet101"}
    if (bottleneck, n) not in table:
        raise ValueError(f"unknown ResNet layout: {n} layer3 blocks, bottleneck={bottleneck}")
    return table[(bottleneck, n)]


def load_model_state(path: PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, info)`` of a model file; ``info`` has arch, n_classes, stage, meta.

    Accepts this project's files and the authors' plain state dicts (their alias keys and
    ``module.`` prefixes are dropped).
    """
    from qaclims.cam.networks import from_authors_state_dict

    path = Path(path)
    obj = safe_load(path, "model file")
    if isinstance(obj, Mapping) and "state_dict" in obj and "arch" in obj:
        sd = dict(obj["state_dict"])
        # Files written before output_stride was a setting were all stride 16.
        info = {"arch": obj["arch"], "n_classes": int(obj["n_classes"]),
                "stage": obj.get("stage", ""), "meta": dict(obj.get("meta", {})),
                "output_stride": int(obj.get("output_stride", 16))}
    elif isinstance(obj, Mapping):
        sd = from_authors_state_dict(obj)
        if "classifier.weight" not in sd:
            raise ValueError(f"{path}: neither a qaclims model file nor a CAM state dict "
                             f"(no classifier.weight)")
        # The authors' networks are stride 16 (the weights do not tell).
        info = {"arch": infer_arch(sd), "n_classes": int(sd["classifier.weight"].shape[0]),
                "stage": "external", "meta": {}, "output_stride": 16}
    else:
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return sd, info


def build_cam_network(kind: str, arch: str, n_classes: int, output_stride: int = 16):
    """A randomly initialised ``CamNet`` (kind "cam") or ``RitcNet`` (kind "ritc")."""
    import torchvision

    from qaclims.cam.networks import CamNet, RitcNet
    from qaclims.vlp.backbones import IMAGENET_FILES

    if arch not in IMAGENET_FILES:
        raise ValueError(f"unknown ResNet arch {arch!r}; one of {sorted(IMAGENET_FILES)}")
    cls = {"cam": CamNet, "ritc": RitcNet}[kind]
    # a shell: the weights come from the checkpoint loaded next
    resnet = getattr(torchvision.models, arch)(weights=None)
    return cls(resnet, n_classes, output_stride)


def load_cam_network(path: PathLike, kind: str = "ritc", n_classes: int | None = None):
    """The network in a model file, loaded strictly. ``n_classes`` (when given) must match."""
    sd, info = load_model_state(path)
    if n_classes is not None and info["n_classes"] != n_classes:
        raise ValueError(f"{path}: model has {info['n_classes']} classes, the dataset "
                         f"{n_classes}")
    net = build_cam_network(kind, info["arch"], info["n_classes"], info["output_stride"])
    net.load_state_dict(sd, strict=True)
    return net, info


def import_cam_model(src: PathLike, dst: PathLike, n_classes: int) -> dict[str, Any]:
    """A given baseline CAM checkpoint -> this project's model file at ``dst``, instead of
    training one (``cam.baseline_checkpoint``): the authors' released ``res50_cam.pth`` (a plain
    state dict of their ``Net``) or a model file of this project.

    Checked before anything is written: it must load strictly into the CAM network its keys
    describe, with ``n_classes`` classes (the dataset's). Returns the model info; the source
    path and SHA-256 go into the file's ``meta``.
    """
    from qaclims.vlp.weights import file_sha256

    src = Path(src)
    sd, info = load_model_state(src)
    if info["n_classes"] != n_classes:
        raise ValueError(f"cam.baseline_checkpoint {src}: its classifier has {info['n_classes']} "
                         f"classes, the dataset {n_classes} (a COCO checkpoint for VOC?)")
    net = build_cam_network("cam", info["arch"], n_classes, info["output_stride"])
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise ValueError(f"cam.baseline_checkpoint {src}: does not fit a {info['arch']} CAM "
                         f"network: {err}") from err
    meta = {**info["meta"], "imported_from": str(src), "imported_sha256": file_sha256(src),
            "imported_stage": info["stage"]}
    save_model(dst, net.state_dict(), arch=info["arch"], n_classes=n_classes, stage="imported",
               meta=meta, output_stride=info["output_stride"])
    log.info("baseline CAM network: imported %s (%s, %d classes, stride %d) -> %s", src,
             info["arch"], n_classes, info["output_stride"], dst)
    return {**info, "meta": meta}


# ---------------------------------------------------------------------------- loss curves


def write_curve_tsv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> None:
    """The loss curve (one row per step) as TSV, columns in first-seen order, atomically."""
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)

    lines = ["\t".join(columns)]
    lines += ["\t".join(fmt(r.get(c)) for c in columns) for r in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_curve_tsv(path: PathLike) -> list[dict[str, float]]:
    """Rows of a curve written by :func:`write_curve_tsv` (numbers as float)."""
    text = Path(path).read_text().splitlines()
    header = text[0].split("\t")
    out = []
    for line in text[1:]:
        vals = line.split("\t")
        out.append({h: (float(v) if v != "" else float("nan")) for h, v in zip(header, vals,
                                                                              strict=True)})
    return out
