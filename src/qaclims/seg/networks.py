"""DeepLab-v2 (dilated ResNet + ASPP, output stride 8) and its multi-scale wrapper (method.md 10).

The authors train ``DeepLabV2_ResNet101_MSC`` from kazuto1011/deeplab-pytorch. This module builds
the same network on a torchvision ResNet of any depth (resnet18/34/50/101), so the demo can train
a resnet18 on CPU and the real run a resnet101 with the same code:

* **Trunk.** torchvision's ``conv1, bn1, relu, maxpool, layer1..layer4`` (``fc``/``avgpool``
  dropped). ``layer3`` and ``layer4`` get stride 1 and dilation 2 / 4 in *every* block (as
  DeepLab's res4/res5; torchvision's own ``replace_stride_with_dilation`` keeps the old dilation
  in each layer's first block and only handles bottleneck nets), so the output stride is 8.
* **Caffe layout** (``caffe_layout=True``): the details of the caffe ResNet-101 that
  ``deeplabv1_resnet101-imagenet.pth`` was converted from - the stride of ``layer2``'s first
  bottleneck sits in its 1x1 ``conv1`` (torchvision puts it in the 3x3 ``conv2``) and the max-pool
  rounds up (``ceil_mode``). Both change which pixels the pretrained filters see, so they follow
  the weights: :func:`build_deeplab` switches the layout on when it loads a caffe-format file.
* **ASPP.** Four 3x3 convolutions (rates 6/12/18/24, with bias, weights N(0, 0.01), bias 0), one
  per rate, straight to class logits, summed. Module names ``aspp.c0..c3`` as in deeplab-pytorch,
  so a converted DeepLab checkpoint's head loads as it is.
* **Frozen BN.** Every BatchNorm is a :class:`~qaclims.cam.networks.FixedBatchNorm` (running
  statistics in training too) whose affine parameters do not train - the authors' ``freeze_bn()``
  plus leaving BN out of the optimiser.
* **MSC.** :class:`MSC` runs the network at scale 1 and at ``scales`` (0.5, 0.75) of the input
  (bilinear), upsamples the smaller logits to the scale-1 logit size and takes the pixel-wise
  max. Training returns ``[logits@1, logits@0.5, logits@0.75, max]`` (each at its own size but the
  max), evaluation only the max.

Weights: :func:`build_deeplab` takes ``None`` (random), ``"imagenet"`` or a torchvision-format file
(both through :func:`qaclims.vlp.backbones.load_resnet`, checked strictly), or a caffe-format
DeepLab file (kazuto1011 key names, mapped by :func:`map_caffe_state_dict` and loaded with
``strict=False`` semantics: what did not load is logged). A trained model is saved with
:func:`save_deeplab_checkpoint` and rebuilt with :func:`load_deeplab_checkpoint`, which also reads
a plain deeplab-pytorch checkpoint (``checkpoint_30000.pth``) for comparisons with the authors.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaclims.cam.networks import FixedBatchNorm

log = logging.getLogger(__name__)

ASPP_RATES: tuple[int, ...] = (6, 12, 18, 24)
MSC_SCALES: tuple[float, ...] = (0.5, 0.75)
CHECKPOINT_FORMAT = "qaclims.deeplabv2"
CHECKPOINT_VERSION = 1

#: ResNet depth -> blocks per torchvision layer (deeplab-pytorch's ``n_blocks``).
RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}


# -- network ------------------------------------------------------------------------------------
class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling: parallel dilated 3x3 convs to logits, summed."""

    def __init__(self, in_channels: int, n_classes: int, rates: Sequence[int] = ASPP_RATES) -> None:
        super().__init__()
        for i, rate in enumerate(rates):
            conv = nn.Conv2d(in_channels, n_classes, 3, 1, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.constant_(conv.bias, 0.0)
            self.add_module(f"c{i}", conv)

    def forward(self, x: Tensor) -> Tensor:
        return sum(conv(x) for conv in self.children())  # type: ignore[return-value]


def _dilate_layer(layer: nn.Sequential, dilation: int) -> None:
    """Stride 1 everywhere in ``layer`` and ``dilation`` (with matching padding) in every 3x3."""
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation = (dilation, dilation)
                m.padding = (dilation, dilation)


def _freeze_batchnorm(module: nn.Module) -> None:
    """Swap every BatchNorm2d for a FixedBatchNorm with the same state; no gradients for it."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            fixed = FixedBatchNorm(child.num_features, eps=child.eps, affine=child.affine,
                                   track_running_stats=True)
            fixed.load_state_dict(child.state_dict())
            for p in fixed.parameters():
                p.requires_grad_(False)
            setattr(module, name, fixed.to(next(iter(child.state_dict().values())).device))
        else:
            _freeze_batchnorm(child)


class DeepLabV2(nn.Module):
    """Dilated ResNet (output stride 8) + ASPP; logits [N, K+1, ceil(H/8), ceil(W/8)] (about).

    ``resnet`` is a torchvision ResNet (as :func:`qaclims.vlp.backbones.load_resnet` returns); it
    is rebuilt in place and owned by the network. ``n_classes`` counts the background.
    """

    def __init__(self, resnet: nn.Module, n_classes: int, rates: Sequence[int] = ASPP_RATES,
                 caffe_layout: bool = False) -> None:
        super().__init__()
        if not all(hasattr(resnet, a) for a in ("conv1", "bn1", "layer1", "layer4", "fc")):
            raise TypeError(f"expected a torchvision ResNet, got {type(resnet).__name__}")
        self.n_classes = int(n_classes)
        self.rates = tuple(int(r) for r in rates)
        self.caffe_layout = bool(caffe_layout)
        self.bottleneck = hasattr(resnet.layer1[0], "conv3")
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        _dilate_layer(self.layer3, 2)
        _dilate_layer(self.layer4, 4)
        if self.caffe_layout:
            self.maxpool.ceil_mode = True
            if self.bottleneck:  # caffe ResNet strides in the 1x1 "branch2a" conv
                self.layer2[0].conv1.stride = (2, 2)
                self.layer2[0].conv2.stride = (1, 1)
        _freeze_batchnorm(self)
        self.out_channels = int(resnet.fc.in_features)
        self.aspp = ASPP(self.out_channels, self.n_classes, self.rates)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.aspp(x)

    def train(self, mode: bool = True) -> DeepLabV2:
        """Train mode for everything but BatchNorm, which stays in eval mode (frozen BN)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def backbone_convs(self) -> list[nn.Conv2d]:
        """Every convolution of the trunk (the optimiser's 1x group)."""
        return [m for name, m in self.named_modules()
                if isinstance(m, nn.Conv2d) and not name.startswith("aspp")]


class MSC(nn.Module):
    """Multi-scale inputs with pixel-wise max fusion (deeplab-pytorch ``MSC``).

    Training: ``[logits@1.0, logits@s for s in scales, max]``; eval: the max only, at the
    scale-1.0 logit size.
    """

    def __init__(self, base: DeepLabV2, scales: Sequence[float] = MSC_SCALES) -> None:
        super().__init__()
        self.base = base
        self.scales = tuple(float(s) for s in scales)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        logits = self.base(x)
        size = logits.shape[-2:]
        pyramid = [
            self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
            for s in self.scales
        ]
        resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                   for p in pyramid]
        # torch.max (not amax): the gradient goes to one arg-max, as in deeplab-pytorch
        fused = torch.stack([logits, *resized]).max(dim=0).values
        if self.training:
            return [logits, *pyramid, fused]
        return fused


def calibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Set every BatchNorm's running statistics from ``batches`` (then they stay frozen).

    For random initialisation only (the demo, tests): torchvision's fresh BN layers say mean 0 /
    variance 1, so a frozen-BN network passes the un-normalised activations of raw-scale pixels
    (mean-subtracted, not divided by a std) straight through, its logits start in the tens and
    SGD diverges. Here each BN normalises with the statistics of the batch while the forward runs
    (as BN training does) and ends up with the average per-batch mean and variance over
    ``batches``. Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sums: dict[nn.Module, list[Tensor]] = {}

    def hook(m: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = inputs[0]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
        acc = sums.setdefault(m, [torch.zeros_like(mean), torch.zeros_like(var)])
        acc[0] += mean
        acc[1] += var
        return F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)

    handles = [m.register_forward_hook(hook) for m in bns]
    n = 0
    try:
        with torch.no_grad():
            for x in batches:
                (model.base if isinstance(model, MSC) else model)(x)
                n += 1
    finally:
        for h in handles:
            h.remove()
    if n:
        for m, (mean, var) in sums.items():
            m.running_mean.copy_(mean / n)
            m.running_var.copy_(var / n)
    return n


# -- caffe / deeplab-pytorch weights -----------------------------------------------------------
_CAFFE_BLOCK = re.compile(
    r"^layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut|proj)\.(conv|bn)\.(\w+)$")
_CAFFE_STEM = re.compile(r"^layer1\.conv1\.(conv|bn)\.(\w+)$")
_CAFFE_ASPP = re.compile(r"^aspp\.(?:stages\.)?c(\d+)\.(weight|bias)$")
_PART = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3"),
         "shortcut": ("downsample.0", "downsample.1"), "proj": ("downsample.0", "downsample.1")}


def _strip_prefixes(key: str) -> str:
    # DataParallel/DDP ("module."), deeplab-pytorch's MSC ("base."; "scale." before v1.0)
    for prefix in ("module.", "base.", "scale."):
        key = key.removeprefix(prefix)
    return key


def is_caffe_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` uses deeplab-pytorch's (caffe-converted) key names."""
    return any(_CAFFE_STEM.match(_strip_prefixes(k)) or _CAFFE_BLOCK.match(_strip_prefixes(k))
               for k in state)


def map_caffe_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename deeplab-pytorch keys to :class:`DeepLabV2` keys; returns (mapped, not mapped).

    ``layer1.conv1.{conv,bn}`` -> ``conv1``/``bn1``; ``layer{L}.block{B}.{reduce,conv3x3,
    increase}.{conv,bn}`` -> ``layer{L-1}.{B-1}.{conv1/bn1, conv2/bn2, conv3/bn3}``;
    ``shortcut``/``proj`` -> ``downsample.0/1``; ``aspp.[stages.]c{i}`` -> ``aspp.c{i}``.
    Prefixes ``module.``, ``base.``, ``scale.`` are dropped. Anything else (``fc.*`` of the
    ImageNet classifier) is returned in the second list.
    """
    mapped: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        k = _strip_prefixes(key)
        if m := _CAFFE_STEM.match(k):
            target = ("conv1" if m[1] == "conv" else "bn1") + f".{m[2]}"
        elif m := _CAFFE_BLOCK.match(k):
            conv, bn = _PART[m[3]]
            target = f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.{conv if m[4] == 'conv' else bn}.{m[5]}"
        elif m := _CAFFE_ASPP.match(k):
            target = f"aspp.c{m[1]}.{m[2]}"
        else:
            skipped.append(key)
            continue
        if target in mapped:
            raise ValueError(f"two keys map to {target!r} (one of them {key!r})")
        mapped[target] = value
    return mapped, skipped


@dataclass
class LoadReport:
    """What a non-strict load did: keys loaded, model keys left as they were, file keys unused."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def log(self, logger: logging.Logger = log) -> None:
        logger.info("%s: loaded %d tensors", self.source, len(self.loaded))
        for what, keys in (("left at their initialisation", self.missing),
                           ("in the file but not used", self.unused),
                           ("not loaded (shape mismatch)", self.mismatched)):
            if keys:
                logger.warning("%s: %d keys %s: %s", self.source, len(keys), what, _short(keys))


def load_state_non_strict(model: nn.Module, state: Mapping[str, Tensor], source: str
                          ) -> LoadReport:
    """Copy the tensors of ``state`` whose key and shape match into ``model`` (strict=False)."""
    own = model.state_dict()
    report = LoadReport(source)
    usable = {}
    for k, v in state.items():
        if k not in own:
            report.unused.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append(
                f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            usable[k] = v
    report.loaded = sorted(usable)
    report.missing = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)
    return report


def _short(items: Sequence[str], n: int = 8) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _read_state(path: Path) -> dict[str, Tensor]:
    from qaclims.torch_io import safe_load

    state = safe_load(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _bare_resnet(arch: str) -> nn.Module:
    import torchvision

    if arch not in RESNET_BLOCKS:
        raise ValueError(f"unknown DeepLab backbone {arch!r}; one of {sorted(RESNET_BLOCKS)}")
    return getattr(torchvision.models, arch)(weights=None)


# -- construction -------------------------------------------------------------------------------
def build_deeplab(
    arch: str,
    n_classes: int,
    weights: str | os.PathLike[str] | None,
    *,
    caffe_layout: bool | None = None,
    rates: Sequence[int] = ASPP_RATES,
    msc_scales: Sequence[float] = MSC_SCALES,
) -> MSC:
    """``MSC(DeepLabV2(arch))`` initialised from ``weights``; parameters use torch's global RNG.

    ``weights``: ``None`` (random init, logged), ``"imagenet"`` (torchvision's file in the torch
    cache), a torchvision-format file (checked strictly by ``load_resnet``) or a caffe-format
    DeepLab file (kazuto1011 key names; strict=False with a log of what did not load). For the
    last, a ``aspp.*`` head of the right shape is loaded too; the ImageNet ``fc`` is not.
    ``caffe_layout`` defaults to True exactly for caffe-format files (see the module doc).
    """
    from qaclims.vlp.backbones import load_resnet

    if int(n_classes) < 2:
        raise ValueError(f"n_classes must count background + classes (>= 2), got {n_classes}")
    caffe_state: dict[str, Tensor] | None = None
    if weights is not None and str(weights) != "imagenet":
        path = Path(weights)
        if not path.is_file():
            load_resnet(arch, path)  # raises WeightsMissingError with the fetch instructions
        state = _read_state(path)
        if is_caffe_state_dict(state):
            caffe_state = state
    # a caffe file fills the trunk below; anything else loads (checked) through load_resnet
    resnet = (_bare_resnet(arch) if caffe_state is not None
              else load_resnet(arch, weights))  # type: ignore[arg-type]
    layout = (caffe_state is not None) if caffe_layout is None else bool(caffe_layout)
    base = DeepLabV2(resnet, n_classes, rates, caffe_layout=layout)
    if caffe_state is not None:
        mapped, skipped = map_caffe_state_dict(caffe_state)
        report = load_state_non_strict(base, mapped, source=f"{weights} (caffe layout, {arch})")
        report.unused.extend(skipped)
        # num_batches_tracked is bookkeeping that FixedBatchNorm never reads
        report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
        # a trunk tensor of the wrong shape means another depth: refuse rather than half-load
        trunk_mismatch = [k for k in report.mismatched if not k.startswith("aspp.")]
        if trunk_mismatch or not any(k.startswith("layer") for k in report.loaded):
            raise ValueError(f"{weights}: its backbone does not fit a {arch} DeepLab "
                             f"(shape mismatches: {_short(trunk_mismatch) or 'none'}; "
                             f"{len(report.loaded)} tensors fit)")
        report.log()
    return MSC(base, msc_scales)


def unwrap(model: nn.Module) -> MSC:
    """The :class:`MSC` inside a DDP/DataParallel wrapper (or the model itself)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module  # type: ignore[assignment]
    if not isinstance(model, MSC):
        raise TypeError(f"expected an MSC DeepLab model, got {type(model).__name__}")
    return model


def _arch_of(mapped: Mapping[str, Tensor], path: Path) -> str:
    """The bottleneck ResNet whose blocks per layer the mapped keys show."""
    blocks = tuple(
        1 + max((int(k.split(".")[1]) for k in mapped if k.startswith(f"layer{i}.")), default=-1)
        for i in range(1, 5))
    for arch in ("resnet50", "resnet101"):
        if RESNET_BLOCKS[arch] == blocks:
            return arch
    raise ValueError(f"{path}: blocks per layer {blocks} match no ResNet-50/101")


def save_deeplab_checkpoint(model: nn.Module, path: str | os.PathLike[str], arch: str,
                            meta: Mapping[str, Any] | None = None) -> None:
    """Write the trained model, with what is needed to rebuild it, atomically to ``path``."""
    from qaclims.store import atomic_path, save_torch

    msc = unwrap(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "n_classes": msc.base.n_classes,
        "aspp_rates": list(msc.base.rates),
        "msc_scales": list(msc.scales),
        "caffe_layout": msc.base.caffe_layout,
        "state_dict": {k: v.detach().cpu() for k, v in msc.state_dict().items()},
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as tmp:
        save_torch(payload, tmp)


def load_deeplab_checkpoint(path: str | os.PathLike[str],
                            map_location: str | torch.device = "cpu") -> MSC:
    """Rebuild an eval-mode :class:`MSC` from :func:`save_deeplab_checkpoint` output.

    A plain deeplab-pytorch ``DeepLabV2_ResNet101_MSC`` state dict (the authors'
    ``checkpoint_30000.pth``) is accepted too: caffe layout, depth (ResNet-50/101) from the block
    counts, every key must load.
    """
    from qaclims.torch_io import safe_load

    path = Path(path)
    payload = safe_load(path, "DeepLab checkpoint")
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {payload['version']} is newer than "
                             f"this code reads ({CHECKPOINT_VERSION})")
        base = DeepLabV2(_bare_resnet(payload["arch"]), payload["n_classes"],
                         payload["aspp_rates"], caffe_layout=payload["caffe_layout"])
        model = MSC(base, payload["msc_scales"])
        try:
            model.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: state dict does not fit its own header: {err}") from err
    elif isinstance(payload, dict) and is_caffe_state_dict(payload):
        mapped, skipped = map_caffe_state_dict(payload)
        if "aspp.c0.weight" not in mapped:
            raise ValueError(f"{path}: deeplab-pytorch state dict without an ASPP head")
        n_classes = int(mapped["aspp.c0.weight"].shape[0])
        rates = ASPP_RATES[: sum(1 for k in mapped if k.endswith(".weight")
                                 and k.startswith("aspp."))]
        base = DeepLabV2(_bare_resnet(_arch_of(mapped, path)), n_classes, rates,
                         caffe_layout=True)
        report = load_state_non_strict(base, mapped, source=str(path))
        missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
        if missing or report.mismatched:
            raise ValueError(f"{path}: not a complete ResNet-101 DeepLab-v2: missing "
                             f"{_short(missing)}; mismatched {_short(report.mismatched)}")
        if skipped:
            log.warning("%s: keys not used: %s", path, _short(skipped))
        model = MSC(base, MSC_SCALES)
    else:
        raise ValueError(f"{path}: neither a qaclims DeepLab checkpoint nor a deeplab-pytorch "
                         "state dict")
    return model.to(map_location).eval()
