"""CLIP with OVSeg's mask prompt, built on open_clip (method.md 6.3, 4).

QA-CLIMS encodes masked image regions with OVSeg's mask-prompt-tuned CLIP ViT-L/14: patches
outside the region are replaced by learned "mask embedding" tokens, so the encoder never sees
what lies outside. :class:`MaskPromptClip` reproduces that on an ordinary open_clip ``CLIP``:

- ``masks [n,1,H,W]`` -> average per patch -> a patch is *kept* if any of its pixels is set
  (OVSeg: ``ceil(AvgPool2d(patch)(m))``);
- the patch tokens of dropped patches are replaced by ``mask_embedding[0]`` right after the patch
  projection (before class token, positional embedding and ``ln_pre``), and by
  ``mask_embedding[d]`` after transformer block ``d`` for ``d = 1 .. depth-1``;
- output ``ln_post(CLS) @ proj`` - not normalised.

The forward is written here over the modules of ``open_clip``'s ``VisionTransformer`` (``conv1``,
``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``,
``proj``); with no mask (or an all-ones mask) it equals ``open_clip``'s ``encode_image``.

Without a mask checkpoint the model is a plain CLIP and **masks are ignored** (a warning is logged
once): the mask prompt needs trained mask embeddings. Either way the caller multiplies the pixels
by the soft CAM (method.md 6.4); with ``use_mask_clip: false`` it multiplies by ``P*b`` itself.

Weights: ``arch`` is an open_clip model name (``"ViT-L-14"``) or the path of an open_clip
model-config JSON (toy models); ``pretrained`` an open_clip tag (``"openai"``), a local file (the
OpenAI TorchScript ``ViT-L-14.pt`` or an open_clip state dict) or None; ``mask_checkpoint`` an
OVSeg-style checkpoint ``{"model": {"clip_adapter.clip_model.<CLIP key>": tensor, ...}}`` whose
CLIP weights replace the pretrained ones and whose ``visual.mask_embedding`` enables the prompt.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qaclims.vlp.tokenizers import WordTokenizer
from qaclims.vlp.weights import (
    WeightsMissingError,
    files_sha256,
    find_asset_for_path,
)

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Key prefix of the CLIP inside an OVSeg checkpoint's ``model`` dict.
OVSEG_PREFIX = "clip_adapter.clip_model."
MASK_EMBEDDING_KEY = "visual.mask_embedding"
#: open_clip's config file name inside a model directory ("local-dir:" layout).
OPEN_CLIP_CONFIG = "open_clip_config.json"
TOKENIZER_FILE = "tokenizer.json"
_OPENAI_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


class MaskPromptClip(nn.Module):
    """An open_clip ``CLIP`` plus an optional OVSeg mask prompt (see the module docstring).

    Attributes: ``clip`` (the open_clip model), ``mask_embedding`` (``Parameter[depth', L|1,
    width]`` or None), ``mask_prompt_depth``, ``tokenizer`` (callable: list[str] ->
    ``LongTensor[n, ctx]``), ``model_id`` (stable weights identifier), ``mean``/``std`` (the
    normalisation the weights were trained with), ``model_cfg`` (open_clip config dict).
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any,
        *,
        mask_embedding: torch.Tensor | None = None,
        mask_prompt_depth: int | None = None,
        model_id: str = "unsaved",
        model_cfg: dict[str, Any] | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ):
        super().__init__()
        _check_plain_vit(clip)
        self.clip = clip
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.model_cfg = dict(model_cfg or {})
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._warned_no_prompt = False
        if mask_embedding is None:
            self.register_parameter("mask_embedding", None)
            self.mask_prompt_depth = 0
        else:
            depth = int(mask_embedding.shape[0]) if mask_prompt_depth is None else mask_prompt_depth
            expected = (self.n_patches, self.width)
            if (mask_embedding.ndim != 3 or mask_embedding.shape[1] not in (1, expected[0])
                    or mask_embedding.shape[2] != expected[1]):
                raise ValueError(
                    f"mask_embedding has shape {tuple(mask_embedding.shape)}; expected "
                    f"[depth, {expected[0]} (or 1), {expected[1]}] for this CLIP")
            if not 1 <= depth <= mask_embedding.shape[0]:
                raise ValueError(f"mask_prompt_depth {depth} needs 1..{mask_embedding.shape[0]} "
                                 f"mask embeddings; the checkpoint has {mask_embedding.shape[0]}")
            w = self.clip.visual.conv1.weight
            self.mask_embedding = nn.Parameter(mask_embedding.detach().to(w.device, w.dtype))
            self.mask_prompt_depth = depth

    # -- geometry ------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        return int(self.clip.visual.image_size[0])

    @property
    def patch_size(self) -> int:
        return int(self.clip.visual.patch_size[0])

    @property
    def grid_size(self) -> int:
        return int(self.clip.visual.grid_size[0])

    @property
    def n_patches(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def width(self) -> int:
        return int(self.clip.visual.conv1.out_channels)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.output_dim)

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def has_mask_prompt(self) -> bool:
        return self.mask_embedding is not None

    # -- image tower ---------------------------------------------------------------------------

    def patch_keep(self, masks: torch.Tensor) -> torch.Tensor:
        """``[n,1,H,W]`` (or ``[n,H,W]``) masks -> ``[n, L, 1]`` float: 1 = patch kept.

        A patch is kept if any of its pixels is non-zero (OVSeg: ceil of the per-patch mean).
        """
        if masks.ndim == 3:
            masks = masks[:, None]
        if masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks must be [n,1,H,W], got {tuple(masks.shape)}")
        with torch.no_grad():
            pooled = F.avg_pool2d(masks.float(), kernel_size=self.patch_size,
                                  stride=self.patch_size)
            keep = (pooled > 0).flatten(1)[..., None]
        return keep.to(self.clip.visual.conv1.weight.dtype)

    def encode_image(self, images: torch.Tensor, masks: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """``[n,3,S,S]`` normalised images (+ optional ``[n,1,S,S]`` masks) -> ``[n, D]``.

        Features are not normalised. Gradients flow to ``images``.
        """
        v = self.clip.visual
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[-2:]) != (s, s):
            raise ValueError(f"images must be [n,3,{s},{s}], got {tuple(images.shape)}")
        keep = None
        if masks is not None:
            if tuple(masks.shape[-2:]) != (s, s) or masks.shape[0] != images.shape[0]:
                raise ValueError(f"masks {tuple(masks.shape)} do not match images "
                                 f"{tuple(images.shape)}")
            if self.mask_embedding is None:
                if not self._warned_no_prompt:
                    log.warning("CLIP %s has no mask embedding: masks are ignored (plain CLIP)",
                                self.model_id)
                    self._warned_no_prompt = True
            else:
                keep = self.patch_keep(masks)
                emb = self.mask_embedding.to(images.device)

        x = v.conv1(images.to(v.conv1.weight.dtype))  # [n, width, g, g]
        x = x.flatten(2).transpose(1, 2)  # [n, L, width]
        if keep is not None:
            x = x * keep + emb[0] * (1 - keep)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)

        batch_first = getattr(v.transformer, "batch_first", True)
        for d, block in enumerate(v.transformer.resblocks, start=1):
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
            if keep is not None and d < self.mask_prompt_depth:
                x = torch.cat([x[:, :1], x[:, 1:] * keep + emb[d] * (1 - keep)], dim=1)

        pooled = v.ln_post(x[:, 0])
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled

    # -- text tower ----------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts))

    def encode_text(self, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Texts (or token ids ``[n, ctx]``) -> ``[n, D]`` unnormalised text features."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        tokens = tokens.to(self.clip.token_embedding.weight.device)
        return self.clip.encode_text(tokens)

    # -- saving --------------------------------------------------------------------------------

    def ovseg_state_dict(self, prefix: str = OVSEG_PREFIX) -> dict[str, torch.Tensor]:
        """CLIP weights (+ mask embedding) keyed as in an OVSeg checkpoint's ``model`` dict."""
        state = {prefix + k: v.detach().cpu().clone() for k, v in self.clip.state_dict().items()}
        if self.mask_embedding is not None:
            emb = self.mask_embedding.detach().cpu().clone()
            state[prefix + MASK_EMBEDDING_KEY] = emb[: self.mask_prompt_depth]
        return state


def _check_plain_vit(clip: nn.Module) -> None:
    """The mask prompt forward supports open_clip's standard ViT image tower only."""
    from open_clip.transformer import VisionTransformer

    v = getattr(clip, "visual", None)
    problems = []
    if not isinstance(v, VisionTransformer):
        problems.append(f"image tower is {type(v).__name__}, not a VisionTransformer")
    else:
        if v.attn_pool is not None:
            problems.append("attentional pooling")
        if v.pool_type != "tok":
            problems.append(f"pool_type={v.pool_type!r}")
        if v.final_ln_after_pool:
            problems.append("final_ln_after_pool")
        if not isinstance(v.patch_dropout, nn.Identity):
            problems.append("patch dropout")
    if not hasattr(clip, "token_embedding"):
        problems.append("custom text tower (expected open_clip's built-in text transformer)")
    if problems:
        raise ValueError("MaskPromptClip needs a plain open_clip ViT CLIP; unsupported: "
                         + ", ".join(problems))


# ---------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------


def read_model_config(
    arch: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """Resolve ``arch`` to ``(model_cfg, extras, config_path)``.

    ``arch`` is a built-in open_clip name, a model-config JSON (open_clip's ``model_configs``
    format), an ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``) or a
    directory holding one. ``extras`` holds ``preprocess_cfg`` and this project's ``qaclims``
    block (tokenizer file, mask prompt depth) when present.
    """
    p = Path(arch)
    if p.is_dir():
        p = p / OPEN_CLIP_CONFIG
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"open_clip model config {p} does not exist")
        data = json.loads(p.read_text())
        if "model_cfg" in data:
            extras = {k: v for k, v in data.items() if k != "model_cfg"}
            return dict(data["model_cfg"]), extras, p
        return data, {}, p
    import open_clip

    cfg = open_clip.get_model_config(str(arch).replace("/", "-"))
    if cfg is None:
        raise ValueError(f"unknown open_clip model {arch!r} (not a file either); e.g. ViT-L-14, "
                         f"ViT-B-16, or the path of a model-config JSON")
    return dict(cfg), {}, None


def build_clip(model_cfg: dict[str, Any], *, quick_gelu: bool | None = None) -> nn.Module:
    """An open_clip ``CLIP`` (random init) from a model config dict."""
    from open_clip.model import CLIP

    cfg = dict(model_cfg)
    if cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ValueError("custom/HF text towers are not supported by MaskPromptClip")
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        raise ValueError("timm image towers are not supported by MaskPromptClip")
    if quick_gelu is not None:
        cfg["quick_gelu"] = quick_gelu
    return CLIP(**cfg)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _load_mask_checkpoint(path: Path) -> Any:
    """The mask checkpoint, read weights-only: its tensors-only copy when ``fetch_weights`` made
    one (the OVSeg file pickles numpy arrays and is never fully unpickled here), else the file.
    A file that would need a full unpickle is refused with how to convert it."""
    from qaclims.torch_io import UnsafeCheckpointError, safe_load
    from qaclims.vlp.weights import converted_path, read_sidecar

    converted = converted_path(path)
    if converted.is_file():
        ckpt = safe_load(converted, "converted mask checkpoint")
        recorded = read_sidecar(path).get(path.name)
        if recorded is not None and ckpt.get("source_sha256") != recorded:
            raise ValueError(
                f"{converted} was made from another {path.name} (sha256 "
                f"{ckpt.get('source_sha256')}, the file's sidecar says {recorded}): rerun "
                "fetch_weights to convert it again")
        return ckpt
    try:
        return safe_load(path, "mask checkpoint")
    except UnsafeCheckpointError as err:
        asset = find_asset_for_path(path)
        how = (f"`python -m qaclims.vlp.weights {asset.name}` or the fetch_weights rule"
               if asset else "qaclims.vlp.weights.convert_asset")
        raise UnsafeCheckpointError(
            f"{err} Convert it once with {how}: it verifies the checksum, then writes the "
            f"tensors-only {converted} that this loader reads.") from None


def _resolve_pretrained(arch_name: str, pretrained: str) -> tuple[Path, bool]:
    """``(file, quick_gelu)`` for an open_clip tag or a local file."""
    p = Path(pretrained)
    if p.is_file():
        return p, _is_torchscript(p)
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(arch_name, pretrained)
    if not cfg:
        if p.suffix or os.sep in pretrained:
            asset = find_asset_for_path(p)
            hint = (f" It is asset {asset.name!r}: run the fetch_weights rule, or "
                    f"{asset.how_to_get(p)}.") if asset else ""
            raise WeightsMissingError(f"CLIP weights file {p} does not exist.{hint}")
        raise ValueError(f"{pretrained!r} is neither a file nor an open_clip tag of {arch_name} "
                         f"(tags: {open_clip.list_pretrained_tags_by_model(arch_name)})")
    try:
        path = Path(download_pretrained(cfg))
    except Exception as e:
        hint = ""
        if arch_name == "ViT-L-14" and pretrained == "openai":
            hint = (" Or pass the local file resources/weights/clip/ViT-L-14.pt (asset "
                    "'clip_vit_l14_openai', fetched by the fetch_weights rule).")
        raise WeightsMissingError(
            f"open_clip weights {arch_name}/{pretrained} are not cached and could not be "
            f"downloaded ({type(e).__name__}: {e}). On a machine with network, download "
            f"{cfg.get('url') or cfg.get('hf_hub')} and pass its path as `pretrained`.{hint}"
        ) from e
    return path, bool(cfg.get("quick_gelu", False)) or _is_torchscript(path)


def load_clip_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a full CLIP checkpoint (OpenAI TorchScript or open_clip state dict), strictly."""
    path = Path(path)
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        # TorchScript keeps attributes and non-persistent buffers (attn_mask) in its state dict.
        own, buffers = model.state_dict(), dict(model.named_buffers())
        state = {k: v for k, v in state.items()
                 if k in own or (k not in _OPENAI_JIT_EXTRA_KEYS and k not in buffers)}
        model.load_state_dict(state, strict=True)
    else:
        from open_clip.factory import load_checkpoint

        load_checkpoint(model, str(path), strict=True)


def load_ovseg_clip_weights(model: nn.Module, path: str | os.PathLike[str], *,
                            prefix: str = OVSEG_PREFIX) -> torch.Tensor:
    """Load the CLIP inside an OVSeg-style checkpoint into ``model``; return its mask embedding.

    Only keys under ``prefix`` are read (``backbone.*``, ``sem_seg_head.*`` ... are ignored).
    Every image-tower key plus ``visual.mask_embedding`` must be present; text-tower keys are
    loaded when present (all of them then) and otherwise left as they are. Missing, unexpected
    or mis-shaped keys raise ``ValueError`` naming them.
    """
    from qaclims.vlp.backbones import _short

    path = Path(path)
    if not path.is_file():
        asset = find_asset_for_path(path)
        hint = (f" It is asset {asset.name!r}: {asset.how_to_get(path)}.") if asset else ""
        raise WeightsMissingError(f"mask checkpoint {path} does not exist.{hint}")
    ckpt = _load_mask_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict")
    sub = {k[len(prefix):]: _as_tensor(v) for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"{path}: no keys start with {prefix!r} (first keys: "
                         f"{_short(list(state)[:5])}) - not an OVSeg checkpoint?")
    mask_embedding = sub.pop(MASK_EMBEDDING_KEY, None)
    for k in _OPENAI_JIT_EXTRA_KEYS:
        sub.pop(k, None)
    own = model.state_dict()
    text_keys = [k for k in own if not k.startswith("visual.") and k != "logit_scale"]
    has_text = any(k in sub for k in text_keys)
    missing = [k for k in own if k.startswith("visual.") and k not in sub]
    if has_text:
        missing += [k for k in text_keys if k not in sub]
    if mask_embedding is None:
        missing.append(MASK_EMBEDDING_KEY + " (a CLIP checkpoint without mask prompt tuning: the "
                       "standalone OVSeg CLIP release lacks it; use ovseg_swinbase_vitL14_ft_mpt)")
    unexpected = [k for k in sub if k not in own]
    shapes = [f"{k}: file {tuple(sub[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sub if k in own and tuple(sub[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {prefix}* keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {prefix}* keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_short(shapes)}")
        raise ValueError(f"mask checkpoint {path} does not fit this CLIP: " + "; ".join(parts))
    model.load_state_dict(sub, strict=False)
    log.info("loaded OVSeg CLIP weights from %s (%s text tower, mask embedding %s)", path,
             "with" if has_text else "without", tuple(mask_embedding.shape))
    return mask_embedding.float()


def _as_tensor(v: Any) -> Any:
    import numpy as np

    return torch.from_numpy(v) if isinstance(v, np.ndarray) else v


def _load_tokenizer(model_cfg: dict[str, Any], extras: dict[str, Any], config_path: Path | None,
                    arch_name: str) -> Any:
    text_cfg = model_cfg.get("text_cfg", {})
    ctx = int(text_cfg.get("context_length", 77))
    vocab_size = int(text_cfg.get("vocab_size", 49408))
    if config_path is not None:
        name = extras.get("qaclims", {}).get("tokenizer", TOKENIZER_FILE)
        tok_path = config_path.parent / name
        if tok_path.is_file():
            tok = WordTokenizer.load(tok_path)
            if tok.vocab_size != vocab_size or tok.context_length != ctx:
                raise ValueError(
                    f"tokenizer {tok_path} (vocab {tok.vocab_size}, context {tok.context_length})"
                    f" does not match {config_path} (vocab {vocab_size}, context {ctx})")
            return tok
    if vocab_size == 49408:
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=ctx)
    raise FileNotFoundError(f"{arch_name}: vocab size {vocab_size} needs a word tokenizer file "
                            f"({TOKENIZER_FILE}) beside the config")


def load_clip(
    arch: str | os.PathLike[str],
    pretrained: str | os.PathLike[str] | None,
    *,
    mask_checkpoint: str | os.PathLike[str] | None = None,
    mask_prompt_depth: int | None = None,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
) -> MaskPromptClip:
    """Load a (mask-prompt) CLIP as a frozen encoder: eval mode, ``requires_grad=False``.

    ``mask_prompt_depth`` defaults to the number of mask embeddings in the checkpoint (3 for
    OVSeg). ``quick_gelu`` defaults to: the config's own setting, else True when the weights are
    OpenAI's (tag ``openai``, a TorchScript file) or an OVSeg checkpoint on a built-in arch -
    OpenAI CLIP and OVSeg use QuickGELU; open_clip's plain ``ViT-L-14`` config does not.
    Raises :class:`WeightsMissingError` for absent files, ``ValueError`` for mismatched ones.
    """
    model_cfg, extras, config_path = read_model_config(arch)
    arch_name = (config_path.parent.name if config_path is not None
                 and config_path.name == OPEN_CLIP_CONFIG else
                 config_path.stem if config_path is not None else str(arch).replace("/", "-"))
    files: list[Path] = [p for p in [config_path] if p is not None]
    tag_gelu = False
    weights_path = None
    if pretrained is not None:
        weights_path, tag_gelu = _resolve_pretrained(arch_name, str(pretrained))
        files.append(weights_path)
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False)) or tag_gelu or (
            mask_checkpoint is not None and config_path is None)
    clip = build_clip(model_cfg, quick_gelu=quick_gelu)
    if weights_path is not None:
        load_clip_weights(clip, weights_path)
    mask_embedding = None
    if mask_checkpoint is not None:
        mask_embedding = load_ovseg_clip_weights(clip, mask_checkpoint)
        files.append(Path(mask_checkpoint))
    if weights_path is None and mask_checkpoint is None:
        log.warning("CLIP %s: random initialisation (no pretrained weights, no mask checkpoint)",
                    arch_name)
    tokenizer = _load_tokenizer(model_cfg, extras, config_path, arch_name)
    if isinstance(tokenizer, WordTokenizer) and config_path is not None:
        files.append(config_path.parent / extras.get("qaclims", {}).get("tokenizer",
                                                                         TOKENIZER_FILE))
    pre = extras.get("preprocess_cfg", {})
    tag = f"/{pretrained}" if pretrained is not None and not Path(str(pretrained)).is_file() else ""
    model_id = f"{arch_name}{tag}{'+mask' if mask_checkpoint else ''}"
    model_id += f"@{files_sha256(files)[:12]}" if files else "@random"
    depth = mask_prompt_depth
    if depth is None and mask_embedding is not None:
        depth = int(extras.get("qaclims", {}).get("mask_prompt_depth", mask_embedding.shape[0]))
    model = MaskPromptClip(
        clip, tokenizer, mask_embedding=mask_embedding, mask_prompt_depth=depth,
        model_id=model_id, model_cfg=dict(model_cfg, quick_gelu=quick_gelu),
        mean=pre.get("mean", OPENAI_CLIP_MEAN), std=pre.get("std", OPENAI_CLIP_STD),
    )
    model.requires_grad_(False)
    return model.eval().to(device)
