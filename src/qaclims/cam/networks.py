"""ResNet CAM networks: the baseline classifier (stage D0) and the RITC network (stage D).

Both networks take a torchvision ``ResNet`` (any of resnet18/34/50/101, built or loaded by
``qaclims.vlp.backbones.load_resnet``) and rebuild it in place (the module passed in is owned
by the network afterwards):

* output stride 16 (the authors'): the first block of ``layer4`` gets stride 1 (its strided
  3x3/1x1 conv and its downsample conv), so the strides of conv1 / layer2 / layer3 / layer4 are
  (2, 2, 2, 1); with the stride-2 max-pool that is 2*2*2*2 = 16 (a 512 crop gives 32x32
  features). ``output_stride=8`` also un-strides ``layer3`` the same way (no dilation, as the
  authors' stride-16 trunk has none): for images a quarter of VOC's size (the demo's 128-160 px),
  where stride 16 leaves 8x8 maps of which a small object fills one mixed cell;
* ``fc`` and ``avgpool`` are dropped; the trunk is ``stage1 = (conv1, bn1, relu, maxpool,
  layer1)``, ``stage2 = (layer2,)``, ``stage3 = (layer3,)``, ``stage4 = (layer4,)`` followed by a
  bias-free 1x1 conv ``classifier`` (C -> K).

The module names follow the authors' IRN/CLIMS layout, so a state dict saved by one network loads
strictly into the other, and a checkpoint saved by the authors' code (``res50_cam.pth``,
``res50_qa_clims.pth``) loads after :func:`from_authors_state_dict` drops its alias keys.

conv1 and bn1 are frozen (``requires_grad=False``) in both networks, as in the authors' code.
The two differ in their normalisation layers:

* :class:`CamNet` uses :class:`FixedBatchNorm` everywhere: running statistics always, in
  training too; the affine parameters stay trainable;
* :class:`RitcNet` uses ordinary ``nn.BatchNorm2d`` (batch statistics in training mode, running
  statistics updated), convertible with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_STAGE_PREFIXES = ("stage1.", "stage2.", "stage3.", "stage4.", "classifier.")


class FixedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics.

    Training mode changes nothing: the running mean/var are never updated and never replaced by
    batch statistics (a batch of a few 512 crops gives poor statistics). ``weight`` and ``bias``
    remain ordinary trainable parameters. State-dict keys are those of ``nn.BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=False, momentum=0.0, eps=self.eps,
        )


def _replace_batchnorm(module: nn.Module, fixed: bool) -> None:
    """Swap every BatchNorm2d below ``module`` for FixedBatchNorm (``fixed``) or back, in place.

    Parameters and buffers are copied, and ``requires_grad`` is preserved.
    """
    target = FixedBatchNorm if fixed else nn.BatchNorm2d
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is not target:
            new = target(
                child.num_features, eps=child.eps, momentum=child.momentum,
                affine=child.affine, track_running_stats=child.track_running_stats,
            )
            state = child.state_dict()
            ref = next(iter(state.values()), None)
            if ref is not None:
                new.to(device=ref.device)
            new.load_state_dict(state)
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, new)
        else:
            _replace_batchnorm(child, fixed)


OUTPUT_STRIDES = (8, 16)


def _set_output_stride(resnet: nn.Module, output_stride: int) -> None:
    """Give layer4's (and for stride 8 layer3's) first block stride 1 (torchvision puts the
    stride in the 3x3 conv of bottleneck blocks, in conv1 of basic blocks, and in
    ``downsample[0]`` of both)."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    layers = ("layer4",) if output_stride == 16 else ("layer3", "layer4")
    for name in layers:
        n_changed = 0
        for m in getattr(resnet, name)[0].modules():
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                m.stride = (1, 1)
                n_changed += 1
        if n_changed == 0:
            raise ValueError(f"{name}[0] has no stride-2 convolution: not a standard "
                             f"torchvision ResNet")


class _ResNetCamBase(nn.Module):
    def __init__(self, resnet: nn.Module, n_classes: int, fixed_bn: bool,
                 output_stride: int = 16) -> None:
        super().__init__()
        if not all(hasattr(resnet, a) for a in ("conv1", "bn1", "layer1", "layer4", "fc")):
            raise TypeError(f"expected a torchvision ResNet, got {type(resnet).__name__}")
        _set_output_stride(resnet, output_stride)
        self.output_stride = output_stride
        _replace_batchnorm(resnet, fixed=fixed_bn)
        self.n_classes = n_classes
        self.out_channels = int(resnet.fc.in_features)
        self.stage1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                    resnet.layer1)
        self.stage2 = nn.Sequential(resnet.layer2)
        self.stage3 = nn.Sequential(resnet.layer3)
        self.stage4 = nn.Sequential(resnet.layer4)
        self.classifier = nn.Conv2d(self.out_channels, n_classes, 1, bias=False)
        for p in (*self.stage1[0].parameters(), *self.stage1[1].parameters()):
            p.requires_grad_(False)

    def features(self, x: Tensor) -> Tensor:
        """Feature map [N, C, ceil(H/s), ceil(W/s)] at the output stride s (16 or 8)."""
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))

    def cam(self, x: Tensor) -> Tensor:
        """Inference CAM: ReLU of the raw per-pixel class scores [N, K, h, w] (no sigmoid)."""
        return F.relu(F.conv2d(self.features(x), self.classifier.weight))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            yield from stage.parameters()

    def trainable_parameter_groups(
        self, lr: float, weight_decay: float = 1e-4, classifier_lr_mult: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Optimiser groups: the backbone at ``lr``, the classifier at ``classifier_lr_mult * lr``,
        both with ``weight_decay``. Frozen parameters (conv1, bn1) are left out."""
        return [
            {"params": [p for p in self.backbone_parameters() if p.requires_grad],
             "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in self.classifier.parameters() if p.requires_grad],
             "lr": classifier_lr_mult * lr, "weight_decay": weight_decay},
        ]


class CamNet(_ResNetCamBase):
    """Baseline multi-label CAM classifier: trunk -> GAP -> 1x1 conv -> logits [N, K].

    Train with ``F.multilabel_soft_margin_loss(net(x), labels)``.
    """

    def __init__(self, resnet: nn.Module, n_classes: int, output_stride: int = 16) -> None:
        super().__init__(resnet, n_classes, fixed_bn=True, output_stride=output_stride)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)


class RitcNet(_ResNetCamBase):
    """RITC network: trunk -> 1x1 conv -> sigmoid, the CAM P in [0, 1]^[N, K, h, w].

    Same parameter names as :class:`CamNet` (initialise with ``load_state_dict(cam_net_state,
    strict=True)``). Its BatchNorm layers are ordinary ones: call ``train()`` for batch statistics
    during RITC training and ``eval()`` before exporting CAMs. Inference CAMs come from
    :meth:`cam` (ReLU'd raw scores, no sigmoid), as in the authors' CAM export.
    """

    def __init__(self, resnet: nn.Module, n_classes: int, output_stride: int = 16) -> None:
        super().__init__(resnet, n_classes, fixed_bn=False, output_stride=output_stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.classifier(self.features(x)))


def from_authors_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of a checkpoint saved by the authors' ``Net``/``CLIMS`` that our networks use.

    Their modules are registered under several names (``resnet50.*``, ``stage*``, ``backbone.*``,
    ``newly_added.*``), so each tensor is saved more than once; only ``stage1..4.*`` and
    ``classifier.*`` are kept, which is exactly our state dict. ``module.`` prefixes left by
    DataParallel/DDP are removed.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        k = key.removeprefix("module.")
        if k.startswith(_STAGE_PREFIXES):
            out[k] = value
    return out
