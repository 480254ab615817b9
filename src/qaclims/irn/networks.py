"""IRNet's edge + displacement network on a frozen ResNet (method.md 9.2, IRN ``resnet50_irn``).

The backbone is a torchvision ResNet (resnet18/34/50/101, e.g. from
``qaclims.vlp.backbones.load_resnet``) rebuilt like the CAM trunk: strides (2, 2, 2, 1), every
BatchNorm a :class:`~qaclims.cam.networks.FixedBatchNorm`. It is **frozen**: no parameter needs a
gradient, it stays in eval mode whatever ``train()`` is called with, and it runs under
``torch.no_grad()`` (the authors call ``.detach()`` on each stage's output: the same values and
gradients, without keeping the backbone's activations for a backward pass).

Five feature levels, as in IRN (the CAM trunk groups them differently):

====== ======================================= ====== ===================
level  modules                                 stride channels (r18 / r50)
====== ======================================= ====== ===================
x1     conv1, bn1, relu, maxpool               4      64 / 64
x2     layer1                                  4      64 / 256
x3     layer2                                  8      128 / 512
x4     layer3                                  16     256 / 1024
x5     layer4 (stride 1)                       16     512 / 2048
====== ======================================= ====== ===================

* edge branch: per level 1x1 conv -> 32 channels + GroupNorm(4) (+ bilinear x2 / x4 / x4 up for
  x3 / x4 / x5) + ReLU, cropped to the stride-4 size, concatenated (160) -> 1x1 conv -> 1 channel
  of boundary *logits*;
* displacement branch: 1x1 convs + GroupNorm to 64 / 128 / 256 / 256 / 256 channels (x4 and x5
  up x2 to stride 8), fusion of levels 3-5 (768 -> 256, up x2 to stride 4), then levels 1, 2 and
  the fusion (448 -> 256 -> 2) and a :class:`MeanShift`.

Input channel counts are read from the backbone, so any torchvision ResNet works; the output
layer names follow the authors' (``stage1..5``, ``fc_edge1..6``, ``fc_dp1..7``), so their
``res50_irn.pth`` loads after :func:`from_authors_state_dict`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from qaclims.cam.networks import _replace_batchnorm, _set_output_stride

__all__ = ["EdgeDisplacementNet", "MeanShift", "from_authors_state_dict"]

_PREFIXES = ("stage1.", "stage2.", "stage3.", "stage4.", "stage5.", "fc_edge", "fc_dp")


class MeanShift(nn.Module):
    """Subtracts ``running_mean`` from the displacement field at evaluation time.

    In training mode the input passes through unchanged and nothing is tracked: the buffer stays
    as it is (zero for a new network) until :meth:`EdgeDisplacementNet.set_mean_shift` sets it
    to the mean displacement over the training images after training, as the authors' current
    ``train_irn`` does. (IRN's first release used a BatchNorm here that tracked a momentum
    average during training; its later code, which QA-CLIMS copies, replaced it by this.)
    Because the buffer is zero until then, the displacements from which that mean is computed
    are the raw ones, in either mode.
    """

    def __init__(self, num_features: int = 2) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


def _block_out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    conv = getattr(last, "conv3", None) or last.conv2  # Bottleneck / BasicBlock
    return int(conv.out_channels)


def _gn_block(c_in: int, c_out: int, groups: int, up: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, bias=False), nn.GroupNorm(groups, c_out)]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class EdgeDisplacementNet(nn.Module):
    """Frozen ResNet + IRN edge and displacement branches.

    ``forward(x)`` with a normalised image batch ``[N, 3, H, W]`` returns
    ``(edge_logits [N, 1, h, w], displacement [N, 2, h, w])`` at stride 4,
    ``h = ceil(H / 4)``, ``w = ceil(W / 4)``. Apply a sigmoid to get boundary probabilities.
    """

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        if not all(hasattr(resnet, a) for a in ("conv1", "bn1", "layer1", "layer4")):
            raise TypeError(f"expected a torchvision ResNet, got {type(resnet).__name__}")
        _set_output_stride(resnet, 16)
        _replace_batchnorm(resnet, fixed=True)
        c1 = int(resnet.conv1.out_channels)
        c2, c3, c4, c5 = (_block_out_channels(getattr(resnet, f"layer{i}")) for i in range(1, 5))

        self.stage1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stage2 = nn.Sequential(resnet.layer1)
        self.stage3 = nn.Sequential(resnet.layer2)
        self.stage4 = nn.Sequential(resnet.layer3)
        self.stage5 = nn.Sequential(resnet.layer4)
        for stage in self.backbone_stages():
            for p in stage.parameters():
                p.requires_grad_(False)

        # edge branch
        self.fc_edge1 = _gn_block(c1, 32, 4)
        self.fc_edge2 = _gn_block(c2, 32, 4)
        self.fc_edge3 = _gn_block(c3, 32, 4, up=2)
        self.fc_edge4 = _gn_block(c4, 32, 4, up=4)
        self.fc_edge5 = _gn_block(c5, 32, 4, up=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)

        # displacement branch
        self.fc_dp1 = _gn_block(c1, 64, 8)
        self.fc_dp2 = _gn_block(c2, 128, 16)
        self.fc_dp3 = _gn_block(c3, 256, 16)
        self.fc_dp4 = _gn_block(c4, 256, 16, up=2)
        self.fc_dp5 = _gn_block(c5, 256, 16, up=2)
        self.fc_dp6 = _gn_block(768, 256, 16, up=2)
        self.fc_dp7 = nn.Sequential(
            nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 2, 1, bias=False), MeanShift(2),
        )
        self.train(True)

    def backbone_stages(self) -> list[nn.Module]:
        # a plain list, not a ModuleList: registering the stages twice would duplicate their
        # keys in the state dict
        return [self.stage1, self.stage2, self.stage3, self.stage4, self.stage5]

    @property
    def mean_shift(self) -> MeanShift:
        return self.fc_dp7[-1]

    def edge_modules(self) -> list[nn.Module]:
        return [self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4, self.fc_edge5,
                self.fc_edge6]

    def displacement_modules(self) -> list[nn.Module]:
        return [self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5, self.fc_dp6,
                self.fc_dp7]

    def train(self, mode: bool = True) -> EdgeDisplacementNet:
        super().train(mode)
        for stage in self.backbone_stages():
            stage.eval()  # frozen: FixedBatchNorm anyway, but keep the contract explicit
        return self

    def backbone_features(self, x: Tensor) -> tuple[Tensor, ...]:
        """The five feature levels (no gradient)."""
        with torch.no_grad():
            x1 = self.stage1(x)
            x2 = self.stage2(x1)
            x3 = self.stage3(x2)
            x4 = self.stage4(x3)
            x5 = self.stage5(x4)
        return x1, x2, x3, x4, x5

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2, x3, x4, x5 = self.backbone_features(x)

        e2 = self.fc_edge2(x2)
        h, w = e2.shape[2:]
        edge = self.fc_edge6(torch.cat([
            self.fc_edge1(x1), e2,
            self.fc_edge3(x3)[..., :h, :w],
            self.fc_edge4(x4)[..., :h, :w],
            self.fc_edge5(x5)[..., :h, :w],
        ], dim=1))

        d3 = self.fc_dp3(x3)
        h8, w8 = d3.shape[2:]
        fused = self.fc_dp6(torch.cat([
            d3, self.fc_dp4(x4)[..., :h8, :w8], self.fc_dp5(x5)[..., :h8, :w8],
        ], dim=1))[..., :h, :w]
        disp = self.fc_dp7(torch.cat([self.fc_dp1(x1), self.fc_dp2(x2), fused], dim=1))
        return edge, disp

    def edge_parameters(self) -> Iterator[nn.Parameter]:
        for m in self.edge_modules():
            yield from m.parameters()

    def displacement_parameters(self) -> Iterator[nn.Parameter]:
        for m in self.displacement_modules():
            yield from m.parameters()

    def trainable_parameter_groups(
        self, lr: float = 0.1, weight_decay: float = 1e-4, displacement_lr_mult: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Optimiser groups: edge branch at ``lr``, displacement branch at
        ``displacement_lr_mult * lr`` (authors: 0.1 and 1.0), both with ``weight_decay``."""
        return [
            {"params": list(self.edge_parameters()), "lr": lr, "weight_decay": weight_decay},
            {"params": list(self.displacement_parameters()), "lr": displacement_lr_mult * lr,
             "weight_decay": weight_decay},
        ]

    @torch.no_grad()
    def set_mean_shift(self, mean_displacement: Tensor) -> None:
        """Set the displacement mean subtracted at evaluation (2 values: dy, dx channels)."""
        mean = torch.as_tensor(mean_displacement, dtype=self.mean_shift.running_mean.dtype)
        if mean.shape != self.mean_shift.running_mean.shape:
            raise ValueError(f"mean displacement of shape {tuple(mean.shape)}, expected "
                             f"{tuple(self.mean_shift.running_mean.shape)}")
        self.mean_shift.running_mean.copy_(mean)


def from_authors_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of an authors' IRN checkpoint (``res50_irn.pth``) that this network uses.

    Their network registers modules under several names (``resnet50.*``, ``backbone.*``,
    ``edge_layers.*``, ``dp_layers.*``, ``mean_shift.*`` = ``fc_dp7.4.*``) and the training
    wrapper adds path-index buffers;
    only ``stage1..5.*``, ``fc_edge*`` and ``fc_dp*`` are kept (``module.`` prefixes removed).
    Load the result with ``strict=True`` into an :class:`EdgeDisplacementNet` on a resnet50.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        k = key.removeprefix("module.")
        if k.startswith(_PREFIXES):
            out[k] = value
    return out

