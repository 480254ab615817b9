"""The synthetic world as data: classes, sub-types, contexts, scene types and question templates.

Everything the generator knows about *what* exists lives here, in declarative tables; how things
are drawn lives in :mod:`qaclims.data.synthetic_scene`. Each object class strongly co-occurs with
one context region (boat-water, train-track, ...), which is what makes a plain CAM leak onto the
context and what QA-CLIMS's background texts are meant to suppress.

Answer vocabulary is kept small and already in lemmatised (singular) form, so that the answers a
toy VQA learns survive the pipeline's lemmatiser unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class SubtypeDef:
    """A fine-grained kind of a class: the answer to "What kind of boat is in the photo?"."""

    name: str
    # Answers to fg_also, fg_usually, fg_word, fg_name, in that order.
    aliases: tuple[str, str, str, str]
    # Named colours the class drawer uses (body, detail, accent, ...).
    palette: dict[str, RGB]


@dataclass(frozen=True)
class ClassDef:
    name: str  # class name in XML / classes.json
    text: str  # natural text used in questions and CLIP prompts
    synonyms: tuple[str, ...]  # substrings that count as "names the class" in FG post-processing
    context: str  # the context region it always appears on/in (labelled background)
    placement: str  # "ground" (stands on its context), "air" (inside it), "perch" (on top of it)
    preposition: str  # caption glue: "a sailboat on the water"
    size: tuple[float, float]  # sqrt(box width * height) as a fraction of the shorter side
    aspect: tuple[float, float]  # width / height per sub-type (same order as subtypes)
    subtypes: tuple[SubtypeDef, SubtypeDef]


@dataclass(frozen=True)
class ContextDef:
    name: str  # region name
    text: str  # answer / CLIP text
    context_of: str | None  # the class it co-occurs with (None: scene element only)


@dataclass(frozen=True)
class SceneDef:
    name: str
    # Answers to bg_scene, bg_environment, bg_place.
    words: tuple[str, str, str]
    # Horizontal bands top to bottom: (context name, (min, max) height fraction); the last band
    # takes whatever height is left (its range is ignored).
    bands: tuple[tuple[str, tuple[float, float]], ...]
    primary: tuple[str, ...]  # classes the scene is chosen for
    allowed: tuple[str, ...]  # further classes that may join
    elements: tuple[str, ...] = ()  # side elements always drawn ("pier", "barn")
    tree_band: str | None = None  # ground band free-standing trees grow from (None: no trees)
    mountain_ok: bool = False  # the sky may become mountains when no aeroplane is present
    where: str = ""  # caption tail, e.g. "in a harbor"


# Object sizes give VOC-like proportions (an object covers ~2-10 % of the image on average,
# more when alone): the CAM network sees at stride 16 and the toy CLIP at 64 px, where an
# object of a few pixels (the first generator's birds, 0.7 %) leaves nothing to match.
CLASSES: tuple[ClassDef, ...] = (
    ClassDef(
        name="aeroplane", text="aeroplane", synonyms=("aeroplane", "airplane", "plane"),
        context="sky", placement="air", preposition="in the sky",
        size=(0.50, 0.64), aspect=(2.1, 1.7),
        subtypes=(
            SubtypeDef("jet", ("airliner", "jet plane", "airplane", "jumbo jet"),
                       {"body": (236, 236, 240), "accent": (30, 70, 170), "detail": (60, 60, 70)}),
            SubtypeDef("propeller plane",
                       ("prop plane", "small plane", "airplane", "light aircraft"),
                       {"body": (240, 170, 30), "accent": (200, 40, 30), "detail": (40, 40, 40)}),
        ),
    ),
    ClassDef(
        name="bird", text="bird", synonyms=("bird",),
        context="tree", placement="perch", preposition="in the tree",
        size=(0.34, 0.44), aspect=(1.3, 1.25),
        subtypes=(
            SubtypeDef("parrot", ("macaw", "parakeet", "tropical bird", "cockatoo"),
                       {"body": (220, 30, 30), "accent": (40, 180, 60), "detail": (250, 210, 40)}),
            SubtypeDef("crow", ("raven", "blackbird", "rook", "jackdaw"),
                       {"body": (25, 25, 30), "accent": (60, 60, 75), "detail": (230, 190, 40)}),
        ),
    ),
    ClassDef(
        name="boat", text="boat", synonyms=("boat",),
        context="water", placement="ground", preposition="on the water",
        size=(0.46, 0.60), aspect=(0.85, 1.9),
        subtypes=(
            SubtypeDef("sailboat", ("yacht", "sailing boat", "sloop", "sail boat"),
                       {"body": (245, 245, 245), "accent": (30, 40, 120), "detail": (120, 80, 40)}),
            SubtypeDef("motorboat", ("speedboat", "motor boat", "powerboat", "speed boat"),
                       {"body": (230, 90, 20), "accent": (245, 245, 245), "detail": (40, 50, 60)}),
        ),
    ),
    ClassDef(
        name="car", text="car", synonyms=("car",),
        context="road", placement="ground", preposition="on the road",
        size=(0.44, 0.56), aspect=(2.0, 1.85),
        subtypes=(
            SubtypeDef("sports car", ("race car", "coupe", "roadster", "racing car"),
                       {"body": (210, 20, 25), "accent": (30, 30, 35), "detail": (15, 15, 15)}),
            SubtypeDef("police car", ("cop car", "patrol car", "squad car", "cruiser"),
                       {"body": (240, 240, 245), "accent": (20, 50, 180), "detail": (15, 15, 15)}),
        ),
    ),
    ClassDef(
        name="cow", text="cow", synonyms=("cow",),
        context="grass", placement="ground", preposition="on the grass",
        size=(0.46, 0.58), aspect=(1.5, 1.45),
        subtypes=(
            SubtypeDef("dairy cow", ("holstein", "milk cow", "cattle", "heifer"),
                       {"body": (242, 242, 238), "accent": (20, 20, 20),
                        "detail": (240, 160, 170)}),
            SubtypeDef("bull", ("ox", "steer", "cattle", "bullock"),
                       {"body": (120, 60, 25), "accent": (70, 35, 15), "detail": (235, 230, 210)}),
        ),
    ),
    ClassDef(
        name="horse", text="horse", synonyms=("horse",),
        context="sand", placement="ground", preposition="on the sand",
        size=(0.48, 0.60), aspect=(1.25, 1.2),
        subtypes=(
            SubtypeDef("pony", ("shetland pony", "small horse", "foal", "colt"),
                       {"body": (235, 225, 205), "accent": (150, 120, 90), "detail": (90, 70, 50)}),
            SubtypeDef("stallion", ("racehorse", "mustang", "steed", "thoroughbred"),
                       {"body": (90, 45, 20), "accent": (20, 15, 10), "detail": (200, 30, 30)}),
        ),
    ),
    ClassDef(
        name="train", text="train", synonyms=("train",),
        context="rails", placement="ground", preposition="on the track",
        size=(0.50, 0.62), aspect=(3.0, 3.3),
        subtypes=(
            SubtypeDef("steam train", ("locomotive", "steam engine", "engine", "old train"),
                       {"body": (30, 30, 35), "accent": (200, 30, 30), "detail": (200, 170, 60)}),
            SubtypeDef("bullet train", ("high speed train", "shinkansen", "express train",
                                        "fast train"),
                       {"body": (245, 245, 250), "accent": (20, 60, 190), "detail": (40, 45, 60)}),
        ),
    ),
)

CONTEXTS: tuple[ContextDef, ...] = (
    ContextDef("sky", "sky", "aeroplane"),
    ContextDef("tree", "tree", "bird"),
    ContextDef("water", "water", "boat"),
    ContextDef("road", "road", "car"),
    ContextDef("grass", "grass", "cow"),
    ContextDef("sand", "sand", "horse"),
    ContextDef("rails", "track", "train"),
    ContextDef("building", "building", None),
    ContextDef("sidewalk", "sidewalk", None),
    ContextDef("platform", "platform", None),
    ContextDef("pier", "pier", None),
    ContextDef("barn", "barn", None),
    ContextDef("mountain", "mountain", None),
)

SCENES: tuple[SceneDef, ...] = (
    SceneDef("harbor", ("harbor", "ocean", "dock"),
             bands=(("sky", (0.30, 0.42)), ("water", (0, 0))),
             primary=("boat",), allowed=("aeroplane",), elements=("pier",),
             where="in a harbor"),
    SceneDef("lake", ("lake", "forest", "lakeside"),
             bands=(("sky", (0.24, 0.32)), ("tree", (0.14, 0.20)), ("water", (0, 0))),
             primary=("boat",), allowed=("bird", "aeroplane"), mountain_ok=True,
             where="by a lake"),
    SceneDef("beach", ("beach", "ocean", "coast"),
             bands=(("sky", (0.26, 0.34)), ("water", (0.14, 0.20)), ("sand", (0, 0))),
             primary=("horse",), allowed=("boat", "aeroplane"),
             where="on a beach"),
    SceneDef("farm", ("farm", "countryside", "pasture"),
             bands=(("sky", (0.30, 0.40)), ("grass", (0, 0))),
             primary=("cow",), allowed=("bird", "aeroplane"), elements=("barn",),
             tree_band="grass", mountain_ok=True,
             where="on a farm"),
    SceneDef("countryside", ("countryside", "rural", "field"),
             bands=(("sky", (0.26, 0.32)), ("grass", (0.08, 0.12)), ("rails", (0.14, 0.18)),
                    ("grass", (0, 0))),
             primary=("train",), allowed=("cow", "bird", "aeroplane"), tree_band="grass",
             mountain_ok=True,
             where="in the countryside"),
    SceneDef("station", ("train station", "railway", "platform"),
             bands=(("sky", (0.24, 0.32)), ("platform", (0.14, 0.20)), ("rails", (0.16, 0.20)),
                    ("platform", (0, 0))),
             primary=("train",), allowed=("aeroplane",),
             where="at a train station"),
    SceneDef("city", ("city", "urban", "street"),
             bands=(("sky", (0.10, 0.16)), ("building", (0.28, 0.36)), ("sidewalk", (0.10, 0.14)),
                    ("road", (0, 0))),
             primary=("car",), allowed=("bird",), tree_band="sidewalk",
             where="in a city"),
    SceneDef("highway", ("highway", "outdoors", "road"),
             bands=(("sky", (0.28, 0.36)), ("grass", (0.12, 0.18)), ("road", (0, 0))),
             primary=("car",), allowed=("cow", "bird", "aeroplane"), tree_band="grass",
             mountain_ok=True,
             where="on a highway"),
)

# The 16 canonical QA-CLIMS questions (method.md 2.2): (template id, group, template text).
# Groups: fine = fine-grained names, alias = object aliases, object = surrounding objects,
# scene = scene words.
QUESTION_TEMPLATES: tuple[tuple[str, str, str], ...] = (
    ("fg_kind", "fine", "What kind of {} is in the photo?"),
    ("fg_type", "fine", "What type of {} is in the photo?"),
    ("fg_also", "alias", "What is this {} also called?"),
    ("fg_usually", "alias", "What is this {} usually called?"),
    ("fg_word", "alias", "What is another word for this {}?"),
    ("fg_name", "alias", "What is another name for this {}?"),
    ("bg_above", "object", "what is above the {}?"),
    ("bg_under", "object", "what is under the {}?"),
    ("bg_behind", "object", "what is behind the {}?"),
    ("bg_around", "object", "what is around the {}?"),
    ("bg_next", "object", "what is next to the {}?"),
    ("bg_left", "object", "what is the left side of {}?"),
    ("bg_right", "object", "what is the right side of {}?"),
    ("bg_scene", "scene", "what scene is the {} in?"),
    ("bg_environment", "scene", "what environment is the {} in?"),
    ("bg_place", "scene", "what place is the {} in?"),
)
DEFAULT_QUESTIONS: dict[str, str] = {tid: text for tid, _, text in QUESTION_TEMPLATES}
TEMPLATE_GROUPS: dict[str, str] = {tid: group for tid, group, _ in QUESTION_TEMPLATES}
FG_TEMPLATE_IDS: tuple[str, ...] = tuple(t for t, g, _ in QUESTION_TEMPLATES
                                         if g in ("fine", "alias"))

CLASS_BY_NAME: dict[str, ClassDef] = {c.name: c for c in CLASSES}
CONTEXT_BY_NAME: dict[str, ContextDef] = {c.name: c for c in CONTEXTS}
SCENE_BY_NAME: dict[str, SceneDef] = {s.name: s for s in SCENES}
# Region ids in the internal background map: 0 = clutter / nothing, then CONTEXTS order.
CONTEXT_ID: dict[str, int] = {c.name: i + 1 for i, c in enumerate(CONTEXTS)}


def answer_vocabulary() -> set[str]:
    """Every answer string the generator can produce (for bounding tests and vocabularies)."""
    words: set[str] = set()
    for c in CLASSES:
        words.add(c.text)
        for s in c.subtypes:
            words.add(s.name)
            words.update(s.aliases)
    words.update(c.text for c in CONTEXTS)
    words.add("cloud")
    for s in SCENES:
        words.update(s.words)
    return words


def _check_tables() -> None:
    """Import-time consistency checks of the tables above (cheap, catches editing slips)."""
    for c in CLASSES:
        assert c.context in CONTEXT_BY_NAME, c
        assert len(c.aspect) == len(c.subtypes), c
    for s in SCENES:
        assert s.where and len(s.words) == 3, s.name
        for band, _ in s.bands:
            assert band in CONTEXT_BY_NAME, (s.name, band)
        for cls in s.primary + s.allowed:
            assert cls in CLASS_BY_NAME, (s.name, cls)
            ctx = CLASS_BY_NAME[cls].context
            has_ctx = any(b == ctx for b, _ in s.bands) or (ctx == "tree" and s.tree_band)
            assert has_ctx, (s.name, cls)
    assert len({c.name for c in CLASSES}) == len(CLASSES)


_check_tables()
