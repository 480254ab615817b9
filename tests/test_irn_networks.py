import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from qaclims.cam.networks import FixedBatchNorm
from qaclims.irn.losses import AffinityDisplacementLoss
from qaclims.irn.networks import EdgeDisplacementNet, MeanShift, from_authors_state_dict
from qaclims.irn.path_index import PathIndex


def _net(arch: str = "resnet18", seed: int = 0) -> EdgeDisplacementNet:
    torch.manual_seed(seed)
    return EdgeDisplacementNet(getattr(torchvision.models, arch)(weights=None))


@pytest.fixture(scope="module")
def net18() -> EdgeDisplacementNet:
    return _net()


@pytest.mark.parametrize(("size", "out"), [((64, 64), (16, 16)), ((50, 71), (13, 18))])
def test_output_shapes_resnet18(net18, size, out):
    net18.eval()
    edge, disp = net18(torch.randn(2, 3, *size))
    assert edge.shape == (2, 1, *out)
    assert disp.shape == (2, 2, *out)
    assert torch.isfinite(edge).all() and torch.isfinite(disp).all()


def test_resnet50_channels_are_read_from_the_backbone():
    net = _net("resnet50")
    assert net.fc_edge2[0].in_channels == 256 and net.fc_edge5[0].in_channels == 2048
    assert net.fc_dp3[0].in_channels == 512
    edge, disp = net.eval()(torch.randn(1, 3, 32, 40))
    assert edge.shape == (1, 1, 8, 10) and disp.shape == (1, 2, 8, 10)


def test_backbone_is_frozen_fixed_bn_and_stays_in_eval(net18):
    net18.train()
    for stage in net18.backbone_stages():
        assert not stage.training
        assert all(not p.requires_grad for p in stage.parameters())
    bns = [m for s in net18.backbone_stages() for m in s.modules()
           if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FixedBatchNorm) for m in bns)
    assert net18.fc_edge1.training and net18.fc_dp7.training
    # output stride 16: layer4 keeps layer3's resolution
    x1, x2, x3, x4, x5 = net18.backbone_features(torch.randn(1, 3, 64, 64))
    assert [t.shape[-1] for t in (x1, x2, x3, x4, x5)] == [16, 16, 8, 4, 4]
    assert not any(t.requires_grad for t in (x1, x2, x3, x4, x5))


def test_parameter_groups_edge_x1_displacement_x10(net18):
    groups = net18.trainable_parameter_groups(lr=0.1, weight_decay=1e-4)
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(1.0)]
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert not ids[0] & ids[1]
    trainable = {id(p) for p in net18.parameters() if p.requires_grad}
    assert ids[0] | ids[1] == trainable
    assert {id(p) for p in net18.fc_edge6.parameters()} <= ids[0]
    assert {id(p) for p in net18.fc_dp7.parameters()} <= ids[1]


def test_mean_shift_passes_in_training_and_subtracts_in_eval():
    ms = MeanShift(2)
    x = torch.zeros(4, 2, 3, 3)
    x[:, 0] = 2.0
    x[:, 1] = -1.0
    assert torch.equal(ms.eval()(x), x)  # zero until set
    ms.running_mean.copy_(torch.tensor([0.5, 1.0]))
    ms.train()
    assert torch.equal(ms(x), x)
    assert ms.running_mean.tolist() == [0.5, 1.0]  # nothing tracked during training
    out = ms.eval()(x)
    assert (out[:, 0] == 1.5).all() and (out[:, 1] == -2.0).all()
    assert list(ms.state_dict()) == ["running_mean"]


@torch.no_grad()
def test_set_mean_shift_changes_eval_displacement_only():
    net = _net().eval()
    x = torch.randn(1, 3, 32, 32)
    edge0, disp0 = net(x)
    net.set_mean_shift(torch.tensor([1.5, -2.0]))
    edge1, disp1 = net(x)
    assert torch.equal(edge0, edge1)
    np.testing.assert_allclose((disp0 - disp1)[0, 0].numpy(), 1.5, atol=1e-5)
    np.testing.assert_allclose((disp0 - disp1)[0, 1].numpy(), -2.0, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        net.set_mean_shift(torch.zeros(3))


def test_state_dict_round_trip_and_authors_aliases():
    a, b = _net(seed=0), _net(seed=1)
    state = a.state_dict()
    assert not any(k.startswith("backbone") for k in state)  # no duplicated stage keys
    # the authors' checkpoint repeats tensors under alias names and adds path indices
    authors = {f"module.{k}": v for k, v in state.items()}
    authors.update({f"module.resnet50.{k}": v for k, v in list(state.items())[:3]})
    authors["module.edge_layers.0.0.weight"] = state["fc_edge1.0.weight"]
    authors["module.path_indices0"] = torch.zeros(2, 2, 5, dtype=torch.long)
    authors["module.mean_shift.running_mean"] = state["fc_dp7.4.running_mean"]
    b.load_state_dict(from_authors_state_dict(authors), strict=True)
    x = torch.randn(1, 3, 32, 32)
    for u, v in zip(a.eval()(x), b.eval()(x), strict=True):
        assert torch.equal(u, v)


def test_non_resnet_is_rejected():
    with pytest.raises(TypeError, match="ResNet"):
        EdgeDisplacementNet(nn.Linear(2, 2))


# -- losses ------------------------------------------------------------------------------------
def _logit(p: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.log(p / (1 - p))).float()


def test_loss_by_hand_on_a_3x4_map():
    e = np.array([[0.1, 0.2, 0.3, 0.4],
                  [0.5, 0.6, 0.7, 0.8],
                  [0.9, 0.02, 0.05, 0.15]])
    pi = PathIndex(radius=2, size=(3, 4))  # directions (0,1), (1,0), (1,-1), (1,1); 4 sources
    loss = AffinityDisplacementLoss(pi)
    bg = torch.zeros(1, 4, 4, dtype=torch.bool)
    fg = torch.zeros_like(bg)
    neg = torch.zeros_like(bg)
    bg[0, 0, 0] = True  # (0,1)-(0,2): box max 0.3 -> aff 0.7
    fg[0, 1, 2] = True  # (1,1)-(2,1): max(0.6, 0.02) -> aff 0.4
    fg[0, 0, 3] = True  # (1,2)-(1,3): max(0.7, 0.8) -> aff 0.2
    neg[0, 3, 3] = True  # (1,2)-(2,3): max(0.7, 0.8, 0.05, 0.15) -> aff 0.2
    neg[0, 2, 0] = True  # (0,1)-(1,0): max(0.1, 0.2, 0.5, 0.6) -> aff 0.4
    disp = torch.zeros(1, 2, 3, 4)
    disp[0, 0, 1, 1] = 0.5  # source (1,1) of the fg pair in direction (1,0)
    out = loss(_logit(e)[None, None], disp, bg, fg, neg)

    eps = 1e-5
    pos_bg = -math.log(0.7 + eps) / (1 + eps)
    pos_fg = (-math.log(0.4 + eps) - math.log(0.2 + eps)) / (2 + eps)
    neg_aff = (-math.log(1 + eps - 0.2) - math.log(1 + eps - 0.4)) / (2 + eps)
    # fg pair (1,1)->(2,1), target (1, 0): |0.5 - 1| + |0 - 0|; pair (1,2)->(1,3), target
    # (0, 1): |0 - 0| + |0 - 1|
    dp_fg = (0.5 + 1.0) / (2 * 2 + eps)
    dp_bg = 0.0  # bg pair (0,1)-(0,2) has zero displacement
    assert out.pos_aff.item() == pytest.approx(pos_bg / 2 + pos_fg / 2, rel=1e-5)
    assert out.neg_aff.item() == pytest.approx(neg_aff, rel=1e-5)
    assert out.dp_fg.item() == pytest.approx(dp_fg, rel=1e-5)
    assert out.dp_bg.item() == pytest.approx(dp_bg, abs=1e-7)
    total = (pos_bg / 2 + pos_fg / 2 + neg_aff) / 2 + (dp_fg + dp_bg) / 2
    assert out.total.item() == pytest.approx(total, rel=1e-5)
    assert set(out.as_floats()) == {"pos_aff", "neg_aff", "dp_fg", "dp_bg", "total"}


def test_loss_bg_displacement_and_empty_label_sets():
    pi = PathIndex(radius=2, size=(3, 4))
    loss = AffinityDisplacementLoss(pi)
    edge = torch.zeros(1, 1, 3, 4)
    disp = torch.zeros(1, 2, 3, 4)
    disp[0, 1, 0, 2] = 3.0  # destination (0,2) of direction (0,1) from source (0,1)
    bg = torch.zeros(1, 4, 4)
    bg[0, 0, 0] = 1.0
    empty = torch.zeros(1, 4, 4)
    out = loss(edge, disp, bg, empty, empty)
    assert out.dp_bg.item() == pytest.approx(3.0 / 2, rel=1e-5)
    assert out.dp_fg.item() == 0.0 and out.neg_aff.item() == 0.0
    assert torch.isfinite(out.total)
    with pytest.raises(ValueError, match="fg_pos"):
        loss(edge, disp, bg, torch.zeros(1, 3, 4), empty)


def test_loss_backpropagates_into_both_branches_only(net18):
    net18.train()
    pi = PathIndex(radius=5, size=(16, 16))
    label = np.zeros((16, 16), np.uint8)
    label[4:12, 3:9] = 1
    label[0:2] = 255
    bg, fg, neg = (torch.from_numpy(a)[None] for a in pi.affinity_labels(label))
    assert bg.any() and fg.any() and neg.any()
    edge, disp = net18(torch.randn(1, 3, 64, 64))
    out = AffinityDisplacementLoss(pi)(edge, disp, bg, fg, neg)
    net18.zero_grad()
    out.total.backward()
    assert net18.fc_edge6.weight.grad.abs().sum() > 0
    assert net18.fc_dp7[3].weight.grad.abs().sum() > 0
    assert all(p.grad is None for s in net18.backbone_stages() for p in s.parameters())
