"""The engine the vqa rule runs (qaclims.qape.engine.load_vqa_engine): the question start token
of a Hugging Face BLIP folder, the dtype setting, and the answer cache's model id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
)

import qaclims.qape.engine as engine_module
from qaclims.qape.engine import load_vqa_engine, parse_dtype

WORDS = ["what", "kind", "of", "dog", "is", "in", "the", "photo", "grass", "sky", "?"]
SIZE = 32


@pytest.fixture(scope="module")
def hf_blip_folder(tmp_path_factory):
    """A folder laid out like Salesforce/blip-vqa-capfilt-large: bert vocabulary without [DEC]
    or [ENC], [DEC] an added token right after it, a text model one row larger ([ENC])."""
    d = tmp_path_factory.mktemp("hf_blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(d / "vocab.txt"), bos_token="[DEC]")
    assert len(tok) == len(vocab) + 1 and tok.bos_token_id == len(vocab)
    assert tok.convert_tokens_to_ids("[ENC]") == tok.unk_token_id  # the HF tokenizer lacks it
    text = dict(vocab_size=len(tok) + 1, hidden_size=32, encoder_hidden_size=32,
                intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=SIZE, patch_size=8)
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(BlipConfig(vision_config=vision, text_config=text)).eval()
    out = d / "blip-vqa"
    model.save_pretrained(out)
    BlipProcessor(BlipImageProcessor(size={"height": SIZE, "width": SIZE}), tok).save_pretrained(
        out)
    return out, len(vocab) + 1  # the [ENC] id of BLIP's layout: [DEC] + 1


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))


def test_hf_folder_questions_start_with_the_encoder_token(hf_blip_folder):
    folder, enc_id = hf_blip_folder
    engine, _ = load_vqa_engine(str(folder), device="cpu")
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["input_ids"].clone())

    handle = engine.model.text_encoder.embeddings.register_forward_pre_hook(record,
                                                                             with_kwargs=True)
    try:
        answers = engine.answer_image(_image(), ["what kind of dog is in the photo?", "sky?"])
    finally:
        handle.remove()
    assert len(answers) == 2 and seen
    ids = torch.cat(seen)
    assert (ids[:, 0] == enc_id).all(), ids[:, 0]  # [ENC], not [CLS]
    assert engine.tokenizer.cls_token_id not in ids[:, 0].tolist()
    assert engine.cache_settings()["question_start_token_id"] == enc_id


def test_dtype_setting_and_cache_key(hf_blip_folder, monkeypatch):
    folder, _ = hf_blip_folder
    fp32, id32 = load_vqa_engine(str(folder), device="cpu")
    assert fp32.dtype == torch.float32 and next(fp32.model.parameters()).dtype == torch.float32
    bf16, id16 = load_vqa_engine(str(folder), device="cpu", dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert len(bf16.answer_image(_image(), ["sky?"])) == 1
    assert id32 != id16 and bf16.cache_settings()["dtype"] == "bfloat16"
    assert load_vqa_engine(str(folder), device="cpu")[1] == id32  # stable for the same setup
    # image size, device kind and engine version are in the key too
    assert load_vqa_engine(str(folder), device="cpu", image_size=48)[1] != id32
    same = fp32.cache_model_id("w")
    monkeypatch.setattr(engine_module, "ENGINE_VERSION", "999")
    assert fp32.cache_model_id("w") != same
    monkeypatch.undo()
    fp32.device = torch.device("cuda")  # only the key is computed, nothing runs there
    assert fp32.cache_settings()["device"] == "cuda" and fp32.cache_model_id("w") != same


def test_dtype_parsing():
    with pytest.raises(ValueError, match="models.vqa.dtype"):
        parse_dtype("half")
    assert parse_dtype("float32") == torch.float32


def test_vqa_dtype_config_default_is_the_authors_float32():
    from pathlib import Path

    from qaclims.config import validate_config

    root = Path(__file__).resolve().parents[1]
    minimal = {"dataset": {"name": "x", "source": "synthetic", "root": "r"}}
    assert validate_config(minimal, base=root)["models"]["vqa"]["dtype"] == "float32"
    with_half = {**minimal, "models": {"vqa": {"dtype": "float16"}}}
    assert validate_config(with_half, base=root)["models"]["vqa"]["dtype"] == "float16"
