"""Mask-prompt CLIP: forward semantics (method.md 6.3), real-format loading, toy round trip."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from qaclims.vlp.clip import OVSEG_PREFIX, MaskPromptClip, load_clip
from qaclims.vlp.tokenizers import WordTokenizer
from qaclims.vlp.toy_models import build_toy_clip, save_toy_clip, toy_clip_config
from qaclims.vlp.weights import WeightsMissingError

WORDS = ["a photo of a cat", "a dog on the grass", "sky", "plane", "road", "water", "boat"]
S, P = 32, 8  # tiny geometry: 4x4 patches


def _toy(seed: int = 0, depth: int = 3) -> MaskPromptClip:
    model = build_toy_clip(WORDS, image_size=S, patch_size=P, width=32, layers=3, text_layers=1,
                           context_length=12, embed_dim=16, mask_prompt_depth=depth, seed=seed)
    with torch.no_grad():
        model.mask_embedding.normal_()  # trained embeddings are not zero
    return model.eval()


def _ovseg_reference(model: MaskPromptClip, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """OVSeg's VisionTransformer.forward(x, m), written out in its LND layout."""
    v, emb, depth = model.clip.visual, model.mask_embedding, model.mask_prompt_depth
    n = x.shape[0]
    x = v.conv1(x).reshape(n, v.conv1.out_channels, -1).permute(0, 2, 1)
    m = torch.ceil(F.avg_pool2d(m.float(), P)).reshape(n, -1).unsqueeze(-1)
    x = x * m + emb[0].unsqueeze(0) * (1 - m)
    x = torch.cat([v.class_embedding + torch.zeros(n, 1, x.shape[-1]), x], dim=1)
    x = v.ln_pre(x + v.positional_embedding).permute(1, 0, 2)
    for i, blk in enumerate(v.transformer.resblocks):
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)  # open_clip blocks are batch-first
        if i + 1 < depth:
            mm = m.permute(1, 0, 2)
            masked = x[1:] * mm + emb[i + 1].unsqueeze(0).permute(1, 0, 2) * (1 - mm)
            x = torch.cat([x[:1], masked], dim=0)
    return v.ln_post(x.permute(1, 0, 2)[:, 0]) @ v.proj


@pytest.fixture(scope="module")
def toy() -> MaskPromptClip:
    return _toy()


def _masks(n: int = 3) -> torch.Tensor:
    """Random region masks: about half the patches hold some set pixels, the rest none."""
    g = torch.Generator().manual_seed(1)
    patches = F.interpolate((torch.rand(n, 1, S // P, S // P, generator=g) > 0.5).float(),
                            scale_factor=P)
    return patches * (torch.rand(n, 1, S, S, generator=g) > 0.7).float()


def test_no_mask_or_full_mask_equals_open_clip(toy):
    x = torch.randn(3, 3, S, S)
    with torch.no_grad():
        ref = toy.clip.encode_image(x)
        assert torch.allclose(toy.encode_image(x), ref, atol=1e-6)
        assert torch.allclose(toy.encode_image(x, torch.ones(3, 1, S, S, dtype=torch.bool)), ref,
                              atol=1e-6)
    assert toy.encode_image(x).shape == (3, toy.embed_dim)


@pytest.mark.parametrize("depth", [1, 3])
def test_mask_prompt_matches_ovseg_reference(depth):
    model = _toy(seed=depth, depth=depth)
    x, m = torch.randn(3, 3, S, S), _masks()
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x, m), _ovseg_reference(model, x, m), atol=1e-5)
        assert not torch.allclose(model.encode_image(x, m), model.encode_image(x), atol=1e-3)


def test_patch_kept_if_any_pixel_set(toy):
    m = torch.zeros(2, 1, S, S)
    m[0, 0, 9, 17] = 1.0  # one pixel in patch (row 1, col 2)
    m[1, 0, :8, :8] = 0.25  # soft values count as set
    keep = toy.patch_keep(m)[..., 0]
    assert keep.shape == (2, 16)
    assert keep[0].nonzero().flatten().tolist() == [1 * 4 + 2]
    assert keep[1].nonzero().flatten().tolist() == [0]


def test_dropped_patches_are_invisible_and_gradients_reach_kept_pixels(toy):
    m = torch.zeros(1, 1, S, S)
    m[..., :16, :16] = 1  # keep the top-left 2x2 patches
    x = torch.randn(1, 3, S, S, requires_grad=True)
    y = x.detach().clone()
    y[..., 16:, :] = torch.randn(1, 3, S - 16, S)  # change only dropped pixels
    with torch.no_grad():
        assert torch.allclose(toy.encode_image(y, m), toy.encode_image(x.detach(), m), atol=1e-6)
    toy.encode_image(x, m).square().sum().backward()
    assert x.grad[..., :16, :16].abs().sum() > 0
    assert x.grad[..., 16:, :].abs().sum() == 0


def test_toy_round_trip_through_ovseg_format(toy, tmp_path):
    files = save_toy_clip(toy, tmp_path / "clip")
    loaded = load_clip(files.config, None, mask_checkpoint=files.checkpoint)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.mask_prompt_depth == toy.mask_prompt_depth
    x, m = torch.randn(2, 3, S, S), _masks(2)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x, m), toy.encode_image(x, m), atol=1e-6)
        assert torch.allclose(loaded.encode_text(WORDS), toy.encode_text(WORDS), atol=1e-6)
    again = load_clip(files.config, None, mask_checkpoint=files.checkpoint)
    assert again.model_id == loaded.model_id and "@" in loaded.model_id
    saved = torch.load(files.checkpoint)["model"]
    assert saved[OVSEG_PREFIX + "visual.mask_embedding"].shape == (3, 16, 32)


def _plain_config(tmp_path, toy):
    """A model-config JSON in open_clip's model_configs format + a tokenizer beside it."""
    cfg = tmp_path / "toy-vit.json"
    cfg.write_text(json.dumps(toy.model_cfg))
    toy.tokenizer.save(tmp_path / "tokenizer.json")
    return cfg


def test_ovseg_checkpoint_with_unrelated_keys(toy, tmp_path):
    cfg = _plain_config(tmp_path, toy)
    state = dict(toy.ovseg_state_dict())
    state.update({"backbone.layers.0.blocks.0.norm1.weight": torch.ones(4),
                  "sem_seg_head.predictor.weight": torch.ones(2, 2),
                  "clip_adapter.non_object_embedding": torch.zeros(1, 16)})
    ckpt = tmp_path / "ovseg.pth"
    torch.save({"model": state, "iteration": 10}, ckpt)
    loaded = load_clip(cfg, None, mask_checkpoint=ckpt)
    x, m = torch.randn(2, 3, S, S), _masks(2)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x, m), toy.encode_image(x, m), atol=1e-6)


def test_ovseg_checkpoint_errors_name_keys(toy, tmp_path):
    cfg = _plain_config(tmp_path, toy)
    good = toy.ovseg_state_dict()

    def load_with(state):
        torch.save({"model": state}, tmp_path / "bad.pth")
        return load_clip(cfg, None, mask_checkpoint=tmp_path / "bad.pth")

    with pytest.raises(ValueError, match="visual.transformer.resblocks.1.attn.in_proj_weight"):
        load_with({k: v for k, v in good.items() if not k.endswith("1.attn.in_proj_weight")
                   or "visual" not in k})
    with pytest.raises(ValueError, match="unexpected.*visual.extra_token"):
        load_with({**good, OVSEG_PREFIX + "visual.extra_token": torch.zeros(3)})
    with pytest.raises(ValueError, match="mask_embedding"):
        load_with({k: v for k, v in good.items() if not k.endswith("mask_embedding")})
    with pytest.raises(ValueError, match="shape mismatches.*visual.proj"):
        load_with({**good, OVSEG_PREFIX + "visual.proj": torch.zeros(5, 5)})
    with pytest.raises(ValueError, match="no keys start with"):
        load_with({"backbone.x": torch.zeros(1)})
    # A checkpoint without text keys keeps the text tower (pretrained or random) as it is.
    load_with({k: v for k, v in good.items() if k.startswith(OVSEG_PREFIX + "visual.")})
    with pytest.raises(WeightsMissingError, match="ovseg_vitl14_mpt"):
        load_clip(cfg, None, mask_checkpoint=tmp_path / "ovseg_swinbase_vitL14_ft_mpt.pth")


def test_plain_clip_from_open_clip_state_dict_ignores_masks(toy, tmp_path, caplog):
    cfg = _plain_config(tmp_path, toy)
    torch.save(toy.clip.state_dict(), tmp_path / "clip.pt")
    plain = load_clip(cfg, str(tmp_path / "clip.pt"))
    assert not plain.has_mask_prompt
    x = torch.randn(2, 3, S, S)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        out = plain.encode_image(x, _masks(2))
        assert torch.allclose(out, toy.clip.encode_image(x), atol=1e-6)
    assert "masks are ignored" in caplog.text
    with pytest.raises(WeightsMissingError, match="does not exist"):
        load_clip(cfg, str(tmp_path / "missing" / "clip.pt"))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_openai_torchscript_file_sets_quick_gelu(tmp_path):
    """The OpenAI release is a TorchScript archive of a QuickGELU CLIP (ViT-L-14.pt)."""
    from qaclims.vlp.clip import build_clip

    tok = WordTokenizer(WORDS, context_length=8)
    cfg = toy_clip_config(tok.vocab_size, image_size=S, patch_size=P, width=32, layers=1,
                          text_layers=1, context_length=8, embed_dim=16)
    cfg.pop("quick_gelu")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    tok.save(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    ref = build_clip(cfg, quick_gelu=True).eval()
    torch.jit.script(ref).save(str(tmp_path / "ViT-toy.pt"))
    loaded = load_clip(tmp_path / "cfg.json", str(tmp_path / "ViT-toy.pt"))
    assert loaded.model_cfg["quick_gelu"] is True
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x), ref.encode_image(x), atol=1e-6)


def test_open_clip_tag_without_network_raises_weights_missing(monkeypatch):
    import open_clip.pretrained

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(WeightsMissingError, match="resources/weights/clip/ViT-L-14.pt"):
        load_clip("ViT-L-14", "openai")
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        load_clip("ViT-L-14", "no-such-tag")


def test_word_tokenizer_layout(tmp_path):
    tok = WordTokenizer(WORDS, context_length=6)
    ids = tok(["a photo of a cat", "zebra!", "a " * 20])
    assert ids.shape == (3, 6) and ids.dtype == torch.long
    assert tok.eot_id == tok.vocab_size - 1 == int(ids.max())  # open_clip pools at argmax
    assert ids[0].tolist()[0] == tok.sot_id and ids[1].tolist()[:3] == [tok.sot_id, tok.unk_id,
                                                                        tok.eot_id]
    assert ids[2, -1] == tok.eot_id  # truncated texts still end with the end token
    assert tok.decode(ids[0].tolist()) == "a photo of a"
    tok.save(tmp_path / "t.json")
    assert torch.equal(WordTokenizer.load(tmp_path / "t.json")(["a dog"]), tok(["a dog"]))
    assert tok.unknown_words(["a zebra"]) == {"zebra"}
