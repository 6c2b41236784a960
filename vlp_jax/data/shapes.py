"""``shapes``: a procedurally generated, captioned image-text dataset that ships with the library.

Every example is a small synthetic scene on a dark grey background holding one to three
coloured shapes (circle, square, triangle, diamond) in two sizes.  Scenes with two or more
objects carry a spatial relation between object 0 and object 1 ("left of", "right of",
"above", "below") that is unambiguous in the picture: the relation is drawn first and the
objects are then placed so that the boxes are separated along that axis by a margin.  A third
object, when present, is only mentioned in the caption.

Captions come from several templates, so different captions of the same image use different
wording, e.g.::

    a large red circle to the left of a small blue square
    there is a small green triangle above a large yellow diamond and also a white square
    a red circle is below a blue square
    a picture of just a small orange diamond

A one-object scene's caption says the object is alone ("alone", "only", "just"), so it is false
for every scene with more objects. Otherwise "a small orange diamond" would also be true of
each of the many two- and three-object scenes that hold one: in random batches of 64, 42% of
images had another example's caption true for them, and similarity-mined negatives
(ALBEF's and GRIT-VLP's ITM) often picked those true captions as "negatives". With the
one-object captions exclusive, the share is 7% (`test_few_captions_are_true_of_other_images`).

Each example also has a *hard negative*: a caption that is false for the image, made by
swapping an attribute between the two related objects ("swap"), flipping the relation
("relation"), or changing one attribute of one object ("attribute").  Negatives are checked
against the scene itself, so they are never accidentally true because of the third object.

Everything is deterministic and needs no download: the scene for image id ``k`` of a split is
generated from ``np.random.default_rng([SPLIT_SEEDS[split], k])``, so any example can be
produced in any order, in any process, from nothing but its index.  The closed grammar also
gives a tiny exact WordPiece vocabulary (`vocabulary`), shipped as ``shapes_vocab.txt``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import grain
import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 100, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 20),
    "white": (240, 240, 240),
}
BACKGROUND_RGB: tuple[int, int, int] = (32, 32, 32)
SIZES: tuple[str, ...] = ("small", "large")
# Side of an object's bounding box as a fraction of the image side.
SIZE_FRACTION: dict[str, float] = {"small": 0.20, "large": 0.35}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
NEGATIVE_KINDS: tuple[str, ...] = ("swap", "relation", "attribute")

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_SEEDS: dict[str, int] = {"train": 0x5EED_0001, "validation": 0x5EED_0002, "test": 0x5EED_0003}
DEFAULT_NUM_EXAMPLES: dict[str, int] = {"train": 200_000, "validation": 1_000, "test": 1_000}

# Bumped whenever generation changes. Checkpoints record it (`checkpoint.run_fingerprint`), so a
# resume against another version stops. 2: one-object captions say "alone".
GENERATOR_VERSION = 2

# Minimum gap between related boxes, and between any box and the image border (fractions of the
# image side).  0.05 is >= 1 px of clear gap even at 32 px after rounding.
_RELATION_MARGIN = 0.05
_BORDER = 0.03
# Keep the secondary-axis offset below this fraction of the primary-axis offset so that e.g.
# "left of" is the obvious reading of the picture rather than a technicality.
_SECONDARY_RATIO = 0.75
_NUM_OBJECTS_P = (0.2, 0.6, 0.2)
_THIRD_OBJECT_TRIES = 30

# Relation wording.  Short forms are the canonical RELATIONS names.
_RELATION_LONG = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}


@dataclasses.dataclass(frozen=True)
class _Template:
    text: str  # uses {s} subject, {o} object, {rel} relation, each with its article
    with_size: bool
    long_relation: bool = True
    # Describe the pair as "object 1 <opposite relation> object 0" instead: same fact, more
    # varied word order.
    inverse: bool = False
    extra: str = " and also {c}"  # how a third object is mentioned


_RELATIONAL_TEMPLATES: tuple[_Template, ...] = (
    _Template("{s} {rel} {o}", with_size=True),
    _Template("there is {s} {rel} {o}", with_size=True, extra=" as well as {c}"),
    _Template("{s} is {rel} {o}", with_size=False),
    _Template("{s} {rel} {o}", with_size=False, long_relation=False, inverse=True),
    _Template("a picture of {s} {rel} {o}", with_size=True, inverse=True, extra=" as well as {c}"),
)
_SINGLE_TEMPLATES: tuple[_Template, ...] = (
    _Template("{s} alone", with_size=True),
    _Template("there is only {s}", with_size=True),
    _Template("a picture of just {s}", with_size=True),
    _Template("{s} alone on a dark background", with_size=False),
)


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One shape; ``cx``/``cy`` are the box centre as fractions of the image side (y down)."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float

    @property
    def half(self) -> float:
        return SIZE_FRACTION[self.size] / 2

    def box(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` as fractions of the image side."""
        h = self.half
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def pixel_box(self, image_size: int) -> tuple[int, int, int, int]:
        """Inclusive ``(left, top, right, bottom)`` pixel box the shape is drawn in."""
        left, top, right, bottom = self.box()
        return (
            round(left * image_size),
            round(top * image_size),
            round(right * image_size) - 1,
            round(bottom * image_size) - 1,
        )


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects, the relation of object 0 to object 1 (None for one object), template order."""

    objects: tuple[ShapeObject, ...]
    relation: str | None
    template_order: tuple[int, ...]


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str, *, margin: float = 0.0) -> bool:
    """Whether ``a``'s box lies entirely on the ``relation`` side of ``b``'s box, by ``margin``."""
    al, at, ar, ab = a.box()
    bl, bt, br, bb = b.box()
    if relation == "left of":
        return ar + margin <= bl
    if relation == "right of":
        return br + margin <= al
    if relation == "above":
        return ab + margin <= bt
    if relation == "below":
        return bb + margin <= at
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def _loosely_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    # Generous reading (centres only) used to decide that a negative is false: a negative must
    # be false even for a lenient reader, not merely fail the strict margin.
    if relation == "left of":
        return a.cx < b.cx
    if relation == "right of":
        return a.cx > b.cx
    if relation == "above":
        return a.cy < b.cy
    return a.cy > b.cy


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def _centre_range(size: str) -> tuple[float, float]:
    h = SIZE_FRACTION[size] / 2
    return _BORDER + h, 1.0 - _BORDER - h


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return not (
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def _place_pair(
    rng: np.random.Generator, size0: str, size1: str, relation: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    # Work in (primary, secondary) axes where the "first" object has the smaller primary
    # coordinate; map back to (x, y) at the end.
    horizontal = relation in ("left of", "right of")
    obj0_first = relation in ("left of", "above")
    first, second = (size0, size1) if obj0_first else (size1, size0)
    gap = SIZE_FRACTION[first] / 2 + SIZE_FRACTION[second] / 2 + _RELATION_MARGIN
    lo_f, _ = _centre_range(first)
    _, hi_s = _centre_range(second)
    p_first = _uniform(rng, lo_f, hi_s - gap)
    p_second = _uniform(rng, p_first + gap, hi_s)
    distance = p_second - p_first
    lo_a, hi_a = _centre_range(first)
    s_first = _uniform(rng, lo_a, hi_a)
    lo_b, hi_b = _centre_range(second)
    s_second = _uniform(
        rng,
        max(lo_b, s_first - _SECONDARY_RATIO * distance),
        min(hi_b, s_first + _SECONDARY_RATIO * distance),
    )
    pos_first = (p_first, s_first) if horizontal else (s_first, p_first)
    pos_second = (p_second, s_second) if horizontal else (s_second, p_second)
    return (pos_first, pos_second) if obj0_first else (pos_second, pos_first)


def _pick_identity(rng: np.random.Generator, taken: set[tuple[str, str]]) -> tuple[str, str]:
    # Objects in a scene have distinct (shape, colour) so every mention names one object.
    while True:
        ident = (SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))])
        if ident not in taken:
            return ident


def make_scene(rng: np.random.Generator) -> Scene:
    """Draws one scene from ``rng`` (all randomness of a scene comes from this generator)."""
    num_objects = int(rng.choice(3, p=_NUM_OBJECTS_P)) + 1
    taken: set[tuple[str, str]] = set()
    idents = []
    for _ in range(min(num_objects, 2)):
        ident = _pick_identity(rng, taken)
        taken.add(ident)
        idents.append(ident)
    sizes = [SIZES[rng.integers(len(SIZES))] for _ in idents]

    if num_objects == 1:
        lo, hi = _centre_range(sizes[0])
        objects = [ShapeObject(*idents[0], sizes[0], _uniform(rng, lo, hi), _uniform(rng, lo, hi))]
        relation = None
    else:
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        (x0, y0), (x1, y1) = _place_pair(rng, sizes[0], sizes[1], relation)
        objects = [
            ShapeObject(*idents[0], sizes[0], x0, y0),
            ShapeObject(*idents[1], sizes[1], x1, y1),
        ]
        if num_objects == 3:
            third = _place_third(rng, objects, _pick_identity(rng, taken))
            if third is not None:
                objects.append(third)

    templates = _SINGLE_TEMPLATES if relation is None else _RELATIONAL_TEMPLATES
    order = tuple(int(t) for t in rng.permutation(len(templates)))
    return Scene(tuple(objects), relation, order)


def _place_third(
    rng: np.random.Generator, objects: list[ShapeObject], ident: tuple[str, str]
) -> ShapeObject | None:
    # Rejection sampling; the fallbacks keep generation finite and deterministic: a large
    # object that does not fit becomes small, and if even that fails the scene keeps two.
    boxes = [o.box() for o in objects]
    size = SIZES[rng.integers(len(SIZES))]
    for candidate_size in dict.fromkeys((size, "small")):
        lo, hi = _centre_range(candidate_size)
        for _ in range(_THIRD_OBJECT_TRIES):
            obj = ShapeObject(*ident, candidate_size, _uniform(rng, lo, hi), _uniform(rng, lo, hi))
            if not any(_overlaps(obj.box(), b, _RELATION_MARGIN / 2) for b in boxes):
                return obj
    return None


def generate_scene(split: str, image_id: int) -> Scene:
    """The scene of ``image_id`` in ``split``; independent of access order and process."""
    _check_split(split)
    return make_scene(np.random.default_rng([SPLIT_SEEDS[split], int(image_id)]))


def render(scene: Scene, image_size: int = 64) -> np.ndarray:
    """Draws ``scene`` as a uint8 ``[image_size, image_size, 3]`` array."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        left, top, right, bottom = obj.pixel_box(image_size)
        fill = COLOR_RGB[obj.color]
        mid_x, mid_y = (left + right) / 2, (top + bottom) / 2
        if obj.shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(mid_x, top), (right, bottom), (left, bottom)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(mid_x, top), (right, mid_y), (mid_x, bottom), (left, mid_y)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Captions and hard negatives
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mention:
    """How a caption names an object; ``size`` is None when the template omits sizes."""

    shape: str
    color: str
    size: str | None

    def matches(self, obj: ShapeObject) -> bool:
        return (
            self.shape == obj.shape
            and self.color == obj.color
            and (self.size is None or self.size == obj.size)
        )

    def text(self) -> str:
        words = ([self.size] if self.size else []) + [self.color, self.shape]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words])


@dataclasses.dataclass(frozen=True)
class Description:
    """A caption's content: ``subject`` is ``relation`` of ``obj``; ``extra`` is only named."""

    template: _Template
    subject: Mention
    relation: str | None = None
    obj: Mention | None = None
    extra: Mention | None = None

    def mentions(self) -> tuple[Mention, ...]:
        return tuple(m for m in (self.subject, self.obj, self.extra) if m is not None)

    def text(self) -> str:
        t = self.template
        if self.relation is None:
            return t.text.format(s=self.subject.text())
        rel = _RELATION_LONG[self.relation] if t.long_relation else self.relation
        out = t.text.format(s=self.subject.text(), rel=rel, o=self.obj.text())
        if self.extra is not None:
            out += t.extra.format(c=self.extra.text())
        return out

    def holds_for(self, scene: Scene, *, strict: bool) -> bool:
        """Whether some assignment of distinct scene objects makes the description true (a
        one-object description also says the object is alone).

        ``strict`` checks relations with the placement margin (the claim a positive makes);
        otherwise centre order suffices (the reading under which a negative must be false).
        """
        mentions = self.mentions()
        if self.relation is None and len(scene.objects) != 1:
            return False  # one-object captions say the object is alone
        for assignment in itertools.permutations(scene.objects, len(mentions)):
            if not all(m.matches(o) for m, o in zip(mentions, assignment, strict=True)):
                continue
            if self.relation is None:
                return True
            a, b = assignment[0], assignment[1]
            if strict:
                if relation_holds(a, b, self.relation, margin=_RELATION_MARGIN - 1e-9):
                    return True
            elif _loosely_holds(a, b, self.relation):
                return True
        return False


def describe(scene: Scene, slot: int = 0) -> Description:
    """The description used by caption ``slot`` of ``scene`` (slots cycle through templates)."""
    order = scene.template_order
    if scene.relation is None:
        template = _SINGLE_TEMPLATES[order[slot % len(order)]]
        return Description(template, _mention(scene.objects[0], template))
    template = _RELATIONAL_TEMPLATES[order[slot % len(order)]]
    a, b = scene.objects[0], scene.objects[1]
    relation = scene.relation
    if template.inverse:
        a, b, relation = b, a, OPPOSITE_RELATION[relation]
    extra = _mention(scene.objects[2], template) if len(scene.objects) > 2 else None
    return Description(template, _mention(a, template), relation, _mention(b, template), extra)


def _mention(obj: ShapeObject, template: _Template) -> Mention:
    return Mention(obj.shape, obj.color, obj.size if template.with_size else None)


def _attribute_values(attr: str) -> tuple[str, ...]:
    return {"shape": SHAPES, "color": COLORS, "size": SIZES}[attr]


def _mentioned_attributes(m: Mention) -> tuple[str, ...]:
    return ("shape", "color", "size") if m.size is not None else ("shape", "color")


def _swap_candidates(desc: Description) -> list[Description]:
    if desc.obj is None:
        return []
    out = []
    for attr in _mentioned_attributes(desc.subject):
        a, b = getattr(desc.subject, attr), getattr(desc.obj, attr)
        if a != b:
            out.append(
                dataclasses.replace(
                    desc,
                    subject=dataclasses.replace(desc.subject, **{attr: b}),
                    obj=dataclasses.replace(desc.obj, **{attr: a}),
                )
            )
    return out


def _relation_candidates(desc: Description) -> list[Description]:
    if desc.relation is None:
        return []
    return [dataclasses.replace(desc, relation=OPPOSITE_RELATION[desc.relation])]


def _attribute_candidates(desc: Description) -> list[Description]:
    out = []
    fields = [f for f in ("subject", "obj", "extra") if getattr(desc, f) is not None]
    for field in fields:
        m: Mention = getattr(desc, field)
        others = {(getattr(desc, f).shape, getattr(desc, f).color) for f in fields if f != field}
        for attr in _mentioned_attributes(m):
            for value in _attribute_values(attr):
                if value == getattr(m, attr):
                    continue
                new = dataclasses.replace(m, **{attr: value})
                # Naming another mentioned object twice reads as a different (odd) claim.
                if (new.shape, new.color) in others:
                    continue
                out.append(dataclasses.replace(desc, **{field: new}))
    return out


_CANDIDATES = {
    "swap": _swap_candidates,
    "relation": _relation_candidates,
    "attribute": _attribute_candidates,
}
# For multi-object scenes, "attribute" is drawn less often because one-object scenes can only
# get "attribute"; with the test split's ~12% one-object scenes (fewer than the nominal 20%,
# since their captions repeat and are skipped) this balances the three kinds.
_MULTI_KIND_P = (3 / 8, 3 / 8, 1 / 4)


def make_hard_negative(scene: Scene, slot: int, rng: np.random.Generator) -> tuple[str, str]:
    """A caption false for ``scene`` in the style of caption ``slot``, and its kind."""
    desc = describe(scene, slot)
    positive = desc.text()
    if desc.relation is None:
        kinds = ["attribute"]
    else:
        first = NEGATIVE_KINDS[int(rng.choice(len(NEGATIVE_KINDS), p=_MULTI_KIND_P))]
        # Fall back to the other kinds in a fixed order if the drawn one has no valid negative.
        kinds = [first] + [k for k in NEGATIVE_KINDS if k != first]
    for kind in kinds:
        candidates = _CANDIDATES[kind](desc)
        for j in rng.permutation(len(candidates)):
            cand = candidates[int(j)]
            text = cand.text()
            if text != positive and not cand.holds_for(scene, strict=False):
                return text, kind
    raise AssertionError(f"no hard negative for {scene}")  # unreachable: attribute always works


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", flags=re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Swaps the words "left" and "right", so a caption stays true for a mirrored image."""

    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(repl, text)


def hflip(
    image: np.ndarray, caption: str, hard_negative: str | None = None
) -> tuple[np.ndarray, str, str | None]:
    """Mirrors ``image`` ([H, W, C]) horizontally and swaps left/right in the texts."""
    flipped = np.ascontiguousarray(image[:, ::-1])
    neg = None if hard_negative is None else swap_left_right(hard_negative)
    return flipped, swap_left_right(caption), neg


SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_PUNCTUATION: tuple[str, ...] = (".", ",", "!", "?", "'", "-", ":", ";")


def grammar_words() -> list[str]:
    """Every word a caption or hard negative can contain, sorted."""
    words: set[str] = {"a", "an", *SHAPES, *COLORS, *SIZES}
    for phrase in (*RELATIONS, *_RELATION_LONG.values()):
        words.update(phrase.split())
    for t in (*_RELATIONAL_TEMPLATES, *_SINGLE_TEMPLATES):
        for part in (t.text, t.extra):
            words.update(w for w in part.split() if not w.startswith("{"))
    return sorted(words)


def vocabulary() -> list[str]:
    """BERT-style WordPiece vocabulary: specials, grammar words, then character fallbacks.

    The single characters and ``##`` continuations let words outside the grammar degrade into
    pieces instead of ``[UNK]``.
    """
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = list(SPECIAL_TOKENS)
    for tok in [*grammar_words(), *chars, *_PUNCTUATION, *(f"##{c}" for c in chars)]:
        if tok not in tokens:
            tokens.append(tok)
    return tokens


VOCAB_PATH = Path(__file__).with_name("shapes_vocab.txt")


def write_vocabulary(path: str | Path = VOCAB_PATH) -> Path:
    """Writes `vocabulary` one token per line (regenerates the shipped ``shapes_vocab.txt``)."""
    path = Path(path)
    path.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Grain source
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# A classification view (DiHT's few-shot probe): one-object scenes labelled by one attribute.

CLASS_ATTRIBUTES: dict[str, tuple[str, ...]] = {"color": COLORS, "shape": SHAPES, "size": SIZES}
_PROMPT_FRAMES: tuple[str, ...] = (
    "{} alone",
    "there is only {}",
    "a picture of just {}",
    "{} alone on a dark background",
)


def classification_view(
    split: str, attribute: str, num_examples: int, *, image_size: int = 64
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images [N, S, S, 3] of the split's first `num_examples` one-object scenes, their labels
    (index of the object's `attribute` value) and the class names."""
    _check_split(split)
    if attribute not in CLASS_ATTRIBUTES:
        raise ValueError(f"attribute={attribute!r}; accepted: {sorted(CLASS_ATTRIBUTES)}")
    names = CLASS_ATTRIBUTES[attribute]
    images, labels = [], []
    image_id = 0
    while len(images) < num_examples:
        scene = generate_scene(split, image_id)
        image_id += 1
        if len(scene.objects) != 1:
            continue
        images.append(render(scene, image_size))
        labels.append(names.index(getattr(scene.objects[0], attribute)))
    return np.stack(images), np.asarray(labels, np.int32), names


def class_prompts(attribute: str, name: str) -> list[str]:
    """Zero-shot prompts for one class: every caption frame × every value of the other
    attributes (e.g. colour "red": "a small red circle", "there is a large red square", ...)."""
    if attribute not in CLASS_ATTRIBUTES:
        raise ValueError(f"attribute={attribute!r}; accepted: {sorted(CLASS_ATTRIBUTES)}")
    prompts = []
    for shape_name, color, size in itertools.product(SHAPES, COLORS, SIZES):
        values = {"shape": shape_name, "color": color, "size": size}
        if values[attribute] != name:
            continue
        mention = Mention(shape=shape_name, color=color, size=size)
        prompts += [frame.format(mention.text()) for frame in _PROMPT_FRAMES]
    return prompts


def _check_split(split: str) -> None:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown shapes split {split!r}; expected one of {list(SPLITS)}")


class ShapesSource(grain.sources.RandomAccessDataSource):
    """Random-access Grain source of ``shapes`` image-caption pairs.

    In ``train``/``validation``, ``captions_per_image`` consecutive indices share one image
    (``image_id = index // captions_per_image``) with differently worded captions.  In
    ``test`` every pair has its own image and all captions are distinct, so retrieval has a
    single correct answer; ``captions_per_image`` is therefore always 1 there.
    """

    def __init__(
        self,
        split: str,
        *,
        num_examples: int | None = None,
        image_size: int = 64,
        captions_per_image: int = 2,
    ) -> None:
        _check_split(split)
        if num_examples is None:
            num_examples = DEFAULT_NUM_EXAMPLES[split]
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
        self.split = split
        self.num_examples = int(num_examples)
        self.image_size = int(image_size)
        self.captions_per_image = 1 if split == "test" else int(captions_per_image)
        self._seed = SPLIT_SEEDS[split]
        self._test_image_ids = self._distinct_caption_ids() if split == "test" else None

    def _distinct_caption_ids(self) -> np.ndarray:
        # Captions only (no rendering): about a thousand scene draws, well under a second.
        seen: set[str] = set()
        ids: list[int] = []
        limit = 50 * self.num_examples + 1_000
        image_id = 0
        while len(ids) < self.num_examples:
            if image_id >= limit:
                raise RuntimeError(
                    f"could not find {self.num_examples} distinct test captions in {limit} scenes"
                )
            caption = describe(generate_scene(self.split, image_id), 0).text()
            if caption not in seen:
                seen.add(caption)
                ids.append(image_id)
            image_id += 1
        return np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return self.num_examples

    def image_id(self, index: int) -> int:
        """Scene id behind ``index``."""
        if self._test_image_ids is not None:
            return int(self._test_image_ids[index])
        return index // self.captions_per_image

    def scene(self, index: int) -> Scene:
        """The generator's scene for ``index`` (object boxes, relation) for inspection."""
        return generate_scene(self.split, self.image_id(self._check_index(index)))

    def _check_index(self, index: int) -> int:
        i = int(index)
        if not 0 <= i < self.num_examples:
            raise IndexError(f"index {index} out of range for {self!r}")
        return i

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = self._check_index(index)
        image_id = self.image_id(i)
        slot = i % self.captions_per_image
        scene = generate_scene(self.split, image_id)
        # A stream separate from the scene's so negatives can differ between caption slots.
        neg_rng = np.random.default_rng([self._seed, image_id, slot + 1])
        negative, kind = make_hard_negative(scene, slot, neg_rng)
        return {
            "image": render(scene, self.image_size),
            "caption": describe(scene, slot).text(),
            "image_id": np.int64(image_id),
            "index": np.int64(i),
            "hard_negative": negative,
            "hard_negative_kind": kind,
        }

    def __repr__(self) -> str:
        return (
            f"ShapesSource(split={self.split!r}, num_examples={self.num_examples}, "
            f"image_size={self.image_size}, captions_per_image={self.captions_per_image}, "
            f"version={GENERATOR_VERSION})"
        )


if __name__ == "__main__":
    print(f"wrote {write_vocabulary()}")
