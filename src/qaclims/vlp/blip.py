"""BLIP VQA loading and the protocol around it (method.md 2.1, 2.4, 14.1).

``load_blip_vqa(source)`` loads a transformers ``BlipForQuestionAnswering`` + ``BlipProcessor``
from a local ``save_pretrained`` directory (the demo's toy model, or the real weights fetched into
``resources/weights/blip-vqa-capfilt-large``) or from a Hugging Face hub id, and wraps them in a
:class:`BlipVqa` that fixes what the original code fixes instead of trusting the hub:

- images: PIL RGB -> resize to (S, S) bicubic (aspect ratio not kept, no crop) -> [0,1] ->
  normalise with the processor's mean/std (CLIP's for BLIP) - :meth:`BlipVqa.preprocess`;
- S: ``image_size`` (480 for the original CapFilt-L VQA model). The HF port stores position
  embeddings for 384 px (``vision_config.image_size``); running it at another size interpolates
  them (``interpolate_pos_encoding=True``, bicubic like the original ``interpolate_pos_embed``);
- questions: padding="longest", truncation at 35 tokens, first token ([CLS]) replaced by [ENC]
  as the original ``BLIP_VQA`` does - :meth:`BlipVqa.tokenize_questions`;
- decoding: beam search, num_beams=3, max_length=10 (counts the [DEC] start token),
  min_length=1, [SEP] ends, [PAD] pads; nothing else (no sampling, no penalties). The model's
  generation configs are replaced by exactly these settings at load time.

``model_id`` names the weights: ``<name>@<12 hex of sha256 over the weight files>``; the answer
cache keys on it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaclims.vlp.weights import WeightsMissingError, weights_id

log = logging.getLogger(__name__)

DEFAULT_BLIP_VQA = "Salesforce/blip-vqa-capfilt-large"
#: Resolution the original CapFilt-L VQA checkpoint was fine-tuned and run at (method.md 2.1).
ORIGINAL_IMAGE_SIZE = 480
QUESTION_MAX_LENGTH = 35
WEIGHT_FILE_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class BlipVqa:
    """A loaded BLIP VQA model plus the exact protocol it is run with (see module docstring)."""

    model: Any  # transformers.BlipForQuestionAnswering, eval mode
    processor: Any  # transformers.BlipProcessor
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_id: str
    num_beams: int = 3
    max_length: int = 10
    min_length: int = 1
    question_max_length: int = QUESTION_MAX_LENGTH
    #: Token id that replaces the first question token ([ENC]); None keeps [CLS].
    question_start_token_id: int | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    @property
    def interpolate_pos_encoding(self) -> bool:
        return self.image_size != int(self.model.config.vision_config.image_size)

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate(input_ids, pixel_values, attention_mask)``."""
        return {
            "num_beams": self.num_beams,
            "max_length": self.max_length,
            "min_length": self.min_length,
            "interpolate_pos_encoding": self.interpolate_pos_encoding,
        }

    def preprocess(self, images: Any) -> Any:
        """PIL image(s) -> ``FloatTensor[n,3,S,S]`` on the model's device and dtype."""
        return preprocess_images(images, self.image_size, self.mean, self.std).to(
            self.device, self.dtype)

    def tokenize_questions(self, questions: Sequence[str]) -> tuple[Any, Any]:
        """Questions -> ``(input_ids, attention_mask)`` on the model's device (see module doc)."""
        return tokenize_questions(self.tokenizer, questions, device=self.device,
                                  max_length=self.question_max_length,
                                  start_token_id=self.question_start_token_id)

    def answer(self, pixel_values: Any, questions: Sequence[str]) -> list[str]:
        """Answer ``questions[i]`` about image ``pixel_values[i]`` (one image per question).

        Pass the same image tensor several times (``x.expand(n, -1, -1, -1)``) to ask it several
        questions; the image is then still encoded once per question, like the original.
        """
        import torch

        if pixel_values.shape[0] != len(questions):
            raise ValueError(f"{pixel_values.shape[0]} images for {len(questions)} questions")
        input_ids, attention_mask = self.tokenize_questions(questions)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, pixel_values=pixel_values.to(self.device, self.dtype),
                attention_mask=attention_mask, **self.generate_kwargs)
        return [a.strip().lower() for a in self.tokenizer.batch_decode(
            out, skip_special_tokens=True)]


def preprocess_images(images: Any, size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """PIL image(s) -> ``FloatTensor[n,3,size,size]``: RGB, bicubic resize to a square (no crop,
    aspect ratio not kept), scaled to [0,1], normalised with ``mean``/``std``."""
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC),
                   dtype=np.float32) / 255.0
        for im in images
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def tokenize_questions(tokenizer: Any, questions: Sequence[str], *, device: Any = "cpu",
                       max_length: int = QUESTION_MAX_LENGTH,
                       start_token_id: int | None = None) -> tuple[Any, Any]:
    """BLIP question tokens: longest padding, truncation, first token -> ``start_token_id``."""
    enc = tokenizer(list(questions), padding="longest", truncation=True, max_length=max_length,
                    return_tensors="pt", return_token_type_ids=False)
    input_ids = enc["input_ids"].clone()
    if start_token_id is not None:
        input_ids[:, 0] = start_token_id
    return input_ids.to(device), enc["attention_mask"].to(device)


def resolve_enc_token_id(tokenizer: Any, text_vocab_size: int, bos_token_id: int | None
                         ) -> int | None:
    """The [ENC] token id: the tokenizer's, or - for BLIP's own vocabulary layout (bert-base +
    [DEC] + [ENC] = 30,524, [ENC] = [DEC] + 1) - the id after [DEC]; None if neither applies."""
    tid = tokenizer.convert_tokens_to_ids("[ENC]")
    if tid is not None and tid != tokenizer.unk_token_id:
        return int(tid)
    if bos_token_id is not None and bos_token_id + 1 == text_vocab_size - 1 == len(tokenizer):
        return int(bos_token_id + 1)
    return None


def _looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


def resolve_blip_source(source: str | os.PathLike[str]) -> Path:
    """A local directory for ``source``: the directory itself, or the hub snapshot (downloaded
    into the HF cache when allowed). Raises :class:`WeightsMissingError` otherwise."""
    s = str(source)
    p = Path(s)
    if p.is_dir():
        return p
    if not _looks_like_hub_id(s):
        raise WeightsMissingError(
            f"BLIP VQA directory {p} does not exist. Put a save_pretrained directory (model + "
            f"processor) there: run the fetch_weights rule (asset 'blip_vqa_capfilt_large' -> "
            f"resources/weights/blip-vqa-capfilt-large), or on a machine with network "
            f"`hf download {DEFAULT_BLIP_VQA} --local-dir {p}`.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise WeightsMissingError(
            f"BLIP VQA weights {s!r} are not in the Hugging Face cache and cannot be downloaded"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {type(e).__name__}: {e}\n"
            f"  Put the model directory at resources/weights/blip-vqa-capfilt-large and pass that "
            f"path as the VQA source; get it with the fetch_weights rule (asset "
            f"'blip_vqa_capfilt_large') or, on a machine with network, "
            f"`hf download {s} --local-dir resources/weights/blip-vqa-capfilt-large` "
            f"(older huggingface_hub: `huggingface-cli download ...`).") from e


def weight_files(directory: Path) -> list[Path]:
    files = sorted({f for pat in WEIGHT_FILE_PATTERNS for f in directory.glob(pat)})
    if not files:
        raise WeightsMissingError(f"{directory} holds no model weights "
                                  f"({' / '.join(WEIGHT_FILE_PATTERNS)})")
    return files


def load_blip_vqa(
    source: str | os.PathLike[str] = DEFAULT_BLIP_VQA,
    *,
    device: str = "cpu",
    dtype: Any = None,
    image_size: int | None = None,
    num_beams: int = 3,
    max_length: int = 10,
    min_length: int = 1,
    question_start_token: str | None = "[ENC]",
) -> BlipVqa:
    """Load a BLIP VQA model (see module docstring).

    ``image_size`` defaults to the model's own ``vision_config.image_size`` (the toy models' and
    the HF port's 384); pass 480 for the original protocol. ``question_start_token="[ENC]"``
    replaces the first question token as the original code does; None keeps [CLS].
    """
    import torch
    from transformers import BlipForQuestionAnswering, BlipProcessor, GenerationConfig

    directory = resolve_blip_source(source)
    model = BlipForQuestionAnswering.from_pretrained(directory, dtype=dtype or torch.float32)
    processor = BlipProcessor.from_pretrained(directory)
    model.eval().to(device)
    tcfg = model.config.text_config
    tok = processor.tokenizer
    if len(tok) > tcfg.vocab_size:
        raise ValueError(f"{directory}: tokenizer has {len(tok)} tokens but the text model only "
                         f"{tcfg.vocab_size}")
    if tcfg.sep_token_id is None or tcfg.pad_token_id is None or tcfg.bos_token_id is None:
        raise ValueError(f"{directory}: text_config must set bos (=[DEC]), sep and pad token ids")
    # Never trust a saved/hub generation config: only the protocol's settings stay in force.
    gen = GenerationConfig(
        num_beams=num_beams, max_length=max_length, min_length=min_length, do_sample=False,
        bos_token_id=tcfg.bos_token_id, eos_token_id=tcfg.sep_token_id,
        pad_token_id=tcfg.pad_token_id, decoder_start_token_id=tcfg.bos_token_id)
    model.generation_config = gen
    model.text_decoder.generation_config = gen
    ip = processor.image_processor
    mean = tuple(float(v) for v in ip.image_mean)
    std = tuple(float(v) for v in ip.image_std)
    start_id = None
    if question_start_token == "[ENC]":
        start_id = resolve_enc_token_id(tok, tcfg.vocab_size, tcfg.bos_token_id)
        if start_id is None:
            log.warning("%s: tokenizer has no [ENC] token; questions keep [CLS] first", directory)
    elif question_start_token is not None:
        start_id = int(tok.convert_tokens_to_ids(question_start_token))
    name = Path(str(source)).name if Path(str(source)).is_dir() else str(source)
    vqa = BlipVqa(
        model=model, processor=processor,
        image_size=int(image_size or model.config.vision_config.image_size),
        mean=mean, std=std,  # type: ignore[arg-type]
        model_id=weights_id(name, weight_files(directory)),
        num_beams=num_beams, max_length=max_length, min_length=min_length,
        question_start_token_id=start_id, source=str(directory),
    )
    log.info("BLIP VQA %s: %d px%s, beams %d, max_length %d, question start id %s", vqa.model_id,
             vqa.image_size, " (position embeddings interpolated)"
             if vqa.interpolate_pos_encoding else "", num_beams, max_length, start_id)
    return vqa
