"""The fast engine answers like per-question `generate` on a *trained* toy VQA (not only random).

A briefly trained toy model answers with real words of several lengths, so decoding paths differ
between questions - the case where padding or batching mistakes would show up.
"""


import h5py
import pandas as pd
import pytest
from PIL import Image

from qaclims.data.synthetic import VlpCorpusSpec, generate_vlp_corpus
from qaclims.qape.engine import VqaEngine, answer_plain
from qaclims.vlp.blip import load_blip_vqa
from qaclims.vlp.train_toy_vqa import ToyVqaSettings, train_toy_vqa


@pytest.fixture(scope="module")
def toy_vqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyvqa")
    corpus = root / "corpus"
    generate_vlp_corpus(corpus, VlpCorpusSpec(n_images=160, image_size=48, heldout_fraction=0.2,
                                              render_min_size=64, render_max_size=80))
    settings = ToyVqaSettings(image_size=48, patch_size=8, hidden=48, layers=1, heads=2,
                              batch_size=64, lr=5e-3, warmup_steps=5, max_steps=120,
                              log_every=40, threads=1)
    train_toy_vqa(corpus, root / "model", settings=settings, evaluate=False, log=lambda _: None)
    return corpus, root / "model"


def test_engine_matches_plain_generate_on_trained_toy_model(toy_vqa) -> None:
    corpus, model_dir = toy_vqa
    images = pd.read_parquet(corpus / "images.parquet")
    qa = pd.read_parquet(corpus / "qa.parquet")
    held = images[(images["split"] == "heldout") & (images["kind"] == "scene")].head(6)
    assert len(held) >= 3
    vqa = load_blip_vqa(str(model_dir))
    settings = dict(num_beams=3, max_length=10, min_length=1)
    engine = VqaEngine(vqa.model, vqa.processor, image_size=vqa.image_size, device="cpu",
                       **settings)
    with h5py.File(corpus / "corpus.h5") as f:
        pixels = f["images"]
        agree = total = 0
        answers_seen = set()
        for row in held.itertuples():
            image = Image.fromarray(pixels[int(row.index)])
            questions = list(dict.fromkeys(qa[qa["index"] == row.index]["question"]))
            fast = engine.answer_image(image, questions)
            for question, answer in zip(questions, fast, strict=True):
                plain = answer_plain(vqa.model, vqa.processor, image, question,
                                     image_size=vqa.image_size, **settings)
                agree += plain == answer
                total += 1
                answers_seen.add(answer)
    assert total >= 40
    assert len(answers_seen) >= 3, f"the trained model should answer variedly: {answers_seen}"
    assert agree / total >= 0.99, f"engine agrees with per-question generate on {agree}/{total}"
