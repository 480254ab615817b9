"""Checkpoint safety (issue 20 item 9, issue 21 item 5): every loader refuses a crafted pickle
with a clear message and without running it; a corrupt checkpoint is named, and training resumes
from the last good state kept beside it."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets_factory import truncate_file
from test_cam_train import make_tiny_dataset, tiny_cam_settings
from test_resume import _interrupt_at, _run, _same_models

from qaclims.cam.checkpoint import ResumeState, load_model_state
from qaclims.torch_io import (
    CheckpointError,
    UnsafeCheckpointError,
    load_resumable,
    previous_path,
    rng_state,
    safe_load,
    save_resumable,
    set_rng_state,
)


class _Payload:
    """Pickles as a call of os.system: loading it with a full unpickle runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path: Path) -> Path:
    marker = path.with_name(path.name + ".PWNED")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": _Payload(marker)}, path)
    return marker


def _loaders():
    from qaclims.irn.train_irn import load_irn_network
    from qaclims.seg.networks import load_deeplab_checkpoint
    from qaclims.seg.pipeline import checkpoint_input
    from qaclims.vlp.clip import _load_mask_checkpoint

    return {
        "safe_load": safe_load,
        "cam_model": load_model_state,
        "irn_model": load_irn_network,
        "deeplab_model": load_deeplab_checkpoint,
        "deeplab_meta": checkpoint_input,
        "clip_mask_checkpoint": lambda p: _load_mask_checkpoint(Path(p)),
        # <root>/<hash>/state.pt of a run with params {}
        "cam_resume": lambda p: ResumeState(p.parent.parent, {}).load(),
    }


@pytest.mark.parametrize("loader", sorted(_loaders()))
def test_crafted_pickle_is_refused_and_never_run(tmp_path: Path, loader: str) -> None:
    path = ResumeState(tmp_path, {}).path if loader == "cam_resume" else tmp_path / "model.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = _crafted(path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused.*posix\.system.*arbitrary code"
                       ) as err:
        _loaders()[loader](path)
    assert str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["safe_load", "cam_model", "irn_model", "deeplab_model"])
def test_truncated_model_file_is_named(tmp_path: Path, loader: str) -> None:
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "arch": "resnet50"}, path)
    truncate_file(path, keep=0.5)
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable torch checkpoint "
                       r"\(truncated or corrupt\?"):
        _loaders()[loader](path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable .*Unsupported operand"):
        _loaders()[loader](path)


def test_ovseg_pickle_is_converted_once_after_its_checksum(tmp_path: Path) -> None:
    """A detectron2-style checkpoint (numpy arrays) is never fully unpickled by the loader; it is
    converted by fetch_assets after verification and the loader reads the copy."""
    from qaclims.vlp.clip import _load_mask_checkpoint
    from qaclims.vlp.weights import Asset, converted_path, fetch_assets, sidecar_path

    asset = Asset("ovseg", "ovseg/ckpt.pth", "manual", "detectron2 file", convert_to_tensors=True)
    src = asset.path(tmp_path)
    src.parent.mkdir()
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    torch.save({"model": {"clip_adapter.clip_model.w": arr, "t": torch.ones(2)},
                "iteration": 7}, src)
    with pytest.raises(UnsafeCheckpointError, match=r"numpy.*Convert it once.*ckpt\.tensors\.pt"):
        _load_mask_checkpoint(src)
    fetch_assets(["ovseg"], tmp_path, offline=True, registry={"ovseg": asset})
    out = converted_path(src)
    assert out.name == "ckpt.tensors.pt" and sidecar_path(src).is_file()
    ckpt = _load_mask_checkpoint(src)
    assert torch.equal(ckpt["model"]["clip_adapter.clip_model.w"], torch.from_numpy(arr))
    assert torch.equal(ckpt["model"]["t"], torch.ones(2)) and "iteration" not in ckpt["model"]
    # a replaced original with a matching new sidecar but a stale copy is caught
    sidecar_path(src).write_text(f"{'0' * 64}  ckpt.pth\n")
    with pytest.raises(ValueError, match="made from another ckpt.pth.*rerun fetch_weights"):
        _load_mask_checkpoint(src)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    np.random.seed(3)
    random.seed(4)
    torch.manual_seed(5)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    save_resumable({"rng": rng_state()}, tmp_path / "s.pt")
    expected = (np.random.rand(3), random.random(), torch.rand(2), np.random.normal())
    np.random.seed(0), random.seed(0), torch.manual_seed(0)
    set_rng_state(safe_load(tmp_path / "s.pt")["rng"])
    got = (np.random.rand(3), random.random(), torch.rand(2), np.random.normal())
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and got[3] == expected[3]


def test_resumable_save_keeps_the_previous_state(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.pt"
    assert load_resumable(path) is None
    save_resumable({"step": 1}, path)
    save_resumable({"step": 2}, path)
    assert safe_load(previous_path(path))["step"] == 1
    truncate_file(path, keep=0.3)
    with caplog.at_level(logging.WARNING):
        state, used = load_resumable(path)
    assert state["step"] == 1 and used == previous_path(path)
    assert f"{path}: not a readable torch checkpoint" in caplog.text
    truncate_file(previous_path(path), keep=0.3)
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable.*{path}\.prev: not a "
                       rf"readable.*Delete {tmp_path} to start"):
        load_resumable(path)
    # killed between the two renames: only the previous state is there
    path.unlink()
    save_resumable({"step": 5}, previous_path(path))
    assert load_resumable(path)[0]["step"] == 5


def test_deeplab_resume_state_is_not_silently_dropped(tmp_path: Path) -> None:
    from qaclims.seg.train import STATE_FILE, STATE_FORMAT, _load_state

    log = logging.getLogger("test")
    path = tmp_path / STATE_FILE
    for it in (10, 20):
        save_resumable({"format": STATE_FORMAT, "hash": "h", "iteration": it}, path)
    truncate_file(path, keep=0.3)
    assert _load_state(tmp_path, "h", log)["iteration"] == 10  # the last good state
    truncate_file(previous_path(path), keep=0.3)
    with pytest.raises(CheckpointError, match=str(path)):
        _load_state(tmp_path, "h", log)  # used to start again from iteration 0 without a word


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("ckpt"))


def test_cam_training_resumes_from_the_last_good_state(data, tmp_path, monkeypatch) -> None:
    s = tiny_cam_settings(max_steps=4, checkpoint_every=1)
    _run(data, tmp_path / "ref", tmp_path / "ref_resume", s)
    out, root = tmp_path / "run", tmp_path / "resume"
    with monkeypatch.context() as m:
        _interrupt_at(m, 3, "crash")
        with pytest.raises(RuntimeError):
            _run(data, out, root, s)
    (state_dir,) = [p for p in root.iterdir() if p.is_dir()]
    truncate_file(state_dir / "state.pt", keep=0.5)  # e.g. the disk filled while saving
    summary = _run(data, out, root, s)
    assert summary["resumed_from"] == 2  # step 3's state is unreadable, step 2's is kept
    _same_models(tmp_path / "ref" / "m.pth", out / "m.pth")
