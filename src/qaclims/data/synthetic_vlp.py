"""The toy VLP pretraining corpus: images, region masks, captions and VQA pairs.

Files under the corpus root (all written into a staged folder that replaces the root at once):

corpus.h5        ``images`` uint8 [N, S, S, 3] RGB, ``region_masks`` uint8 [N, S, S]
                 (0 = nothing / clutter, r = the region listed in regions.parquet for that row)
images.parquet   index (row in corpus.h5), image_id, kind (object|context|scene), split
                 (train|heldout), scene (null unless kind scene), caption
regions.parquet  index, region, role (object|context), class_name, subtype, text, context_of,
                 pixels
qa.parquet       index, region (the object asked about), class_name, template_id, group,
                 question, answer
corpus.json      generator version, spec, question templates, counts, answer vocabulary

Kinds: ``scene`` = composite scenes from the segmentation renderer (all templates for every
object), ``object`` = one object on a neutral cluttered background (the FG templates only),
``context`` = one context texture (no questions). Scenes are rendered at a random size in
[render_min_size, render_max_size] and resized to S x S without keeping the aspect ratio, the
way the VQA stage resizes real images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from qaclims.data.synthetic import (
    _SPLIT_STREAM,
    _VLP_STREAM,
    GENERATOR_VERSION,
    VlpCorpusSpec,
    enabled_classes,
    staged_directory,
)
from qaclims.data.synthetic_scene import (
    _article,
    caption_for,
    render_context_only,
    render_object_only,
    render_scene,
)
from qaclims.data.synthetic_world import (
    CONTEXT_BY_NAME,
    CONTEXT_ID,
    CONTEXTS,
    FG_TEMPLATE_IDS,
    SCENES,
    TEMPLATE_GROUPS,
)
from qaclims.store import write_json, write_parquet

_CHUNK = 256


def _qa_rows(index: int, region: int, cls, answers: dict[str, str], questions: dict[str, str],
             template_ids) -> list[dict]:
    return [{
        "index": index, "region": region, "class_name": cls.name, "template_id": tid,
        "group": TEMPLATE_GROUPS[tid], "question": questions[tid].replace("{}", cls.text),
        "answer": answers[tid],
    } for tid in template_ids if tid in questions]


def _fg_answers(st) -> dict[str, str]:
    return {"fg_kind": st.name, "fg_type": st.name, "fg_also": st.aliases[0],
            "fg_usually": st.aliases[1], "fg_word": st.aliases[2], "fg_name": st.aliases[3]}


def render_corpus_item(spec: VlpCorpusSpec, i: int, enabled, context_names, questions):
    """Render row ``i`` -> (image, region mask, image row, region rows, qa rows)."""
    S = spec.image_size
    rng = np.random.default_rng([spec.seed, _VLP_STREAM, i])
    u = rng.random()
    regions: list[dict] = []
    qa: list[dict] = []
    if u < spec.object_fraction:
        image, mask, c, st = render_object_only(rng, S, enabled)
        regions.append({"region": 1, "role": "object", "class_name": c.name, "subtype": st.name,
                        "text": st.name, "context_of": None})
        qa += _qa_rows(i, 1, c, _fg_answers(st), questions, FG_TEMPLATE_IDS)
        row = {"kind": "object", "scene": None,
               "caption": f"a photo of {_article(st.name)} {st.name}"}
    elif u < spec.object_fraction + spec.context_fraction:
        image, name = render_context_only(rng, S, context_names)
        mask = np.ones((S, S), np.uint8)
        ctx = CONTEXT_BY_NAME[name]
        regions.append({"region": 1, "role": "context", "class_name": None, "subtype": None,
                        "text": ctx.text, "context_of": ctx.context_of})
        row = {"kind": "context", "scene": None, "caption": f"a photo of {ctx.text}"}
    else:
        H = int(rng.integers(spec.render_min_size, spec.render_max_size + 1))
        W = int(rng.integers(spec.render_min_size, spec.render_max_size + 1))
        sc = render_scene(rng, H, W, enabled, spec.max_objects, duplicates=False)
        # Region values: objects 1..n, then the visible contexts in CONTEXTS order.
        lut = np.zeros(256, np.uint8)
        values = np.where(sc.instances > 0, sc.instances, 0).astype(np.uint8)
        n = len(sc.objects)
        ctx_value = {}
        for c in CONTEXTS:
            cid = CONTEXT_ID[c.name]
            if (sc.contexts == cid).any():
                ctx_value[c.name] = n + 1 + len(ctx_value)
                lut[cid] = ctx_value[c.name]
        mask_full = np.where(sc.instances > 0, values, lut[sc.contexts])
        if (H, W) != (S, S):
            image = cv2.resize(sc.image, (S, S), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask_full, (S, S), interpolation=cv2.INTER_NEAREST)
        else:
            image, mask = sc.image, mask_full
        for k, o in enumerate(sc.objects):
            regions.append({"region": k + 1, "role": "object", "class_name": o.cls.name,
                            "subtype": o.subtype.name, "text": o.subtype.name,
                            "context_of": None})
            qa += _qa_rows(i, k + 1, o.cls, o.answers, questions, TEMPLATE_GROUPS)
        for name, v in ctx_value.items():
            ctx = CONTEXT_BY_NAME[name]
            regions.append({"region": v, "role": "context", "class_name": None, "subtype": None,
                            "text": ctx.text, "context_of": ctx.context_of})
        row = {"kind": "scene", "scene": sc.scene.name, "caption": caption_for(sc)}
    counts = np.bincount(mask.ravel(), minlength=256)
    regions = [dict(r, index=i, pixels=int(counts[r["region"]])) for r in regions
               if counts[r["region"]] > 0]
    return image, mask, row, regions, qa


def write_vlp_corpus(root: Path, spec: VlpCorpusSpec, questions: dict[str, str],
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    import h5py
    import pandas as pd

    enabled = enabled_classes(spec.classes)
    enabled_names = {c.name for c in enabled}
    scenes_used = {s.name for s in SCENES if set(s.primary + s.allowed) & enabled_names}
    # Context-only images show any context that can appear with the enabled classes.
    context_names = sorted({c.context for c in enabled} | {
        b for s in SCENES if s.name in scenes_used for b, _ in s.bands
    } | {"pier", "barn", "mountain"} & _possible_elements(scenes_used))
    context_names = [c.name for c in CONTEXTS if c.name in context_names]
    N, S = spec.n_images, spec.image_size
    heldout = np.zeros(N, bool)
    k = int(round(N * spec.heldout_fraction))
    heldout[np.random.default_rng([spec.seed, _SPLIT_STREAM]).permutation(N)[:k]] = True

    image_rows, region_rows, qa_rows = [], [], []
    with staged_directory(root) as tmp:
        with h5py.File(tmp / "corpus.h5", "w") as f:
            chunk = min(_CHUNK, N)
            d_img = f.create_dataset("images", (N, S, S, 3), np.uint8,
                                     chunks=(min(64, N), S, S, 3))
            d_msk = f.create_dataset("region_masks", (N, S, S), np.uint8,
                                     chunks=(min(64, N), S, S), compression="gzip",
                                     compression_opts=1)
            f.attrs["generator_version"] = GENERATOR_VERSION
            f.attrs["spec"] = json.dumps(spec.to_dict(), sort_keys=True)
            buf_i = np.zeros((chunk, S, S, 3), np.uint8)
            buf_m = np.zeros((chunk, S, S), np.uint8)
            for i in range(N):
                image, mask, row, regions, qa = render_corpus_item(
                    spec, i, enabled, context_names, questions)
                buf_i[i % chunk], buf_m[i % chunk] = image, mask
                if (i + 1) % chunk == 0 or i == N - 1:
                    s0 = i - i % chunk
                    d_img[s0:i + 1] = buf_i[:i + 1 - s0]
                    d_msk[s0:i + 1] = buf_m[:i + 1 - s0]
                image_rows.append({"index": i, "image_id": f"vlp_{i:06d}",
                                   "kind": row["kind"],
                                   "split": "heldout" if heldout[i] else "train",
                                   "scene": row["scene"], "caption": row["caption"]})
                region_rows += regions
                qa_rows += qa
                if log is not None and (i + 1) % 1000 == 0:
                    log(f"{i + 1}/{N} corpus images")
        images = pd.DataFrame(image_rows)
        regions_df = pd.DataFrame(region_rows, columns=[
            "index", "region", "role", "class_name", "subtype", "text", "context_of", "pixels"])
        qa_df = pd.DataFrame(qa_rows, columns=[
            "index", "region", "class_name", "template_id", "group", "question", "answer"])
        for df in (images, regions_df, qa_df):
            df["index"] = df["index"].astype("int32")
        regions_df["region"] = regions_df["region"].astype("int16")
        regions_df["pixels"] = regions_df["pixels"].astype("int32")
        qa_df["region"] = qa_df["region"].astype("int16")
        write_parquet(images, tmp / "images.parquet")
        write_parquet(regions_df, tmp / "regions.parquet")
        write_parquet(qa_df, tmp / "qa.parquet")
        vocab = sorted(set(qa_df["answer"]))
        summary = {
            "n_images": N, "image_size": S,
            "kinds": {k: int(v) for k, v in images["kind"].value_counts().sort_index().items()},
            "heldout": int(heldout.sum()), "qa_pairs": len(qa_df),
            "answer_vocabulary_size": len(vocab),
            "answer_word_count": len({w for a in vocab for w in a.split()}),
        }
        write_json({"generator": "qaclims.data.synthetic_vlp", "version": GENERATOR_VERSION,
                    "spec": spec.to_dict(), "questions": questions, "summary": summary,
                    "answer_vocabulary": vocab}, tmp / "corpus.json")
    return summary


def _possible_elements(scene_names: set[str]) -> set[str]:
    out = set()
    for s in SCENES:
        if s.name in scene_names:
            out.update(s.elements)
            if s.mountain_ok:
                out.add("mountain")
    return out
