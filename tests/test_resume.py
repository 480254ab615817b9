"""Resumable training: a killed or preempted run, rerun, ends exactly where an uninterrupted run
does; the state is guarded by the hash of the params and inputs that made it."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from test_cam_train import make_tiny_dataset, tiny_cam_settings

from qaclims.cam.checkpoint import (
    ResumeState,
    load_model_state,
    params_hash,
    read_curve_tsv,
)
from qaclims.cam.optim import PolyOptimizer
from qaclims.cam.train_cam import TrainingPreempted, train_cam


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("resume"))


def _run(data, out, resume_root, settings):
    return train_cam(data / "manifest.parquet", data / "classes.json", out / "m.pth",
                     out / "curve.tsv", settings, split="train", resume_root=resume_root)


def _interrupt_at(monkeypatch, step: int, how: str) -> None:
    """Make optimiser step number ``step`` (0-based) crash (a kill) or deliver SIGTERM."""
    original = PolyOptimizer.step

    def step_fn(self, closure=None):
        if self.global_step == step:
            if how == "crash":
                raise RuntimeError("simulated kill")
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, closure)

    monkeypatch.setattr(PolyOptimizer, "step", step_fn)


def _same_models(a, b) -> None:
    sa, _ = load_model_state(a)
    sb, _ = load_model_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("how", ["crash", "sigterm"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(data, tmp_path, monkeypatch, how):
    s = tiny_cam_settings(max_steps=4, checkpoint_every=2, momentum=0.9)
    ref = tmp_path / "ref"
    _run(data, ref, tmp_path / "ref_resume", s)

    out, root = tmp_path / "run", tmp_path / "resume"
    with monkeypatch.context() as m:
        _interrupt_at(m, 2, how)
        with pytest.raises(RuntimeError if how == "crash" else TrainingPreempted):
            _run(data, out, root, s)
    assert not (out / "m.pth").exists()  # no output that looks finished
    (state_dir,) = [p for p in root.iterdir() if p.is_dir()]
    saved = torch.load(state_dir / "state.pt", weights_only=False)
    # crash during step 3: the checkpoint of step 2; SIGTERM during step 3: saved after it
    assert saved["step"] == (2 if how == "crash" else 3)

    summary = _run(data, out, root, s)
    assert summary["resumed_from"] == saved["step"]
    _same_models(ref / "m.pth", out / "m.pth")
    ref_curve = read_curve_tsv(ref / "curve.tsv")
    got_curve = read_curve_tsv(out / "curve.tsv")
    assert [r["step"] for r in got_curve] == [1, 2, 3, 4]
    assert [r["loss"] for r in got_curve] == [r["loss"] for r in ref_curve]
    assert not state_dir.exists()  # cleared once the outputs are written


def test_changed_params_do_not_resume_a_stale_state(data, tmp_path, monkeypatch):
    s = tiny_cam_settings(max_steps=3, checkpoint_every=1)
    root = tmp_path / "resume"
    with monkeypatch.context() as m:
        _interrupt_at(m, 1, "crash")
        with pytest.raises(RuntimeError):
            _run(data, tmp_path / "a", root, s)
    # another lr: another hash, a fresh start
    summary = _run(data, tmp_path / "b", root, s.replace(lr=0.02))
    assert summary["resumed_from"] == 0
    # result-neutral settings (threads, logging, checkpoint cadence) keep the hash: resumes
    summary = _run(data, tmp_path / "c", root, s.replace(log_every=5, checkpoint_every=2))
    assert summary["resumed_from"] == 1


def test_params_hash_covers_params_and_file_contents(tmp_path):
    f = tmp_path / "in.bin"
    f.write_bytes(b"abc")
    h = params_hash({"lr": 0.1, "b": [1, 2]}, [f])
    assert h == params_hash({"b": [1, 2], "lr": 0.1}, [f])  # key order is irrelevant
    assert h != params_hash({"lr": 0.2, "b": [1, 2]}, [f])
    f.write_bytes(b"abd")
    assert h != params_hash({"lr": 0.1, "b": [1, 2]}, [f])
    state = ResumeState(tmp_path / "r", {"lr": 0.1})
    assert state.load() is None
    state.save({"step": 3})
    assert ResumeState(tmp_path / "r", {"lr": 0.1}).load()["step"] == 3
    assert (state.dir / "params.json").is_file()
    assert not list(state.dir.glob(".*"))  # no temp files left beside the state
