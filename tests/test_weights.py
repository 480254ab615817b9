"""Weights registry and fetching: offline reports, checksums, atomic downloads (file:// URLs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from qaclims.vlp import weights as W
from qaclims.vlp.weights import (
    REGISTRY,
    Asset,
    ChecksumMismatchError,
    WeightsMissingError,
    fetch_assets,
    sidecar_path,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def src(tmp_path: Path) -> dict[str, Path]:
    """Small 'remote' files served through file:// URLs."""
    d = tmp_path / "remote"
    d.mkdir()
    files = {}
    for name, data in [("a.bin", b"alpha" * 100), ("b.bin", b"bravo" * 100),
                       ("c.bin", b"charlie" * 100)]:
        (d / name).write_bytes(data)
        files[name] = d / name
    return files


def _registry(src: dict[str, Path]) -> dict[str, Asset]:
    a, b, c = (src[n].read_bytes() for n in ("a.bin", "b.bin", "c.bin"))
    return {x.name: x for x in [
        Asset("known", "x/a.bin", "url", "file a", source=src["a.bin"].as_uri(), sha256=_sha(a)),
        Asset("prefixed", "x/b-" + _sha(b)[:8] + ".bin", "url", "file b",
              source=src["b.bin"].as_uri(), sha256_prefix=_sha(b)[:8]),
        Asset("tofu", "y/c.bin", "url", "file c, hash unpublished", source=src["c.bin"].as_uri()),
        Asset("manual", "z/m.pth", "manual", "a Drive file", instructions="gdown 123 -O m.pth"),
        Asset("snap", "hub-model", "hf_snapshot", "a hub model", source="org/model",
              required_files=(("config.json",), ("model.safetensors", "pytorch_model.bin"))),
    ]}


def test_offline_lists_every_missing_file(tmp_path, src):
    reg = _registry(src)
    root = tmp_path / "weights"
    with pytest.raises(WeightsMissingError) as ei:
        fetch_assets(list(reg), root, offline=True, registry=reg)
    msg = str(ei.value)
    assert "5 of 5" in msg
    for asset in reg.values():
        assert asset.name in msg
        assert str(asset.path(root)) in msg  # where to put it
    assert src["a.bin"].as_uri() in msg  # where to get it
    assert reg["known"].sha256 in msg  # expected checksum
    assert "starting with " + reg["prefixed"].sha256_prefix in msg
    assert "gdown 123" in msg and "hf download org/model" in msg
    assert not any(root.rglob("*.bin"))


def test_download_verify_and_rerun(tmp_path, src):
    reg = _registry(src)
    root = tmp_path / "weights"
    names = ["known", "prefixed", "tofu"]
    paths = fetch_assets(names, root, offline=False, registry=reg)
    assert [p.read_bytes() for p in paths] == [src[n].read_bytes()
                                                for n in ("a.bin", "b.bin", "c.bin")]
    # Trust on first use: the unpublished hash is recorded in a sha256sum-style sidecar.
    assert sidecar_path(paths[2]).read_text().split() == [_sha(src["c.bin"].read_bytes()),
                                                          "c.bin"]
    # No temp files left behind.
    assert sorted(p.name for p in (root / "x").iterdir()) == sorted(
        [paths[0].name, paths[1].name, paths[0].name + ".sha256", paths[1].name + ".sha256"])
    # Second run: offline is fine, everything present and verified.
    assert fetch_assets(names, root, offline=True, registry=reg) == paths


def test_present_file_with_wrong_checksum_is_rejected(tmp_path, src):
    reg = _registry(src)
    root = tmp_path / "weights"
    bad = reg["known"].path(root)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"corrupted")
    with pytest.raises(WeightsMissingError) as ei:
        fetch_assets(["known"], root, offline=True, registry=reg)
    msg = str(ei.value)
    assert str(bad) in msg and reg["known"].sha256 in msg and _sha(b"corrupted") in msg
    assert not bad.exists() and bad.with_name(bad.name + ".rejected").exists()
    # Online, the rejected copy is replaced by a verified download.
    (p,) = fetch_assets(["known"], root, offline=False, registry=reg)
    assert p.read_bytes() == src["a.bin"].read_bytes()


def test_tofu_sidecar_catches_a_changed_file(tmp_path, src):
    reg = _registry(src)
    root = tmp_path / "weights"
    (p,) = fetch_assets(["tofu"], root, offline=False, registry=reg)
    p.write_bytes(b"tampered")
    with pytest.raises(WeightsMissingError, match="recorded in"):
        fetch_assets(["tofu"], root, offline=True, registry=reg)


def test_download_with_wrong_checksum_is_not_kept(tmp_path, src):
    asset = Asset("liar", "l/a.bin", "url", "wrong hash", source=src["a.bin"].as_uri(),
                  sha256="0" * 64)
    root = tmp_path / "weights"
    with pytest.raises(WeightsMissingError) as ei:
        fetch_assets(["liar"], root, offline=False, registry={"liar": asset})
    assert "0" * 64 in str(ei.value) and _sha(src["a.bin"].read_bytes()) in str(ei.value)
    assert not asset.path(root).exists()
    assert not any(asset.path(root).parent.glob(".*"))  # no partial file either
    with pytest.raises(ChecksumMismatchError):
        W.download_url(asset.source, tmp_path / "direct.bin", asset=asset)
    assert not (tmp_path / "direct.bin").exists()


def test_failed_download_is_reported_with_others(tmp_path, src):
    reg = _registry(src)
    reg["gone"] = Asset("gone", "g/gone.bin", "url", "404", source=(tmp_path / "nope").as_uri())
    with pytest.raises(WeightsMissingError) as ei:
        fetch_assets(["known", "gone", "manual"], tmp_path / "w", offline=False, registry=reg)
    msg = str(ei.value)
    assert "2 of 3" in msg and "gone" in msg and "download failed" in msg and "manual" in msg
    assert reg["known"].path(tmp_path / "w").exists()  # what could be fetched was fetched


def test_snapshot_directory_present_and_verified(tmp_path, src):
    reg = _registry(src)
    root = tmp_path / "weights"
    d = reg["snap"].path(root)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    with pytest.raises(WeightsMissingError, match="model.safetensors or pytorch_model.bin"):
        fetch_assets(["snap"], root, offline=True, registry=reg)
    (d / "model.safetensors").write_bytes(b"weights")
    assert fetch_assets(["snap"], root, offline=True, registry=reg) == [d]
    assert "model.safetensors" in sidecar_path(d).read_text()
    (d / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(WeightsMissingError, match="model.safetensors"):
        fetch_assets(["snap"], root, offline=True, registry=reg)


def test_real_registry_is_consistent():
    required = {"blip_vqa_capfilt_large", "clip_vit_l14_openai", "ovseg_vitl14_mpt",
                "resnet50_imagenet"}
    assert required <= set(REGISTRY)
    assert len({a.relpath for a in REGISTRY.values()}) == len(REGISTRY)
    l14 = REGISTRY["clip_vit_l14_openai"]
    assert l14.sha256 and l14.sha256 in l14.source  # OpenAI puts the sha256 in the URL path
    for a in REGISTRY.values():
        if a.sha256_prefix:
            assert a.sha256_prefix in Path(a.relpath).name
        assert a.kind in ("url", "hf_snapshot", "manual")
    assert W.find_asset_for_path("/x/ovseg_swinbase_vitL14_ft_mpt.pth").name == "ovseg_vitl14_mpt"


def test_cli_list_and_offline(tmp_path, capsys):
    assert W.main(["--list", "--dest", str(tmp_path)]) == 0
    assert "resnet50_imagenet" in capsys.readouterr().out
    assert W.main(["--offline", "--dest", str(tmp_path), "resnet50_imagenet"]) == 1
    err = capsys.readouterr().err
    assert "resnet50-19c8e357.pth" in err and "offline mode" in err
