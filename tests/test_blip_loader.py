"""BLIP VQA: toy model built from transformers' classes, saved with save_pretrained, loaded
offline through the same loader as the real weights; the VQA protocol (method.md 2.1, 2.4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from qaclims.vlp.blip import (
    BlipVqa,
    load_blip_vqa,
    preprocess_images,
    resolve_enc_token_id,
)
from qaclims.vlp.toy_models import (
    blip_training_batch,
    build_corpus_bert_tokenizer,
    build_toy_blip_vqa,
    save_toy_blip_vqa,
)
from qaclims.vlp.weights import WeightsMissingError

CORPUS = ["what is in the photo?", "what color is the cat?", "where is the dog?", "cat", "dog",
          "grass", "red", "on the grass"]
QUESTIONS = ["what is in the photo?", "where is the dog?"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("blip")
    tok = build_corpus_bert_tokenizer(CORPUS, d / "tok")
    model, proc = build_toy_blip_vqa(tok, image_size=48, patch_size=12, hidden=32, layers=1,
                                     heads=2, seed=0)
    model.eval()
    out = save_toy_blip_vqa(model, proc, d / "model")
    return tok, model, proc, out


@pytest.fixture(scope="module")
def vqa(toy) -> BlipVqa:
    return load_blip_vqa(toy[3])


def _image(w: int = 70, h: int = 50, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_corpus_tokenizer(toy):
    tok = toy[0]
    vocab = (toy[3].parent / "tok" / "vocab.txt").read_text().split()
    assert len(tok) == len(vocab)
    assert tok.bos_token == "[DEC]" and tok.convert_tokens_to_ids("[DEC]") == vocab.index("[DEC]")
    ids = tok("What is in the photo?")["input_ids"]
    assert tok.unk_token_id not in ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(tok("[ENC] cat")["input_ids"], skip_special_tokens=True) == "cat"


def test_round_trip_same_outputs(toy, vqa):
    _, model, _, _ = toy
    assert not vqa.model.training
    own, loaded = model.state_dict(), vqa.model.state_dict()
    assert own.keys() == loaded.keys() and all(torch.equal(own[k], loaded[k]) for k in own)
    pv = vqa.preprocess([_image(), _image(seed=1)])
    ids, mask = vqa.tokenize_questions(QUESTIONS)
    with torch.no_grad():
        a = model.generate(input_ids=ids, pixel_values=pv, attention_mask=mask, num_beams=3,
                           max_length=10, min_length=1)
        b = vqa.model.generate(input_ids=ids, pixel_values=pv, attention_mask=mask,
                               **vqa.generate_kwargs)
    assert torch.equal(a, b) and a.shape[1] <= 10
    answers = vqa.answer(pv, QUESTIONS)
    assert answers == [s.strip() for s in vqa.tokenizer.batch_decode(b, skip_special_tokens=True)]
    assert load_blip_vqa(toy[3]).model_id == vqa.model_id


def test_loads_in_a_fresh_offline_process(toy, vqa):
    """HF_HUB_OFFLINE is read when huggingface_hub is imported: check in a fresh interpreter."""
    code = ("import sys; from qaclims.vlp.blip import load_blip_vqa; "
            "print(load_blip_vqa(sys.argv[1]).model_id)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(toy[3])], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == vqa.model_id


def test_protocol_settings(vqa, toy):
    tok = toy[0]
    assert (vqa.num_beams, vqa.max_length, vqa.min_length) == (3, 10, 1)
    assert vqa.image_size == 48 and not vqa.interpolate_pos_encoding
    assert vqa.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    ids, mask = vqa.tokenize_questions(["cat", "what is in the photo?"])
    assert (ids[:, 0] == tok.convert_tokens_to_ids("[ENC]")).all()  # [CLS] -> [ENC]
    assert mask[0].tolist().count(1) == 3 and ids.shape[1] == mask.shape[1]
    assert vqa.model_id.startswith("model@") and len(vqa.model_id.split("@")[1]) == 12


def test_saved_generation_config_is_not_trusted(toy, tmp_path):
    _, model, proc, _ = toy
    d = save_toy_blip_vqa(model, proc, tmp_path / "m")
    (d / "generation_config.json").write_text(json.dumps(
        {"num_beams": 1, "max_length": 40, "do_sample": True, "repetition_penalty": 3.0}))
    vqa = load_blip_vqa(d)
    gc = vqa.model.text_decoder.generation_config
    assert (gc.num_beams, gc.max_length, gc.do_sample) == (3, 10, False)
    assert gc.repetition_penalty in (None, 1.0)  # transformers 5 leaves unset values as None
    pv = vqa.preprocess(_image())
    ids, mask = vqa.tokenize_questions(QUESTIONS[:1])
    with torch.no_grad():
        out = vqa.model.generate(input_ids=ids, pixel_values=pv, attention_mask=mask)
    assert out.shape[1] <= 10


def test_preprocess_is_square_bicubic_resize_and_normalise():
    img = _image(70, 50)
    x = preprocess_images([img], 48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (1, 3, 48, 48) and x.dtype == torch.float32
    ref = np.asarray(img.resize((48, 48), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), (ref - 0.5) / 0.25, atol=1e-5)
    gray = Image.fromarray(np.full((20, 30), 128, dtype=np.uint8))  # converted to RGB
    assert preprocess_images(gray, 16, (0, 0, 0), (1, 1, 1)).shape == (1, 3, 16, 16)


def test_other_image_size_interpolates_position_embeddings(toy):
    vqa = load_blip_vqa(toy[3], image_size=60)
    assert vqa.interpolate_pos_encoding
    pv = vqa.preprocess(_image())
    assert pv.shape[-1] == 60 and len(vqa.answer(pv, QUESTIONS[:1])) == 1


def test_training_batch_follows_generate_layout(toy, vqa):
    tok, model, _, _ = toy
    batch = blip_training_batch(tok, QUESTIONS, ["dog", "on the grass"])
    dec_id = tok.convert_tokens_to_ids("[DEC]")
    assert (batch["decoder_input_ids"][:, 0] == dec_id).all()
    assert batch["labels"][0].tolist() == [dec_id, tok.convert_tokens_to_ids("dog"),
                                           tok.sep_token_id, -100, -100]
    assert batch["decoder_attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    q_ids, q_mask = vqa.tokenize_questions(QUESTIONS)  # same question tokens as at answer time
    assert torch.equal(batch["input_ids"], q_ids) and torch.equal(batch["attention_mask"], q_mask)
    model.train()
    try:
        loss = model(pixel_values=torch.randn(2, 3, 48, 48), **batch).loss
        loss.backward()
    finally:
        model.zero_grad()
        model.eval()
    assert torch.isfinite(loss)


def test_missing_weights_errors(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(WeightsMissingError) as ei:
        load_blip_vqa("Salesforce/blip-vqa-capfilt-large")
    msg = str(ei.value)
    assert "resources/weights/blip-vqa-capfilt-large" in msg and "fetch_weights" in msg
    assert "hf download Salesforce/blip-vqa-capfilt-large" in msg
    with pytest.raises(WeightsMissingError, match="does not exist"):
        load_blip_vqa(tmp_path / "resources" / "weights" / "blip-vqa-capfilt-large")


def test_enc_token_for_blips_own_vocabulary_layout():
    class BlipLikeTokenizer:  # bert-base (30522) + [DEC] (bos, 30522); [ENC] not registered
        unk_token_id = 100

        def __len__(self):
            return 30523

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

    assert resolve_enc_token_id(BlipLikeTokenizer(), 30524, 30522) == 30523
    assert resolve_enc_token_id(BlipLikeTokenizer(), 40000, 30522) is None
