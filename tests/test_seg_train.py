"""DeepLab optimiser groups, poly schedule, and the resumable training loop (single process)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_seg_data import make_seg_manifest

from qaclims.seg import losses
from qaclims.seg.networks import build_deeplab, load_deeplab_checkpoint
from qaclims.seg.optim import deeplab_param_groups, make_optimizer, poly_lr, set_poly_lr
from qaclims.seg.train import DeepLabSettings, train_deeplab


@pytest.fixture(autouse=True)
def _one_thread():
    # OpenMP threads spin-wait badly when the 2 cores are shared: 1 thread is 20x faster here
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- optimiser ---------------------------------------------------------------------------------
def test_param_groups_lrs_and_weight_decay() -> None:
    torch.manual_seed(0)
    model = build_deeplab("resnet18", 3, None)
    opt = make_optimizer(model, lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    g1, g10, g20 = opt.param_groups
    assert (g1["lr"], g10["lr"], g20["lr"]) == pytest.approx((2.5e-4, 2.5e-3, 5e-3))
    assert (g1["weight_decay"], g10["weight_decay"], g20["weight_decay"]) == (5e-4, 5e-4, 0.0)
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    convs = [m.weight for m in model.base.modules()
             if isinstance(m, torch.nn.Conv2d)][:-4]  # the trunk: all but the 4 ASPP convs
    assert len(g1["params"]) == len(convs) == 20
    assert {id(p) for p in g1["params"]} == {id(p) for p in convs}
    aspp = list(model.base.aspp.children())
    assert [id(p) for p in g10["params"]] == [id(c.weight) for c in aspp]
    assert [id(p) for p in g20["params"]] == [id(c.bias) for c in aspp]
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    bn_params = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
                 for p in m.parameters()]
    assert bn_params and not any(id(p) in in_groups for p in bn_params)
    # an unknown trainable layer is an error, not a silent 0x or 1x
    model.base.extra = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="in no optimiser group: .*extra"):
        deeplab_param_groups(model, 1e-3)


def test_poly_schedule_matches_deeplab_pytorch() -> None:
    base, max_iter = 2.5e-4, 95
    # deeplab-pytorch: lr used in 1-based iteration i; scheduler.step(epoch=i) after it
    lr, used = base, []
    for i in range(1, max_iter + 1):
        used.append(lr)
        if i % 10 == 0 and i <= max_iter:
            lr = base * (1 - i / max_iter) ** 0.9
    assert [poly_lr(base, t, max_iter, 0.9, 10) for t in range(max_iter)] == pytest.approx(used)
    assert poly_lr(base, 9, 100) == base
    assert poly_lr(base, 10, 100) == pytest.approx(base * 0.9 ** 0.9)
    assert poly_lr(base, 25, 100) == pytest.approx(base * 0.8 ** 0.9)
    torch.manual_seed(0)
    opt = make_optimizer(build_deeplab("resnet18", 3, None), lr=1e-3)
    lrs = set_poly_lr(opt, 50, 100)
    assert lrs == pytest.approx([1e-3 * 0.5 ** 0.9, 1e-2 * 0.5 ** 0.9, 2e-2 * 0.5 ** 0.9])


def test_settings_validation() -> None:
    s = DeepLabSettings.from_mapping({"n_classes": 21, "scales": [0.5, 1.0]})
    assert s.scales == (0.5, 1.0) and s.iterations == 30000 and s.loss == "balanced"
    with pytest.raises(ValueError, match=r"unknown DeepLab settings \['iters'\]"):
        DeepLabSettings.from_mapping({"n_classes": 21, "iters": 5})
    with pytest.raises(ValueError, match="loss must be one of"):
        DeepLabSettings(n_classes=21, loss="dice")
    with pytest.raises(ValueError, match="iter_size must be >= 1"):
        DeepLabSettings(n_classes=21, iter_size=0)


# -- training ----------------------------------------------------------------------------------
def _settings(**kw) -> DeepLabSettings:
    base = dict(n_classes=3, arch="resnet18", init=None, batch_size=2, iter_size=2,
                iterations=6, crop=32, scales=(0.75, 1.0), loss="balanced", lr=2.5e-4,
                bn_calibration_batches=1, save_every=2, log_every=1, device="cpu", seed=0)
    base.update(kw)
    return DeepLabSettings(**base)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    return make_seg_manifest(tmp_path / "data", n=3, size=(36, 40))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_deeplab_checkpoint(path).state_dict()


def test_loss_decreases_on_a_memorised_batch(tmp_path: Path) -> None:
    manifest, labels = make_seg_manifest(tmp_path / "data", n=2, size=(32, 32))
    s = _settings(iter_size=1, iterations=5, scales=(1.0,), flip=False, bn_calibration_batches=2)
    out = tmp_path / "model.pth"
    result = train_deeplab(s, manifest, "train", labels, out)
    curve = result["loss_curve"]
    assert len(curve) == 5 and all(c > 0 for c in curve)
    assert curve[-1] < 0.5 * curve[0]
    assert out.is_file() and result["start_iteration"] == 0
    model = load_deeplab_checkpoint(out)
    assert model.base.n_classes == 3 and not model.training


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path, tiny, monkeypatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    manifest, labels = tiny
    s = _settings(iterations=4)
    full = train_deeplab(s, manifest, "train", labels, tmp_path / "a.pth",
                         resume_dir=tmp_path / "resume_a")

    real = losses.msc_loss
    calls = {"n": 0}

    def dies_in_iteration_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # 2 micro-batches per iteration: 4th iteration, after the save at 2
            raise KeyboardInterrupt("preempted")
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "msc_loss", dies_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        train_deeplab(s, manifest, "train", labels, tmp_path / "b.pth",
                      resume_dir=tmp_path / "resume_b")
    assert not (tmp_path / "b.pth").exists()
    monkeypatch.setattr(losses, "msc_loss", real)
    with caplog.at_level(logging.INFO):
        resumed = train_deeplab(s, manifest, "train", labels, tmp_path / "b.pth",
                                resume_dir=tmp_path / "resume_b")
    assert "resumed from" in caplog.text and resumed["start_iteration"] == 2
    assert resumed["loss_curve"] == full["loss_curve"]
    a, b = _weights(tmp_path / "a.pth"), _weights(tmp_path / "b.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run called again returns at once with the same model
    again = train_deeplab(s, manifest, "train", labels, tmp_path / "c.pth",
                          resume_dir=tmp_path / "resume_b")
    assert again["start_iteration"] == 4 and again["loss_curve"] == full["loss_curve"]
    c = _weights(tmp_path / "c.pth")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_changed_settings_or_labels_start_fresh(tmp_path: Path, tiny,
                                                caplog: pytest.LogCaptureFixture) -> None:
    manifest, labels = tiny
    resume = tmp_path / "resume"
    s = _settings(iterations=2, iter_size=1)
    first = train_deeplab(s, manifest, "train", labels, tmp_path / "a.pth", resume_dir=resume)
    other = replace(s, lr=1e-4)
    with caplog.at_level(logging.INFO):
        second = train_deeplab(other, manifest, "train", labels, tmp_path / "b.pth",
                               resume_dir=resume)
    assert "made with other settings" in caplog.text and "starting fresh" in caplog.text
    assert second["start_iteration"] == 0 and second["settings_hash"] != first["settings_hash"]
    fresh = train_deeplab(other, manifest, "train", labels, tmp_path / "c.pth")
    assert second["loss_curve"] == fresh["loss_curve"]
    b, c = _weights(tmp_path / "b.pth"), _weights(tmp_path / "c.pth")
    assert all(torch.equal(b[k], c[k]) for k in b)
    # operational settings do not invalidate the state ...
    quiet = replace(other, log_every=50, save_every=7)
    assert train_deeplab(quiet, manifest, "train", labels, tmp_path / "d.pth",
                         resume_dir=resume)["start_iteration"] == 2
    # ... regenerated labels do
    png = labels / "img_000.png"
    png.write_bytes(png.read_bytes() + b"")  # same content: still resumes
    from qaclims.store import read_label_png, write_label_png

    lab = read_label_png(png)
    lab[5, 5] = 2 if lab[5, 5] != 2 else 1
    write_label_png(lab, png)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        third = train_deeplab(other, manifest, "train", labels, tmp_path / "e.pth",
                              resume_dir=resume)
    assert third["start_iteration"] == 0 and "starting fresh" in caplog.text
