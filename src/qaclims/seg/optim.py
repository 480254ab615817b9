"""DeepLab optimiser: caffe-style lr multipliers and a step-wise poly schedule (method.md 10).

Parameter groups (``get_params`` in the authors' ``main_v2.py``, the caffe ``lr_mult`` /
``decay_mult`` of DeepLab's train.prototxt):

====== ============================== ============ ==============
group  parameters                     lr           weight decay
====== ============================== ============ ==============
1x     every trunk convolution weight ``lr``       ``weight_decay``
10x    ASPP weights                   ``10 * lr``  ``weight_decay``
20x    ASPP biases                    ``20 * lr``  0
====== ============================== ============ ==============

BatchNorm parameters are frozen and in no group. SGD with momentum 0.9 (here the value the
authors meant is the value SGD gets; compare the CAM stages' momentum quirk).

Schedule (deeplab-pytorch ``PolynomialLR(step_size=LR_DECAY)``, stepped once per iteration):
the lr of 0-based iteration ``t`` is ``lr0 * (1 - k / max_iter) ** power`` with
``k = step_size * floor(t / step_size)``, i.e. recomputed every ``step_size`` (10) iterations and
constant in between. It is a pure function of ``t``, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qaclims.seg.networks import unwrap

_BASE_LR = "base_lr"


def deeplab_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 5e-4,
    aspp_weight_lr_mult: float = 10.0,
    aspp_bias_lr_mult: float = 20.0,
) -> list[dict[str, Any]]:
    """The three groups of the table above for an MSC DeepLab (DDP-wrapped or not).

    Raises if a trainable parameter would land in no group or in two (a layer this function does
    not know about must not train silently at the wrong rate, or not at all).
    """
    base = unwrap(model).base
    convs = [m.weight for m in base.backbone_convs() if m.weight.requires_grad]
    convs += [m.bias for m in base.backbone_convs() if m.bias is not None and m.bias.requires_grad]
    aspp_w = [c.weight for c in base.aspp.children()]
    aspp_b = [c.bias for c in base.aspp.children()]
    groups = [
        {"name": "backbone", "params": convs, "lr": lr, "weight_decay": weight_decay},
        {"name": "aspp_weight", "params": aspp_w, "lr": aspp_weight_lr_mult * lr,
         "weight_decay": weight_decay},
        {"name": "aspp_bias", "params": aspp_b, "lr": aspp_bias_lr_mult * lr,
         "weight_decay": 0.0},
    ]
    grouped = [id(p) for g in groups for p in g["params"]]
    if len(grouped) != len(set(grouped)):
        raise RuntimeError("a parameter is in two optimiser groups")
    trainable = {id(p): n for n, p in base.named_parameters() if p.requires_grad}
    stray = sorted(n for i, n in trainable.items() if i not in set(grouped))
    if stray:
        raise RuntimeError(f"trainable parameters in no optimiser group: {stray}")
    for g in groups:
        g[_BASE_LR] = g["lr"]
    return groups


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9,
                   weight_decay: float = 5e-4, aspp_weight_lr_mult: float = 10.0,
                   aspp_bias_lr_mult: float = 20.0) -> torch.optim.SGD:
    """SGD over :func:`deeplab_param_groups`; each group remembers its base lr."""
    groups = deeplab_param_groups(model, lr, weight_decay, aspp_weight_lr_mult,
                                  aspp_bias_lr_mult)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = 0.9,
            step_size: int = 10) -> float:
    """The lr of 0-based ``iteration`` under the step-wise poly schedule (module doc)."""
    if max_iter <= 0 or step_size <= 0:
        raise ValueError(f"max_iter and step_size must be positive, got {max_iter}, {step_size}")
    k = step_size * (int(iteration) // step_size)
    if k > max_iter:  # deeplab-pytorch stops updating past iter_max
        k = step_size * (max_iter // step_size)
    return base_lr * math.pow(max(0.0, 1.0 - k / max_iter), power)


def set_poly_lr(optimizer: torch.optim.Optimizer, iteration: int, max_iter: int,
                power: float = 0.9, step_size: int = 10) -> list[float]:
    """Set every group's lr for ``iteration``; returns the lrs."""
    lrs = []
    for g in optimizer.param_groups:
        g["lr"] = poly_lr(g.get(_BASE_LR, g.get("initial_lr", g["lr"])), iteration, max_iter,
                          power, step_size)
        lrs.append(g["lr"])
    return lrs
