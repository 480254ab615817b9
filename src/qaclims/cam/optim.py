"""Poly-decay SGD as the authors train every network (baseline CAM, RITC, IRN).

``lr_t = lr_0 * (1 - t / max_step) ** power`` is set on every parameter group (each from its own
initial lr) just before step ``t`` (t = 0, 1, ...); from ``t = max_step`` on the lr stays where it
was (the authors' optimiser stops updating it rather than failing).

The momentum quirk (method.md section 5, discrepancy 9): the authors' ``PolyOptimizer`` calls
``SGD.__init__(params, lr, weight_decay)`` positionally, so SGD receives the weight-decay value
(1e-4) as its *momentum*, and the argument they name ``momentum=0.9`` is used as the poly power.
Their networks were therefore trained with SGD momentum 1e-4 (practically none). This module makes
both values explicit: ``power`` (default 0.9) and ``momentum`` (default
:data:`AUTHORS_MOMENTUM` = 1e-4, which reproduces their runs). Set ``momentum=0.9`` for what
they presumably meant. Weight decay comes from the parameter groups (1e-4 in every stage) or the
``weight_decay`` argument for groups that do not set it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

AUTHORS_MOMENTUM = 1e-4
"""The SGD momentum the authors' code actually ran with (their weight-decay value, see above)."""

_INITIAL_LR = "poly_initial_lr"


def poly_lr(lr0: float, step: int, max_step: int, power: float = 0.9) -> float:
    """The learning rate that :class:`PolyOptimizer` uses for step ``step`` (0-based)."""
    step = min(step, max_step - 1)
    return lr0 * (1.0 - step / max_step) ** power


class PolyOptimizer(torch.optim.SGD):
    """SGD whose per-group learning rates decay as ``(1 - t/max_step) ** power``.

    ``global_step`` counts the steps taken; it is saved in ``state_dict()`` so a resumed run
    continues the schedule.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        max_step: int,
        weight_decay: float = 1e-4,
        power: float = 0.9,
        momentum: float = AUTHORS_MOMENTUM,
    ) -> None:
        if max_step <= 0:
            raise ValueError(f"max_step must be positive, got {max_step}")
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.max_step = int(max_step)
        self.power = float(power)
        self.global_step = 0
        for group in self.param_groups:
            group.setdefault(_INITIAL_LR, group["lr"])

    def current_lrs(self) -> list[float]:
        return [g["lr"] for g in self.param_groups]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if self.global_step < self.max_step:
            mult = (1.0 - self.global_step / self.max_step) ** self.power
            for group in self.param_groups:
                group["lr"] = group[_INITIAL_LR] * mult
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["poly"] = {"global_step": self.global_step, "max_step": self.max_step,
                         "power": self.power}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        poly = state_dict.pop("poly", None)
        super().load_state_dict(state_dict)
        if poly is not None:
            self.global_step = int(poly["global_step"])
            self.max_step = int(poly["max_step"])
            self.power = float(poly["power"])
