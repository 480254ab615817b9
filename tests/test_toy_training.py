"""Toy VLP training: tiny corpus from the real generator, a few dozen steps per model.

Checks what the pipeline relies on: the loss goes down, the saved models load through the real
loaders (load_blip_vqa, load_clip) and answer / encode, reruns with the same seed give identical
weights, and the metrics JSON has its keys. Runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qaclims.data.synthetic import VlpCorpusSpec, generate_vlp_corpus
from qaclims.determinism import TimeGuardExceeded
from qaclims.vlp.toy_quality import (
    VQA_GROUPS,
    load_corpus,
    lr_at,
    normalise_answer,
    prompt,
    region_vocabulary,
)
from qaclims.vlp.train_toy_clip import (
    ToyClipSettings,
    batch_counts,
    blend_masks,
    blend_targets,
    build_clip_data,
    fit_toy_clip,
    multi_positive_loss,
    object_positive_texts,
    soft_target_loss,
    train_toy_clip,
)
from qaclims.vlp.train_toy_vqa import (
    ToyVqaSettings,
    corpus_words,
    fit_toy_vqa,
    mirror_rows,
    patch_region_grid,
    patch_region_rays,
    train_toy_vqa,
    vqa_loss,
)

TINY_VQA = dict(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, batch_size=32,
                lr=5e-3, warmup_steps=3, max_steps=40, log_every=10, eval_max_questions=48,
                eval_batch_size=64, threads=1)
TINY_CLIP = dict(image_size=32, patch_size=8, width=32, layers=1, text_layers=1, heads=2,
                 embed_dim=16, context_length=16, batch_size=48, lr=3e-3, warmup_steps=3,
                 max_steps=30, log_every=10, threads=1, mix_background=0.2)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vlp") / "corpus"
    generate_vlp_corpus(root, VlpCorpusSpec(n_images=80, image_size=32, heldout_fraction=0.2,
                                            render_min_size=64, render_max_size=64))
    return root


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return load_corpus(corpus_dir)


# ------------------------------------------------------------------------------- small pieces


def test_settings_from_dict_rejects_unknown_keys():
    assert ToyVqaSettings.from_dict({"max_steps": 5}).max_steps == 5
    assert ToyVqaSettings.from_dict({}).group_repeats == ToyVqaSettings().group_repeats
    assert ToyVqaSettings.from_dict({"group_repeats": None}).group_repeats == {}
    with pytest.raises(ValueError, match="group_repeats"):
        ToyVqaSettings.from_dict({"group_repeats": {"object": 0}})
    assert ToyClipSettings.from_dict({"object_texts": ["class"]}).object_texts == ("class",)
    with pytest.raises(ValueError, match="unknown toy VQA setting"):
        ToyVqaSettings.from_dict({"max_stepz": 5})
    with pytest.raises(ValueError, match="unknown toy CLIP setting"):
        ToyClipSettings.from_dict({"lr_max": 1.0})
    with pytest.raises(ValueError, match="object_texts"):
        ToyClipSettings.from_dict({"object_texts": ["alias"]})


def test_lr_schedule_warmup_and_decay():
    kw = dict(base_lr=1.0, warmup_steps=10, total_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.5)
    assert lr_at(109, **kw) < 0.01
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        lr_at(5, schedule="poly", **kw)


def test_batch_counts_follow_the_mix():
    c = batch_counts(100, {"image": 0.2, "object": 0.5, "context": 0.3},
                     {"image": 5, "object": 5, "context": 5})
    assert c == {"image": 20, "object": 50, "context": 30}
    c = batch_counts(7, {"image": 1, "object": 1, "context": 0}, {"image": 5, "object": 0})
    assert c == {"image": 7}


def test_multi_positive_loss_treats_duplicates_as_positives():
    # Two images share one text, a third has its own: deduplicated texts, no false negatives.
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.0, 1.0]]), dim=1)
    pos = torch.tensor([[True, False], [True, False], [False, True]])
    loss = multi_positive_loss(img, txt, pos, torch.tensor(10.0))
    logits = 10.0 * img @ txt.T
    li = -torch.log_softmax(logits, 1)[[0, 1, 2], [0, 0, 1]].mean()
    lt_rows = torch.log_softmax(logits.T, 1)
    lt = -0.5 * ((lt_rows[0, 0] + lt_rows[0, 1]) / 2 + lt_rows[1, 2])
    assert loss.item() == pytest.approx(0.5 * (li + lt).item(), rel=1e-5)
    # A second positive text of an image pulls it as well (mean over positives).
    pos2 = torch.tensor([[True, True], [True, False], [False, True]])
    assert multi_positive_loss(img, txt, pos2, torch.tensor(10.0)) > loss


def test_corpus_texts_and_prompts(corpus):
    classes, subtypes, contexts = region_vocabulary(corpus)
    assert classes and subtypes and contexts
    assert prompt("water") == "a photo of water."
    assert prompt("a photo of boat.") == "a photo of boat."
    assert normalise_answer("  Sail  Boat ") == "sail boat"
    obj = corpus.region_rows("train", "object").head(5)
    texts = object_positive_texts(corpus, obj, ("class", "subtype", "fg"), "a photo of {}.")
    for (_, row), t in zip(obj.iterrows(), texts, strict=True):
        assert f"a photo of {row['class_name']}." in t
        assert f"a photo of {row['subtype']}." in t
        assert len(t) == len(set(t))


# ------------------------------------------------------------------------------- VQA


def test_toy_vqa_trains_saves_loads_and_reports(corpus_dir, tmp_path):
    from qaclims.vlp.blip import load_blip_vqa

    out, metrics_path, log_path = tmp_path / "vqa", tmp_path / "vqa.json", tmp_path / "vqa.log"
    m = train_toy_vqa(corpus_dir, out, metrics_path, settings=ToyVqaSettings(**TINY_VQA),
                      log=log_path)
    t = m["training"]
    assert t["steps"] == 40 and t["stopped_by"] == "steps"
    assert t["loss_final"] < 0.7 * t["loss_first"]
    saved = json.loads(metrics_path.read_text())
    for key in ("settings", "training", "quality", "model_bytes", "total_seconds"):
        assert key in saved
    for key in ("train_seconds", "cpu_seconds", "n_parameters", "examples_per_second"):
        assert key in saved["training"]
    q = saved["quality"]
    assert 0.0 <= q["exact_match"] <= 1.0 and q["n_questions"] == 48
    assert set(q["per_group"]) <= set(VQA_GROUPS)
    assert saved["model_bytes"] > 0 and (out / "config.json").is_file()
    assert "step 40/40" in log_path.read_text()

    vqa = load_blip_vqa(out)
    corpus = load_corpus(corpus_dir)
    qa = corpus.qa_rows("heldout").head(2)
    from qaclims.vlp.toy_quality import normalise_batch

    x = normalise_batch(corpus.images[qa["index"].to_numpy()], vqa.mean, vqa.std)
    answers = vqa.answer(x, qa["question"].tolist())
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_grouped_vqa_loss_is_the_models_own_loss(corpus, tmp_path):
    from qaclims.vlp.toy_models import (
        blip_training_batch,
        build_corpus_bert_tokenizer,
        build_toy_blip_vqa,
    )

    tok = build_corpus_bert_tokenizer(corpus_words(corpus), tmp_path)
    model, _ = build_toy_blip_vqa(tok, image_size=32, patch_size=8, hidden=32, layers=1, heads=2,
                                  seed=0)
    model.eval()
    qa = corpus.qa_rows("train").head(6)
    batch = blip_training_batch(tok, qa["question"].tolist(), qa["answer"].tolist())
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    slots = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        grouped = vqa_loss(model, pixels, slots, batch)
        plain = model(pixel_values=pixels[slots], **batch).loss
    assert grouped.item() == pytest.approx(plain.item(), rel=1e-5)


def test_toy_vqa_is_deterministic(corpus):
    s = ToyVqaSettings(**dict(TINY_VQA, max_steps=4))
    a, _, _ = fit_toy_vqa(corpus, s, log=lambda _: None)
    b, _, _ = fit_toy_vqa(corpus, s, log=lambda _: None)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c, _, _ = fit_toy_vqa(corpus, ToyVqaSettings(**dict(TINY_VQA, max_steps=4, seed=1)),
                          log=lambda _: None)
    assert not all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)


def test_mirror_rows_swap_left_and_right(corpus):
    rows = corpus.qa_rows("train")
    mirror = mirror_rows(rows)
    tid = rows["template_id"].to_numpy()
    side = np.isin(tid, ["bg_left", "bg_right"])
    assert side.any() and (mirror[~side] == np.flatnonzero(~side)).all()
    m = mirror[side]
    assert set(tid[m]) == {"bg_left", "bg_right"} and (tid[m] != tid[side]).all()
    for col in ("index", "region"):
        assert (rows[col].to_numpy()[m] == rows[col].to_numpy()[side]).all()
    assert (mirror[mirror] == np.arange(len(rows))).all()


def test_patch_region_labels_and_rays(corpus):
    grid, labels = patch_region_grid(corpus, 32, 8)
    assert grid.shape == (len(corpus.images), 4, 4) and labels[0] == "none"
    # a context-only image is one region: its text everywhere
    ctx = corpus.image_table[corpus.image_table["kind"] == "context"]["index"].iloc[0]
    text = corpus.regions[corpus.regions["index"] == ctx]["text"].iloc[0]
    assert (grid[ctx] == labels.index(text)).all()
    self_t, rays, valid, labels2 = patch_region_rays(corpus, 32, 8, reach=2)
    assert labels2 == labels and (self_t.reshape(grid.shape) == grid).all()
    rays = rays.reshape(len(grid), 4, 4, 4, len(labels))
    i = int(corpus.image_table[corpus.image_table["kind"] == "scene"]["index"].iloc[0])
    y, x = 1, 1
    expect = [{grid[i, y, 0]}, {grid[i, y, 2], grid[i, y, 3]}, {grid[i, 0, x]},
              {grid[i, 2, x], grid[i, 3, x]}]  # left, right, up, down within 2 patches
    for d in range(4):
        assert set(np.flatnonzero(rays[i, y, x, d]).tolist()) == expect[d]
    valid = valid.reshape(4, 4, 4)
    assert not valid[:, 0, 0].any() and not valid[:, 3, 1].any() and not valid[0, :, 2].any()
    assert valid[1:3, 1:3].all()


def test_region_loss_and_mirroring_train_deterministically(corpus):
    s = ToyVqaSettings(**dict(TINY_VQA, max_steps=6, region_loss_weight=0.5, region_reach=2,
                              hflip=True))
    a, _, info = fit_toy_vqa(corpus, s, log=lambda _: None)
    b, _, _ = fit_toy_vqa(corpus, s, log=lambda _: None)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert info["region_loss_final"] is not None and info["region_loss_final"] > 0
    plain_settings = ToyVqaSettings(**dict(TINY_VQA, max_steps=6, region_loss_weight=0.0,
                                           hflip=False, group_repeats={}))
    plain, _, plain_info = fit_toy_vqa(corpus, plain_settings, log=lambda _: None)
    assert plain_info["region_loss_final"] is None
    assert plain.state_dict().keys() == sa.keys()  # the region head is not part of the model


def test_vision_tower_initialisation(corpus):
    zero = ToyVqaSettings(**dict(TINY_VQA, max_steps=0, vision_init_std=None))
    m0, _, _ = fit_toy_vqa(corpus, zero, log=lambda _: None)
    m1, _, _ = fit_toy_vqa(corpus, ToyVqaSettings(**dict(TINY_VQA, max_steps=0)),
                           log=lambda _: None)
    w0 = m0.vision_model.encoder.layers[0].mlp.fc1.weight
    w1 = m1.vision_model.encoder.layers[0].mlp.fc1.weight
    assert float(w0.detach().std()) < 1e-6  # transformers' BLIP vision default (std 1e-10)
    assert float(w1.detach().std()) == pytest.approx(0.02, rel=0.2)
    assert torch.equal(m0.text_encoder.embeddings.word_embeddings.weight,
                       m1.text_encoder.embeddings.word_embeddings.weight)


def test_time_guard_fails_instead_of_saving_fewer_steps(corpus):
    # Weights from a step count that follows the machine's speed would differ between runs.
    with pytest.raises(TimeGuardExceeded, match=r"models\.toy\.vqa\.max_minutes.*step 0 of"):
        fit_toy_vqa(corpus, ToyVqaSettings(**dict(TINY_VQA, max_minutes=1e-9)),
                    log=lambda _: None)


# ------------------------------------------------------------------------------- CLIP


def test_toy_clip_trains_saves_loads_and_reports(corpus_dir, tmp_path):
    from qaclims.vlp.clip import load_clip

    out, metrics_path = tmp_path / "clip", tmp_path / "clip.json"
    m = train_toy_clip(corpus_dir, out, metrics_path, settings=ToyClipSettings(**TINY_CLIP),
                       log=tmp_path / "clip.log")
    t = m["training"]
    assert t["steps"] == 30 and t["stopped_by"] == "steps"
    assert t["loss_final"] < 0.8 * t["loss_first"]
    saved = json.loads(metrics_path.read_text())
    q = saved["quality"]
    for key in ("object_class_accuracy", "context_accuracy", "object_vs_context",
                "object_subtype_accuracy"):
        assert 0.0 <= q[key] <= 1.0
    assert saved["model_bytes"] > 0

    files = saved["files"]
    model = load_clip(files["arch"], None, mask_checkpoint=files["mask_checkpoint"])
    assert model.has_mask_prompt and model.image_size == 32
    x = torch.zeros(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:16, 8:16] = 1
    f = model.encode_image(x, mask)
    g = model.encode_text(["a photo of boat.", "a photo of water."])
    assert f.shape == (2, 16) and g.shape == (2, 16)
    assert torch.isfinite(f).all() and torch.isfinite(g).all()
    assert model.tokenizer.eot_id == model.tokenizer.vocab_size - 1


def _region_map():
    # regions 1 (top-left 2x2), 2 (top-right 2x2), 3 (bottom half); 4 has no text
    m = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 4, 4]], dtype=torch.uint8)
    rt = torch.full((1, 256), -1, dtype=torch.long)
    rt[0, 1], rt[0, 2], rt[0, 3] = 10, 11, 12
    return m[None], rt


def test_blend_targets_are_the_mask_mass_per_text():
    maps, rt = _region_map()
    w = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0],
                       [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 0.9]]])
    text_map = torch.gather(rt, 1, maps.reshape(1, -1).long()).view(maps.shape)
    q = blend_targets(w, text_map, [12, 11, 10, 99])
    # region 1: 4 px x 0.5 = 2, region 2: 4 px x 1 = 4, region 3: 0; region 4 has no text
    assert torch.allclose(q, torch.tensor([[0.0, 4 / 6, 2 / 6, 0.0]]))


def test_blend_targets_weigh_objects_and_spread_blank_evenly():
    maps, rt = _region_map()
    w = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0],
                       [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 0.9]]])
    text_map = torch.gather(rt, 1, maps.reshape(1, -1).long()).view(maps.shape)
    # text 10 (region 1, mass 2) is an object counted 4x: 8 against region 2's 4
    q = blend_targets(w, text_map, [10, 11, 12, 99], salience=[4.0, 1.0, 1.0, 1.0])
    assert torch.allclose(q, torch.tensor([[8 / 12, 4 / 12, 0.0, 0.0]]))
    # blank 0.25 x 16 px = 4 units of "nothing", one per column
    q = blend_targets(w, text_map, [10, 11, 12, 99], blank=0.25)
    assert torch.allclose(q, torch.tensor([[3 / 10, 5 / 10, 1 / 10, 1 / 10]]))
    # an empty mask is all "nothing": the uniform distribution, not a division by zero
    q = blend_targets(torch.zeros_like(w), text_map, [10, 11, 12, 99], blank=0.25)
    assert torch.allclose(q, torch.full((1, 4), 0.25))


def test_blend_masks_keep_whole_regions_at_one_strength():
    maps, rt = _region_map()
    maps, rt = maps.repeat(64, 1, 1), rt.repeat(64, 1)
    w = blend_masks(maps, rt, torch.Generator().manual_seed(0), keep=0.5, min_strength=0.2,
                    max_blur=1)
    assert ((w >= 0) & (w <= 1)).all()
    for i in range(64):
        values = [torch.unique(w[i][maps[i] == r]) for r in (1, 2, 3, 4)]
        assert all(len(v) == 1 for v in values)  # no blur: one strength per region
        assert float(values[3]) == 0.0  # a region without text is never kept
        kept = [float(v) for v in values[:3] if float(v) > 0]
        assert kept and all(0.2 <= v <= 1.0 for v in kept)  # at least one region, in range
    # blurred masks spread over region borders but stay in [0, 1]
    wb = blend_masks(maps, rt, torch.Generator().manual_seed(0), 0.5, 0.2, max_blur=3)
    assert ((wb >= 0) & (wb <= 1 + 1e-6)).all() and not torch.equal(wb, w)


def test_soft_target_loss_is_lowest_at_the_target_distribution():
    txt = torch.eye(3)
    target = torch.tensor([[0.75, 0.25, 0.0]])
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0.5, -1.0]]), dim=1)
    bad = torch.nn.functional.normalize(torch.tensor([[0.5, 1.0, -1.0]]), dim=1)
    scale = torch.tensor(5.0)
    assert soft_target_loss(good, txt, target, scale) < soft_target_loss(bad, txt, target, scale)
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    expected = -torch.log_softmax(scale * good @ txt.T, 1)[0, 0]
    assert soft_target_loss(good, txt, one_hot, scale).item() == pytest.approx(expected.item())


def test_clip_data_maps_regions_to_class_and_context_texts(corpus):
    data = build_clip_data(corpus, ToyClipSettings(**TINY_CLIP))
    r = corpus.regions
    row = r[r["role"] == "object"].iloc[0]
    assert data.texts[int(data.region_text[row["index"], row["region"]])] == \
        f"a photo of {row['class_name']}."
    row = r[r["role"] == "context"].iloc[0]
    assert data.texts[int(data.region_text[row["index"], row["region"]])] == \
        f"a photo of {row['text']}."
    assert set(data.region_text[data.region_text >= 0].tolist()) <= set(data.vocab_ids)
    assert len(data.samples["blend"]) == len(corpus.split_indices("train"))
    with pytest.raises(ValueError, match="blend_keep"):
        ToyClipSettings.from_dict({"blend_keep": 0})


def test_toy_clip_is_deterministic(corpus):
    s = ToyClipSettings(**dict(TINY_CLIP, max_steps=4))
    a, _ = fit_toy_clip(corpus, s, log=lambda _: None)
    b, _ = fit_toy_clip(corpus, s, log=lambda _: None)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not math.isnan(float(np.mean([v.float().mean() for v in sa.values()])))


# ------------------------------------------------------------------------------- backbone


def test_toy_backbone_saves_a_headless_torchvision_state_dict(corpus_dir, tmp_path):
    from qaclims.vlp.backbones import load_resnet
    from qaclims.vlp.train_toy_backbone import ToyBackboneSettings, train_toy_backbone

    out, metrics_path = tmp_path / "resnet18_toy.pth", tmp_path / "backbone.json"
    s = ToyBackboneSettings(image_size=32, batch_size=8, max_steps=3, warmup_steps=1,
                            log_every=1, threads=1, eval_max_images=16)
    m = train_toy_backbone(corpus_dir, out, metrics_path, settings=s, log=lambda _: None)
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state and not any(k.startswith("fc.") for k in state)
    model = load_resnet("resnet18", out)  # the stages' loader accepts it like ImageNet weights
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    saved = json.loads(metrics_path.read_text())
    assert saved["training"]["steps"] == 3 and 0.0 <= saved["quality"]["mAP"] <= 1.0
    assert m["quality"]["n_images"] == 16


def test_loose_prompts_keep_the_pixels_masked(corpus) -> None:
    """loose_prompt replaces a sample's mask prompt by all ones; its pixels stay masked (the
    model must then find the region in the pixels, as RITC's gradient needs)."""
    from qaclims.vlp.train_toy_clip import _assemble_batch, build_clip_data

    s = ToyClipSettings(**TINY_CLIP)
    data = build_clip_data(corpus, s)
    picks = {"object": torch.arange(min(16, len(data.samples["object"])))}
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x0, m0, _, _ = _assemble_batch(data, picks, torch.Generator().manual_seed(0), mean, std, 0.0)
    x1, m1, _, _ = _assemble_batch(data, picks, torch.Generator().manual_seed(0), mean, std, 1.0)
    assert torch.equal(x0, x1)                      # same masked pixels
    assert bool((m1 == 1).all())                    # every prompt is the whole image
    assert bool((m0 < 1).any()) and bool(((x0 != 0) <= (m0 > 0)).all())  # exact region prompts
