"""CAM networks: output stride, frozen layers, FixedBatchNorm, RitcNet <-> CamNet state dicts."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from qaclims.cam.networks import CamNet, FixedBatchNorm, RitcNet, from_authors_state_dict


def _resnet(arch: str = "resnet18") -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None)


@pytest.fixture(scope="module")
def cam_net() -> CamNet:
    return CamNet(_resnet(), n_classes=5)


def test_output_stride_16_basic_block(cam_net):
    x = torch.randn(2, 3, 64, 64)
    assert cam_net.features(x).shape == (2, 512, 4, 4)
    assert cam_net(x).shape == (2, 5)
    assert cam_net.cam(x).shape == (2, 5, 4, 4)
    assert cam_net.features(torch.randn(1, 3, 72, 50)).shape[2:] == (5, 4)   # ceil(size / 16)


def test_output_stride_16_bottleneck_block():
    net = RitcNet(_resnet("resnet50"), n_classes=3).eval()
    with torch.no_grad():
        assert net.features(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 4, 4)
    first = net.stage4[0][0]
    assert first.conv2.stride == (1, 1) and first.downsample[0].stride == (1, 1)


@pytest.mark.parametrize("arch,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_output_stride_8_unstrides_layer3_too(arch, channels):
    net = CamNet(_resnet(arch), n_classes=3, output_stride=8).eval()
    with torch.no_grad():
        assert net.features(torch.randn(1, 3, 64, 72)).shape == (1, channels, 8, 9)
    assert net.output_stride == 8
    for stage in (net.stage3, net.stage4):
        strides = {m.stride for m in stage.modules() if isinstance(m, nn.Conv2d)}
        assert strides == {(1, 1)}
    # same parameters as stride 16: a stride-16 state dict loads strictly
    net.load_state_dict(CamNet(_resnet(arch), n_classes=3).state_dict(), strict=True)


def test_unknown_output_stride_is_rejected():
    with pytest.raises(ValueError, match="output_stride must be one of"):
        CamNet(_resnet(), n_classes=3, output_stride=32)


def test_non_resnet_is_rejected():
    with pytest.raises(TypeError):
        CamNet(nn.Linear(2, 2), 3)


def test_logits_are_gap_then_classifier_and_cam_is_relu_of_scores(cam_net):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        scores = cam_net.classifier(cam_net.features(x))
        assert torch.allclose(cam_net(x), scores.mean(dim=(2, 3)), atol=1e-5)
        assert torch.allclose(cam_net.cam(x), F.relu(scores), atol=1e-6)


def test_conv1_bn1_frozen_and_parameter_groups(cam_net):
    assert not any(p.requires_grad for p in cam_net.stage1[0].parameters())
    assert not any(p.requires_grad for p in cam_net.stage1[1].parameters())
    backbone, head = cam_net.trainable_parameter_groups(lr=0.1, weight_decay=1e-4)
    assert backbone["lr"] == 0.1 and head["lr"] == pytest.approx(1.0)
    assert backbone["weight_decay"] == head["weight_decay"] == 1e-4
    assert head["params"] == [cam_net.classifier.weight]
    ids = {id(p) for p in backbone["params"]}
    assert id(cam_net.stage1[0].weight) not in ids
    n_trainable = sum(p.requires_grad for p in cam_net.parameters())
    assert len(backbone["params"]) + 1 == n_trainable


def test_fixed_batchnorm_keeps_running_stats_in_training():
    net = CamNet(_resnet(), n_classes=4)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FixedBatchNorm) for m in bns)
    for m in bns:   # non-trivial stats so a change would show
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        ref = net(x)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    out = net(x)
    assert torch.allclose(out, ref, atol=1e-5)        # train mode = eval mode
    F.multilabel_soft_margin_loss(out, torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])).backward()
    opt.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert bns[3].weight.grad is not None                  # affine stays trainable


def test_ritc_net_uses_batch_statistics_and_loads_cam_state_strictly(cam_net):
    ritc = RitcNet(_resnet(), n_classes=5)
    assert not any(isinstance(m, FixedBatchNorm) for m in ritc.modules())
    ritc.load_state_dict(cam_net.state_dict(), strict=True)
    assert set(ritc.state_dict()) == set(cam_net.state_dict())
    assert not any(p.requires_grad for p in ritc.stage1[1].parameters())
    x = torch.randn(2, 3, 64, 64)
    ritc.train()
    mean_before = ritc.stage2[0][0].bn1.running_mean.clone()
    p = ritc(x)
    assert p.shape == (2, 5, 4, 4) and (p >= 0).all() and (p <= 1).all()
    assert not torch.equal(mean_before, ritc.stage2[0][0].bn1.running_mean)
    ritc.load_state_dict(cam_net.state_dict(), strict=True)
    ritc.eval()
    with torch.no_grad():   # eval BN == FixedBatchNorm: same weights -> same CAM as the baseline
        assert torch.allclose(ritc.cam(x), cam_net.cam(x), atol=1e-5)


def test_ritc_net_converts_to_sync_batchnorm_keeping_names_and_frozen_layers():
    ritc = RitcNet(_resnet(), n_classes=5)
    keys = set(ritc.state_dict())
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(ritc)
    assert isinstance(sync.stage1[1], nn.SyncBatchNorm)
    assert set(sync.state_dict()) == keys
    assert not sync.stage1[1].weight.requires_grad


def test_ritc_state_loads_into_cam_net():
    ritc = RitcNet(_resnet(), n_classes=5)
    cam = CamNet(_resnet(), n_classes=5)
    cam.load_state_dict(ritc.state_dict(), strict=True)


def test_authors_checkpoint_keys_are_mapped(cam_net):
    ours = cam_net.state_dict()
    theirs = {}
    for k, v in ours.items():
        theirs["module." + k] = v
        if k.startswith("stage1.0."):
            theirs["resnet50.conv1." + k.removeprefix("stage1.0.")] = v
        if k.startswith("stage2."):
            theirs["backbone.1." + k.removeprefix("stage2.")] = v
    theirs["newly_added.0.weight"] = ours["classifier.weight"]
    mapped = from_authors_state_dict(theirs)
    assert set(mapped) == set(ours)
    CamNet(_resnet(), n_classes=5).load_state_dict(mapped, strict=True)
