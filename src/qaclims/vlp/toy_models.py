"""Constructors for the demo's small vision-language models, saved in the real formats.

The demo trains a BLIP VQA and a mask-prompt CLIP from scratch on synthetic images (the training
loops live elsewhere). These constructors build them from the very classes the real weights use,
and the savers write the very formats the real assets come in, so the pipeline loads toy and real
models through one code path:

- BLIP: transformers ``BlipForQuestionAnswering`` with a small config and a corpus vocabulary
  (BERT word-piece format, plus BLIP's [DEC] and [ENC]); saved with ``save_pretrained`` (model +
  processor) -> :func:`qaclims.vlp.blip.load_blip_vqa` loads the directory.
- CLIP: open_clip ``CLIP`` from a custom model config + :class:`WordTokenizer` + a learnable mask
  embedding; saved as ``open_clip_config.json`` + ``tokenizer.json`` + an OVSeg-style checkpoint
  (``{"model": {"clip_adapter.clip_model.*": ...}}``) -> :func:`qaclims.vlp.clip.load_clip` with
  ``arch=<config>``, ``pretrained=None``, ``mask_checkpoint=<checkpoint>``.

Library traps handled here (environment.md): ``BertTokenizer(vocab_file=...)`` silently ignores
the file (we pass the path positionally and check the vocabulary size); BLIP's decoder must start
from [DEC] with padding excluded from the loss (:func:`blip_training_batch`); the CLIP word
vocabulary keeps the end-of-text token the largest id (:class:`WordTokenizer`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaclims.store import temp_dir
from qaclims.vlp.blip import QUESTION_MAX_LENGTH, resolve_enc_token_id, tokenize_questions
from qaclims.vlp.tokenizers import WordTokenizer

PathLike = str | os.PathLike[str]

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")
#: Punctuation always in the toy BERT vocabulary, so that questions tokenise without [UNK].
BERT_PUNCTUATION = ("?", ".", ",", "'", "-", "!")
_BERT_PIECE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
ANSWER_MAX_LENGTH = 10


# ---------------------------------------------------------------------------------------------
# BLIP VQA
# ---------------------------------------------------------------------------------------------


def build_corpus_bert_tokenizer(words: Iterable[str], out_dir: PathLike) -> Any:
    """A ``BertTokenizer`` over the words of ``words`` (words or whole sentences).

    Writes ``out_dir/vocab.txt``: [PAD] [UNK] [CLS] [SEP] [MASK] [DEC] [ENC], some punctuation,
    then the sorted lower-case words. [DEC] is the bos token (BLIP's decoder start), [ENC] an
    additional special token (question start). Raises if the loaded vocabulary has the wrong size.
    """
    from transformers import BertTokenizer

    tokens = {t for w in words for t in _BERT_PIECE.findall(str(w).lower())}
    tokens |= set(BERT_PUNCTUATION)
    vocab = [*BERT_SPECIALS, *sorted(tokens - set(BERT_SPECIALS))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(vocab_file), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    if len(tok) != len(vocab) or tok.convert_tokens_to_ids("[DEC]") != BERT_SPECIALS.index("[DEC]"):
        raise RuntimeError(f"BertTokenizer read {len(tok)} tokens from {vocab_file}, expected "
                           f"{len(vocab)} (transformers ignoring the vocab file?)")
    return tok


def build_toy_blip_vqa(
    tokenizer: Any,
    image_size: int = 96,
    patch_size: int = 12,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    *,
    intermediate: int | None = None,
    text_hidden: int | None = None,
    text_layers: int | None = None,
    max_position_embeddings: int = 64,
    seed: int | None = None,
) -> tuple[Any, Any]:
    """A small ``BlipForQuestionAnswering`` (train mode) and its ``BlipProcessor``.

    The text config's vocabulary is the tokenizer's, with bos = [DEC], sep = eos = [SEP] and pad
    = [PAD] - what ``generate`` and the training batch rely on. Defaults give ~1.6M parameters
    (environment.md: 92% exact match after 3 CPU minutes on the synthetic set).
    """
    import torch
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    th = text_hidden or hidden
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=th, intermediate_size=4 * th,
        num_hidden_layers=text_layers or layers, num_attention_heads=heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
        pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    vision_config = dict(
        hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, image_size=image_size,
        patch_size=patch_size,
    )
    config = BlipConfig(text_config=text_config, vision_config=vision_config,
                        projection_dim=th, image_text_hidden_size=th)
    if seed is not None:
        torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    return model.train(), processor


def blip_training_batch(
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    device: Any = "cpu",
    question_max_length: int = QUESTION_MAX_LENGTH,
    answer_max_length: int = ANSWER_MAX_LENGTH,
    question_start_token_id: int | None | str = "auto",
) -> dict[str, Any]:
    """Model inputs for one BLIP VQA training step (everything except ``pixel_values``).

    Questions are tokenised exactly as at answer time (:meth:`BlipVqa.tokenize_questions`:
    [ENC] first). Answers: ``decoder_input_ids`` start with [DEC] (what ``generate`` starts from,
    not [CLS]), ``labels`` are the same ids with padding set to -100 (the model shifts them),
    ``decoder_attention_mask`` masks the padding. ``answer_max_length`` counts [DEC] and [SEP],
    like ``max_length`` at generation. Use: ``model(pixel_values=x, **batch).loss``.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if question_start_token_id == "auto":
        question_start_token_id = resolve_enc_token_id(
            tokenizer, len(tokenizer), tokenizer.convert_tokens_to_ids("[DEC]"))
    input_ids, attention_mask = tokenize_questions(
        tokenizer, questions, device=device, max_length=question_max_length,
        start_token_id=question_start_token_id)  # type: ignore[arg-type]
    ans = tokenizer(list(answers), padding="longest", truncation=True,
                    max_length=answer_max_length, return_tensors="pt",
                    return_token_type_ids=False)
    dec = ans["input_ids"].clone()
    dec[:, 0] = tokenizer.convert_tokens_to_ids("[DEC]")
    dec_mask = ans["attention_mask"]
    labels = dec.masked_fill(dec_mask == 0, -100)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": dec.to(device),
        "decoder_attention_mask": dec_mask.to(device),
        "labels": labels.to(device),
    }


def save_toy_blip_vqa(model: Any, processor: Any, out_dir: PathLike) -> Path:
    """``save_pretrained`` model + processor into ``out_dir`` atomically (temp dir + rename)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, prefix=f".{out.name}.")
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# Mask-prompt CLIP
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyClipFiles:
    """What :func:`save_toy_clip` wrote; pass ``config`` as ``arch`` and ``checkpoint`` as
    ``mask_checkpoint`` to :func:`qaclims.vlp.clip.load_clip` (``pretrained=None``)."""

    config: Path
    tokenizer: Path
    checkpoint: Path


def toy_clip_config(
    vocab_size: int,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    text_layers: int = 2,
    context_length: int = 16,
    embed_dim: int = 64,
    heads: int = 4,
    text_width: int | None = None,
    text_heads: int | None = None,
) -> dict[str, Any]:
    """An open_clip model config (the ``model_configs/*.json`` format) for a small ViT CLIP."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads {heads}")
    return {
        "embed_dim": embed_dim,
        "quick_gelu": False,
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width,
                       "layers": layers, "head_width": width // heads},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size,
                     "width": text_width or width, "heads": text_heads or heads,
                     "layers": text_layers},
    }


def build_toy_clip(
    words: Iterable[str],
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    text_layers: int = 2,
    context_length: int = 16,
    embed_dim: int = 64,
    mask_prompt_depth: int = 3,
    *,
    heads: int = 4,
    text_width: int | None = None,
    seed: int | None = None,
):
    """A small trainable :class:`MaskPromptClip` (train mode, all parameters trainable).

    ``words``: the corpus (words or whole captions) for the word tokenizer. The mask embedding
    ``[mask_prompt_depth, n_patches, width]`` starts at zero and is a parameter like the rest.
    Defaults: ~0.23M parameters (environment.md).
    """
    import torch

    from qaclims.vlp.clip import MaskPromptClip, build_clip

    if seed is not None:
        torch.manual_seed(seed)
    tokenizer = WordTokenizer(words, context_length=context_length)
    cfg = toy_clip_config(tokenizer.vocab_size, image_size, patch_size, width, layers,
                          text_layers, context_length, embed_dim, heads, text_width)
    clip = build_clip(cfg)
    n_patches = (image_size // patch_size) ** 2
    model = MaskPromptClip(
        clip, tokenizer, mask_embedding=torch.zeros(mask_prompt_depth, n_patches, width),
        mask_prompt_depth=mask_prompt_depth, model_id="toy-clip@unsaved", model_cfg=cfg)
    model.requires_grad_(True)
    return model.train()


def save_toy_clip(model: Any, out_dir: PathLike, *, checkpoint_name: str = "ovseg_toy_clip.pth"
                  ) -> ToyClipFiles:
    """Write ``open_clip_config.json``, ``tokenizer.json`` and an OVSeg-style checkpoint.

    The config file is open_clip's ``local-dir`` format (``{"model_cfg", "preprocess_cfg"}``) plus
    a ``qaclims`` block naming the tokenizer file and the mask prompt depth. Each file is
    written atomically.
    """

    from qaclims.store import atomic_path, save_torch, write_json
    from qaclims.vlp.clip import OPEN_CLIP_CONFIG, TOKENIZER_FILE

    if not isinstance(model.tokenizer, WordTokenizer):
        raise TypeError("save_toy_clip saves models with a WordTokenizer (toy models)")
    if model.mask_embedding is None:
        raise ValueError("save_toy_clip needs a model with a mask embedding")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ToyClipFiles(out / OPEN_CLIP_CONFIG, out / TOKENIZER_FILE, out / checkpoint_name)
    model.tokenizer.save(files.tokenizer)
    with atomic_path(files.checkpoint) as tmp:
        save_torch({"model": model.ovseg_state_dict()}, tmp)
    write_json({
        "model_cfg": model.model_cfg,
        "preprocess_cfg": {"mean": list(model.mean), "std": list(model.std)},
        "qaclims": {"tokenizer": TOKENIZER_FILE, "mask_prompt_depth": model.mask_prompt_depth},
    }, files.config)
    return files
