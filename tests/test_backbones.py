"""torchvision ResNet loading: local files, "imagenet" in TORCH_HOME, arch checks, clear errors."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from qaclims.vlp.backbones import IMAGENET_FILES, load_resnet, resolve_resnet_weights
from qaclims.vlp.weights import WeightsMissingError


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path_factory.mktemp("w") / "resnet18-test.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_local_state_dict_round_trip(resnet18_file):
    ref, path = resnet18_file
    model = load_resnet("resnet18", str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_imagenet_from_torch_home_legacy_and_current_names(resnet18_file, tmp_path, monkeypatch):
    ref, path = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    with pytest.raises(WeightsMissingError) as ei:
        load_resnet("resnet18", "imagenet")
    msg = str(ei.value)
    legacy, current = IMAGENET_FILES["resnet18"]
    assert f"https://download.pytorch.org/models/{legacy}" in msg and str(ckpt) in msg
    assert current in msg
    for name in (current, legacy):
        (ckpt / name).write_bytes(path.read_bytes())
        assert resolve_resnet_weights("resnet18", "imagenet") == ckpt / name or name == legacy
        model = load_resnet("resnet18", "imagenet").eval()
        with torch.no_grad():
            assert torch.equal(model.conv1.weight, ref.conv1.weight)
    # The legacy name (method.md's resnet50-19c8e357.pth style) wins when both are there.
    assert resolve_resnet_weights("resnet18", "imagenet").name == legacy


def test_wrong_arch_names_mismatched_keys(resnet18_file):
    _, path = resnet18_file
    with pytest.raises(ValueError) as ei:
        load_resnet("resnet50", path)
    msg = str(ei.value)
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatches" in msg
    assert "layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in msg


def test_missing_file_names_url_and_destination(tmp_path):
    dest = tmp_path / "torchvision" / "resnet50-19c8e357.pth"
    with pytest.raises(WeightsMissingError) as ei:
        load_resnet("resnet50", dest)
    msg = str(ei.value)
    assert str(dest) in msg and "https://download.pytorch.org/models/resnet50-19c8e357.pth" in msg


def test_backbone_file_without_fc_and_module_prefix(resnet18_file, tmp_path, caplog):
    ref, path = resnet18_file
    state = {"module." + k: v for k, v in torch.load(path).items() if not k.startswith("fc.")}
    p = tmp_path / "nofc.pth"
    torch.save({"state_dict": state}, p)
    with caplog.at_level(logging.WARNING):
        model = load_resnet("resnet18", p)
    assert torch.equal(model.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    assert "fc." in caplog.text


def test_random_init_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        model = load_resnet("resnet18", None)
    assert isinstance(model, torchvision.models.ResNet) and "random initialisation" in caplog.text
    with pytest.raises(ValueError, match="unknown ResNet arch"):
        load_resnet("resnet152", None)  # type: ignore[arg-type]


def test_legacy_torchvision_file_without_num_batches_tracked(resnet18_file, tmp_path, caplog):
    """torchvision's legacy files (resnet50-19c8e357.pth, what the real configs name) were saved
    before BatchNorm had num_batches_tracked: they load, with every real tensor filled."""
    ref, path = resnet18_file
    full = torch.load(path)
    legacy = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    assert len(legacy) < len(full) and "fc.weight" in legacy
    p = tmp_path / "resnet18-5c106cde.pth"
    torch.save(legacy, p)
    with caplog.at_level(logging.INFO, logger="qaclims.vlp.backbones"):
        model = load_resnet("resnet18", p).eval()
    assert "num_batches_tracked" in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    # Only that buffer is optional: a file missing a real BN tensor still fails, naming it.
    del legacy["layer1.0.bn1.running_mean"]
    torch.save(legacy, p)
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer1\.0\.bn1\.running_mean"):
        load_resnet("resnet18", p)
