"""Rendering of one synthetic scene: layout, textures, objects, clutter and the VQA answers.

A scene is a stack of horizontal context bands (sky on top, then e.g. a tree line, water, ...),
side elements (pier, barn, trees), 1-3 objects that stand on/in their class's context, and
distractor clutter. Objects never share an x-range, and each object is placed so that the strips
just above and just below its placement box are a single region, a margin away from any boundary
(the generator trap of environment.md).

The spatial answers are read off the drawn pixels, so they are what a viewer of the image sees
(:func:`_answers`): "above" is the region just above the object's drawn top (slivers thinner than
the answer margin skipped), "left"/"right" the nearest other object or side element whose pixels
lie beside the object's drawn box, in its rows and within one object width, "next to" the nearer
of the two; with nothing there, the object's own context. Answers consume no randomness: the
pixels of a scene do not depend on how its answers are derived.

All randomness comes from the ``numpy.random.Generator`` passed in, all drawing is vectorised
numpy / cv2 on small arrays, so a 96-160 px scene takes a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from qaclims.data.synthetic_world import (
    CLASS_BY_NAME,
    CONTEXT_BY_NAME,
    CONTEXT_ID,
    CONTEXTS,
    SCENES,
    ClassDef,
    SceneDef,
    SubtypeDef,
)

CONTEXT_NAME_BY_ID = {v: k for k, v in CONTEXT_ID.items()}
_MAX_TRIES = 40


@dataclass
class PlacedObject:
    cls: ClassDef
    subtype: SubtypeDef
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends), tight around its pixels
    answers: dict[str, str] = field(default_factory=dict)  # template id -> answer
    index: int = -1  # position in the scene's chosen class list (internal)
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # placement box the answers refer to


@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3] RGB
    instances: np.ndarray  # uint8 [H, W]: 0 background, i + 1 = objects[i]
    contexts: np.ndarray  # uint8 [H, W]: CONTEXT_ID of the background region, 0 = clutter / object
    scene: SceneDef
    objects: list[PlacedObject]
    bands: list[str]  # band names top to bottom as drawn (sky may have become mountain)
    elements: list[str]  # side elements drawn, left to right
    # int16 [H, W]: index into ``elements`` of the element visible at each pixel, -1 = none
    element_map: np.ndarray | None = None

    def context_names(self) -> list[str]:
        """Context regions visible in the image, in CONTEXTS order."""
        present = set(np.unique(self.contexts).tolist()) - {0}
        return [c.name for c in CONTEXTS if CONTEXT_ID[c.name] in present]


# ---------------------------------------------------------------------------------------------
# Small helpers
def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.integers(-amount, amount + 1, 3), 0, 255)


def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise (about unit variance) with features of ~``cell`` pixels."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------
# Textures: each returns float32 [h, w, 3] for the rows y0:y0+h of an image of width w.
def _tex_sky(rng, h, w, y0, band, H):
    top, bottom = _jitter(rng, (70, 130, 215), 20), _jitter(rng, (175, 205, 240), 15)
    t = ((np.arange(y0, y0 + h, dtype=np.float32) / max(H, 1)) ** 0.8)[:, None, None]
    img = top * (1 - t) + bottom * t + np.zeros((1, w, 1), np.float32)
    cloud = _lowfreq(rng, h, w, 9.0) + 0.5 * _lowfreq(rng, h, w, 4.0)
    # Stretch the clouds horizontally.
    cloud = cv2.resize(cv2.resize(cloud, (max(2, w // 2), h)), (w, h))
    c = np.clip((cloud - 0.95) * 1.5, 0, 1)[..., None]
    return img * (1 - c) + 248.0 * c


def _tex_mountain(rng, h, w, y0, band, H):
    base = _jitter(rng, (110, 105, 135), 15)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ridges = np.sin((xx * 0.9 + yy * 1.3) / 2.3 + 2.0 * _lowfreq(rng, h, w, 6.0))
    img = base + 18 * ridges[..., None] + 10 * _lowfreq(rng, h, w, 3.0)[..., None]
    # Snowy peaks: light at the top, fading down along a jagged line.
    peak = 0.25 * h + 0.15 * h * np.abs(np.sin(xx[0] / (w / 3.7) + rng.uniform(0, 3)))
    snow = np.clip((peak[None, :] - yy) / 3.0, 0, 1)[..., None]
    return img * (1 - snow) + 240.0 * snow


def _tex_water(rng, h, w, y0, band, H):
    base = _jitter(rng, (35, 95, 165), 18)
    yy, xx = np.mgrid[y0:y0 + h, 0:w].astype(np.float32)
    period = rng.uniform(3.5, 5.5)
    waves = np.sin(2 * np.pi * (yy / period + 0.25 * np.sin(xx / rng.uniform(5, 9))
                                + rng.uniform(0, 1)))
    img = base + 22 * waves[..., None] + 8 * _lowfreq(rng, h, w, 8.0)[..., None]
    glint = (waves > 0.92) & (rng.random((h, w)) < 0.25)
    img[glint] = 215
    return img


def _tex_sand(rng, h, w, y0, band, H):
    base = _jitter(rng, (218, 196, 145), 15)
    yy, xx = np.mgrid[y0:y0 + h, 0:w].astype(np.float32)
    ripple = np.sin(yy / 1.6 + 1.5 * np.sin(xx / 7.0 + rng.uniform(0, 6)))
    return (base + 9 * ripple[..., None] + 10 * _lowfreq(rng, h, w, 2.0)[..., None]
            + 8 * _lowfreq(rng, h, w, 10.0)[..., None])


def _tex_grass(rng, h, w, y0, band, H):
    base = _jitter(rng, (75, 150, 50), 18)
    blades = cv2.blur(rng.standard_normal((h, w)).astype(np.float32), (1, 5)) * 2.2
    return base + 22 * blades[..., None] + 14 * _lowfreq(rng, h, w, 8.0)[..., None] * \
        np.array([0.6, 1.0, 0.4], np.float32)


def _tex_tree(rng, h, w, y0, band, H):
    base = _jitter(rng, (40, 105, 40), 15)
    leaves = _lowfreq(rng, h, w, 2.2) + 0.6 * _lowfreq(rng, h, w, 5.0)
    return base + 26 * leaves[..., None] * np.array([0.7, 1.0, 0.6], np.float32)


def _tex_rails(rng, h, w, y0, band, H):
    base = _jitter(rng, (138, 122, 104), 12)
    img = base + 22 * rng.standard_normal((h, w, 1)).astype(np.float32)
    by0, by1 = band if band is not None else (y0, y0 + h)
    bh = by1 - by0
    yy = np.arange(y0, y0 + h)[:, None]
    xx = np.arange(w)[None, :]
    period = int(rng.integers(5, 8))
    sleeper = ((xx + int(rng.integers(0, period))) % period < 2) & \
        (yy >= by0 + 0.18 * bh) & (yy < by0 + 0.82 * bh)
    img[sleeper] = _jitter(rng, (95, 62, 40), 10)
    for frac in (0.32, 0.68):
        r = int(by0 + frac * bh)
        rows = (yy >= r) & (yy < r + max(1, bh // 10))
        img[np.broadcast_to(rows, (h, w))] = _jitter(rng, (200, 200, 205), 10)
    return img


def _tex_road(rng, h, w, y0, band, H):
    base = _jitter(rng, (78, 78, 84), 10)
    img = base + 9 * rng.standard_normal((h, w, 1)).astype(np.float32)
    by0, by1 = band if band is not None else (y0, y0 + h)
    mid = int((by0 + by1) / 2)
    dash = int(rng.integers(6, 10))
    xx = np.arange(w)[None, :]
    yy = np.arange(y0, y0 + h)[:, None]
    lines = ((yy >= mid) & (yy < mid + 2) & ((xx + int(rng.integers(0, 2 * dash))) % (2 * dash)
                                             < dash))
    img[lines] = 235
    return img


def _tex_building(rng, h, w, y0, band, H):
    img = np.empty((h, w, 3), np.float32)
    colours = ((150, 150, 155), (200, 185, 160), (165, 85, 60), (120, 125, 140), (210, 205, 195))
    x = 0
    yy = np.arange(y0, y0 + h)[:, None]
    while x < w:
        bw = int(rng.integers(max(6, w // 8), max(7, w // 4)))
        col = _jitter(rng, colours[int(rng.integers(len(colours)))], 12)
        seg = slice(x, min(w, x + bw))
        n = seg.stop - seg.start
        img[:, seg] = col + 6 * rng.standard_normal((h, n, 1)).astype(np.float32)
        py, px = int(rng.integers(5, 8)), int(rng.integers(4, 6))
        xx = np.arange(n)[None, :]
        win = ((yy % py) < py // 2) & ((xx % px) >= 1) & ((xx % px) < px - 1 - (px > 4))
        img[:, seg][win] = _jitter(rng, (45, 65, 95), 15)
        x += bw
    return img


def _tex_sidewalk(rng, h, w, y0, band, H):
    base = _jitter(rng, (188, 184, 176), 10)
    img = base + 6 * rng.standard_normal((h, w, 1)).astype(np.float32)
    yy, xx = np.mgrid[y0:y0 + h, 0:w]
    img[(xx % 11 == 0) | (yy % 6 == 0)] -= 45
    return img


def _tex_platform(rng, h, w, y0, band, H):
    base = _jitter(rng, (200, 198, 190), 8)
    img = base + 6 * rng.standard_normal((h, w, 1)).astype(np.float32)
    yy, xx = np.mgrid[y0:y0 + h, 0:w]
    img[(xx % 13 == 0)] -= 35
    by0, by1 = band if band is not None else (y0, y0 + h)
    edge = ((yy >= by0 + 1) & (yy < by0 + 3)) | ((yy >= by1 - 3) & (yy < by1 - 1))
    img[edge] = (235, 200, 30)
    return img


def _tex_pier(rng, h, w, y0, band, H):
    base = _jitter(rng, (135, 92, 52), 12)
    yy, xx = np.mgrid[y0:y0 + h, 0:w]
    img = base + 10 * rng.standard_normal((h, w, 1)).astype(np.float32)
    img[(yy % 3 == 0)] -= 30
    return img


def _tex_barn(rng, h, w, y0, band, H):
    base = _jitter(rng, (168, 38, 32), 15)
    xx = np.arange(w)[None, :]
    img = base + 8 * rng.standard_normal((h, w, 1)).astype(np.float32)
    img[np.broadcast_to(xx % 4 == 0, (h, w))] -= 35
    return img


def _tex_neutral(rng, h, w, y0, band, H):
    """Background of object-only images: no context, just muted noise."""
    base = (rng.uniform(90, 200) + rng.uniform(-25, 25, 3)).astype(np.float32)
    return (base + 14 * _lowfreq(rng, h, w, 6.0)[..., None] * rng.uniform(0.5, 1.5, 3)
            + 10 * rng.standard_normal((h, w, 1)).astype(np.float32))


TEXTURES = {
    "sky": _tex_sky, "mountain": _tex_mountain, "water": _tex_water, "sand": _tex_sand,
    "grass": _tex_grass, "tree": _tex_tree, "rails": _tex_rails, "road": _tex_road,
    "building": _tex_building, "sidewalk": _tex_sidewalk, "platform": _tex_platform,
    "pier": _tex_pier, "barn": _tex_barn,
}
assert set(TEXTURES) == {c.name for c in CONTEXTS}


def render_texture(rng, name: str, h: int, w: int, y0: int = 0,
                   band: tuple[int, int] | None = None, H: int | None = None) -> np.ndarray:
    fn = _tex_neutral if name == "neutral" else TEXTURES[name]
    return fn(rng, h, w, y0, band, H or h)


# ---------------------------------------------------------------------------------------------
# Object drawing: each class drawer returns parts in unit coordinates of the object box, facing
# right. A part is (kind, colour, geometry): "poly" [(u, v), ...], "ellipse" (cu, cv, ru, rv),
# "rect" (u0, v0, u1, v1), "line" (u0, v0, u1, v1, thickness_frac_of_h).
def _parts_aeroplane(st: SubtypeDef, rng) -> list:
    p = st.palette
    if st.name == "jet":
        return [
            ("poly", p["accent"], [(0.03, 0.52), (0.17, 0.52), (0.10, 0.08), (0.02, 0.08)]),
            ("poly", "shade", [(0.42, 0.5), (0.57, 0.5), (0.36, 0.16), (0.29, 0.16)]),
            ("ellipse", p["body"], (0.5, 0.56, 0.48, 0.12)),
            ("poly", p["body"], [(0.02, 0.56), (0.13, 0.56), (0.07, 0.72), (0.0, 0.72)]),
            ("poly", p["body"], [(0.40, 0.6), (0.59, 0.6), (0.34, 0.98), (0.25, 0.98)]),
            ("ellipse", p["detail"], (0.45, 0.77, 0.06, 0.06)),
            ("rect", p["accent"], (0.1, 0.6, 0.92, 0.64)),
            *[("rect", p["detail"], (u, 0.5, u + 0.025, 0.54)) for u in np.arange(0.2, 0.86, 0.06)],
            ("poly", p["detail"], [(0.9, 0.49), (0.96, 0.52), (0.9, 0.54)]),
        ]
    return [  # propeller plane, seen from above: a cross
        ("rect", p["body"], (0.38, 0.0, 0.55, 1.0)),
        ("rect", p["accent"], (0.38, 0.0, 0.55, 0.1)),
        ("rect", p["accent"], (0.38, 0.9, 0.55, 1.0)),
        ("ellipse", p["body"], (0.5, 0.5, 0.42, 0.13)),
        ("rect", p["body"], (0.06, 0.3, 0.15, 0.7)),
        ("ellipse", p["detail"], (0.68, 0.5, 0.08, 0.07)),
        ("ellipse", p["accent"], (0.92, 0.5, 0.04, 0.08)),
        ("rect", p["detail"], (0.95, 0.22, 0.99, 0.78)),
    ]


def _parts_bird(st: SubtypeDef, rng) -> list:
    p = st.palette
    parts = [
        ("line", p["detail"], (0.44, 0.7, 0.42, 1.0, 0.06)),
        ("line", p["detail"], (0.56, 0.7, 0.58, 1.0, 0.06)),
    ]
    if st.name == "parrot":
        parts += [
            ("poly", (40, 80, 210), [(0.3, 0.55), (0.0, 0.95), (0.1, 1.0), (0.38, 0.66)]),
            ("ellipse", p["body"], (0.5, 0.52, 0.26, 0.22)),
            ("ellipse", p["accent"], (0.42, 0.52, 0.2, 0.14)),
            ("ellipse", p["body"], (0.74, 0.3, 0.14, 0.19)),
            ("poly", p["detail"], [(0.84, 0.25), (1.0, 0.33), (0.95, 0.45), (0.85, 0.4)]),
            ("ellipse", (250, 250, 250), (0.77, 0.26, 0.04, 0.05)),
        ]
    else:
        parts += [
            ("poly", p["body"], [(0.3, 0.45), (0.0, 0.4), (0.0, 0.62), (0.3, 0.65)]),
            ("ellipse", p["body"], (0.5, 0.52, 0.28, 0.22)),
            ("ellipse", p["accent"], (0.45, 0.5, 0.2, 0.13)),
            ("ellipse", p["body"], (0.76, 0.32, 0.14, 0.19)),
            ("poly", p["detail"], [(0.86, 0.28), (1.0, 0.36), (0.86, 0.42)]),
            ("ellipse", (250, 250, 250), (0.79, 0.28, 0.035, 0.045)),
        ]
    return parts


def _parts_boat(st: SubtypeDef, rng) -> list:
    p = st.palette
    if st.name == "sailboat":
        return [
            ("rect", p["detail"], (0.47, 0.0, 0.53, 0.8)),
            ("poly", p["body"], [(0.55, 0.03), (0.55, 0.77), (0.95, 0.77)]),
            ("poly", "shade", [(0.45, 0.1), (0.45, 0.77), (0.1, 0.77)]),
            ("poly", p["body"], [(0.0, 0.77), (1.0, 0.77), (0.82, 1.0), (0.16, 1.0)]),
            ("rect", p["accent"], (0.08, 0.83, 0.92, 0.89)),
        ]
    return [
        ("rect", p["accent"], (0.24, 0.08, 0.62, 0.5)),
        *[("rect", p["detail"], (u, 0.18, u + 0.06, 0.32)) for u in (0.29, 0.39, 0.49)],
        ("poly", p["detail"], [(0.62, 0.5), (0.76, 0.5), (0.62, 0.16)]),
        ("poly", p["body"], [(0.0, 0.45), (0.76, 0.45), (1.0, 0.36), (0.86, 1.0), (0.06, 1.0)]),
        ("rect", p["accent"], (0.04, 0.6, 0.9, 0.68)),
    ]


def _parts_car(st: SubtypeDef, rng) -> list:
    p = st.palette
    wheels = [
        ("ellipse", p["detail"], (0.22, 0.8, 0.11, 0.2)),
        ("ellipse", p["detail"], (0.78, 0.8, 0.11, 0.2)),
        ("ellipse", (170, 170, 175), (0.22, 0.8, 0.045, 0.08)),
        ("ellipse", (170, 170, 175), (0.78, 0.8, 0.045, 0.08)),
    ]
    if st.name == "sports car":
        return [
            ("poly", p["body"], [(0.0, 0.42), (0.3, 0.38), (0.46, 0.16), (0.7, 0.16), (0.9, 0.4),
                                 (1.0, 0.5), (1.0, 0.8), (0.0, 0.8)]),
            ("poly", p["accent"], [(0.47, 0.22), (0.68, 0.22), (0.83, 0.4), (0.38, 0.4)]),
            ("rect", p["accent"], (0.0, 0.3, 0.07, 0.42)),
            ("rect", (250, 220, 60), (0.95, 0.5, 1.0, 0.58)),
            *wheels,
        ]
    return [
        ("rect", p["body"], (0.0, 0.42, 1.0, 0.82)),
        ("poly", p["body"], [(0.2, 0.42), (0.3, 0.14), (0.72, 0.14), (0.83, 0.42)]),
        ("poly", (40, 45, 60), [(0.33, 0.2), (0.49, 0.2), (0.49, 0.4), (0.26, 0.4)]),
        ("poly", (40, 45, 60), [(0.53, 0.2), (0.7, 0.2), (0.78, 0.4), (0.53, 0.4)]),
        ("rect", p["accent"], (0.0, 0.54, 1.0, 0.64)),
        ("rect", (230, 30, 30), (0.40, 0.02, 0.5, 0.14)),
        ("rect", (30, 70, 240), (0.5, 0.02, 0.6, 0.14)),
        *wheels,
    ]


def _parts_cow(st: SubtypeDef, rng) -> list:
    p = st.palette
    body = [(0.14, 0.26), (0.8, 0.26), (0.84, 0.36), (0.84, 0.68), (0.14, 0.68), (0.09, 0.46)]
    parts = [
        ("line", p["body"], (0.12, 0.3, 0.04, 0.72, 0.05)),
        *[("rect", p["body"], (u, 0.6, u + 0.07, 1.0)) for u in (0.17, 0.3, 0.62, 0.74)],
        ("poly", p["body"], body),
        ("poly", p["body"], [(0.78, 0.2), (0.97, 0.22), (1.0, 0.52), (0.86, 0.56), (0.78, 0.42)]),
        ("ellipse", p["detail"], (0.94, 0.46, 0.05, 0.08)),
    ]
    if st.name == "dairy cow":
        for _ in range(int(rng.integers(3, 6))):
            cu, cv = rng.uniform(0.22, 0.72), rng.uniform(0.34, 0.6)
            parts.append(("ellipse", p["accent"], (cu, cv, rng.uniform(0.05, 0.09),
                                                   rng.uniform(0.06, 0.1))))
        parts.append(("ellipse", p["accent"], (0.86, 0.3, 0.05, 0.07)))
    else:
        parts += [
            ("ellipse", p["accent"], (0.88, 0.34, 0.08, 0.12)),
            ("poly", p["detail"], [(0.8, 0.22), (0.74, 0.02), (0.86, 0.2)]),
            ("poly", p["detail"], [(0.94, 0.22), (1.0, 0.02), (0.99, 0.24)]),
        ]
    return parts


def _parts_horse(st: SubtypeDef, rng) -> list:
    p = st.palette
    pony = st.name == "pony"
    by = 0.5 if pony else 0.42
    parts = [
        ("poly", p["accent"], [(0.16, by - 0.08), (0.03, by + 0.35), (0.12, by + 0.36)]),
        *[("rect", p["body"], (u, by, u + 0.07, 1.0)) for u in (0.2, 0.31, 0.6, 0.7)],
        ("ellipse", p["body"], (0.46, by, 0.3, 0.16)),
        ("poly", p["body"], [(0.62, by), (0.7, 0.1), (0.82, 0.1), (0.78, by + 0.04)]),
        ("poly", p["body"], [(0.7, 0.06), (0.85, 0.02), (1.0, 0.26), (0.94, 0.33), (0.8, 0.24)]),
        ("poly", p["accent"], [(0.68, 0.06), (0.6, by), (0.65, by + 0.02), (0.75, 0.1)]),
    ]
    if not pony:
        parts.append(("rect", p["detail"], (0.36, by - 0.15, 0.52, by - 0.04)))
    else:
        parts.append(("ellipse", (250, 250, 250), (0.45, by + 0.02, 0.08, 0.07)))
    return parts


def _parts_train(st: SubtypeDef, rng) -> list:
    p = st.palette
    if st.name == "steam train":
        return [
            ("rect", p["body"], (0.0, 0.3, 0.11, 0.8)),
            ("rect", p["body"], (0.12, 0.08, 0.32, 0.82)),
            ("rect", p["detail"], (0.16, 0.18, 0.28, 0.38)),
            ("rect", p["body"], (0.3, 0.34, 0.9, 0.82)),
            ("rect", p["body"], (0.77, 0.08, 0.84, 0.36)),
            ("ellipse", p["detail"], (0.58, 0.34, 0.05, 0.09)),
            ("rect", p["accent"], (0.3, 0.7, 0.9, 0.75)),
            ("poly", p["accent"], [(0.9, 0.55), (1.0, 0.95), (0.9, 0.95)]),
            *[("ellipse", p["accent"], (u, 0.85, 0.05, 0.14)) for u in (0.2, 0.42, 0.58, 0.74)],
        ]
    return [
        ("poly", p["body"], [(0.0, 0.2), (0.7, 0.2), (0.88, 0.28), (1.0, 0.55), (1.0, 0.86),
                             (0.0, 0.86)]),
        ("rect", p["accent"], (0.0, 0.6, 0.99, 0.69)),
        *[("rect", p["detail"], (u, 0.32, u + 0.045, 0.46)) for u in np.arange(0.04, 0.7, 0.075)],
        ("poly", p["detail"], [(0.72, 0.26), (0.86, 0.3), (0.92, 0.42), (0.72, 0.42)]),
        ("rect", p["detail"], (0.0, 0.86, 1.0, 0.93)),
        *[("ellipse", p["detail"], (u, 0.93, 0.025, 0.07)) for u in (0.1, 0.2, 0.75, 0.85)],
    ]


DRAWERS = {
    "aeroplane": _parts_aeroplane, "bird": _parts_bird, "boat": _parts_boat, "car": _parts_car,
    "cow": _parts_cow, "horse": _parts_horse, "train": _parts_train,
}
assert set(DRAWERS) == set(CLASS_BY_NAME)


def draw_object(img: np.ndarray, mask: np.ndarray, value: int, cls: ClassDef, st: SubtypeDef,
                box: tuple[int, int, int, int], flip: bool, rng: np.random.Generator) -> None:
    """Draw ``cls``/``st`` into the box (x0, y0, x1, y1, exclusive) of img; mark mask = value."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 - 1, y1 - y0 - 1
    # Draw into views of the box so that nothing (thick lines) spills outside it.
    img, mask = img[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    x0 = y0 = 0
    shade = np.clip(np.asarray(st.palette["body"], np.float32) * 0.8, 0, 255)
    tint = rng.integers(-14, 15, 3)

    def pt(u: float, v: float) -> tuple[int, int]:
        u = 1.0 - u if flip else u
        return int(round(x0 + u * w)), int(round(y0 + v * h))

    for kind, colour, geo in DRAWERS[cls.name](st, rng):
        col = shade if colour == "shade" else np.asarray(colour, np.float32)
        c = tuple(int(v) for v in np.clip(col + tint, 0, 255))
        if kind == "poly":
            pts = np.array([pt(u, v) for u, v in geo], np.int32)
            cv2.fillPoly(img, [pts], c)
            cv2.fillPoly(mask, [pts], value)
        elif kind == "rect":
            (a, b), (cx, d) = pt(geo[0], geo[1]), pt(geo[2], geo[3])
            pts = np.array([(a, b), (cx, b), (cx, d), (a, d)], np.int32)
            cv2.fillPoly(img, [pts], c)
            cv2.fillPoly(mask, [pts], value)
        elif kind == "ellipse":
            cu, cv_, ru, rv = geo
            centre = pt(cu, cv_)
            axes = (max(1, int(round(ru * w))), max(1, int(round(rv * h))))
            cv2.ellipse(img, centre, axes, 0, 0, 360, c, -1)
            cv2.ellipse(mask, centre, axes, 0, 0, 360, value, -1)
        elif kind == "line":
            t = max(1, int(round(geo[4] * h)))
            cv2.line(img, pt(geo[0], geo[1]), pt(geo[2], geo[3]), c, t)
            cv2.line(mask, pt(geo[0], geo[1]), pt(geo[2], geo[3]), value, t)
        else:  # pragma: no cover - table error
            raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# Layout
@dataclass
class _Item:
    kind: str  # "object", "pier", "barn", "tree"
    width: int
    obj: int = -1  # object index for kind object, or the bird perched on a tree (-1: none)
    edge: str | None = None  # "left" / "right" for items glued to an image edge
    x0: int = 0

    @property
    def x1(self) -> int:
        return self.x0 + self.width

    @property
    def centre(self) -> float:
        return self.x0 + self.width / 2


def _band_layout(rng, scene: SceneDef, names: list[str], H: int, W: int, sky_scale: float = 1.0):
    """Per-column top boundaries of each band -> band index map [H, W] and band row ranges.

    ``sky_scale`` enlarges the top band (room for an aeroplane); the last band keeps the rest.
    """
    fracs = [rng.uniform(*r) for _, r in scene.bands[:-1]]
    fracs[0] *= sky_scale
    tops = [0]
    for f in fracs:
        tops.append(tops[-1] + int(round(f * H)))
    xs = np.arange(W, dtype=np.float32)
    boundaries = [np.zeros(W, np.float32)]
    for i in range(1, len(names)):
        b = np.full(W, tops[i], np.float32)
        if names[i] == "tree":  # tree line: bumpy canopy rising above the band top
            bumps = np.abs(np.sin(xs / rng.uniform(3.5, 6) + rng.uniform(0, 6)))
            b -= (0.035 * H * bumps + 0.01 * H * _lowfreq(rng, 1, W, 4.0)[0]).round()
        elif names[i] == "building":  # skyline: blocks of varying height
            x = 0
            while x < W:
                bw = int(rng.integers(max(6, W // 8), max(7, W // 4)))
                b[x:x + bw] -= int(rng.integers(0, int(0.09 * H) + 1))
                x += bw
        boundaries.append(np.maximum(b, boundaries[-1] + 2))
    yy = np.arange(H, dtype=np.float32)[:, None]
    band_idx = np.zeros((H, W), np.uint8)
    for i in range(1, len(names)):
        band_idx += (yy >= boundaries[i][None, :]).astype(np.uint8)
    rows = [(tops[i], tops[i + 1] if i + 1 < len(tops) else H) for i in range(len(names))]
    return band_idx, rows


def _box_region(ctx: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> int:
    """The single region id covering ctx[y0:y1, x0:x1], or -1 when mixed / out of the image."""
    H, W = ctx.shape
    if y0 < 0 or x0 < 0 or y1 > H or x1 > W or y1 <= y0 or x1 <= x0:
        return -1
    patch = ctx[y0:y1, x0:x1]
    v = int(patch.flat[0])
    return v if bool((patch == v).all()) else -1


def _choose_classes(rng, enabled: list[ClassDef], max_objects: int, duplicates: bool,
                    scene_weights: dict[str, float] | None = None):
    """First class uniformly, then a scene containing it, then companions from that scene."""
    names = {c.name for c in enabled}
    first = enabled[int(rng.integers(len(enabled)))]
    scenes = [s for s in SCENES if first.name in s.primary + s.allowed]
    weights = np.array([3.0 if first.name in s.primary else 1.0 for s in scenes])
    scene = scenes[int(rng.choice(len(scenes), p=weights / weights.sum()))]
    k_weights = np.array([0.5 ** k for k in range(max_objects)])
    n = 1 + int(rng.choice(max_objects, p=k_weights / k_weights.sum()))
    chosen = [first.name]
    pool = [c for c in scene.primary + scene.allowed if c in names]
    while len(chosen) < n:
        if duplicates and rng.random() < 0.15:
            chosen.append(chosen[int(rng.integers(len(chosen)))])
            continue
        cand = [c for c in pool if c not in chosen]
        if not cand:
            break
        w = np.array([2.0 if c in scene.primary else 1.0 for c in cand])
        chosen.append(cand[int(rng.choice(len(cand), p=w / w.sum()))])
    return scene, [CLASS_BY_NAME[c] for c in chosen]


def render_scene(rng: np.random.Generator, H: int, W: int, enabled: list[ClassDef],
                 max_objects: int = 3, duplicates: bool = True, clutter: bool = True) -> Scene:
    """Render one composite scene; retries internally until at least one object fits."""
    for _ in range(50):
        out = _try_render_scene(rng, H, W, enabled, max_objects, duplicates, clutter)
        if out is not None:
            return out
    raise RuntimeError(f"could not place any object in a {W}x{H} scene; is the image too small?")


def answer_margin(H: int, W: int) -> int:
    """Height of the strips above/below an object that must be one region (see module doc)."""
    return max(3, int(round(0.045 * min(H, W))))


def _try_render_scene(rng, H, W, enabled, max_objects, duplicates, clutter) -> Scene | None:
    scene, classes = _choose_classes(rng, enabled, max_objects, duplicates)
    side = min(H, W)
    m = answer_margin(H, W)
    # Sub-types: repeated classes share one, so "what kind of cow" has one answer per image.
    subtype_of: dict[str, int] = {}
    for c in classes:
        subtype_of.setdefault(c.name, int(rng.integers(len(c.subtypes))))
    names = [b for b, _ in scene.bands]
    if scene.mountain_ok and all(c.name != "aeroplane" for c in classes) and rng.random() < 0.35:
        names[0] = "mountain"
    sky_scale = 1.35 if any(c.placement == "air" for c in classes) else 1.0
    band_idx, band_rows = _band_layout(rng, scene, names, H, W, sky_scale)
    ids = np.array([CONTEXT_ID[n] for n in names], np.uint8)
    ctx = ids[band_idx]

    # --- sizes and the horizontal layout ------------------------------------------------------
    sizes = []
    for c in classes:
        si = subtype_of[c.name]
        size = rng.uniform(*c.size) * side
        aspect = c.aspect[si] * rng.uniform(0.92, 1.08)
        w, h = size * np.sqrt(aspect), size / np.sqrt(aspect)
        sizes.append([w, h])
    items: list[_Item] = []
    for i, c in enumerate(classes):
        if c.placement == "perch" and scene.tree_band is not None:
            tw = max(sizes[i][0] * 1.7, rng.uniform(0.15, 0.22) * W)
            items.append(_Item("tree", int(tw), obj=i))
        else:
            items.append(_Item("object", 0, obj=i))
    for el in scene.elements:
        if el == "pier":
            items.append(_Item("pier", int(rng.uniform(0.24, 0.36) * W),
                               edge="left" if rng.random() < 0.5 else "right"))
        elif el == "barn":
            items.append(_Item("barn", int(rng.uniform(0.2, 0.28) * W)))
    if scene.tree_band is not None and rng.random() < 0.45:
        items.append(_Item("tree", int(rng.uniform(0.13, 0.2) * W)))
    gap = max(2, m // 2)
    avail = W - gap * (len(items) + 1)
    total = sum(it.width for it in items) + sum(sizes[it.obj][0] for it in items
                                                if it.kind == "object")
    scale = min(1.0, avail / max(total, 1.0))
    if scale < 1.0:
        for s in sizes:
            s[0] *= scale
            s[1] *= scale
        for it in items:
            it.width = int(it.width * scale)
    for it in items:
        if it.kind == "object":
            it.width = max(4, int(round(sizes[it.obj][0])))
    order = [it for it in items if it.edge is None]
    order = [order[i] for i in rng.permutation(len(order))]
    left = [it for it in items if it.edge == "left"]
    right = [it for it in items if it.edge == "right"]
    seq = left + order + right
    free = W - sum(it.width for it in seq) - gap * (len(seq) + 1)
    extra = rng.dirichlet(np.ones(len(seq) + 1)) * max(free, 0)
    x = 0.0
    for k, it in enumerate(seq):
        x += (0 if (k == 0 and it.edge == "left") else gap + extra[k])
        it.x0 = int(round(x))
        x += it.width
    if right:
        right[-1].x0 = W - right[-1].width
    for it in seq:  # rounding may push the last item past the edge by a pixel or two
        it.width = max(2, min(it.width, W - it.x0))

    img = np.zeros((H, W, 3), np.float32)
    details: list = []  # (callable) drawn after textures: trunks, doors, posts

    # --- side elements into the context map -------------------------------------------------
    perch_tree: dict[int, tuple[int, int, int]] = {}  # object idx -> (canopy top, x0, x1)
    # Which side element covers each pixel (index into the scene's element list, -1: none).
    element_map = np.full((H, W), -1, np.int16)
    element_items = [it for it in seq if it.kind in ("pier", "barn", "tree")]
    for it in seq:
        if it.kind not in ("pier", "barn", "tree"):
            continue
        shape = np.zeros((H, W), np.uint8)  # the element's pixels, then written into ctx
        if it.kind == "pier":
            water_band = names.index("water")
            top = band_rows[water_band][0] + int(0.02 * H)
            deck = max(3, int(0.08 * H))
            shape[top:top + deck, it.x0:it.x1] = 1
            post_w = max(2, int(0.015 * W))
            for px in np.linspace(it.x0 + 2, it.x1 - post_w - 2, 3).astype(int):
                shape[top + deck:top + deck + int(0.1 * H), px:px + post_w] = 1
        elif it.kind == "barn":
            grass_top = band_rows[names.index("grass")][0]
            base = grass_top + int(rng.uniform(0.04, 0.1) * H)
            bh = int(rng.uniform(0.2, 0.28) * H)
            wall_top = base - int(bh * 0.6)
            pts = np.array([(it.x0, base), (it.x1, base), (it.x1, wall_top),
                            ((it.x0 + it.x1) // 2, base - bh), (it.x0, wall_top)], np.int32)
            cv2.fillPoly(shape, [pts], 1)
            details.append(("barn", it.x0, it.x1, wall_top, base, base - bh))
        elif it.kind == "tree":
            tb = [i for i, n in enumerate(names) if n == scene.tree_band][-1]
            r0, r1 = band_rows[tb]
            base = int(rng.uniform(r0 + 0.35 * (r1 - r0), r0 + 0.75 * (r1 - r0)))
            cw = it.width
            if it.obj >= 0:
                bird_h = sizes[it.obj][1]
                ctop_min = int(2 * m + bird_h + 2)
                ctop = int(rng.uniform(ctop_min, max(ctop_min + 1, min(0.4 * H, base - 0.3 * H))))
            else:
                hi = max(2.0, min(0.35 * H, base - 0.25 * H))
                ctop = int(rng.uniform(min(0.1 * H, hi - 1), hi))
            total = base - ctop
            ch = int(min(max(0.45 * total, 0.5 * cw), 0.7 * total))  # leave the trunk visible
            cx = it.x0 + cw // 2
            trunk_w = max(2, cw // 7)
            shape[ctop + ch // 2:base, cx - trunk_w // 2:cx - trunk_w // 2 + trunk_w] = 1
            cv2.ellipse(shape, (cx, ctop + ch // 2), (cw // 2, max(2, ch // 2)), 0, 0, 360, 1,
                        -1)
            details.append(("trunk", cx - trunk_w // 2, cx - trunk_w // 2 + trunk_w,
                            ctop + int(ch * 0.8), base))
            if it.obj >= 0:
                perch_tree[it.obj] = (ctop, cx - cw // 4, cx + cw // 4)
        sel = shape.astype(bool)
        ctx[sel] = CONTEXT_ID[it.kind]
        element_map[sel] = element_items.index(it)

    # --- vertical placement of the objects, validated against the context map ---------------
    placed: dict[int, tuple[int, int, int, int]] = {}
    above_region: dict[int, int] = {}
    for it in seq:
        if it.obj < 0:
            continue
        i = it.obj
        c = classes[i]
        w, h = int(round(sizes[i][0])), int(round(sizes[i][1]))
        if c.placement == "perch" and i in perch_tree:
            ctop, tx0, tx1 = perch_tree[i]
            xc = int(rng.uniform(tx0, tx1))
            x0 = int(np.clip(xc - w // 2, it.x0, max(it.x0, it.x1 - w)))
        else:
            x0 = it.x0
        res = _place_vertically(rng, ctx, c, x0, w, h, m)
        if res is None:
            if i == 0:
                return None
            continue
        placed[i], above_region[i] = res
    if not placed:
        return None

    # --- textures ----------------------------------------------------------------------------
    for cid in np.unique(ctx).tolist():
        name = CONTEXT_NAME_BY_ID[cid]
        sel = ctx == cid
        rows = np.flatnonzero(sel.any(axis=1))
        ry0, ry1 = int(rows[0]), int(rows[-1]) + 1
        band = None
        if name in names:
            bi = [k for k, n in enumerate(names) if n == name]
            band = band_rows[bi[-1]] if len(bi) == 1 else None
        if name in ("rails", "road", "platform") and band is None:
            # Several bands of one kind (two platforms): texture each band on its own rows.
            for k in (k for k, n in enumerate(names) if n == name):
                b0, b1 = band_rows[k]
                tex = render_texture(rng, name, b1 - b0, W, b0, (b0, b1), H)
                s = sel[b0:b1]
                img[b0:b1][s] = tex[s]
            continue
        tex = render_texture(rng, name, ry1 - ry0, W, ry0, band, H)
        s = sel[ry0:ry1]
        img[ry0:ry1][s] = tex[s]
    for d in details:
        if d[0] == "trunk":
            _, a, b, t, base = d
            trunk = ctx[t:base, a:b] == CONTEXT_ID["tree"]
            img[t:base, a:b][trunk] = _jitter(rng, (105, 70, 40), 12)
        elif d[0] == "barn":
            _, a, b, wall_top, base, peak = d
            white = tuple(int(v) for v in _jitter(rng, (235, 230, 220), 8))
            cv2.polylines(img, [np.array([(a, wall_top), ((a + b) // 2, peak), (b, wall_top)],
                                         np.int32)], False, white, 1)
            da, db = a + (b - a) * 3 // 8, a + (b - a) * 5 // 8
            dt = base - (base - wall_top) * 3 // 4
            cv2.rectangle(img, (da, dt), (db, base - 1), white, 1)
            cv2.line(img, (da, dt), (db, base - 1), white, 1)
            cv2.line(img, (db, dt), (da, base - 1), white, 1)

    # --- clutter (background, away from objects and their answer strips) ---------------------
    keep_out = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in placed.values():
        keep_out[max(0, y0 - 2 * m):y1 + 2 * m, max(0, x0 - m):x1 + m] = True
    if clutter:
        _draw_clutter(rng, img, ctx, keep_out, side)

    # --- photometric jitter, then objects on top ---------------------------------------------
    img = img * rng.uniform(0.85, 1.12) + rng.uniform(-12, 12)
    out = np.clip(img, 0, 255).astype(np.uint8)
    inst = np.zeros((H, W), np.uint8)
    objects: list[PlacedObject] = []
    for i in sorted(placed):
        c = classes[i]
        st = c.subtypes[subtype_of[c.name]]
        k = len(objects) + 1
        draw_object(out, inst, k, c, st, placed[i], bool(rng.random() < 0.5), rng)
        ys, xs = np.nonzero(inst == k)
        if len(ys) == 0:
            continue
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(PlacedObject(c, st, bbox, index=i, box=placed[i]))
    ctx[inst > 0] = 0
    noise = rng.normal(0, 3.0, out.shape).astype(np.float32)
    out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    # --- answers ------------------------------------------------------------------------------
    element_kinds = [it.kind for it in element_items]
    # Only the pixels of an element that stayed visible (not under clutter or an object).
    element_map[ctx != _element_ctx_ids(element_kinds)[element_map]] = -1
    things = _thing_map(inst, element_map, len(objects))
    texts = [o.cls.text for o in objects] + [CONTEXT_BY_NAME[k].text for k in element_kinds]
    for k, o in enumerate(objects, start=1):
        o.answers = _answers(o, k, things, texts, ctx, inst, band_idx, names, scene, m)
    return Scene(out, inst, ctx, scene, objects, names, element_kinds, element_map)


def _place_vertically(rng, ctx, c: ClassDef, x0: int, w: int, h: int, m: int):
    """Find y so that the strip below is the class context and the strip above one region.

    Returns ((x0, y0, x1, y1), region id above) or None; shrinks the object up to 3 times.
    Ground objects stand with their base in the context band, perching birds sit on a canopy
    top (the strip above must not be tree), aeroplanes float with a clear margin of sky.
    """
    H, W = ctx.shape
    support = CONTEXT_ID[c.context]
    for attempt in range(4):
        if attempt:
            cx = x0 + w / 2
            w, h = max(4, int(w * 0.85)), max(4, int(h * 0.85))
            x0 = int(round(cx - w / 2))
        x0 = int(np.clip(x0, 0, W - w))
        x1 = x0 + w
        qa, qb = x0 + w // 4, x1 - w // 4  # the middle half of the object, for the strips
        if c.placement == "air":
            ok_rows = [y for y in range(m + 1, H - h - m)
                       if _box_region(ctx, y - m - 1, y + h + m + 1, max(0, x0 - 2),
                                      min(W, x1 + 2)) == support]
            if ok_rows:
                y0 = ok_rows[int(rng.integers(len(ok_rows)))]
                return (x0, y0, x1, y0 + h), support
            continue
        if c.placement == "perch":
            strip = ctx[:, qa:qb] == support
            if not strip.any(axis=0).all():
                continue
            top = int(strip.argmax(axis=0).max())  # lowest canopy top under the bird's middle
            lo, hi = top + 1, top + max(2, h // 3)
        else:
            col = ctx[:, (qa + qb) // 2]
            rows = np.flatnonzero(col == support)
            if len(rows) == 0:
                continue
            lo, hi = int(rows.min()) + 1, int(rows.max()) - m - 1
        if hi < lo:
            continue
        cands = rng.permutation(np.arange(lo, hi + 1))[:_MAX_TRIES]
        for y1 in cands.tolist():
            y0 = y1 - h
            if _box_region(ctx, y1 + 1, y1 + 1 + m, qa, qb) != support:
                continue
            above = _box_region(ctx, y0 - m - 1, y0 - 1, qa, qb)
            if above < 0 or (c.placement == "perch" and above == support):
                continue
            return (x0, y0, x1, y1), above
    return None


def _element_ctx_ids(kinds: list[str]) -> np.ndarray:
    return np.array([CONTEXT_ID[k] for k in kinds] + [0], np.uint8)  # [-1] -> 0 (none)


def _thing_map(inst: np.ndarray, element_map: np.ndarray, n_objects: int) -> np.ndarray:
    """int16 [H, W]: 0 nothing, k = objects[k - 1], n_objects + 1 + e = visible element e."""
    things = inst.astype(np.int16)
    el = element_map >= 0
    things[el] = n_objects + 1 + element_map[el]
    return things


# Side answers ("what is next to / the left side of / the right side of the cow?") look for the
# nearest other object or side element (pier, barn, tree) whose drawn pixels lie in the rows of
# the object's drawn box, within SIDE_WINDOW x the object's width of its left/right edge.
SIDE_WINDOW = 1.0


def side_neighbour(things: np.ndarray, k: int, bbox: tuple[int, int, int, int],
                   side: str, window: float = SIDE_WINDOW) -> tuple[int, int] | None:
    """(gap in pixels, thing id) of the nearest thing beside object ``k``, or None.

    ``side``: "left" or "right". Looks at the rows of the drawn box ``bbox`` and at most
    ``window`` x its width away from its left/right edge; the gap counts columns from the edge
    (1 = touching). Several things in the nearest column: the one with more pixels there, then
    the lower id (objects before elements).
    """
    x0, y0, x1, y1 = bbox
    reach = max(1, int(round(window * (x1 - x0))))
    if side == "left":
        strip = things[y0:y1, max(0, x0 - reach):x0][:, ::-1]
    else:
        strip = things[y0:y1, x1:x1 + reach]
    hit = (strip > 0) & (strip != k)
    cols = hit.any(axis=0)
    if not cols.any():
        return None
    j = int(cols.argmax())
    ids, counts = np.unique(strip[hit[:, j], j], return_counts=True)
    best = sorted(zip((-counts).tolist(), ids.tolist(), strict=True))[0][1]
    return j + 1, int(best)


def region_above(ctx: np.ndarray, inst: np.ndarray, k: int, bbox: tuple[int, int, int, int],
                 min_run: int) -> int:
    """Context id of the region just above the drawn top of object ``k`` (0: none found).

    In every column where the object reaches its top row, walk up from the pixel above it and
    take the first region that is at least ``min_run`` pixels tall there (none: the tallest): a
    sliver of another region between the object and what is above it is too thin to see at the
    VQA resolution. Clutter (id 0) is skipped. The most frequent id over those columns wins, ties
    to the lower id.
    """
    x0, y0, x1, _ = bbox
    votes = []
    for c in (np.flatnonzero(inst[y0, x0:x1] == k) + x0).tolist():
        col = ctx[:y0, c][::-1]
        if len(col) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
        lengths = np.diff(np.r_[starts, len(col)])
        runs = [(int(col[s]), int(n)) for s, n in zip(starts, lengths, strict=True) if col[s] > 0]
        if runs:
            thick = [v for v, n in runs if n >= min_run]
            votes.append(thick[0] if thick else max(runs, key=lambda r: r[1])[0])
    return int(np.bincount(votes).argmax()) if votes else 0


def _answers(o: PlacedObject, k: int, things: np.ndarray, texts: list[str], ctx: np.ndarray,
             inst: np.ndarray, band_idx: np.ndarray, names: list[str], scene: SceneDef,
             m: int) -> dict[str, str]:
    """The 16 answers for object ``k`` (1-based, as in ``inst``), read off the drawn pixels.

    above:  the region just above the drawn top (:func:`region_above`, slivers under ``m`` px
            skipped); perched birds: also what is behind them.
    left / right: the nearest object or side element beside the drawn box
            (:func:`side_neighbour`); a perched bird's rows reach ``m`` px below it, into the
            canopy it sits on; nothing there: the object's own context ("water").
    next:   the nearer of left and right (equal gaps: left); neither: the own context.
    under / around: the own context (the placement keeps the strip below it that region);
    behind: ground objects the band above the band they stand in, aeroplanes "cloud".
    """
    c, st = o.cls, o.subtype
    ctx_text = CONTEXT_BY_NAME[c.context].text
    x0, y0, x1, y1 = o.bbox
    region = region_above(ctx, inst, k, o.bbox, m)
    if region <= 0:  # cannot happen with the placement rules; keep a sensible answer anyway
        region = CONTEXT_ID[names[max(int(band_idx[y0, (x0 + x1) // 2]) - 1, 0)]]
    above = CONTEXT_BY_NAME[CONTEXT_NAME_BY_ID[region]].text
    if c.placement == "air":
        behind = "cloud"
    elif c.placement == "perch":
        behind = above
    else:
        bx0, _, bx1, by1 = o.box
        b = int(band_idx[min(by1 + 1, band_idx.shape[0] - 1), (bx0 + bx1) // 2])
        behind = CONTEXT_BY_NAME[names[max(b - 1, 0)]].text
    rows_box = (x0, y0, x1, y1 + m) if c.placement == "perch" else o.bbox
    left = side_neighbour(things, k, rows_box, "left")
    right = side_neighbour(things, k, rows_box, "right")
    sides = [s for s in (left, right) if s is not None]
    near = min(sides, key=lambda s: s[0]) if sides else None  # min keeps the first: left

    def text(s: tuple[int, int] | None) -> str:
        return ctx_text if s is None else texts[s[1] - 1]

    return {
        "fg_kind": st.name, "fg_type": st.name,
        "fg_also": st.aliases[0], "fg_usually": st.aliases[1],
        "fg_word": st.aliases[2], "fg_name": st.aliases[3],
        "bg_above": above, "bg_under": ctx_text, "bg_behind": behind, "bg_around": ctx_text,
        "bg_next": text(near), "bg_left": text(left), "bg_right": text(right),
        "bg_scene": scene.words[0], "bg_environment": scene.words[1], "bg_place": scene.words[2],
    }


_CLUTTER_COLOURS = ((120, 115, 110), (90, 80, 70), (60, 120, 50), (230, 60, 150), (250, 230, 70),
                    (240, 240, 240), (80, 40, 120), (30, 160, 200), (200, 120, 40))


_AIRY = (CONTEXT_ID["sky"], CONTEXT_ID["mountain"])


def _draw_clutter(rng, img, ctx, keep_out, side: int) -> None:
    """Rocks, bushes, flowers, posts and random polygons: background, not classes."""
    H, W = ctx.shape
    for _ in range(int(rng.integers(4, 12))):
        big = rng.random() < 0.2
        r = int(rng.uniform(0.04, 0.08) * side) if big else int(rng.uniform(0.01, 0.03) * side) + 1
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        if keep_out[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].any():
            continue
        if not big and ctx[y, x] in _AIRY:  # small stuff lies on the ground, not in the sky
            continue
        col = tuple(float(v) for v in _jitter(rng, _CLUTTER_COLOURS[int(rng.integers(9))], 20))
        shape = rng.integers(3) if big else rng.integers(2)
        patch = np.zeros((H, W), np.uint8)
        if shape == 0:
            cv2.ellipse(patch, (x, y), (r, max(1, int(r * rng.uniform(0.5, 1.0)))),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        elif shape == 1:
            cv2.rectangle(patch, (x - r // 4, y - r), (x + r // 4, y + r), 1, -1)
        else:
            k = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = r * rng.uniform(0.5, 1.0, k)
            pts = np.stack([x + rad * np.cos(ang), y + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(patch, [pts], 1)
        sel = patch.astype(bool)
        img[sel] = col
        ctx[sel] = 0


# ---------------------------------------------------------------------------------------------
# Object-only and context-only images (VLP corpus)
def render_object_only(rng: np.random.Generator, S: int, enabled: list[ClassDef]):
    """One object on a neutral, cluttered background (no context). -> image, mask, cls, st."""
    c = enabled[int(rng.integers(len(enabled)))]
    si = int(rng.integers(len(c.subtypes)))
    st = c.subtypes[si]
    size = rng.uniform(0.4, 0.65) * S
    w, h = size * np.sqrt(c.aspect[si]), size / np.sqrt(c.aspect[si])
    if w > 0.85 * S:
        h, w = h * 0.85 * S / w, 0.85 * S
    w, h = int(w), int(h)
    x0, y0 = int(rng.integers(1, S - w)), int(rng.integers(1, S - h))
    img = render_texture(rng, "neutral", S, S)
    ctx = np.zeros((S, S), np.uint8)
    keep_out = np.zeros((S, S), bool)
    keep_out[max(0, y0 - 2):y0 + h + 2, max(0, x0 - 2):x0 + w + 2] = True
    _draw_clutter(rng, img, ctx, keep_out, S)
    out = np.clip(img, 0, 255).astype(np.uint8)
    mask = np.zeros((S, S), np.uint8)
    draw_object(out, mask, 1, c, st, (x0, y0, x0 + w, y0 + h), bool(rng.random() < 0.5), rng)
    return out, mask, c, st


def render_context_only(rng: np.random.Generator, S: int, names: list[str]):
    """A context texture filling the image. -> image, context name."""
    name = names[int(rng.integers(len(names)))]
    band = (int(S * rng.uniform(0.0, 0.3)), int(S * rng.uniform(0.7, 1.0)))
    img = render_texture(rng, name, S, S, 0, band, S)
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), name


def caption_for(scene: Scene) -> str:
    """e.g. 'a photo of a sailboat on the water and a jet in the sky in a harbor'."""
    parts = []
    seen = set()
    for o in scene.objects:
        key = (o.cls.name, o.subtype.name)
        if key in seen:
            continue
        seen.add(key)
        parts.append(f"{_article(o.subtype.name)} {o.subtype.name} {o.cls.preposition}")
    return f"a photo of {' and '.join(parts)} {scene.scene.where}"
