"""The synthetic generator: determinism, file formats, co-occurrence, VLP corpus, answers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from qaclims.data import synthetic_scene
from qaclims.data.synthetic import (
    SyntheticSpec,
    VlpCorpusSpec,
    generate_segmentation_dataset,
    generate_vlp_corpus,
)
from qaclims.data.synthetic_scene import answer_margin, region_above, render_scene, side_neighbour
from qaclims.data.synthetic_world import (
    CLASS_BY_NAME,
    CLASSES,
    CONTEXT_BY_NAME,
    CONTEXT_ID,
    CONTEXTS,
    DEFAULT_QUESTIONS,
    FG_TEMPLATE_IDS,
    TEMPLATE_GROUPS,
    answer_vocabulary,
)
from qaclims.store import read_label_png

SEG_SPEC = SyntheticSpec(seed=3, n_train=24, n_val=6)
VLP_SPEC = VlpCorpusSpec(seed=4, n_images=80)
CONTEXT_ID_BY_TEXT = {c.text: CONTEXT_ID[c.name] for c in CONTEXTS}


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg") / "synthetic"
    generate_segmentation_dataset(root, SEG_SPEC)
    return root


@pytest.fixture(scope="module")
def vlp_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vlp") / "corpus"
    generate_vlp_corpus(root, VLP_SPEC)
    return root


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _metadata(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


# -- determinism -------------------------------------------------------------------------------
def test_segmentation_is_byte_identical_for_the_same_spec(tmp_path):
    spec = SyntheticSpec(seed=11, n_train=6, n_val=2)
    generate_segmentation_dataset(tmp_path / "a", spec)
    generate_segmentation_dataset(tmp_path / "b", spec)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    generate_segmentation_dataset(tmp_path / "c", SyntheticSpec(seed=12, n_train=6, n_val=2))
    c = _tree_bytes(tmp_path / "c")
    assert a["JPEGImages/syn_000000.jpg"] != c["JPEGImages/syn_000000.jpg"]


def test_vlp_corpus_is_identical_for_the_same_spec(tmp_path):
    import h5py
    import pandas as pd

    spec = VlpCorpusSpec(seed=5, n_images=12)
    generate_vlp_corpus(tmp_path / "a", spec)
    generate_vlp_corpus(tmp_path / "b", spec)
    with h5py.File(tmp_path / "a" / "corpus.h5") as fa, \
            h5py.File(tmp_path / "b" / "corpus.h5") as fb:
        for key in ("images", "region_masks"):
            assert np.array_equal(fa[key][:], fb[key][:])
    for name in ("images.parquet", "regions.parquet", "qa.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / name),
                                      pd.read_parquet(tmp_path / "b" / name))


# -- segmentation tree -------------------------------------------------------------------------
def test_tree_layout_lists_and_classes(seg_root):
    classes = json.loads((seg_root / "classes.json").read_text())["classes"]
    assert [c["id"] for c in classes] == list(range(1, len(CLASSES) + 1))
    assert [c["name"] for c in classes] == [c.name for c in CLASSES]
    assert all(c["text"] and c["synonyms"] for c in classes)
    sets = seg_root / "ImageSets" / "Segmentation"
    train = sets.joinpath("train.txt").read_text().split()
    val = sets.joinpath("val.txt").read_text().split()
    assert len(train) == SEG_SPEC.n_train and len(val) == SEG_SPEC.n_val
    assert not set(train) & set(val)
    stems = {p.stem for p in (seg_root / "JPEGImages").glob("*.jpg")}
    assert stems == set(train) | set(val)
    for sub, ext in (("SegmentationClass", "png"), ("Annotations", "xml")):
        assert {p.stem for p in (seg_root / sub).glob(f"*.{ext}")} == stems
    info = json.loads((seg_root / "synthetic.json").read_text())
    assert info["spec"]["n_train"] == SEG_SPEC.n_train and info["version"]
    assert not list(seg_root.parent.glob(".*tmp-*")), "staging folder left behind"


def test_images_masks_and_xml_agree(seg_root):
    from PIL import Image

    classes = json.loads((seg_root / "classes.json").read_text())["classes"]
    names = {c["id"]: c["name"] for c in classes}
    meta = {m["image_id"]: m for m in _metadata(seg_root)}
    for jpg in sorted((seg_root / "JPEGImages").glob("*.jpg")):
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            w, h = im.size
        assert SEG_SPEC.min_size <= min(w, h) and max(w, h) <= SEG_SPEC.max_size
        with Image.open(seg_root / "SegmentationClass" / f"{jpg.stem}.png") as im:
            assert im.mode == "P"
        mask = read_label_png(seg_root / "SegmentationClass" / f"{jpg.stem}.png")
        assert mask.shape == (h, w)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(len(CLASSES) + 1)) | {255}
        assert 0 in values and 255 in values
        xml = ET.parse(seg_root / "Annotations" / f"{jpg.stem}.xml").getroot()
        assert xml.findtext("filename") == jpg.name
        assert (int(xml.findtext("size/width")), int(xml.findtext("size/height"))) == (w, h)
        objs = xml.findall("object")
        assert 1 <= len(objs) <= SEG_SPEC.max_objects
        assert {o.findtext("name") for o in objs} == {names[v] for v in values - {0, 255}}
        for o in objs:
            x0, y0 = int(o.findtext("bndbox/xmin")), int(o.findtext("bndbox/ymin"))
            x1, y1 = int(o.findtext("bndbox/xmax")), int(o.findtext("bndbox/ymax"))
            assert 1 <= x0 < x1 <= w and 1 <= y0 < y1 <= h
        m = meta[jpg.stem]
        assert (m["height"], m["width"]) == (h, w)
        assert sorted(o["class"] for o in m["objects"]) == sorted(o.findtext("name") for o in objs)


def test_every_class_comes_with_its_context(seg_root):
    """Co-occurrence: the class's context region is visible whenever the class is present."""
    seen = set()
    for m in _metadata(seg_root):
        for o in m["objects"]:
            assert o["context"] in m["contexts"], (m["image_id"], o["class"])
            assert CLASS_BY_NAME[o["class"]].context == o["context"]
            seen.add(o["class"])
    assert len(seen) >= 5  # 30 images cover most classes


def test_max_objects_and_class_subset(tmp_path):
    spec = SyntheticSpec(seed=1, n_train=10, n_val=1, max_objects=1, classes=("boat", "car"))
    summary = generate_segmentation_dataset(tmp_path / "s", spec)
    assert summary["objects_per_image"] == {"1": 11}
    classes = json.loads((tmp_path / "s" / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == ["boat", "car"]
    for png in (tmp_path / "s" / "SegmentationClass").glob("*.png"):
        assert set(np.unique(read_label_png(png)).tolist()) <= {0, 1, 2, 255}


def test_regenerating_replaces_the_whole_tree(tmp_path, monkeypatch):
    root = tmp_path / "s"
    generate_segmentation_dataset(root, SyntheticSpec(n_train=5, n_val=1))
    before = _tree_bytes(root)
    calls = {"n": 0}
    real = synthetic_scene.render_scene

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_scene, "render_scene", failing)
    with pytest.raises(RuntimeError, match="killed"):
        generate_segmentation_dataset(root, SyntheticSpec(seed=9, n_train=5, n_val=1))
    assert _tree_bytes(root) == before  # the old tree is untouched, nothing mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# -- answers follow the geometry ----------------------------------------------------------------
def _scenes(n: int, seed: int = 77, duplicates: bool = True):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        H, W = int(rng.integers(96, 161)), int(rng.integers(96, 161))
        yield render_scene(rng, H, W, list(CLASSES), duplicates=duplicates)


def test_under_answers_match_the_pixels():
    checked = 0
    for sc in _scenes(40):
        m = answer_margin(*sc.contexts.shape)
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            qa, qb = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
            under = sc.contexts[y1 + 1:y1 + 1 + m, qa:qb]
            # 0 marks other objects/clutter; neither is allowed inside the strip.
            assert (under == CONTEXT_ID_BY_TEXT[o.answers["bg_under"]]).all(), o.cls.name
            assert o.answers["bg_under"] == o.answers["bg_around"]
            checked += 1
    assert checked >= 40


def test_above_answer_is_the_region_touching_the_drawn_top():
    """Walking up from the object's highest pixels, the answer's region starts within the answer
    margin (only slivers thinner than it come first) and is at least that tall there."""
    checked = slivers = 0
    for sc in _scenes(60):
        H, W = sc.contexts.shape
        m = answer_margin(H, W)
        for k, o in enumerate(sc.objects, start=1):
            x0, y0, x1, _ = o.bbox
            assert (sc.instances[y0, x0:x1] == k).any() and not (sc.instances[:y0] == k).any()
            want = CONTEXT_ID_BY_TEXT[o.answers["bg_above"]]
            good = 0
            cols = np.flatnonzero(sc.instances[y0, x0:x1] == k) + x0
            for c in cols:
                up = sc.contexts[:y0, c][::-1]  # the pixels above the top, nearest first
                hits = np.flatnonzero(up == want)
                if len(hits) == 0 or hits[0] >= m:
                    continue
                run = up[hits[0]:hits[0] + m]
                good += bool((run == want).all() or hits[0] + len(run) == len(up))
                slivers += bool(hits[0] > 0 and up[0] != 0)
            assert good * 2 > len(cols), (o.cls.name, o.answers["bg_above"], o.bbox)
            checked += 1
    assert checked >= 60 and slivers > 0  # the seeds include thin slivers that were skipped


def test_region_above_skips_slivers_and_clutter():
    sky, grass = CONTEXT_ID["sky"], CONTEXT_ID["grass"]
    ctx = np.full((20, 10), sky, np.uint8)
    ctx[10:] = grass
    inst = np.zeros((20, 10), np.uint8)
    inst[12:18, 3:7] = 1  # drawn top at row 12: 2 rows of grass above it, then sky
    bbox = (3, 12, 7, 18)
    assert region_above(ctx, inst, 1, bbox, min_run=3) == sky
    assert region_above(ctx, inst, 1, bbox, min_run=2) == grass
    ctx[11, :] = 0  # clutter right above the object: not a region
    assert region_above(ctx, inst, 1, bbox, min_run=2) == sky
    inst[11, 5] = 1  # a single highest pixel (a mast): only its column counts
    ctx[11, :] = grass
    assert region_above(ctx, inst, 1, (3, 11, 7, 18), min_run=1) == grass


def test_side_neighbour_is_the_nearest_thing_in_the_object_rows():
    things = np.zeros((30, 60), np.int16)
    things[10:20, 20:30] = 1  # the object asked about
    things[12:18, 12:15] = 2  # left, gap 6
    things[0:9, 31:40] = 3  # right but above the object's rows: not beside it
    things[18:25, 36:38] = 4  # right, overlapping the bottom rows, gap 7
    things[10:20, 55:58] = 5  # right, beyond one object width
    bbox = (20, 10, 30, 20)
    assert side_neighbour(things, 1, bbox, "left") == (6, 2)
    assert side_neighbour(things, 1, bbox, "right") == (7, 4)
    assert side_neighbour(things, 1, bbox, "right", window=0.5) is None
    things[18:25, 36:38] = 0
    assert side_neighbour(things, 1, bbox, "right", window=3.0) == (26, 5)
    things[10:12, 14] = 6  # same nearest column as thing 2, fewer pixels there
    assert side_neighbour(things, 1, bbox, "left") == (6, 2)


def _thing_texts(sc) -> list[str]:
    return ([o.cls.text for o in sc.objects]
            + [CONTEXT_BY_NAME[e].text for e in sc.elements])


def test_left_right_next_follow_the_pixels():
    """Left/right name the nearest other object or side element drawn beside the object (its rows,
    one object width away), else the object's own context; next to is the nearer of the two."""
    counts = {"object": 0, "element": 0, "context": 0}
    for sc in _scenes(80, seed=5, duplicates=False):
        H, W = sc.contexts.shape
        m = answer_margin(H, W)
        n = len(sc.objects)
        things = sc.instances.astype(np.int16)
        assert sc.element_map is not None and sc.element_map.shape == (H, W)
        el = sc.element_map >= 0
        for e, kind in enumerate(sc.elements):  # element pixels are visible pixels of its kind
            assert (sc.contexts[sc.element_map == e] == CONTEXT_ID[kind]).all()
        things[el] = n + 1 + sc.element_map[el]
        texts = _thing_texts(sc)
        for k, o in enumerate(sc.objects, start=1):
            x0, y0, x1, y1 = o.bbox
            if o.cls.placement == "perch":
                y1 += m  # a perched bird's rows reach into the canopy under it
            w = x1 - x0
            own = CONTEXT_BY_NAME[o.cls.context].text
            found = {}
            for side, strip in (("left", things[y0:y1, max(0, x0 - w):x0][:, ::-1]),
                                ("right", things[y0:y1, x1:x1 + w])):
                answer = o.answers[f"bg_{side}"]
                cols = np.flatnonzero(((strip > 0) & (strip != k)).any(axis=0))
                if len(cols) == 0:
                    assert answer == own, (side, o.cls.name)
                    counts["context"] += 1
                    continue
                first = strip[:, cols[0]]
                near = {texts[t - 1] for t in first[(first > 0) & (first != k)].tolist()}
                assert answer in near, (side, o.cls.name, answer, near)
                found[side] = (int(cols[0]), answer)
                if answer in {p.cls.text for p in sc.objects}:
                    other = next(j for j, p in enumerate(sc.objects, 1) if p.cls.text == answer)
                    ys, xs = np.nonzero(sc.instances == other)
                    assert ys.min() < y1 and ys.max() >= y0  # shares rows with the object
                    assert (xs.max() < x0) if side == "left" else (xs.min() >= x1)
                    counts["object"] += 1
                else:
                    counts["element"] += 1
            nxt = o.answers["bg_next"]
            if not found:
                assert nxt == own
            else:
                gap, text = min(found.values(), key=lambda g: g[0])
                if len(found) == 2 and found["left"][0] == found["right"][0]:
                    text = found["left"][1]
                assert nxt == text, (o.cls.name, found, nxt)
    assert min(counts.values()) >= 5, counts


def test_answers_in_metadata_follow_the_tables(seg_root):
    for m in _metadata(seg_root):
        for o in m["objects"]:
            cls = CLASS_BY_NAME[o["class"]]
            st = next(s for s in cls.subtypes if s.name == o["subtype"])
            a = o["answers"]
            assert set(a) == set(TEMPLATE_GROUPS)
            assert a["fg_kind"] == a["fg_type"] == st.name
            assert [a[t] for t in ("fg_also", "fg_usually", "fg_word", "fg_name")] == \
                list(st.aliases)
            assert [a["bg_scene"], a["bg_environment"], a["bg_place"]] == m["scene_words"]
            assert a["bg_under"] == o["context_text"]


# -- VLP corpus --------------------------------------------------------------------------------
def test_vlp_corpus_files_and_shapes(vlp_root):
    import h5py
    import pandas as pd

    N, S = VLP_SPEC.n_images, VLP_SPEC.image_size
    with h5py.File(vlp_root / "corpus.h5") as f:
        images, masks = f["images"][:], f["region_masks"][:]
    assert images.shape == (N, S, S, 3) and images.dtype == np.uint8
    assert masks.shape == (N, S, S) and masks.dtype == np.uint8
    im = pd.read_parquet(vlp_root / "images.parquet")
    assert im["index"].tolist() == list(range(N))
    assert set(im["kind"]) == {"object", "context", "scene"}
    assert (im["split"] == "heldout").sum() == round(N * VLP_SPEC.heldout_fraction)
    assert im["caption"].str.startswith("a photo of ").all()
    regions = pd.read_parquet(vlp_root / "regions.parquet")
    for idx, group in regions.groupby("index"):
        present = set(np.unique(masks[idx]).tolist()) - {0}
        assert set(group["region"]) == present, idx
        counts = np.bincount(masks[idx].ravel(), minlength=256)
        assert (group["pixels"].to_numpy() == counts[group["region"].to_numpy()]).all()
        assert group["region"].is_unique
    objs = regions[regions.role == "object"]
    assert objs["class_name"].notna().all() and objs["subtype"].notna().all()
    ctx = regions[regions.role == "context"]
    assert ctx["class_name"].isna().all()
    assert set(ctx.dropna(subset=["context_of"])["context_of"]) <= set(CLASS_BY_NAME)
    json.loads((vlp_root / "corpus.json").read_text())


def test_vlp_questions_and_answers(vlp_root):
    import pandas as pd

    im = pd.read_parquet(vlp_root / "images.parquet").set_index("index")
    regions = pd.read_parquet(vlp_root / "regions.parquet")
    qa = pd.read_parquet(vlp_root / "qa.parquet")
    assert (qa["answer"].str.len() > 0).all()
    assert (qa["answer"] == qa["answer"].str.lower()).all()
    assert set(qa["answer"]) <= answer_vocabulary() | {c.text for c in CLASSES}
    assert qa["answer"].nunique() <= 130
    assert (qa["group"] == qa["template_id"].map(TEMPLATE_GROUPS)).all()
    expected_q = [DEFAULT_QUESTIONS[t].replace("{}", CLASS_BY_NAME[c].text)
                  for t, c in zip(qa["template_id"], qa["class_name"], strict=True)]
    assert qa["question"].tolist() == expected_q
    assert "what is under the boat?" in set(qa["question"]) or "boat" not in set(qa["class_name"])
    per_object = qa.groupby(["index", "region"])["template_id"].apply(set)
    for (idx, _region), tids in per_object.items():
        kind = im.loc[idx, "kind"]
        assert kind in ("scene", "object")
        assert tids == (set(TEMPLATE_GROUPS) if kind == "scene" else set(FG_TEMPLATE_IDS))
    # every object region of a scene has its questions; context images have none
    objects = regions[regions.role == "object"]
    assert len(per_object) == len(objects)
    assert not set(qa["index"]) & set(im.index[im["kind"] == "context"])
    # realistic backgrounds show up among the BG answers, the class name itself rarely
    bg = qa[qa["group"].isin(["object", "scene"])]
    assert {"sky", "water"} <= set(bg["answer"])
    assert (bg["answer"] == bg["class_name"]).mean() < 0.05


def test_custom_question_wording_flows_through(tmp_path):
    import pandas as pd

    generate_vlp_corpus(tmp_path / "c", VlpCorpusSpec(seed=2, n_images=10),
                        questions={"bg_under": "what lies beneath the {}?", "fg_kind": "Which {}?"})
    qa = pd.read_parquet(tmp_path / "c" / "qa.parquet")
    assert set(qa["template_id"]) <= {"bg_under", "fg_kind"}
    under = qa[qa.template_id == "bg_under"]
    assert under["question"].str.startswith("what lies beneath the ").all()


# -- spec validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "kwargs", "field"), [
    (SyntheticSpec, {"n_train": 0}, "dataset.synthetic.n_train"),
    (SyntheticSpec, {"n_val": "many"}, "dataset.synthetic.n_val"),
    (SyntheticSpec, {"min_size": 200, "max_size": 150}, "dataset.synthetic.max_size"),
    (SyntheticSpec, {"min_size": 32}, "dataset.synthetic.min_size"),
    (SyntheticSpec, {"max_objects": 0}, "dataset.synthetic.max_objects"),
    (SyntheticSpec, {"classes": ("boat", "ship")}, "dataset.synthetic.classes"),
    (SyntheticSpec, {"classes": ()}, "dataset.synthetic.classes"),
    (SyntheticSpec, {"jpeg_quality": 101}, "dataset.synthetic.jpeg_quality"),
    (VlpCorpusSpec, {"n_images": 0}, "models.toy.corpus.n_images"),
    (VlpCorpusSpec, {"heldout_fraction": 1.5}, "models.toy.corpus.heldout_fraction"),
    (VlpCorpusSpec, {"object_fraction": 0.7, "context_fraction": 0.5},
     "models.toy.corpus.context_fraction"),
    (VlpCorpusSpec, {"image_size": True}, "models.toy.corpus.image_size"),
])
def test_bad_spec_names_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cls(**kwargs)


def test_from_dict():
    spec = SyntheticSpec.from_dict({"seed": 4, "n_train": 7, "classes": ["cow", "boat"]})
    assert spec.seed == 4 and spec.n_train == 7 and spec.classes == ("cow", "boat")
    assert SyntheticSpec.from_dict(spec.to_dict()) == spec
    assert VlpCorpusSpec.from_dict(None) == VlpCorpusSpec()
    with pytest.raises(ValueError, match=r"dataset\.synthetic\.n_images: unknown key"):
        SyntheticSpec.from_dict({"n_images": 3})
    with pytest.raises(ValueError, match=r"questions\.bg_sideways"):
        generate_vlp_corpus("unused", VlpCorpusSpec(n_images=1), questions={"bg_sideways": "{}?"})
