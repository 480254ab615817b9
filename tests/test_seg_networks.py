"""DeepLab-v2 network: output stride 8, ASPP, MSC fusion, frozen BN, weight loading, checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from qaclims.seg.networks import (
    MSC,
    build_deeplab,
    calibrate_batchnorm,
    is_caffe_state_dict,
    load_deeplab_checkpoint,
    map_caffe_state_dict,
    save_deeplab_checkpoint,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # OpenMP threads spin-wait badly when the 2 cores are shared: 1 thread is 20x faster here
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def r18() -> MSC:
    torch.manual_seed(0)
    return build_deeplab("resnet18", 3, None)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_output_stride_8(arch: str) -> None:
    torch.manual_seed(0)
    model = build_deeplab(arch, 4, None).eval()
    with torch.no_grad():
        assert tuple(model.base(torch.randn(1, 3, 64, 64)).shape) == (1, 4, 8, 8)
        assert tuple(model.base(torch.randn(1, 3, 48, 80)).shape) == (1, 4, 6, 10)
    base = model.base
    for layer, rate in ((base.layer3, 2), (base.layer4, 4)):
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                assert m.stride == (1, 1)
                if m.kernel_size == (3, 3):  # every block, the first one included
                    assert m.dilation == (rate, rate) and m.padding == (rate, rate)


def test_aspp_layout_and_init(r18: MSC) -> None:
    convs = list(r18.base.aspp.children())
    assert [c.dilation for c in convs] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(c.in_channels == 512 and c.out_channels == 3 and c.bias is not None for c in convs)
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001
    assert all((c.bias == 0).all() for c in convs)
    x = torch.randn(1, 512, 5, 5)
    assert torch.allclose(r18.base.aspp(x), sum(c(x) for c in convs))


def test_msc_outputs_train_and_eval(r18: MSC) -> None:
    x = torch.randn(2, 3, 64, 64)
    r18.train()
    outs = r18(x)
    assert isinstance(outs, list) and len(outs) == 4
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 8), (4, 4), (6, 6), (8, 8)]
    r18.eval()
    with torch.no_grad():
        fused = r18(x)
        full = r18.base(x)
        half = r18.base(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
        tq = r18.base(F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False))
        up = [F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False)
              for t in (half, tq)]
        expect = torch.maximum(torch.maximum(full, up[0]), up[1])
    assert isinstance(fused, torch.Tensor) and torch.equal(fused, expect)
    assert torch.allclose(outs[3], expect, atol=1e-5)  # train-mode max = eval output (frozen BN)
    assert (fused >= full).all() and not torch.equal(fused, full)


def test_frozen_bn_stays_frozen(r18: MSC) -> None:
    bns = [m for m in r18.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20
    before = {k: v.clone() for k, v in r18.state_dict().items() if "bn" in k or "downsample.1" in k}
    conv_before = r18.base.layer1[0].conv1.weight.detach().clone()
    r18.train()
    assert all(not m.training for m in bns) and r18.base.layer1.training
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    opt = torch.optim.SGD([p for p in r18.parameters() if p.requires_grad], lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        loss = sum(o.square().mean() for o in r18(torch.randn(2, 3, 32, 32) * 5 + 3))
        loss.backward()
        opt.step()
    after = r18.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(r18.base.layer1[0].conv1.weight, conv_before)  # training did happen


# -- weights ---------------------------------------------------------------------------------------
def _kazuto_resnet50_state(n_head: int | None = None, prefix: str = "",
                           old_names: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with deeplab-pytorch's (caffe-converted) names for a ResNet-50 trunk.

    Written from deeplab-pytorch's module tree (layer1 = stem, layer2..5 = res2..res5 with
    blocks block1.. of reduce/conv3x3/increase[/shortcut], each conv + bn), not from our mapping.
    """
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv_bn(name: str, cin: int, cout: int, k: int) -> None:
        state[f"{prefix}{name}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g)
        state[f"{prefix}{name}.bn.weight"] = torch.rand(cout, generator=g) + 0.5
        state[f"{prefix}{name}.bn.bias"] = torch.randn(cout, generator=g)
        state[f"{prefix}{name}.bn.running_mean"] = torch.randn(cout, generator=g)
        state[f"{prefix}{name}.bn.running_var"] = torch.rand(cout, generator=g) + 0.5
        state[f"{prefix}{name}.bn.num_batches_tracked"] = torch.tensor(0)

    conv_bn("layer1.conv1", 3, 64, 7)
    # (blocks, in, mid, out) of res2..res5 = deeplab-pytorch layer2..layer5
    layers = [(3, 64, 64, 256), (4, 256, 128, 512), (6, 512, 256, 1024), (3, 1024, 512, 2048)]
    for layer, (n_blocks, cin, mid, cout) in enumerate(layers, start=2):
        for b in range(1, n_blocks + 1):
            name = f"layer{layer}.block{b}"
            conv_bn(f"{name}.reduce", cin if b == 1 else cout, mid, 1)
            conv_bn(f"{name}.conv3x3", mid, mid, 3)
            conv_bn(f"{name}.increase", mid, cout, 1)
            if b == 1:
                conv_bn(f"{name}.{'proj' if old_names else 'shortcut'}", cin, cout, 1)
    state[f"{prefix}fc.weight"] = torch.randn(1000, 2048, generator=g)
    state[f"{prefix}fc.bias"] = torch.randn(1000, generator=g)
    if n_head is not None:
        aspp = "aspp.stages" if old_names else "aspp"
        for i in range(4):
            state[f"{prefix}{aspp}.c{i}.weight"] = torch.randn(n_head, 2048, 3, 3, generator=g)
            state[f"{prefix}{aspp}.c{i}.bias"] = torch.randn(n_head, generator=g)
    return state


def test_caffe_init_file_loads_with_key_mapping(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    state = _kazuto_resnet50_state()
    path = tmp_path / "deeplabv1_resnet50-imagenet.pth"
    torch.save(state, path)
    assert is_caffe_state_dict(state)
    with caplog.at_level(logging.INFO):
        model = build_deeplab("resnet50", 5, path)
    base = model.base
    assert torch.equal(base.conv1.weight, state["layer1.conv1.conv.weight"])
    assert torch.equal(base.bn1.running_var, state["layer1.conv1.bn.running_var"])
    assert torch.equal(base.layer3[5].conv2.weight, state["layer4.block6.conv3x3.conv.weight"])
    assert torch.equal(base.layer4[0].downsample[1].bias, state["layer5.block1.shortcut.bn.bias"])
    assert torch.equal(base.layer1[2].bn3.weight, state["layer2.block3.increase.bn.weight"])
    # every trunk tensor came from the file
    own = base.state_dict()
    mapped, skipped = map_caffe_state_dict(state)
    trunk = [k for k in own if not k.startswith("aspp") and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(own[k], mapped[k]) for k in trunk)
    assert sorted(skipped) == ["fc.bias", "fc.weight"]
    # the caffe layout follows the file: stride in layer2's 1x1, ceil-mode pool
    assert base.caffe_layout and base.maxpool.ceil_mode
    assert base.layer2[0].conv1.stride == (2, 2) and base.layer2[0].conv2.stride == (1, 1)
    with torch.no_grad():
        assert tuple(base.eval()(torch.randn(1, 3, 321, 321)).shape) == (1, 5, 41, 41)
    text = caplog.text
    assert "aspp.c0.weight" in text and "fc.weight" in text  # not loaded / not used: logged
    assert (base.aspp.c0.bias == 0).all()


def test_caffe_head_and_old_names_load(tmp_path: Path) -> None:
    state = _kazuto_resnet50_state(n_head=5, prefix="base.", old_names=True)
    path = tmp_path / "deeplabv2_vocaug.pth"
    torch.save(state, path)
    model = build_deeplab("resnet50", 5, path)
    assert torch.equal(model.base.aspp.c3.weight, state["base.aspp.stages.c3.weight"])
    assert torch.equal(model.base.layer2[0].downsample[0].weight,
                       state["base.layer3.block1.proj.conv.weight"])
    # a head for another class count is not loaded (shape mismatch), the trunk still is
    # the same file as a trained model (the authors' checkpoint_30000.pth format)
    torch.save({k: v for k, v in state.items() if not k.startswith("base.fc")}, path)
    trained = load_deeplab_checkpoint(path)
    assert not trained.training and trained.base.caffe_layout and trained.base.n_classes == 5
    assert torch.equal(trained.base.layer3[5].bn1.running_mean,
                       state["base.layer4.block6.reduce.bn.running_mean"])
    torch.save({k: v for k, v in state.items() if "layer5.block3" not in k}, path)
    with pytest.raises(ValueError, match="match no ResNet-50/101"):
        load_deeplab_checkpoint(path)
    model7 = build_deeplab("resnet50", 7, path)
    assert (model7.base.aspp.c0.bias == 0).all()
    assert torch.equal(model7.base.conv1.weight, state["base.layer1.conv1.conv.weight"])
    with pytest.raises(ValueError, match="does not fit a resnet18 DeepLab"):
        build_deeplab("resnet18", 5, path)


def test_torchvision_file_loads_strictly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = build_deeplab("resnet18", 3, path)
    assert not model.base.caffe_layout and not model.base.maxpool.ceil_mode
    assert torch.equal(model.base.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)
    assert torch.equal(model.base.bn1.running_mean, ref.bn1.running_mean)
    bad = {k: v for k, v in ref.state_dict().items() if not k.startswith("layer4.1")}
    torch.save(bad, path)
    with pytest.raises(ValueError, match="missing keys"):
        build_deeplab("resnet18", 3, path)


def test_checkpoint_roundtrip(tmp_path: Path, r18: MSC) -> None:
    path = tmp_path / "deeplab.pth"
    save_deeplab_checkpoint(r18, path, "resnet18", meta={"iterations": 5})
    loaded = load_deeplab_checkpoint(path)
    assert not loaded.training and loaded.scales == r18.scales
    x = torch.randn(1, 3, 40, 40)
    r18.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), r18(x))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable torch checkpoint"):
        load_deeplab_checkpoint(tmp_path / "junk.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="neither a qaclims DeepLab checkpoint"):
        load_deeplab_checkpoint(tmp_path / "other.pth")


def test_calibrate_batchnorm_sets_batch_statistics(r18: MSC) -> None:
    x = torch.randn(4, 3, 32, 32) * 50 + 10
    assert calibrate_batchnorm(r18, [x[:2], x[2:]]) == 2
    with torch.no_grad():
        a = r18.base.conv1(x[:2])
        b = r18.base.conv1(x[2:])
    expect_mean = (a.mean((0, 2, 3)) + b.mean((0, 2, 3))) / 2
    expect_var = (a.var((0, 2, 3)) + b.var((0, 2, 3))) / 2
    assert torch.allclose(r18.base.bn1.running_mean, expect_mean, rtol=1e-4, atol=1e-4)
    assert torch.allclose(r18.base.bn1.running_var, expect_var, rtol=1e-4)
    # deeper layers were calibrated on normalised inputs: their outputs are now ~unit scale
    r18.eval()
    with torch.no_grad():
        assert r18.base(x).abs().mean() < 5


def test_auto_input_norm_follows_the_init_layout(tmp_path: Path) -> None:
    from qaclims.seg.train import resolve_input_norm

    path = tmp_path / "deeplabv1_resnet50-imagenet.pth"
    torch.save(_kazuto_resnet50_state(), path)
    assert resolve_input_norm("auto", build_deeplab("resnet50", 5, path)) == "caffe"
    plain = build_deeplab("resnet18", 3, None)
    assert resolve_input_norm("auto", plain) == "imagenet"
    assert resolve_input_norm("caffe", plain) == "caffe"
