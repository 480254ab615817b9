"""External model weights: a declarative registry, checksums, and fetching (method.md section 14).

Every pretrained asset the real pipeline needs is one :class:`Asset` in :data:`REGISTRY`: where it
lives under ``resources/weights``, where it comes from, and how to check it. :func:`fetch_assets`
downloads what is missing (when the network allows), verifies it, and otherwise raises one
:class:`WeightsMissingError` that lists every missing file with its destination, its source and its
expected checksum - so a user on an offline cluster learns in one run what to copy where.

Checksums. A file whose SHA-256 is published (OpenAI's CLIP URL carries it; torchvision names carry
its first hex digits) is checked against that value. A file whose hash nobody publishes (the OVSeg
checkpoint on Google Drive) is trusted on first use: its hash is recorded in a ``<file>.sha256``
sidecar (``sha256sum`` format) and every later check compares against the sidecar. A directory
asset (a Hugging Face snapshot) records one sidecar ``<dir>.sha256`` listing each file's hash.

Unsafe pickles. Every loader reads checkpoints with ``torch.load(weights_only=True)``
(:mod:`qaclims.torch_io`). A third-party file that needs a full unpickle (the OVSeg detectron2
checkpoint holds numpy arrays) is converted once, right after its checksum is verified, into a
tensors-only ``<stem>.tensors.pt`` beside it (:func:`convert_asset`): the one place a full
unpickle runs, and only on a file whose hash matched.

This module is light on purpose (no torch, no transformers at import): the loaders import it for
:class:`WeightsMissingError` and :func:`file_sha256`, and the fetch rule runs without a GPU stack.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qaclims.store import temp_dir, temp_file

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Where the workflow keeps fetched weights (relative to the repository root).
DEFAULT_WEIGHTS_ROOT = Path("resources/weights")

SourceKind = Literal["url", "hf_snapshot", "manual"]


class WeightsMissingError(FileNotFoundError):
    """Weights are not on disk and could not be fetched; the message says what to put where."""


class ChecksumMismatchError(WeightsMissingError):
    """A weights file does not have the expected SHA-256: the right weights are missing."""


@dataclass(frozen=True)
class Asset:
    """One external file or directory the pipeline can use.

    ``relpath`` is relative to the weights root (``resources/weights``). ``kind`` says how
    :func:`fetch_assets` gets it: ``url`` (plain HTTP(S)/file download), ``hf_snapshot`` (a
    Hugging Face model repository saved as a directory) or ``manual`` (no scriptable source; the
    error message carries ``instructions``). ``sha256`` is the full expected hash when known,
    ``sha256_prefix`` the leading hex digits when only those are published (torchvision file
    names); with neither, the first verified copy's hash is recorded (trust on first use).
    """

    name: str
    relpath: str
    kind: SourceKind
    description: str
    source: str = ""
    sha256: str | None = None
    sha256_prefix: str | None = None
    instructions: str = ""
    size_hint: str = ""
    optional: bool = False
    #: hf_snapshot only: files that must exist for the directory to count as complete; each entry
    #: is a tuple of alternatives (any one of them suffices).
    required_files: tuple[tuple[str, ...], ...] = ()
    #: hf_snapshot only: glob patterns passed to ``snapshot_download(allow_patterns=...)``.
    allow_patterns: tuple[str, ...] = ()
    revision: str | None = None
    aliases: tuple[str, ...] = field(default=())
    #: A file that needs a full unpickle: :func:`fetch_assets` writes a tensors-only copy
    #: (:func:`converted_path`) after verifying its checksum, and the loaders read that copy.
    convert_to_tensors: bool = False

    def path(self, root: PathLike = DEFAULT_WEIGHTS_ROOT) -> Path:
        return Path(root) / self.relpath

    @property
    def is_dir(self) -> bool:
        return self.kind == "hf_snapshot"

    def how_to_get(self, dest: Path) -> str:
        """Human instructions for fetching this asset by hand (for error messages)."""
        if self.kind == "url":
            return f"download {self.source}  (e.g. curl -L -o {dest} '{self.source}')"
        if self.kind == "hf_snapshot":
            rev = f" --revision {self.revision}" if self.revision else ""
            return (
                f"on a machine with network: hf download {self.source}{rev} --local-dir {dest}  "
                f"(older huggingface_hub: huggingface-cli download {self.source} --local-dir "
                f"{dest}); then copy the directory here"
            )
        return self.instructions or self.source

    def expected_hash_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 starting with {self.sha256_prefix}"
        return "sha256 unknown (recorded on first use in a .sha256 sidecar)"


_BLIP_HUB_ID = "Salesforce/blip-vqa-capfilt-large"
_OPENAI_L14_SHA = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"

REGISTRY: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="blip_vqa_capfilt_large",
            relpath="blip-vqa-capfilt-large",
            kind="hf_snapshot",
            source=_BLIP_HUB_ID,
            description="BLIP ViT-B CapFilt-L fine-tuned for VQA, Hugging Face port "
            "(method.md 2.1)",
            size_hint="~1.5 GB",
            required_files=(
                ("config.json",),
                ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
                ("preprocessor_config.json", "processor_config.json"),
                ("tokenizer.json", "vocab.txt"),
            ),
            allow_patterns=("*.json", "*.txt", "*.safetensors"),
        ),
        Asset(
            name="clip_vit_l14_openai",
            relpath="clip/ViT-L-14.pt",
            kind="url",
            source=f"https://openaipublic.azureedge.net/clip/models/{_OPENAI_L14_SHA}/ViT-L-14.pt",
            sha256=_OPENAI_L14_SHA,
            description="OpenAI CLIP ViT-L/14 (TorchScript archive), text cache + base of the "
            "mask-adapted image encoder (method.md 4, 6.3)",
            size_hint="~0.9 GB",
        ),
        Asset(
            name="ovseg_vitl14_mpt",
            relpath="ovseg/ovseg_swinbase_vitL14_ft_mpt.pth",
            kind="manual",
            source="OVSeg release (facebookresearch/ov-seg README), Google Drive id "
            "1cn-ohxgXDrDfkzC1QdO-fi8IjbjXmgKy",
            instructions=(
                "OVSeg checkpoint 'ovseg_swinbase_vitL14_ft_mpt.pth' from the OVSeg README "
                "(Google Drive): on a machine with network run `pip install gdown && gdown "
                "1cn-ohxgXDrDfkzC1QdO-fi8IjbjXmgKy -O ovseg_swinbase_vitL14_ft_mpt.pth`; the "
                "facebook/ov-seg Hugging Face Space reportedly hosts the same file. Only the "
                "clip_adapter.clip_model.* keys (incl. visual.mask_embedding [3,256,1024]) are "
                "used; the standalone OVSeg CLIP release lacks the mask embedding"
            ),
            description="OVSeg Swin-B + mask-prompt-tuned CLIP ViT-L/14 (method.md 6.3, 14.3)",
            size_hint=">1 GB",
            convert_to_tensors=True,  # detectron2 pickles numpy arrays
        ),
        Asset(
            name="resnet50_imagenet",
            relpath="torchvision/resnet50-19c8e357.pth",
            kind="url",
            source="https://download.pytorch.org/models/resnet50-19c8e357.pth",
            sha256_prefix="19c8e357",
            description="torchvision ResNet-50 ImageNet weights as used by IRN/CLIMS (method.md 5)",
            size_hint="~100 MB",
        ),
        Asset(
            name="resnet101_imagenet",
            relpath="torchvision/resnet101-63fe2227.pth",
            kind="url",
            source="https://download.pytorch.org/models/resnet101-63fe2227.pth",
            sha256_prefix="63fe2227",
            description="torchvision ResNet-101 ImageNet weights (IMAGENET1K_V1)",
            size_hint="~170 MB",
            optional=True,
        ),
        Asset(
            name="deeplab_resnet101_imagenet",
            relpath="deeplab/deeplabv1_resnet101-imagenet.pth",
            kind="manual",
            source="CLIMS segmentation/deeplabv2 README (Google Drive) or "
            "kazuto1011/deeplab-pytorch",
            instructions=(
                "'deeplabv1_resnet101-imagenet.pth' from the CLIMS segmentation README (Google "
                "Drive), or convert the DeepLab v1 caffemodel with kazuto1011/deeplab-pytorch "
                "(scripts/setup_caffemodels.sh + convert.py --dataset init)"
            ),
            description="DeepLab-v2 ResNet-101 ImageNet initialisation (method.md 10, 14.6)",
            size_hint="~170 MB",
            optional=True,
        ),
    ]
}


def get_asset(name: str, registry: dict[str, Asset] | None = None) -> Asset:
    reg = REGISTRY if registry is None else registry
    if name not in reg:
        raise KeyError(f"unknown weights asset {name!r}; known: {', '.join(sorted(reg))}")
    return reg[name]


def asset_path(name: str, root: PathLike = DEFAULT_WEIGHTS_ROOT) -> Path:
    """The path where asset ``name`` lives under ``root``."""
    return get_asset(name).path(root)


def find_asset_for_path(path: PathLike, registry: dict[str, Asset] | None = None) -> Asset | None:
    """The registered asset whose file name matches ``path`` (for helpful error messages)."""
    reg = REGISTRY if registry is None else registry
    name = Path(path).name
    for a in reg.values():
        if Path(a.relpath).name == name:
            return a
    return None


# ---------------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------------

_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file (hex), memoised per process on (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


def files_sha256(paths: Iterable[PathLike]) -> str:
    """One hash over several files: SHA-256 of their sorted (name, sha256) lines."""
    lines = sorted(f"{Path(p).name} {file_sha256(p)}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def weights_id(name: str, paths: Iterable[PathLike], n: int = 12) -> str:
    """A stable identifier for a model's weights: ``name@<first n hex of their hash>``."""
    return f"{name}@{files_sha256(paths)[:n]}"


def sidecar_path(path: PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def read_sidecar(path: PathLike) -> dict[str, str]:
    """Read ``<path>.sha256`` (sha256sum format) as {relative file name: hash}; {} if absent."""
    sc = sidecar_path(path)
    if not sc.is_file():
        return {}
    out: dict[str, str] = {}
    for line in sc.read_text().splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            out[name.strip()] = digest.strip().lower()
    return out


def write_sidecar(path: PathLike, hashes: dict[str, str]) -> None:
    sc = sidecar_path(path)
    tmp = temp_file(sc.parent, prefix=f".{sc.name}.")
    with open(tmp, "w") as f:
        for name in sorted(hashes):
            f.write(f"{hashes[name]}  {name}\n")
    os.replace(tmp, sc)


def _check_digest(path: Path, actual: str, asset: Asset, recorded: str | None) -> None:
    if asset.sha256 and actual != asset.sha256.lower():
        expected = asset.sha256
    elif asset.sha256_prefix and not actual.startswith(asset.sha256_prefix.lower()):
        expected = f"{asset.sha256_prefix}..."
    elif recorded and actual != recorded:
        expected = f"{recorded} (recorded in {sidecar_path(path)})"
    else:
        return
    raise ChecksumMismatchError(
        f"checksum mismatch for {path} (asset {asset.name}): expected sha256 {expected}, "
        f"actual {actual}"
    )


def verify_asset(asset: Asset, root: PathLike = DEFAULT_WEIGHTS_ROOT) -> Path:
    """Check that an asset present on disk is complete and has the right hash(es).

    Records the hash(es) in the sidecar when none is recorded yet. Raises
    :class:`ChecksumMismatchError` (this function leaves the file where it is; :func:`fetch_assets`
    moves it aside) or :class:`WeightsMissingError` for an incomplete directory.
    """
    path = asset.path(root)
    if asset.is_dir:
        missing = _missing_required(asset, path)
        if missing:
            raise WeightsMissingError(
                f"{path} (asset {asset.name}) is incomplete: no {', '.join(missing)}"
            )
        recorded = read_sidecar(path)
        files = sorted(
            f.relative_to(path).as_posix()
            for f in path.rglob("*")
            if f.is_file() and ".cache" not in f.relative_to(path).parts
        )
        actual = {name: file_sha256(path / name) for name in files}
        bad = [n for n, h in recorded.items() if n in actual and actual[n] != h]
        gone = [n for n in recorded if n not in actual]
        if bad or gone:
            raise ChecksumMismatchError(
                f"{path} (asset {asset.name}) differs from {sidecar_path(path)}: "
                + "; ".join(
                    [f"{n}: expected {recorded[n]}, actual {actual[n]}" for n in bad]
                    + [f"{n}: missing" for n in gone]
                )
            )
        if not recorded:
            write_sidecar(path, actual)
        return path
    recorded = read_sidecar(path).get(path.name)
    actual = file_sha256(path)
    _check_digest(path, actual, asset, recorded)
    if recorded is None:
        write_sidecar(path, {path.name: actual})
    return path


def _missing_required(asset: Asset, path: Path) -> list[str]:
    if not path.is_dir():
        return ["directory"]
    return [" or ".join(alts) for alts in asset.required_files if not any(
        (path / a).is_file() for a in alts)]


def is_present(asset: Asset, root: PathLike = DEFAULT_WEIGHTS_ROOT) -> bool:
    path = asset.path(root)
    if asset.is_dir:
        return not _missing_required(asset, path)
    return path.is_file()


# ---------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------


def download_url(url: str, dest: PathLike, *, asset: Asset | None = None, timeout: float = 60.0
                 ) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying the asset's checksum while streaming.

    A mismatching download is deleted and :class:`ChecksumMismatchError` raised. Works for
    ``file://`` URLs too (used by the tests).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 22):
                h.update(block)
                out.write(block)
        actual = h.hexdigest()
        if asset is not None:
            _check_digest(dest, actual, asset, read_sidecar(dest).get(dest.name))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    st = dest.resolve().stat()
    _HASH_MEMO[(str(dest.resolve()), st.st_size, st.st_mtime_ns)] = actual
    write_sidecar(dest, {dest.name: actual})
    return dest


def download_hf_snapshot(asset: Asset, dest: PathLike) -> Path:
    """Download a Hugging Face model repository into ``dest`` (atomically: temp dir + rename)."""
    from huggingface_hub import snapshot_download

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(dest.parent, prefix=f".{dest.name}.")
    try:
        snapshot_download(
            repo_id=asset.source, revision=asset.revision, local_dir=tmp,
            allow_patterns=list(asset.allow_patterns) or None,
        )
        if _missing_required(asset, tmp) and not (tmp / "model.safetensors").exists():
            # Older repositories ship only pytorch_model.bin.
            snapshot_download(repo_id=asset.source, revision=asset.revision, local_dir=tmp,
                              allow_patterns=["pytorch_model.bin"])
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        missing = _missing_required(asset, tmp)
        if missing:
            raise WeightsMissingError(
                f"snapshot of {asset.source} lacks {', '.join(missing)}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _download(asset: Asset, dest: Path) -> None:
    if asset.kind == "url":
        download_url(asset.source, dest, asset=asset)
    elif asset.kind == "hf_snapshot":
        download_hf_snapshot(asset, dest)
    else:
        raise WeightsMissingError(f"{asset.name} has no scriptable source")


def _reject(path: Path) -> Path:
    """Move a file or directory that failed verification aside so that nothing uses it."""
    bad = path.with_name(path.name + ".rejected")
    if bad.is_dir():
        shutil.rmtree(bad)
    elif bad.exists():
        bad.unlink()
    os.replace(path, bad)  # the sidecar (if any) stays: it is the trust anchor for the next copy
    return bad


def _missing_entry(asset: Asset, dest: Path, reason: str = "") -> str:
    why = f"\n      why:  {reason}" if reason else ""
    what = "directory" if asset.is_dir else "file"
    opt = " (optional)" if asset.optional else ""
    size = f" [{asset.size_hint}]" if asset.size_hint else ""
    return (
        f"  - {asset.name}{opt}: {asset.description}{size}\n"
        f"      put the {what} at: {dest}\n"
        f"      get it:   {asset.how_to_get(dest)}\n"
        f"      expected: {asset.expected_hash_text()}{why}"
    )


def fetch_assets(
    names: Sequence[str],
    dest_root: PathLike = DEFAULT_WEIGHTS_ROOT,
    *,
    offline: bool,
    registry: dict[str, Asset] | None = None,
) -> list[Path]:
    """Make sure every named asset is present and verified under ``dest_root``.

    Present assets are verified; one with a wrong checksum is moved aside to ``*.rejected``
    (never used, never silently deleted) and counts as missing. Missing assets are downloaded
    unless ``offline`` (atomically; a download with a wrong checksum is deleted). Everything still
    missing at the end - and why - is reported in one :class:`WeightsMissingError` that lists
    each file's destination, source and expected checksum. Returns the paths in ``names`` order.
    """
    reg = REGISTRY if registry is None else registry
    assets = [get_asset(n, reg) for n in names]
    paths: list[Path] = []
    missing: list[str] = []
    for asset in assets:
        dest = asset.path(dest_root)
        paths.append(dest)
        reason = ""
        if is_present(asset, dest_root):
            try:
                verify_asset(asset, dest_root)
            except ChecksumMismatchError as e:
                reason = f"{e}; the bad copy was moved to {_reject(dest)}"
                log.error("%s", reason)
            else:
                log.info("%s: present and verified at %s", asset.name, dest)
                convert_asset(asset, dest_root)
                continue
        elif asset.is_dir and dest.exists():
            reason = f"{dest} is incomplete: no {', '.join(_missing_required(asset, dest))}"
        if offline:
            missing.append(_missing_entry(
                asset, dest, "; ".join(filter(None, [reason, "offline mode: downloads disabled"]))))
            continue
        if asset.kind == "manual":
            missing.append(_missing_entry(asset, dest, reason or "no scriptable download source"))
            continue
        log.info("%s: downloading %s -> %s", asset.name, asset.source, dest)
        try:
            _download(asset, dest)
            verify_asset(asset, dest_root)
            convert_asset(asset, dest_root)
        except Exception as e:  # checksum, network and hub errors, HTTP 404, ...
            log.error("%s: download failed: %s", asset.name, e)
            if isinstance(e, ChecksumMismatchError) and dest.exists():
                _reject(dest)
            missing.append(_missing_entry(asset, dest, f"download failed: {e}"))
    if missing:
        raise WeightsMissingError(
            f"{len(missing)} of {len(assets)} weight assets are missing under {dest_root}:\n"
            + "\n".join(missing)
            + "\nPlace them there (or run the fetch_weights rule on a machine with network) "
            "and rerun."
        )
    return paths


def converted_path(path: PathLike) -> Path:
    """The tensors-only copy of a file that needs a full unpickle (``x.pth`` -> ``x.tensors.pt``).
    """
    p = Path(path)
    return p.with_name(p.stem + ".tensors.pt")


def asset_outputs(asset: Asset, root: PathLike = DEFAULT_WEIGHTS_ROOT) -> list[Path]:
    """The files :func:`fetch_assets` leaves for ``asset``: its path, plus the converted copy."""
    path = asset.path(root)
    return [path, converted_path(path)] if asset.convert_to_tensors else [path]


def convert_asset(asset: Asset, root: PathLike = DEFAULT_WEIGHTS_ROOT) -> Path | None:
    """Write the tensors-only copy of a verified asset (``convert_to_tensors``); None for others.

    Call only after :func:`verify_asset` passed: this is the one full unpickle in the project,
    and the checksum is what makes the file trusted. The copy holds ``{"model": {key: tensor}
    (numpy arrays become tensors, other values are dropped), "source_sha256"}``; it is rewritten
    when the verified file's hash (from its sidecar) differs from the one it records.
    """
    if not asset.convert_to_tensors:
        return None
    import numpy as np
    import torch

    from qaclims.store import atomic_path, save_torch

    src = asset.path(root)
    sha = read_sidecar(src).get(src.name) or file_sha256(src)
    out = converted_path(src)
    if out.is_file():
        from qaclims.torch_io import CheckpointError, safe_load

        try:
            if safe_load(out, "converted weights").get("source_sha256") == sha:
                return out
        except CheckpointError as err:
            log.warning("%s; converting again", err)
    log.info("%s: converting %s (sha256 %s, verified) to tensors-only %s", asset.name, src, sha,
             out)
    obj = torch.load(src, map_location="cpu", weights_only=False)  # verified above
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{src}: expected a dict (with a 'model' state dict), got "
                         f"{type(obj).__name__}")
    tensors = {str(k): torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in state.items() if isinstance(v, np.ndarray | torch.Tensor)}
    with atomic_path(out) as tmp:
        save_torch({"model": tensors, "source_sha256": sha}, tmp)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m qaclims.vlp.weights [--offline] [--dest DIR] NAME...`` (``--list``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="asset names (default: all non-optional)")
    ap.add_argument("--dest", default=str(DEFAULT_WEIGHTS_ROOT))
    ap.add_argument("--offline", action="store_true",
                    default=os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"))
    ap.add_argument("--list", action="store_true", help="list the registry and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list:
        for a in REGISTRY.values():
            opt = " (optional)" if a.optional else ""
            print(f"{a.name}{opt}: {a.path(args.dest)}  <- {a.source}")
        return 0
    names = args.names or [a.name for a in REGISTRY.values() if not a.optional]
    try:
        paths = fetch_assets(names, args.dest, offline=args.offline)
    except WeightsMissingError as e:
        print(e, file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
