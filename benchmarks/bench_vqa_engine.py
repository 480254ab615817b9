"""VQA engine vs the authors' per-question protocol, in one run on the same questions.

    python benchmarks/bench_vqa_engine.py --size base --images 1 --device cpu
    python benchmarks/bench_vqa_engine.py --size tiny --images 8

``--size base`` is BLIP-base shaped (ViT-B/16 768-d x 12 at 480 px, BERT-base text encoder and
decoder, vocabulary 30,524) with random weights: the numbers are timings only. ``--size tiny`` is a
toy model for a quick check. The plain path (``answer_plain``: one ``model.generate`` per question,
image re-encoded each time, float32) runs first; then the engine (image encoded once, questions
batched; float16 on CUDA). Prints questions/s of both, their ratio and how many answers agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import (  # noqa: E402
    BertTokenizer,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
)

from qaclims.qape.engine import VqaEngine, answer_plain  # noqa: E402

# The authors' 6 FG + 10 BG templates (method.md 2.2).
TEMPLATES = [
    "What kind of {} is in the photo?",
    "What type of {} is in the photo?",
    "What is this {} also called?",
    "What is this {} usually called?",
    "What is another word for this {}?",
    "What is another name for this {}?",
    "what is above the {}?",
    "what is under the {}?",
    "what is behind the {}?",
    "what is around the {}?",
    "what is next to the {}?",
    "what is the left side of {}?",
    "what is the right side of {}?",
    "what scene is the {} in?",
    "what environment is the {} in?",
    "what place is the {} in?",
]
CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
]
SIZES = {
    # vision: hidden, layers, heads, patch, default image size; text: hidden, layers, heads, vocab
    "base": dict(
        v_hidden=768,
        v_layers=12,
        v_heads=12,
        patch=16,
        image=480,
        t_hidden=768,
        t_layers=12,
        t_heads=12,
        vocab=30524,
    ),
    "tiny": dict(
        v_hidden=64,
        v_layers=2,
        v_heads=2,
        patch=8,
        image=64,
        t_hidden=64,
        t_layers=2,
        t_heads=2,
        vocab=None,
    ),
}


def build_tokenizer(folder: Path, vocab_size: int | None) -> BertTokenizer:
    """A BERT tokenizer whose vocabulary holds the question words, padded with filler tokens to
    ``vocab_size`` - 2, then [DEC] (bos) and [ENC], as BLIP's tokenizer is laid out."""
    words = sorted(
        {w for t in TEMPLATES for w in t.lower().replace("?", " ").split() if w != "{}"}
        | {w for c in CLASSES for w in c.split()}
        | {"?"}
    )
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    if vocab_size is not None:
        tokens += [f"filler{i}" for i in range(vocab_size - 2 - len(tokens))]
    tokens += ["[DEC]", "[ENC]"]
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    tok = BertTokenizer(str(path), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    assert len(tok) == len(tokens), (len(tok), len(tokens))
    return tok


def build_model(
    size: str, image_size: int, tok: BertTokenizer, seed: int
) -> BlipForQuestionAnswering:
    s = SIZES[size]
    vision = dict(
        hidden_size=s["v_hidden"],
        intermediate_size=4 * s["v_hidden"],
        num_hidden_layers=s["v_layers"],
        num_attention_heads=s["v_heads"],
        image_size=image_size,
        patch_size=s["patch"],
    )
    text = dict(
        vocab_size=len(tok),
        hidden_size=s["t_hidden"],
        encoder_hidden_size=s["v_hidden"],
        intermediate_size=4 * s["t_hidden"],
        num_hidden_layers=s["t_layers"],
        num_attention_heads=s["t_heads"],
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        sep_token_id=tok.sep_token_id,
        eos_token_id=tok.sep_token_id,
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(BlipConfig(vision_config=vision, text_config=text)).eval()
    if size == "tiny":  # larger weights than the default init, so answers vary with the input
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.5)
    return model


def make_items(
    n_images: int, n_questions: int, seed: int
) -> list[tuple[int, Image.Image, list[str]]]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_images):
        h, w = int(rng.integers(300, 500)), int(rng.integers(300, 500))  # VOC-like sizes
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        questions = []
        k = 0
        while len(questions) < n_questions:
            cls = CLASSES[(i + k) % len(CLASSES)]
            questions += [t.format(cls) for t in TEMPLATES]
            k += 1
        items.append((i, image, questions[:n_questions]))
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--questions", type=int, default=16, help="questions per image")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--image-size", type=int, default=None, help="default: 480 base, 64 tiny")
    ap.add_argument("--question-batch-size", type=int, default=64)
    ap.add_argument("--image-batch-size", type=int, default=None)
    ap.add_argument(
        "--plain-images",
        type=int,
        default=None,
        help="images for the slow plain path (default: all); its q/s is per question",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    image_size = args.image_size or SIZES[args.size]["image"]
    device = torch.device(args.device)
    print(
        f"# torch {torch.__version__} threads={torch.get_num_threads()} "
        f"device={device} python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp), SIZES[args.size]["vocab"])
    t0 = time.perf_counter()
    model = build_model(args.size, image_size, tok, args.seed).to(device)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"# model {args.size}: {n_params:.1f}M params, {image_size} px, built in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    processor = BlipProcessor(
        BlipImageProcessor(size={"height": image_size, "width": image_size}), tok
    )
    items = make_items(args.images, args.questions, args.seed)
    plain_items = items[: args.plain_images or len(items)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up (kernels, allocator, lazy imports) on one question, untimed
    answer_plain(model, processor, items[0][1], items[0][2][0])

    sync()
    t0 = time.perf_counter()
    plain = {
        key: [answer_plain(model, processor, image, q) for q in qs]
        for key, image, qs in plain_items
    }
    sync()
    t_plain = time.perf_counter() - t0
    n_plain = sum(len(qs) for _, _, qs in plain_items)

    engine = VqaEngine(
        model,
        processor,
        device=device,
        question_batch_size=args.question_batch_size,
        image_batch_size=args.image_batch_size,
    )
    engine.answer_image(items[0][1], items[0][2][:1])  # warm-up
    engine.calls = 0
    sync()
    t0 = time.perf_counter()
    fast = dict(engine.answer_many(items))
    sync()
    t_engine = time.perf_counter() - t0
    n_engine = sum(len(qs) for _, _, qs in items)

    agree = sum(a == b for key in plain for a, b in zip(plain[key], fast[key], strict=True))
    qps_plain, qps_engine = n_plain / t_plain, n_engine / t_engine
    print(f"plain : {n_plain:4d} questions in {t_plain:8.2f} s  {qps_plain:8.2f} q/s  (float32)")
    print(
        f"engine: {n_engine:4d} questions in {t_engine:8.2f} s  {qps_engine:8.2f} q/s  "
        f"({str(engine.dtype).removeprefix('torch.')}, model calls {engine.calls})"
    )
    print(
        f"speed-up: {qps_engine / qps_plain:.1f}x   answers agreeing with plain: {agree}/{n_plain}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
