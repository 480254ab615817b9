"""The bundled synthetic dataset: a VOC-style segmentation tree and a VLP pretraining corpus.

Two generators, both deterministic (same spec -> byte-identical files):

- :func:`generate_segmentation_dataset` writes the embedded default dataset of the pipeline, a
  VOC-style tree (JPEGImages, SegmentationClass, Annotations, ImageSets/Segmentation, classes.json,
  metadata.jsonl, synthetic.json). Every object class co-occurs with a context region (boat-water,
  train-track, aeroplane-sky, ...) that is labelled background, so a plain CAM leaks onto it.
- :func:`generate_vlp_corpus` (in :mod:`qaclims.data.synthetic_vlp`) writes separate images with
  region masks, captions and VQA question-answer pairs for training the toy BLIP and CLIP.

What exists in the world (classes, sub-types, contexts, scenes, question templates) is the data in
:mod:`qaclims.data.synthetic_world`; how it is drawn is :mod:`qaclims.data.synthetic_scene`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from qaclims.data.synthetic_world import (
    CLASS_BY_NAME,
    CLASSES,
    CONTEXT_BY_NAME,
    DEFAULT_QUESTIONS,
    QUESTION_TEMPLATES,
    TEMPLATE_GROUPS,
    ClassDef,
)
from qaclims.store import temp_dir, write_json, write_label_png

__all__ = [
    "CLASSES",
    "DEFAULT_QUESTIONS",
    "GENERATOR_VERSION",
    "QUESTION_TEMPLATES",
    "TEMPLATE_GROUPS",
    "SyntheticSpec",
    "VlpCorpusSpec",
    "generate_segmentation_dataset",
    "generate_vlp_corpus",
]

# Bump when the same spec would produce different files.
GENERATOR_VERSION = "1"
_SEG_STREAM, _VLP_STREAM, _SPLIT_STREAM = 0x5E6, 0x7A9, 0x5B1
DEFAULT_CLASSES: tuple[str, ...] = tuple(c.name for c in CLASSES)


# ---------------------------------------------------------------------------------------------
# Specs
def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an integer {rng}, got {value}")


def _check_fraction(name: str, value: Any, hi: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not 0.0 <= float(value) <= hi:
        raise ValueError(f"{name}: expected a number in [0, {hi}], got {value}")


def _check_classes(name: str, value: Any) -> None:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name}: expected a list of class names, got {value!r}")
    if not value:
        raise ValueError(f"{name}: expected at least one class")
    unknown = [v for v in value if v not in CLASS_BY_NAME]
    if unknown:
        raise ValueError(f"{name}: unknown class(es) {unknown}; known: {list(DEFAULT_CLASSES)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name}: duplicate class names in {list(value)}")


class _SpecMixin:
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, prefix: str | None = None):
        """Build from a plain dict (a config section); unknown keys are an error naming them."""
        prefix = prefix if prefix is not None else cls._prefix  # type: ignore[attr-defined]
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{prefix}.{unknown[0]}: unknown key (known: {sorted(names)})")
        if "classes" in data and isinstance(data["classes"], list):
            data["classes"] = tuple(data["classes"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class SyntheticSpec(_SpecMixin):
    """Settings of the segmentation dataset (config ``dataset.synthetic.*``)."""

    seed: int = 0
    n_train: int = 1000
    n_val: int = 250
    min_size: int = 128
    max_size: int = 160
    max_objects: int = 3
    classes: tuple[str, ...] = DEFAULT_CLASSES
    jpeg_quality: int = 90
    ignore_border: int = 1  # half-width in px of the 255 band around objects (0: none)

    _prefix = "dataset.synthetic"

    def __post_init__(self) -> None:
        p = self._prefix
        _check_int(f"{p}.seed", self.seed, 0)
        _check_int(f"{p}.n_train", self.n_train, 1)
        _check_int(f"{p}.n_val", self.n_val, 1)
        _check_int(f"{p}.min_size", self.min_size, 64, 1024)
        _check_int(f"{p}.max_size", self.max_size, 64, 1024)
        if self.max_size < self.min_size:
            raise ValueError(f"{p}.max_size: expected >= min_size ({self.min_size}), "
                             f"got {self.max_size}")
        _check_int(f"{p}.max_objects", self.max_objects, 1, 3)
        _check_classes(f"{p}.classes", self.classes)
        _check_int(f"{p}.jpeg_quality", self.jpeg_quality, 50, 100)
        _check_int(f"{p}.ignore_border", self.ignore_border, 0, 3)


@dataclass(frozen=True)
class VlpCorpusSpec(_SpecMixin):
    """Settings of the toy VLP pretraining corpus (config ``models.toy.corpus.*``)."""

    seed: int = 1
    n_images: int = 8000
    image_size: int = 96
    heldout_fraction: float = 0.1
    object_fraction: float = 0.2  # object on a neutral background, FG questions only
    context_fraction: float = 0.1  # one context texture, no questions
    render_min_size: int = 128  # scenes are drawn at a random size in [min, max] and resized to
    render_max_size: int = 160  # image_size x image_size, as the VQA stage resizes real images
    max_objects: int = 3
    classes: tuple[str, ...] = DEFAULT_CLASSES

    _prefix = "models.toy.corpus"

    def __post_init__(self) -> None:
        p = self._prefix
        _check_int(f"{p}.seed", self.seed, 0)
        _check_int(f"{p}.n_images", self.n_images, 1)
        _check_int(f"{p}.image_size", self.image_size, 32, 512)
        _check_fraction(f"{p}.heldout_fraction", self.heldout_fraction, 0.9)
        _check_fraction(f"{p}.object_fraction", self.object_fraction)
        _check_fraction(f"{p}.context_fraction", self.context_fraction)
        if self.object_fraction + self.context_fraction > 1.0:
            raise ValueError(f"{p}.context_fraction: object_fraction + context_fraction must be "
                             f"<= 1, got {self.object_fraction} + {self.context_fraction}")
        _check_int(f"{p}.render_min_size", self.render_min_size, 64, 1024)
        _check_int(f"{p}.render_max_size", self.render_max_size, 64, 1024)
        if self.render_max_size < self.render_min_size:
            raise ValueError(f"{p}.render_max_size: expected >= render_min_size "
                             f"({self.render_min_size}), got {self.render_max_size}")
        _check_int(f"{p}.max_objects", self.max_objects, 1, 3)
        _check_classes(f"{p}.classes", self.classes)


def enabled_classes(names: tuple[str, ...]) -> list[ClassDef]:
    """The ClassDefs of ``names`` in the given order; class ids are positions + 1."""
    return [CLASS_BY_NAME[n] for n in names]


def check_questions(questions: Mapping[str, str] | None) -> dict[str, str]:
    """Template id -> text; ids must be known (answers are keyed by id), texts contain '{}'."""
    if questions is None:
        return dict(DEFAULT_QUESTIONS)
    out = {}
    for tid, text in questions.items():
        if tid not in TEMPLATE_GROUPS:
            raise ValueError(f"questions.{tid}: unknown template id (known: "
                             f"{list(TEMPLATE_GROUPS)})")
        if not isinstance(text, str) or text.count("{}") != 1:
            raise ValueError(f"questions.{tid}: template must contain '{{}}' exactly once, "
                             f"got {text!r}")
        out[tid] = text
    if not out:
        raise ValueError("questions: expected at least one template")
    return out


# ---------------------------------------------------------------------------------------------
# Writing a whole directory atomically
@contextlib.contextmanager
def staged_directory(root: Path):
    """Yield an empty temp dir beside ``root``; on success it replaces ``root`` in one rename.

    A killed run leaves only a hidden ``.{name}.tmp-*`` folder, never a mixed or half tree.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(root.parent, prefix=f".{root.name}.tmp-")
    try:
        yield tmp
        if root.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, trash / "old")
            os.replace(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def label_with_ignore(label: np.ndarray, border: int) -> np.ndarray:
    """Mark a band of ``border`` px on each side of every object boundary as 255 (like VOC)."""
    if border <= 0:
        return label
    import cv2

    k = np.ones((2 * border + 1, 2 * border + 1), np.uint8)
    edge = cv2.dilate(label, k) != cv2.erode(label, k)
    out = label.copy()
    out[edge] = 255
    return out


def voc_xml(image_id: str, width: int, height: int, objects: list[tuple[str, tuple]]) -> str:
    """A minimal PASCAL VOC annotation; bndbox in VOC's 1-based inclusive pixel coordinates."""
    objs = "".join(
        f"  <object>\n    <name>{escape(name)}</name>\n    <pose>Unspecified</pose>\n"
        f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
        f"      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n"
        f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
        for name, (x0, y0, x1, y1) in objects
    )
    return (
        f"<annotation>\n  <folder>synthetic</folder>\n  <filename>{image_id}.jpg</filename>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n"
        f"    <depth>3</depth>\n  </size>\n  <segmented>1</segmented>\n{objs}</annotation>\n"
    )


# ---------------------------------------------------------------------------------------------
# Output 1: the segmentation dataset
def image_ids(spec: SyntheticSpec) -> tuple[list[str], list[str]]:
    n = spec.n_train + spec.n_val
    ids = [f"syn_{i:06d}" for i in range(n)]
    return ids[:spec.n_train], ids[spec.n_train:]


def generate_segmentation_dataset(root: Path | str, spec: SyntheticSpec | None = None,
                                  log=None) -> dict[str, Any]:
    """Write the VOC-style synthetic tree at ``root`` (replacing it atomically); -> summary.

    ``log``: optional callable taking a progress line.
    """
    from qaclims.data import synthetic_scene  # cv2: imported only when generating

    spec = spec or SyntheticSpec()
    enabled = enabled_classes(spec.classes)
    class_id = {c.name: i + 1 for i, c in enumerate(enabled)}
    train_ids, val_ids = image_ids(spec)
    counts = {c.name: 0 for c in enabled}
    pixels = np.zeros(len(enabled) + 1, np.int64)
    scene_counts: dict[str, int] = {}
    n_objects = []
    with staged_directory(Path(root)) as tmp:
        for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        meta_lines = []
        for i, image_id in enumerate(train_ids + val_ids):
            rng = np.random.default_rng([spec.seed, _SEG_STREAM, i])
            H = int(rng.integers(spec.min_size, spec.max_size + 1))
            W = int(rng.integers(spec.min_size, spec.max_size + 1))
            sc = synthetic_scene.render_scene(rng, H, W, enabled, spec.max_objects,
                                              duplicates=True)
            label = np.zeros((H, W), np.uint8)
            for k, o in enumerate(sc.objects):
                label[sc.instances == k + 1] = class_id[o.cls.name]
                counts[o.cls.name] += 1
            pixels += np.bincount(label.ravel(), minlength=len(enabled) + 1)
            scene_counts[sc.scene.name] = scene_counts.get(sc.scene.name, 0) + 1
            n_objects.append(len(sc.objects))
            (tmp / "JPEGImages" / f"{image_id}.jpg").write_bytes(
                encode_jpeg(sc.image, spec.jpeg_quality))
            write_label_png(label_with_ignore(label, spec.ignore_border),
                            tmp / "SegmentationClass" / f"{image_id}.png")
            (tmp / "Annotations" / f"{image_id}.xml").write_text(
                voc_xml(image_id, W, H, [(o.cls.name, o.bbox) for o in sc.objects]))
            meta_lines.append(json.dumps({
                "image_id": image_id,
                "split": "train" if i < spec.n_train else "val",
                "height": H, "width": W,
                "scene": sc.scene.name, "scene_words": list(sc.scene.words),
                "bands": sc.bands, "elements": sc.elements, "contexts": sc.context_names(),
                "objects": [{
                    "class": o.cls.name, "class_id": class_id[o.cls.name],
                    "subtype": o.subtype.name, "bbox": list(o.bbox),
                    "context": o.cls.context,
                    "context_text": CONTEXT_BY_NAME[o.cls.context].text,
                    "answers": o.answers,
                } for o in sc.objects],
            }))
            if log is not None and (i + 1) % 250 == 0:
                log(f"{i + 1}/{len(train_ids) + len(val_ids)} images")
        (tmp / "metadata.jsonl").write_text("\n".join(meta_lines) + "\n")
        _write_classes(enabled, tmp / "classes.json")
        summary = {
            "n_train": len(train_ids), "n_val": len(val_ids),
            "objects_per_class": counts, "scenes": dict(sorted(scene_counts.items())),
            "objects_per_image": {str(k): int(v) for k, v in
                                  zip(*np.unique(n_objects, return_counts=True), strict=True)},
            "pixel_fraction": {name: round(float(pixels[j]) / float(pixels.sum()), 4)
                               for j, name in enumerate(["background"] + list(class_id))},
        }
        write_json({"generator": "qaclims.data.synthetic", "version": GENERATOR_VERSION,
                    "spec": spec.to_dict(), "summary": summary}, tmp / "synthetic.json")
        # The split lists last: a tree with them is complete (the whole tree is staged anyway).
        sets = tmp / "ImageSets" / "Segmentation"
        (sets / "train.txt").write_text("".join(f"{x}\n" for x in train_ids))
        (sets / "val.txt").write_text("".join(f"{x}\n" for x in val_ids))
        (sets / "trainval.txt").write_text("".join(f"{x}\n" for x in train_ids + val_ids))
    return summary


def _write_classes(enabled: list[ClassDef], path: Path) -> None:
    """classes.json in the dataset contract's format (qaclims.data.manifest)."""
    try:
        from qaclims.data.manifest import ClassInfo, write_classes
    except ImportError:  # pragma: no cover - manifest module not present
        write_json({"source": "synthetic", "num_classes": len(enabled),
                    "background": "background",
                    "classes": [{"id": i + 1, "name": c.name, "text": c.text,
                                 "synonyms": list(c.synonyms)} for i, c in enumerate(enabled)]},
                   path)
        return
    write_classes([ClassInfo(i + 1, c.name, c.text, tuple(c.synonyms))
                   for i, c in enumerate(enabled)], path, source="synthetic")


def generate_vlp_corpus(root: Path | str, spec: VlpCorpusSpec | None = None,
                        questions: Mapping[str, str] | None = None, log=None) -> dict[str, Any]:
    """Write the toy VLP corpus at ``root``; see :mod:`qaclims.data.synthetic_vlp`."""
    from qaclims.data.synthetic_vlp import write_vlp_corpus

    return write_vlp_corpus(Path(root), spec or VlpCorpusSpec(), check_questions(questions),
                            log=log)
