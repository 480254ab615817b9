"""Resumable toy trainers: a run killed (or sent SIGTERM, or stopped by its time guard) and
rerun ends with exactly the weights of an uninterrupted run; a truncated state falls back to
the previous one; only result-relevant settings and the corpus key the state.

Tiny settings (32 px, a few steps, one thread): seconds per test on one core.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from datasets_factory import truncate_file

import qaclims.vlp.toy_resume as toy_resume
from qaclims.cam.train_cam import TrainingPreempted
from qaclims.data.synthetic import VlpCorpusSpec, generate_vlp_corpus
from qaclims.determinism import TimeGuardExceeded
from qaclims.torch_io import previous_path
from qaclims.vlp.toy_quality import load_corpus
from qaclims.vlp.toy_resume import toy_resume_state
from qaclims.vlp.train_toy_backbone import ToyBackboneSettings, train_toy_backbone
from qaclims.vlp.train_toy_clip import EVAL_ONLY as CLIP_EVAL_ONLY
from qaclims.vlp.train_toy_clip import ToyClipSettings, fit_toy_clip
from qaclims.vlp.train_toy_vqa import EVAL_ONLY as VQA_EVAL_ONLY
from qaclims.vlp.train_toy_vqa import ToyVqaSettings, fit_toy_vqa

# log_every=1: the log callback sees every step, which is where the tests interrupt the loop.
TINY_VQA = dict(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, batch_size=16,
                lr=5e-3, warmup_steps=2, max_steps=6, log_every=1, threads=1,
                checkpoint_every=2)
TINY_CLIP = dict(image_size=32, patch_size=8, width=32, layers=1, text_layers=1, heads=2,
                 embed_dim=16, context_length=16, batch_size=32, lr=3e-3, warmup_steps=2,
                 max_steps=6, log_every=1, threads=1, mix_background=0.2, checkpoint_every=2)
TINY_BACKBONE = dict(image_size=32, batch_size=8, max_steps=6, warmup_steps=1, log_every=1,
                     threads=1, checkpoint_every=2)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vlp_resume") / "corpus"
    generate_vlp_corpus(root, VlpCorpusSpec(n_images=48, image_size=32, heldout_fraction=0.25,
                                            render_min_size=64, render_max_size=64))
    return root


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return load_corpus(corpus_dir)


class _Killed(Exception):
    """Stands for a SIGKILL: the process dies mid-run, nothing is saved on the way out."""


def _interrupt_at(step: int, how: str) -> Callable[[str], None]:
    """A log callback that interrupts training once step ``step`` (1-based) is done, before the
    trainer's checkpoint logic runs for it: a hard kill, or SIGTERM to this process."""

    def log(line: str) -> None:
        if line.startswith(f"step {step}/"):
            if how == "kill":
                raise _Killed(line)
            os.kill(os.getpid(), signal.SIGTERM)

    return log


def _quiet(_: str) -> None:
    pass


def _state_dir(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    return d


def _saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(("how", "per_image", "stop_at", "saved_at"), [
    ("kill", 4, 5, 4),      # grouped sampler; the step-4 checkpoint survives, step 5 is redone
    ("sigterm", 1, 3, 3),   # row-stream sampler; SIGTERM saves after the step it arrived in
])
def test_toy_vqa_resumes_to_the_uninterrupted_weights(corpus, tmp_path, how, per_image,
                                                      stop_at, saved_at):
    # hflip and the region head (a training-only module) are on by default: both restored
    s = ToyVqaSettings(**dict(TINY_VQA, questions_per_image=per_image))
    ref, _, ref_info = fit_toy_vqa(corpus, s, log=_quiet)

    root = tmp_path / "resume"
    resume = toy_resume_state(root, "train_toy_vqa", s.to_dict(), corpus.root, VQA_EVAL_ONLY)
    with pytest.raises(_Killed if how == "kill" else TrainingPreempted):
        fit_toy_vqa(corpus, s, log=_interrupt_at(stop_at, how), resume=resume)
    assert _saved_step(_state_dir(root) / "state.pt") == saved_at

    model, _, info = fit_toy_vqa(corpus, s, log=_quiet, resume=resume)
    assert info["resumed_from"] == saved_at
    _assert_same_weights(ref.state_dict(), model.state_dict())
    # the losses before the interruption come back with the state
    assert info["loss_curve"] == ref_info["loss_curve"]
    assert info["loss_first"] == ref_info["loss_first"]


# ------------------------------------------------------------------------------- CLIP


def test_toy_clip_resumes_to_the_uninterrupted_weights(corpus, tmp_path):
    # every sample kind (images, objects, contexts, backgrounds, blends) draws from the generator
    s = ToyClipSettings(**TINY_CLIP)
    ref, ref_info = fit_toy_clip(corpus, s, log=_quiet)

    root = tmp_path / "resume"
    resume = toy_resume_state(root, "train_toy_clip", s.to_dict(), corpus.root, CLIP_EVAL_ONLY)
    with pytest.raises(_Killed):
        fit_toy_clip(corpus, s, log=_interrupt_at(5, "kill"), resume=resume)
    assert _saved_step(_state_dir(root) / "state.pt") == 4

    model, info = fit_toy_clip(corpus, s, log=_quiet, resume=resume)
    assert info["resumed_from"] == 4
    _assert_same_weights(ref.state_dict(), model.state_dict())
    assert info["loss_curve"] == ref_info["loss_curve"]


# ------------------------------------------------------------------------------- backbone


def _train_backbone(corpus_dir: Path, out: Path, s: ToyBackboneSettings, resume_root=None,
                    log=_quiet) -> dict:
    return train_toy_backbone(corpus_dir, out, settings=s, log=log, evaluate=False,
                              resume_root=resume_root)


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("truncate", [False, True])
def test_toy_backbone_resumes_to_the_uninterrupted_weights(corpus_dir, tmp_path, truncate):
    """Through train_toy_backbone (what the rule calls): the state folder is removed once the
    weights are written. A current state cut short (a disk that filled up while saving) is
    skipped for the previous one: more steps are redone, the weights are the same."""
    s = ToyBackboneSettings(**TINY_BACKBONE)
    _train_backbone(corpus_dir, tmp_path / "ref.pth", s)

    root, out = tmp_path / "resume", tmp_path / "run.pth"
    with pytest.raises(_Killed):
        _train_backbone(corpus_dir, out, s, root, log=_interrupt_at(5, "kill"))
    assert not out.exists()
    state = _state_dir(root) / "state.pt"
    assert _saved_step(state) == 4 and _saved_step(previous_path(state)) == 2
    if truncate:
        truncate_file(state, keep=0.5)

    m = _train_backbone(corpus_dir, out, s, root)
    assert m["training"]["resumed_from"] == (2 if truncate else 4)
    _assert_same_weights(_load(tmp_path / "ref.pth"), _load(out))
    assert root.is_dir() and not any(root.iterdir())  # cleared once the outputs are written


def test_time_guard_saves_the_state_before_failing(corpus_dir, tmp_path, monkeypatch):
    s = ToyBackboneSettings(**dict(TINY_BACKBONE, checkpoint_every=0))
    _train_backbone(corpus_dir, tmp_path / "ref.pth", s)

    real = toy_resume.check_time_guard

    def guard_at_step_3(elapsed_minutes, max_minutes, *, step, **kw):
        # as if step 3 started past max_minutes
        real(1.0 if step == 3 else 0.0, 0.5, step=step, **kw)

    root, out = tmp_path / "resume", tmp_path / "run.pth"
    with monkeypatch.context() as m:
        m.setattr(toy_resume, "check_time_guard", guard_at_step_3)
        with pytest.raises(TimeGuardExceeded, match=r"models\.toy\.backbone\.max_minutes.*step 3"):
            _train_backbone(corpus_dir, out, s, root)
    assert not out.exists()  # still no weights from fewer steps
    assert _saved_step(_state_dir(root) / "state.pt") == 3

    # rerun with a larger guard (result-neutral: the same state is found)
    m2 = _train_backbone(corpus_dir, out, ToyBackboneSettings(**dict(TINY_BACKBONE,
                                                                     checkpoint_every=0,
                                                                     max_minutes=120.0)), root)
    assert m2["training"]["resumed_from"] == 3
    _assert_same_weights(_load(tmp_path / "ref.pth"), _load(out))


# ------------------------------------------------------------------------------- the hash


def test_only_result_relevant_settings_and_the_corpus_key_the_state(corpus_dir, tmp_path):
    def key(corpus: Path = corpus_dir, **changes) -> str:
        s = ToyVqaSettings(**dict(TINY_VQA, **changes))
        return toy_resume_state(tmp_path, "train_toy_vqa", s.to_dict(), corpus,
                                VQA_EVAL_ONLY).hash

    base = key()
    # what cannot change the weights: the guard, logging, checkpointing, evaluation
    assert key(max_minutes=1.0, log_every=7, checkpoint_every=0, num_beams=1,
               eval_max_questions=5) == base
    # what can: optimisation, data, threads (floating-point reduction order), the corpus
    assert key(lr=1e-3) != base
    assert key(group_repeats={}) != base
    assert key(threads=2) != base
    other = tmp_path / "corpus2"
    generate_vlp_corpus(other, VlpCorpusSpec(n_images=12, image_size=32, heldout_fraction=0.25,
                                             render_min_size=64, render_max_size=64))
    assert key(corpus=other) != base
    assert toy_resume_state(None, "train_toy_vqa", {}, corpus_dir) is None


# ------------------------------------------------------------------------------- the helper


def _noisy_loop(resume, steps: int, every: int, kill_at: int | None = None) -> torch.nn.Module:
    """A loop like the trainers', drawing from every RNG a loop might use: dropout (torch's
    global RNG), numpy's and Python's global RNGs, and a seeded generator."""
    import random

    import numpy as np

    from qaclims.vlp.toy_resume import LoopCheckpoint

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    ckpt = LoopCheckpoint(resume, every, modules={"net": net}, optimizer=opt, generator=gen,
                          total_steps=steps, what="noisy loop", log_fn=_quiet)
    start, loop = ckpt.restore()
    losses = list(loop.get("losses", []))
    with ckpt.watch_sigterm():
        for step in range(start, steps):
            x = torch.randn(8, 4, generator=gen) + float(np.random.rand()) + random.random()
            loss = net(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if step + 1 == kill_at:
                raise _Killed(step + 1)
            ckpt.step_done(step + 1, lambda: {"losses": losses})
    return net


def test_loop_checkpoint_restores_the_global_rngs(tmp_path):
    ref = _noisy_loop(None, 6, 2)
    resume = toy_resume_state(tmp_path, "noisy", {"seed": 0}, tmp_path / "none")
    with pytest.raises(_Killed):
        _noisy_loop(resume, 6, 2, kill_at=5)
    torch.manual_seed(123)  # the rerun's process starts elsewhere
    _assert_same_weights(ref.state_dict(), _noisy_loop(resume, 6, 2).state_dict())
