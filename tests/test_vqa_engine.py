"""The fast VQA engine answers as the authors' per-question protocol does (method.md 2.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
)

from qaclims.qape.engine import (  # noqa: E402
    CLIP_MEAN,
    CLIP_STD,
    VqaEngine,
    answer_plain,
    cross_attention_masks_honoured,
    preprocess_image,
    resolve_enc_token_id,
    tokenize_questions,
)

TEMPLATES = [
    "What kind of {} is in the photo?",
    "What is this {} also called?",
    "What is another name for this {}?",
    "what is above the {}?",
    "what is under the {}?",
    "what is the left side of {}?",
    "what scene is the {} in?",
    "what environment is the {} in?",
]
CLASSES = ["dog", "dining table", "tv monitor", "potted plant", "cat", "person", "bus"]
ANSWER_WORDS = ["sky", "grass", "water", "road", "tree", "building", "yes", "no", "red", "blue"]
IMAGE_SIZE = 32


def questions_for(i: int) -> list[str]:
    # two classes per image: 1- and 2-word names give questions of different token lengths
    return [t.format(c) for c in (CLASSES[i % 7], CLASSES[(i + 3) % 7]) for t in TEMPLATES]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    words = {w for t in TEMPLATES for w in t.lower().replace("?", " ").split() if w != "{}"}
    words |= {w for c in CLASSES for w in c.split()} | set(ANSWER_WORDS)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *sorted(words), "[DEC]", "[ENC]"]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    tok = BertTokenizer(str(path), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    assert len(tok) == len(tokens)  # environment.md: vocab_file= would be silently ignored
    assert tok.convert_tokens_to_ids("dog") != tok.unk_token_id
    return tok


def blip_config(tok) -> BlipConfig:
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        sep_token_id=tok.sep_token_id,
        eos_token_id=tok.sep_token_id,
    )
    return BlipConfig(vision_config=vision, text_config=text)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    m = BlipForQuestionAnswering(blip_config(tokenizer)).eval()
    with torch.no_grad():  # weights far larger than the default init: answers vary with the input
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return m


@pytest.fixture(scope="module")
def processor(tokenizer):
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return BlipProcessor(BlipImageProcessor(size=size), tokenizer)


def odd_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(40, 50), (37, 91), (64, 64), (5, 3)]
    ]
    gray = Image.fromarray(rng.integers(0, 256, (45, 33), dtype=np.uint8))  # mode L
    rgba = Image.fromarray(rng.integers(0, 256, (30, 41, 4), dtype=np.uint8))  # mode RGBA
    pal = rgb[1].convert("P")  # palette
    return [*rgb, gray, rgba, pal]


@pytest.fixture(scope="module")
def items():
    return [(f"img{i}", im, questions_for(i)) for i, im in enumerate(odd_images())]


@pytest.fixture(scope="module")
def plain_answers(model, processor, items):
    return {key: [answer_plain(model, processor, im, q) for q in qs] for key, im, qs in items}


def agreement(answers: dict, reference: dict) -> float:
    pairs = [(a, b) for k in reference for a, b in zip(answers[k], reference[k], strict=True)]
    return sum(a == b for a, b in pairs) / len(pairs)


def test_engine_matches_per_question_protocol(model, processor, items, plain_answers):
    # small batches: several images per chunk, more questions than one batch, padded batches
    engine = VqaEngine(model, processor, question_batch_size=5, image_batch_size=3, device="cpu")
    answers = dict(engine.answer_many(items))
    assert list(answers) == [key for key, _, _ in items]
    assert agreement(answers, plain_answers) >= 0.99
    distinct = {a for v in plain_answers.values() for a in v}
    assert len(distinct) >= 10, "random model too uniform to test anything"


def test_batch_sizes_do_not_change_answers(model, processor, items):
    one = VqaEngine(model, processor, question_batch_size=1, image_batch_size=1, device="cpu")
    big = VqaEngine(model, processor, question_batch_size=64, image_batch_size=8, device="cpu")
    assert dict(one.answer_many(items)) == dict(big.answer_many(items))


def test_unmasked_padding_changes_answers(model, processor, items, plain_answers):
    """The authors' all-ones cross-attention mask is wrong once questions are padded; the test
    must be able to see that, or it could not see a masking regression either."""
    engine = VqaEngine(model, processor, device="cpu", mask_question_padding=False)
    answers = dict(engine.answer_many(items))
    assert agreement(answers, plain_answers) < 0.99


def test_decoder_cross_attention_mask_is_applied(model, tokenizer):
    q = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    start = torch.full((2, 1), tokenizer.bos_token_id)
    with torch.no_grad(), cross_attention_masks_honoured(model.text_decoder):
        masked = model.text_decoder(
            input_ids=start, encoder_hidden_states=q, encoder_attention_mask=mask
        ).logits
        cut = model.text_decoder(input_ids=start[1:], encoder_hidden_states=q[1:, :3]).logits
    torch.testing.assert_close(masked[1], cut[0], rtol=1e-4, atol=1e-4)  # padding is invisible
    with torch.no_grad():
        again = model.text_decoder(
            input_ids=start, encoder_hidden_states=q, encoder_attention_mask=mask
        ).logits
    # hooks are removed when the context closes (whatever transformers does without them)
    layers = model.text_decoder.bert.encoder.layer
    assert not any(layer.crossattention.self._forward_pre_hooks for layer in layers)
    assert again.shape == masked.shape


def test_question_encoder_matches_hf_text_encoder(model, processor, tokenizer):
    engine = VqaEngine(model, processor, device="cpu")
    questions = ["what is above the dining table?", "what scene is the dog in?"]
    ids, mask = tokenize_questions(tokenizer, questions, engine.enc_token_id)
    pixels = preprocess_image(odd_images()[0], IMAGE_SIZE, CLIP_MEAN, CLIP_STD)[None]
    with torch.no_grad():
        image = model.vision_model(pixel_values=pixels)[0]
        ours = engine._encode_questions(engine._image_cross_kv(image), [0, 0], ids, mask)
        for row in range(2):
            n = int(mask[row].sum())
            alone = ids[row : row + 1, :n]
            ref = model.text_encoder(input_ids=alone, encoder_hidden_states=image)[0]
            torch.testing.assert_close(ours[row : row + 1, :n], ref, rtol=1e-5, atol=1e-5)


def test_calls_counter_and_empty_lists(model, processor, items):
    engine = VqaEngine(model, processor, device="cpu", question_batch_size=4)
    key, image, questions = items[0]
    assert engine.answer_image(image, []) == []
    assert engine.calls == 0
    answers = engine.answer_image(image, questions)
    assert len(answers) == len(questions) and engine.calls == len(questions)
    # a repeated question reaches the model once, and is answered at every position
    twice = engine.answer_image(image, [questions[0], questions[1], questions[0]])
    assert engine.calls == len(questions) + 2
    assert twice == [answers[0], answers[1], answers[0]]
    batch = [("a", image, []), ("b", image, questions[:3]), ("c", image, [])]
    out = list(engine.answer_many(batch))
    assert out == [("a", []), ("b", answers[:3]), ("c", [])]
    assert engine.calls == len(questions) + 5


def test_deterministic(model, processor, items):
    first = dict(VqaEngine(model, processor, device="cpu").answer_many(items))
    second = dict(VqaEngine(model, processor, device="cpu").answer_many(items))
    assert first == second


def test_tensor_images_and_input_checks(model, processor, items):
    engine = VqaEngine(model, processor, device="cpu")
    _, image, questions = items[1]
    pixels = preprocess_image(image, IMAGE_SIZE, engine.mean, engine.std)
    assert engine.answer_image(pixels, questions) == engine.answer_image(image, questions)
    with pytest.raises(ValueError, match="preprocessed image"):
        engine.answer_image(torch.zeros(3, 8, 8), questions)
    with pytest.raises(TypeError, match="sequence of strings"):
        engine.answer_image(image, "what is this?")


def test_rejects_models_that_are_not_blip_vqa(tokenizer, processor):
    captioner = BlipForConditionalGeneration(blip_config(tokenizer))
    for wrong in (captioner, torch.nn.Linear(2, 2)):
        with pytest.raises(TypeError, match="BlipForQuestionAnswering"):
            VqaEngine(wrong, processor)
        with pytest.raises(TypeError, match="BlipForQuestionAnswering"):
            answer_plain(wrong, processor, Image.new("RGB", (8, 8)), "what?")
    with pytest.raises(TypeError, match="BlipProcessor or a tokenizer"):
        VqaEngine(BlipForQuestionAnswering(blip_config(tokenizer)), object())


def test_tokenizer_larger_than_model_vocab_is_an_error(tokenizer, processor):
    config = blip_config(tokenizer)
    config.text_config.vocab_size = len(tokenizer) - 1
    with pytest.raises(ValueError, match="tokens"):
        VqaEngine(BlipForQuestionAnswering(config), processor)


def test_question_tokenisation_follows_the_authors(tokenizer):
    long = "what is " + " ".join(["dog"] * 60) + "?"
    enc = resolve_enc_token_id(tokenizer, "[ENC]")
    ids, mask = tokenize_questions(tokenizer, ["what is under the dog?", long], enc)
    assert ids.shape == (2, 35)  # truncation at 35, padding to the longest
    assert (ids[:, 0] == tokenizer.convert_tokens_to_ids("[ENC]")).all()
    assert mask[0].sum() == 8 and ids[0, 8:].eq(tokenizer.pad_token_id).all()
    assert resolve_enc_token_id(tokenizer, None) is None
    ids, _ = tokenize_questions(tokenizer, ["what?"], None)
    assert ids[0, 0] == tokenizer.cls_token_id  # HF's behaviour: [CLS] kept
    assert resolve_enc_token_id(tokenizer, "[NOT-THERE]") is None


def test_preprocessing_is_bicubic_resize_without_crop():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8))
    x = preprocess_image(image, 16, CLIP_MEAN, CLIP_STD)
    expect = np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC)) / 255.0
    expect = (expect - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expect, rtol=1e-5, atol=1e-5)
