"""cam.baseline_checkpoint: the authors' released res50_cam.pth format -> the baseline model file
that RITC and the CAM export read (qaclims.cam.checkpoint.import_cam_model)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from qaclims.cam.checkpoint import import_cam_model, load_cam_network
from qaclims.cam.networks import CamNet
from qaclims.vlp.weights import file_sha256


def _authors_file(path, n_classes=20):
    """A checkpoint saved like the authors' train_cam (DataParallel prefix, alias keys of their
    ``Net``: resnet50.*, backbone.*, newly_added.*), ResNet-18 to stay small."""
    torch.manual_seed(0)
    net = CamNet(torchvision.models.resnet18(weights=None), n_classes=n_classes)
    ours = net.state_dict()
    theirs = {}
    for k, v in ours.items():
        theirs["module." + k] = v
        if k.startswith("stage2."):
            theirs["module.backbone.1." + k.removeprefix("stage2.")] = v
    theirs["module.newly_added.0.weight"] = ours["classifier.weight"]
    torch.save(theirs, path)
    return ours


def test_authors_checkpoint_becomes_the_baseline_model(tmp_path):
    src = tmp_path / "res50_cam.pth"
    ours = _authors_file(src)
    dst = tmp_path / "baseline/cam/imported_model.pth"
    info = import_cam_model(src, dst, n_classes=20)
    assert info["arch"] == "resnet18" and info["output_stride"] == 16
    net, loaded = load_cam_network(dst, kind="cam", n_classes=20)
    assert loaded["stage"] == "imported"
    assert loaded["meta"]["imported_from"] == str(src)
    assert loaded["meta"]["imported_sha256"] == file_sha256(src)
    sd = net.state_dict()
    assert sd.keys() == ours.keys() and all(torch.equal(sd[k], ours[k]) for k in ours)


def test_wrong_checkpoint_is_named_and_nothing_is_written(tmp_path):
    src = tmp_path / "res50_cam.pth"
    _authors_file(src, n_classes=80)
    dst = tmp_path / "out.pth"
    with pytest.raises(ValueError, match=r"res50_cam\.pth: its classifier has 80 classes, the "
                                         r"dataset 20"):
        import_cam_model(src, dst, n_classes=20)
    state = torch.load(src)
    del state["module.stage4.0.0.conv1.weight"]
    torch.save(state, src)
    with pytest.raises(ValueError, match="does not fit a resnet18 CAM network"):
        import_cam_model(src, dst, n_classes=80)
    assert not dst.exists()
