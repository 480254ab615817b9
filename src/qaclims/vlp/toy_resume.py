"""Resumable state of the toy trainers (``train_toy_vqa``, ``train_toy_clip``,
``train_toy_backbone``), so that a job killed by the cluster (preemption, time limit) continues
instead of starting over.

The scheme is the CAM stages' (:class:`qaclims.cam.checkpoint.ResumeState`): the state lives in
``<resume_root>/<hash>/state.pt``, outside the declared outputs, ``hash`` covering the settings
that decide the weights and the corpus files' contents, so changed settings never resume from a
stale state; the previous state is kept as ``state.pt.prev`` and read when the newest one is not;
the folder is removed once the job's outputs are written.

A trainer saves its whole loop state every ``checkpoint_every`` steps, after the step during
which SIGTERM arrived (then raises :class:`~qaclims.cam.train_cam.TrainingPreempted`) and before
its ``max_minutes`` guard raises :class:`~qaclims.determinism.TimeGuardExceeded`: the model(s),
the optimizer, the trainer's seeded generator, its sampler's permutations and cursors, the
global torch / numpy / Python RNGs (dropout draws from torch's), the step and the losses so far.
A rerun builds everything exactly as a fresh run does, then overwrites it with the saved state,
so it goes on bit for bit: the step count alone decides the weights, however often the job was
interrupted. The time guard counts the minutes of the current attempt.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from qaclims.cam.checkpoint import ResumeState
from qaclims.determinism import TimeGuardExceeded, check_time_guard

PathLike = str | os.PathLike[str]
LoopState = Mapping[str, Any]

log = logging.getLogger(__name__)

#: Settings of every toy trainer that do not change the weights: left out of the resume hash, so
#: raising the time guard (what TimeGuardExceeded asks for) or logging more often resumes.
#: Unlike the CAM stages' list, ``threads`` is not here: the toy trainers always train with it,
#: and the weights depend on it (floating-point reduction order).
RESULT_NEUTRAL = ("log_every", "checkpoint_every", "max_minutes")


def toy_resume_state(resume_root: PathLike | None, stage: str, settings: Mapping[str, Any],
                     corpus_dir: PathLike, neutral: Iterable[str] = ()) -> ResumeState | None:
    """The resume state of one toy training (None when ``resume_root`` is None), keyed by
    ``stage``, ``settings`` less :data:`RESULT_NEUTRAL` and ``neutral`` (e.g. evaluation-only
    keys), and the SHA-256 of every file of the corpus."""
    if resume_root is None:
        return None
    from qaclims.cam.train_cam import input_files

    skip = set(RESULT_NEUTRAL) | set(neutral)
    params = {"stage": stage, **{k: v for k, v in settings.items() if k not in skip}}
    return ResumeState(resume_root, params, input_files(corpus_dir))


class LoopCheckpoint:
    """Saves and restores one toy training loop (see the module doc).

    ``modules``: every module whose weights or buffers the loop changes (a training-only head
    too), by name; ``generator``: the trainer's seeded ``torch.Generator``. The loop-specific
    rest (sampler state, losses) is a dict of tensors and plain values the trainer hands in
    (``loop_state``) and gets back from :meth:`restore`. With ``resume=None`` nothing is saved
    and SIGTERM keeps its default action (there is no state to save first).
    """

    def __init__(self, resume: ResumeState | None, every: int, *, modules: Mapping[str, Any],
                 optimizer: Any, generator: Any, total_steps: int, what: str,
                 log_fn: Callable[[str], None] | None = None) -> None:
        if int(every) < 0:
            raise ValueError(f"checkpoint_every: expected >= 0 steps, got {every!r}")
        self.resume = resume
        self.every = int(every)
        self.modules = dict(modules)
        self.optimizer = optimizer
        self.generator = generator
        self.total_steps = int(total_steps)
        self.what = what
        self.log = log_fn or log.info
        self.saved_step = 0
        self._stop = [False]

    def restore(self) -> tuple[int, dict[str, Any]]:
        """Load the newest readable saved state into the modules, optimizer, generator and global
        RNGs: ``(steps already done, the loop state saved with them)``; ``(0, {})`` when none.
        Call it after everything the loop uses is built, right before the first step."""
        from qaclims.torch_io import set_rng_state

        state = self.resume.load() if self.resume is not None else None
        if state is None:
            return 0, {}
        step = int(state["step"])
        if step > self.total_steps:  # the hash covers max_steps: a state from another run
            raise ValueError(f"{self.resume.path}: saved at step {step}, past the "
                             f"{self.total_steps} steps of this run; delete {self.resume.dir}")
        saved = state["modules"]
        if set(saved) != set(self.modules):
            raise ValueError(f"{self.resume.path}: holds modules {sorted(saved)}, this run has "
                             f"{sorted(self.modules)}; delete {self.resume.dir}")
        for name, module in self.modules.items():
            module.load_state_dict(saved[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        self.saved_step = step
        self.log(f"{self.what}: resumed at step {step}/{self.total_steps} from {self.resume.dir}")
        return step, dict(state["loop"])

    def save(self, step: int, loop_state: LoopState) -> None:
        """Save the state after ``step`` steps (no-op without a resume folder)."""
        from qaclims.torch_io import rng_state

        if self.resume is None:
            return
        self.resume.save({
            "step": int(step),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "loop": dict(loop_state),
        })
        self.saved_step = int(step)
        self.log(f"{self.what}: saved resumable state at step {step} ({self.resume.path})")

    @contextlib.contextmanager
    def watch_sigterm(self) -> Iterator[None]:
        """Within it, SIGTERM (SLURM's warning before a kill) only sets a flag that
        :meth:`step_done` acts on: the step in progress finishes, then the state is saved."""
        from qaclims.cam.train_cam import sigterm_flag

        if self.resume is None:
            yield
            return
        with sigterm_flag() as flag:
            self._stop = flag
            try:
                yield
            finally:
                self._stop = [False]

    def check_time(self, step: int, loop_state: Callable[[], LoopState], *,
                   elapsed_minutes: float, max_minutes: float, key: str) -> None:
        """The ``max_minutes`` guard at the start of step ``step``: past it, save the state
        (when there is something new to save) and raise :class:`TimeGuardExceeded`."""
        try:
            check_time_guard(elapsed_minutes, max_minutes, what=self.what, step=step,
                             max_steps=self.total_steps, key=key)
        except TimeGuardExceeded:
            if step > self.saved_step:
                self.save(step, loop_state())
            raise

    def step_done(self, done: int, loop_state: Callable[[], LoopState]) -> None:
        """After step ``done`` (1-based): save every ``every`` steps (not after the last: the
        model is written next) or when SIGTERM arrived, then raise TrainingPreempted for it."""
        from qaclims.cam.train_cam import TrainingPreempted

        preempted = self._stop[0]
        due = self.every > 0 and done % self.every == 0 and done < self.total_steps
        if preempted or due:
            self.save(done, loop_state())
        if preempted:
            raise TrainingPreempted(f"{self.what}: SIGTERM at step {done}: state saved, rerun "
                                    "to resume")


__all__ = ["RESULT_NEUTRAL", "LoopCheckpoint", "toy_resume_state"]
