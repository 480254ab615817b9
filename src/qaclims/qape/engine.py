"""Fast BLIP VQA answering: one vision pass per image, batched questions, HF beam search.

The authors (method.md 2.4) ask BLIP one question at a time: the ViT re-encodes the image for
every question and the decoder's cross-attention mask is all ones over the (unpadded) question
tokens. This engine gives the same answers faster, by construction:

* each image goes through the vision tower once; its embeddings serve every question about it;
* the image side of the text encoder's cross-attention (keys and values of ~900 image tokens in
  every layer, which for 16 questions would cost more than the ViT itself) is projected once per
  image, and the questions of that image attend to it together;
* questions are padded into batches; padding is masked in the text encoder's self-attention *and*
  in the decoder's cross-attention, so a padded question decodes as it would alone (the authors'
  all-ones mask is only right at batch size 1);
* the answer decoder is the model's own ``text_decoder.generate`` (HF beam search) with the
  authors' settings: ``num_beams=3, max_length=10, min_length=1``, eos [SEP], pad [PAD], start
  [DEC], no sampling, length penalty 1; the top beam is decoded with ``skip_special_tokens=True``.

``answer_plain`` is the authors' per-question protocol through HF's
``BlipForQuestionAnswering.generate``; tests and ``benchmarks/bench_vqa_engine.py`` compare the
engine against it.

Question tokenisation follows the authors: padding to the longest question, truncation at 35
tokens, and the first token ([CLS]) replaced by [ENC]. ``enc_token`` is that token's id (what
:func:`qaclims.vlp.blip.resolve_enc_token_id` finds - also for the Hugging Face port, whose
tokenizer has no [ENC] entry although its text model has the row, id [DEC] + 1) or a token
string the tokenizer must know. HF's ``BlipForQuestionAnswering.generate`` feeds [CLS]
unchanged, so a tokenizer without [ENC] - or ``enc_token=None`` - gives HF's behaviour.

Numerics: the engine runs in the dtype it is given, float32 by default as the authors ran BLIP
(``models.vqa.dtype``; float16 on CUDA is faster and may change answers). :meth:`VqaEngine.
cache_settings` lists everything beyond the weights that can change an answer - dtype, device
kind, image size, decoding, question start token and :data:`ENGINE_VERSION` - for the answer
cache's key.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

log = logging.getLogger(__name__)

# CLIP normalisation, which BLIP uses (method.md 2.1), unless the processor says otherwise.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
QUESTION_MAX_TOKENS = 35  # the authors' tokenizer max_length
#: Bump when a change to this module can change an answer: cached answers of older engines are
#: then never served (the version is part of the answer cache's key).
ENGINE_VERSION = "2"

ImageLike = Image.Image | torch.Tensor
KeyValue = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- shared helpers

#: ``models.vqa.dtype`` values.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``models.vqa.dtype`` value."""
    if name not in DTYPES:
        raise ValueError(f"models.vqa.dtype: expected one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]



def check_vqa_model(model: Any) -> None:
    """Raise a clear error unless ``model`` is a usable transformers BlipForQuestionAnswering."""
    from transformers import BlipForQuestionAnswering

    if not isinstance(model, BlipForQuestionAnswering):
        raise TypeError(
            "VQA answering needs a transformers BlipForQuestionAnswering (vision_model + "
            f"text_encoder + text_decoder), got {type(model).__module__}.{type(model).__name__}"
        )
    text = model.config.text_config
    needed = ("bos_token_id", "sep_token_id", "pad_token_id")
    missing = [n for n in needed if getattr(text, n) is None]
    if missing:
        raise ValueError(
            f"BLIP text config lacks {', '.join(missing)}: the decoder needs a start ([DEC]), "
            "an end ([SEP]) and a pad ([PAD]) token id"
        )


def split_processor(processor: Any) -> tuple[Any, Any | None]:
    """``(tokenizer, image_processor or None)`` from a BlipProcessor or a bare tokenizer."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        return tokenizer, getattr(processor, "image_processor", None)
    if callable(processor) and hasattr(processor, "batch_decode"):
        return processor, None
    raise TypeError(
        f"expected a BlipProcessor or a tokenizer, got {type(processor).__module__}."
        f"{type(processor).__name__}"
    )


def resolve_image_transform(
    model: Any, image_processor: Any | None, image_size: int | None = None
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Side length and normalisation: explicit size > processor size > vision config size."""
    native = _as_side(model.config.vision_config.image_size)
    if image_size is None and image_processor is not None:
        size = getattr(image_processor, "size", None)
        if isinstance(size, dict) and "height" in size:
            if size.get("width", size["height"]) != size["height"]:
                raise ValueError(f"BLIP images are square; processor size is {size}")
            image_size = int(size["height"])
        elif isinstance(size, int):
            image_size = size
    if image_size is None:
        image_size = native
    mean = tuple(getattr(image_processor, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(image_processor, "image_std", None) or CLIP_STD)
    return int(image_size), mean, std


def _as_side(size: Any) -> int:
    if isinstance(size, list | tuple):
        if size[0] != size[-1]:
            raise ValueError(f"BLIP images are square; vision config image_size is {size}")
        return int(size[0])
    return int(size)


def preprocess_image(
    image: ImageLike, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The authors' ``load_image``: RGB, resize to (size, size) bicubic (no crop, aspect ratio not
    kept), scale to [0, 1], normalise. A tensor is taken as already preprocessed (3, size, size)."""
    if isinstance(image, torch.Tensor):
        if image.shape != (3, size, size):
            raise ValueError(
                f"preprocessed image must be (3, {size}, {size}), got {tuple(image.shape)}"
            )
        return image.float()
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a (3, S, S) tensor, got {type(image).__name__}")
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3)
    x = x.permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def resolve_enc_token_id(tokenizer: Any, enc_token: str | int | None) -> int | None:
    """Id of ``enc_token``: an int is taken as the id; a string's id if the tokenizer knows it
    (not [UNK]), else None (keep [CLS])."""
    if enc_token is None:
        return None
    if isinstance(enc_token, int) and not isinstance(enc_token, bool):
        return enc_token
    tid = tokenizer.convert_tokens_to_ids(enc_token)
    if tid is None or tid == tokenizer.unk_token_id:
        return None
    return int(tid)


def tokenize_questions(
    tokenizer: Any, questions: Sequence[str], enc_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' question tokenisation: ``(input_ids, attention_mask)``, right-padded."""
    enc = tokenizer(
        list(questions),
        padding="longest",
        truncation=True,
        max_length=QUESTION_MAX_TOKENS,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    ids = enc["input_ids"]
    if enc_token_id is not None:
        ids[:, 0] = enc_token_id
    return ids, enc["attention_mask"]


def generate_kwargs(num_beams: int, max_length: int, min_length: int) -> dict[str, Any]:
    """The authors' decoding settings, spelled out so no stored generation config can change them.
    ``max_length`` counts the start token, as in the authors' code. End ([SEP]) and pad token ids
    come from the text config (``BlipForQuestionAnswering.generate`` passes them itself)."""
    return {
        "num_beams": num_beams,
        "max_length": max_length,
        "min_length": min_length,
        "do_sample": False,
        "length_penalty": 1.0,
        "early_stopping": False,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "num_return_sequences": 1,
    }


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@contextmanager
def cross_attention_masks_honoured(text_model: Any) -> Iterator[None]:
    """Make BLIP's text cross-attention apply its mask while the context is open.

    transformers 5.23 drops cross-attention masks in BLIP's text model: ``BlipTextAttention``
    hands the mask to ``BlipTextSelfAttention`` as ``attention_mask``, which then replaces it with
    its own ``encoder_attention_mask`` argument - never passed, so always None. The decoder thus
    attends to padded question tokens whatever mask ``generate`` is given. A forward pre-hook on
    each cross-attention module passes the mask under the name it is read from; where a later
    version forwards it itself, the hook changes nothing.
    """

    def pass_mask(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        cross = kwargs.get("encoder_hidden_states") is not None
        if cross and kwargs.get("encoder_attention_mask") is None:
            kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
        return args, kwargs

    bert = getattr(text_model, "bert", text_model)
    handles = [
        layer.crossattention.self.register_forward_pre_hook(pass_mask, with_kwargs=True)
        for layer in bert.encoder.layer
        if hasattr(layer, "crossattention")
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- reference protocol


@torch.inference_mode()
def answer_plain(
    model: Any,
    processor: Any,
    image: ImageLike,
    question: str,
    *,
    num_beams: int = 3,
    max_length: int = 10,
    min_length: int = 1,
    enc_token: str | int | None = "[ENC]",
    image_size: int | None = None,
) -> str:
    """One question, one ``model.generate`` call that re-encodes the image: the authors' protocol
    (batch size 1, all-ones decoder cross-attention mask). Runs on the model's device and dtype."""
    check_vqa_model(model)
    tokenizer, image_processor = split_processor(processor)
    size, mean, std = resolve_image_transform(model, image_processor, image_size)
    device, dtype = _model_device_dtype(model)
    pixels = preprocess_image(image, size, mean, std)[None].to(device=device, dtype=dtype)
    enc_token_id = resolve_enc_token_id(tokenizer, enc_token)
    ids, mask = tokenize_questions(tokenizer, [question], enc_token_id)
    out = model.generate(
        input_ids=ids.to(device),
        pixel_values=pixels,
        attention_mask=mask.to(device),
        interpolate_pos_encoding=size != _as_side(model.config.vision_config.image_size),
        **generate_kwargs(num_beams, max_length, min_length),
    )
    return tokenizer.decode(out[0], skip_special_tokens=True)


# --------------------------------------------------------------------------- the engine


class VqaEngine:
    """Answers many questions about many images with a BLIP VQA model (see module docstring).

    The engine moves the model to ``device`` and ``dtype`` in place and sets it to eval mode.
    ``device`` defaults to CUDA when available, else CPU; ``dtype`` to float32 (the authors').
    ``enc_token``: the question start token, an id or a token string (module docstring).
    ``calls`` counts the questions that reached the model (a question repeated for one image
    counts once). ``mask_question_padding=False`` reproduces the authors' all-ones cross-attention
    mask applied to a padded batch (wrong answers for padded questions); for tests only.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        num_beams: int = 3,
        max_length: int = 10,
        min_length: int = 1,
        question_batch_size: int = 64,
        image_batch_size: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        image_size: int | None = None,
        enc_token: str | int | None = "[ENC]",
        mask_question_padding: bool = True,
    ) -> None:
        check_vqa_model(model)
        if question_batch_size < 1:
            raise ValueError("question_batch_size must be >= 1")
        self.tokenizer, image_processor = split_processor(processor)
        text_vocab = model.config.text_config.vocab_size
        if len(self.tokenizer) > text_vocab:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens, the BLIP text model {text_vocab}"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.float32
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.image_size, self.mean, self.std = resolve_image_transform(
            model, image_processor, image_size
        )
        native = _as_side(model.config.vision_config.image_size)
        self.interpolate_pos_encoding = self.image_size != native
        if self.interpolate_pos_encoding:
            log.warning(
                "BLIP vision config is %d px but images are resized to %d px: interpolating "
                "position embeddings",
                native,
                self.image_size,
            )
        self.enc_token_id = resolve_enc_token_id(self.tokenizer, enc_token)
        if self.enc_token_id is not None and not 0 <= self.enc_token_id < text_vocab:
            raise ValueError(f"question start token id {self.enc_token_id} is outside the BLIP "
                             f"text model's vocabulary of {text_vocab}")
        self.question_batch_size = question_batch_size
        self.image_batch_size = image_batch_size or (8 if self.device.type == "cuda" else 2)
        self.mask_question_padding = mask_question_padding
        text = model.config.text_config
        self.decoding = {"num_beams": num_beams, "max_length": max_length,
                         "min_length": min_length}
        self.generate_kwargs = generate_kwargs(num_beams, max_length, min_length)
        self.generate_kwargs.update(eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id)
        self.calls = 0

    def cache_settings(self) -> dict[str, Any]:
        """Everything besides the weights that can change an answer (the answer cache's key).
        Batch sizes are left out: padding is masked, so a question decodes as it would alone
        (up to floating-point rounding)."""
        return {
            "engine_version": ENGINE_VERSION,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
            "image_size": self.image_size,
            "question_start_token_id": self.enc_token_id,
            "mask_question_padding": self.mask_question_padding,
            **self.decoding,
        }

    def cache_model_id(self, weights_id: str) -> str:
        """The answer cache's model id: the weights (``weights_id``, e.g. ``BlipVqa.model_id``)
        and :meth:`cache_settings`."""
        from qaclims.qape.answer_cache import model_fingerprint

        return model_fingerprint(weights_id, weights_id, **self.cache_settings())

    # ----------------------------------------------------------------- public API

    def answer_image(self, image: ImageLike, questions: Sequence[str]) -> list[str]:
        """Answers to ``questions`` about one image, in order."""
        ((_, answers),) = self.answer_many([(None, image, questions)])
        return answers

    def answer_many(
        self, items: Iterable[tuple[Any, ImageLike, Sequence[str]]]
    ) -> Iterator[tuple[Any, list[str]]]:
        """``(key, image, questions)`` in, ``(key, answers)`` out, same order, lazily.
        Images are encoded ``image_batch_size`` at a time."""
        chunk: list[tuple[Any, ImageLike, Sequence[str]]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == self.image_batch_size:
                yield from self._answer_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._answer_chunk(chunk)

    # ----------------------------------------------------------------- internals

    @torch.inference_mode()
    def _answer_chunk(
        self, chunk: list[tuple[Any, ImageLike, Sequence[str]]]
    ) -> Iterator[tuple[Any, list[str]]]:
        # Unique questions per image; images without questions are never encoded.
        uniques: list[list[str]] = []
        for _, _, questions in chunk:
            if isinstance(questions, str):
                raise TypeError("questions must be a sequence of strings, not one string")
            uniques.append(list(dict.fromkeys(questions)))
        asked = [i for i, u in enumerate(uniques) if u]
        found: list[dict[str, str]] = [{} for _ in chunk]
        if asked:
            pixels = torch.stack(
                [preprocess_image(chunk[i][1], self.image_size, self.mean, self.std) for i in asked]
            ).to(device=self.device, dtype=self.dtype)
            image_kv = self._image_cross_kv(self._encode_images(pixels))
            flat = [(slot, q) for slot, i in enumerate(asked) for q in uniques[i]]
            for start in range(0, len(flat), self.question_batch_size):
                part = flat[start : start + self.question_batch_size]
                owners, texts = [s for s, _ in part], [q for _, q in part]
                answers = self._answer_questions(image_kv, owners, texts)
                for (slot, q), a in zip(part, answers, strict=True):
                    found[asked[slot]][q] = a
                self.calls += len(part)
        for (key, _, questions), answers in zip(chunk, found, strict=True):
            yield key, [answers[q] for q in questions]

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(
            pixel_values=pixels, interpolate_pos_encoding=self.interpolate_pos_encoding
        )
        return out[0]

    def _image_cross_kv(self, image_embeds: torch.Tensor) -> list[KeyValue]:
        """Keys and values of the text encoder's cross-attention over the image tokens, per layer,
        shape (images, heads, tokens, head_dim): computed once per image, not once per question."""
        kv = []
        b, n, _ = image_embeds.shape
        for layer in self.model.text_encoder.encoder.layer:
            att = layer.crossattention.self
            shape = (b, n, att.num_attention_heads, att.attention_head_size)
            k = att.key(image_embeds).view(shape).transpose(1, 2)
            v = att.value(image_embeds).view(shape).transpose(1, 2)
            kv.append((k, v))
        return kv

    def _encode_questions(
        self,
        image_kv: list[KeyValue],
        owners: list[int],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """BLIP's text encoder (``BlipTextModel`` as an image-grounded encoder) with the image
        cross-attention keys/values shared by all questions of an image. Mirrors
        ``BlipTextLayer.forward``: self-attention (padding masked), cross-attention to all image
        tokens (no mask: every image token is valid), feed-forward."""
        te = self.model.text_encoder
        hidden = te.embeddings(input_ids=input_ids)
        neg = torch.finfo(hidden.dtype).min
        self_mask = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * neg
        # questions of one image are contiguous in `owners` (see _answer_chunk)
        segments: list[tuple[int, int, int]] = []
        for row, owner in enumerate(owners):
            if segments and segments[-1][0] == owner:
                segments[-1] = (owner, segments[-1][1], row + 1)
            else:
                segments.append((owner, row, row + 1))
        for layer, (k_img, v_img) in zip(te.encoder.layer, image_kv, strict=True):
            attended = layer.attention(hidden, attention_mask=self_mask)[0]
            ca = layer.crossattention
            q_count, q_len, _ = attended.shape
            heads, head_dim = ca.self.num_attention_heads, ca.self.attention_head_size
            query = ca.self.query(attended).view(q_count, q_len, heads, head_dim).transpose(1, 2)
            context = torch.empty_like(query)
            scale = math.sqrt(head_dim)
            for owner, lo, hi in segments:
                # All questions of one image attend to the same keys: fold them into the query
                # length so one matmul serves them (rows of attention are independent).
                q = query[lo:hi].transpose(0, 1).reshape(1, heads, (hi - lo) * q_len, head_dim)
                scores = torch.matmul(q, k_img[owner : owner + 1].transpose(-1, -2)) / scale
                probs = torch.softmax(scores, dim=-1)
                ctx = torch.matmul(probs, v_img[owner : owner + 1])
                context[lo:hi] = ctx.view(heads, hi - lo, q_len, head_dim).transpose(0, 1)
            context = context.transpose(1, 2).reshape(q_count, q_len, heads * head_dim)
            crossed = ca.output(context, attended)
            hidden = layer.feed_forward_chunk(crossed)
        return hidden

    def _answer_questions(
        self, image_kv: list[KeyValue], owners: list[int], questions: list[str]
    ) -> list[str]:
        ids, mask = tokenize_questions(self.tokenizer, questions, self.enc_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        question_embeds = self._encode_questions(image_kv, owners, ids, mask)
        cross_mask = mask if self.mask_question_padding else torch.ones_like(mask)
        start_id = self.model.decoder_start_token_id
        start = torch.full((len(questions), 1), start_id, dtype=torch.long, device=self.device)
        with cross_attention_masks_honoured(self.model.text_decoder):
            out = self.model.text_decoder.generate(
                input_ids=start,
                encoder_hidden_states=question_embeds,
                encoder_attention_mask=cross_mask,
                **self.generate_kwargs,
            )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


# --------------------------------------------------------------------------- loading


def load_vqa_engine(
    source: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    image_size: int | None = None,
    num_beams: int = 3,
    max_length: int = 10,
    min_length: int = 1,
) -> tuple[VqaEngine, str]:
    """``(engine, cache model id)`` for a BLIP VQA folder or hub id (what the ``vqa`` rule runs).

    The question start token is the [ENC] id that :func:`qaclims.vlp.blip.load_blip_vqa`
    resolves - with the Hugging Face port's tokenizer (no [ENC] entry) the engine would otherwise
    keep [CLS], unlike the authors' BLIP.
    """
    from qaclims.vlp.blip import load_blip_vqa

    torch_dtype = parse_dtype(dtype)
    settings = dict(num_beams=num_beams, max_length=max_length, min_length=min_length)
    vqa = load_blip_vqa(source, device=str(device), dtype=torch_dtype, image_size=image_size,
                        **settings)
    engine = VqaEngine(vqa.model, vqa.processor, image_size=vqa.image_size, device=device,
                       dtype=torch_dtype, enc_token=vqa.question_start_token_id, **settings)
    return engine, engine.cache_model_id(vqa.model_id)
