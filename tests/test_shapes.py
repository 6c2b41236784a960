"""Tests of the embedded `shapes` dataset: determinism, splits, negatives, vocab, geometry."""

import collections
import dataclasses

import numpy as np
import pytest

from vlp_jax.data import shapes


@pytest.fixture(scope="module")
def test_source() -> shapes.ShapesSource:
    return shapes.ShapesSource("test")


@pytest.fixture(scope="module")
def test_items(test_source: shapes.ShapesSource) -> list[dict]:
    return [test_source[i] for i in range(len(test_source))]


def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_item_format() -> None:
    source = shapes.ShapesSource("train", num_examples=10, image_size=32)
    item = source[3]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (32, 32, 3)
    assert isinstance(item["caption"], str) and isinstance(item["hard_negative"], str)
    assert item["image_id"].dtype == np.int64 and item["index"].dtype == np.int64
    assert item["index"] == 3
    assert item["hard_negative_kind"] in shapes.NEGATIVE_KINDS
    # Not just background: some object was drawn.
    assert (item["image"] != np.asarray(shapes.BACKGROUND_RGB, np.uint8)).any()


def test_deterministic_across_instances_and_order() -> None:
    a = shapes.ShapesSource("train", num_examples=100)
    b = shapes.ShapesSource("train", num_examples=100)
    first = [a[i] for i in (7, 42, 3)]
    _assert_items_equal(a[42], first[1])
    for i, item in zip((7, 42, 3), first, strict=True):
        _assert_items_equal(b[i], item)
    assert not np.array_equal(a[0]["image"], a[2]["image"])  # different image ids
    assert a[0]["caption"] != a[2]["caption"]


def test_splits_use_different_seeds() -> None:
    train = shapes.ShapesSource("train", num_examples=20)
    val = shapes.ShapesSource("validation", num_examples=20)
    assert [train[i]["caption"] for i in range(20)] != [val[i]["caption"] for i in range(20)]


def test_default_sizes_and_repr() -> None:
    train = shapes.ShapesSource("train")
    assert len(train) == 200_000
    assert len(shapes.ShapesSource("validation")) == 1_000
    r = repr(shapes.ShapesSource("validation", num_examples=5, image_size=48))
    for part in ("'validation'", "num_examples=5", "image_size=48", "captions_per_image=2"):
        assert part in r
    assert r == repr(shapes.ShapesSource("validation", num_examples=5, image_size=48))


def test_test_split_distinct(test_source: shapes.ShapesSource, test_items: list[dict]) -> None:
    assert len(test_source) == 1000
    assert test_source.captions_per_image == 1
    assert len({x["caption"] for x in test_items}) == 1000
    assert len({int(x["image_id"]) for x in test_items}) == 1000


def test_hard_negatives(test_items: list[dict]) -> None:
    for x in test_items:
        assert x["hard_negative"] != x["caption"]
    kinds = collections.Counter(x["hard_negative_kind"] for x in test_items)
    assert set(kinds) == set(shapes.NEGATIVE_KINDS)
    assert min(kinds.values()) >= 200, kinds  # roughly balanced: each near a third


def test_hard_negatives_false_and_positives_true(test_source: shapes.ShapesSource) -> None:
    for i in range(0, 1000, 5):
        scene = test_source.scene(i)
        desc = shapes.describe(scene, 0)
        assert desc.holds_for(scene, strict=True)
        text, kind = shapes.make_hard_negative(scene, 0, np.random.default_rng(i))
        if scene.relation is None:
            assert kind == "attribute"
        assert text != desc.text()


def test_one_object_captions_say_the_object_is_alone() -> None:
    lone = shapes.Scene((shapes.ShapeObject("circle", "red", "small", 0.5, 0.5),), None, (0,))
    desc = shapes.describe(lone, 0)
    assert desc.text() == "a small red circle alone" and desc.holds_for(lone, strict=True)
    crowded = shapes.Scene(
        (*lone.objects, shapes.ShapeObject("square", "blue", "large", 0.2, 0.2)), "left of", (0,)
    )
    assert not desc.holds_for(crowded, strict=False)


def test_few_captions_are_true_of_other_images() -> None:
    """Similarity-mined ITM negatives are only as good as the data: in random training batches
    of 64, few images have another example's caption true for them (42% before one-object
    captions said "alone")."""
    rng = np.random.default_rng(0)
    hit = []
    for _ in range(10):
        index = rng.integers(0, 200_000, 64)
        scenes = [shapes.generate_scene("train", int(i) // 2) for i in index]
        descs = [shapes.describe(scene, int(i) % 2) for scene, i in zip(scenes, index)]
        for k, scene in enumerate(scenes):
            others = (d for d, i in zip(descs, index) if i // 2 != index[k] // 2)
            hit.append(any(d.holds_for(scene, strict=False) for d in others))
    assert np.mean(hit) < 0.12, np.mean(hit)


def test_negative_not_true_via_third_object() -> None:
    # Object 2, a large white circle, is also left of the blue square: a subject recoloured to
    # white is then true of the picture, which the truth check must see.  With the third object
    # still mentioned it needs two white circles, so that negative is false.
    objs = (
        shapes.ShapeObject("circle", "red", "large", 0.25, 0.7),
        shapes.ShapeObject("square", "blue", "small", 0.75, 0.5),
        shapes.ShapeObject("circle", "white", "large", 0.25, 0.22),
    )
    scene = shapes.Scene(objs, "left of", (0,))
    desc = shapes.describe(scene, 0)
    assert desc.text() == (
        "a large red circle to the left of a small blue square and also a large white circle"
    )
    white = dataclasses.replace(desc, subject=dataclasses.replace(desc.subject, color="white"))
    assert not white.holds_for(scene, strict=False)
    assert dataclasses.replace(white, extra=None).holds_for(scene, strict=False)
    green = dataclasses.replace(desc, subject=dataclasses.replace(desc.subject, color="green"))
    assert not green.holds_for(scene, strict=False)
    for seed in range(30):
        text, _ = shapes.make_hard_negative(scene, 0, np.random.default_rng(seed))
        assert not text.startswith("a large white circle to the left of")


def test_captions_per_image() -> None:
    source = shapes.ShapesSource("train", num_examples=40, captions_per_image=3)
    items = [source[i] for i in range(9)]
    assert [int(x["image_id"]) for x in items] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for k in range(3):
        group = items[3 * k : 3 * k + 3]
        np.testing.assert_array_equal(group[0]["image"], group[1]["image"])
        assert len({x["caption"] for x in group}) == 3  # different wording of one scene


def test_vocabulary_covers_grammar() -> None:
    vocab = set(shapes.vocabulary())
    source = shapes.ShapesSource("train", num_examples=2000)
    for i in range(2000):
        scene = source.scene(i)
        slot = i % source.captions_per_image
        caption = shapes.describe(scene, slot).text()
        negative, _ = shapes.make_hard_negative(scene, slot, np.random.default_rng(i))
        for word in (caption + " " + negative).split():
            assert word in vocab, (word, caption, negative)
        assert caption == caption.lower()


def test_vocabulary_layout_and_shipped_file() -> None:
    vocab = shapes.vocabulary()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab))
    assert {"##a", "##z", "##0", "##9", "z", "9"} <= set(vocab)
    shipped = shapes.VOCAB_PATH.read_text(encoding="utf-8").splitlines()
    assert shipped == vocab, "regenerate with `python -m vlp_jax.data.shapes`"


def test_write_vocabulary(tmp_path) -> None:
    path = shapes.write_vocabulary(tmp_path / "v.txt")
    assert path.read_text(encoding="utf-8").splitlines() == shapes.vocabulary()


def test_swap_left_right_and_hflip() -> None:
    assert shapes.swap_left_right("a red circle to the left of a blue square") == (
        "a red circle to the right of a blue square"
    )
    assert shapes.swap_left_right("right of, left of, above, lefty") == (
        "left of, right of, above, lefty"
    )
    assert shapes.swap_left_right("a circle below a square") == "a circle below a square"
    item = shapes.ShapesSource("train", num_examples=4)[0]
    image, caption, negative = shapes.hflip(item["image"], "x left y", "x right y")
    np.testing.assert_array_equal(image, item["image"][:, ::-1])
    assert (caption, negative) == ("x right y", "x left y")
    assert shapes.hflip(item["image"], "left")[2] is None


def test_bad_split_and_index() -> None:
    with pytest.raises(ValueError, match="'tset'.*train.*validation.*test"):
        shapes.ShapesSource("tset")
    source = shapes.ShapesSource("validation", num_examples=3)
    with pytest.raises(IndexError):
        source[3]
    with pytest.raises(IndexError):
        source[-1]


def _pixels_of(image: np.ndarray, color: str) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero((image == np.asarray(shapes.COLOR_RGB[color], np.uint8)).all(-1))
    return ys, xs


@pytest.mark.parametrize("image_size", [32, 64])
def test_relation_geometrically_true(image_size: int) -> None:
    source = shapes.ShapesSource("validation", num_examples=400, image_size=image_size)
    checked = collections.Counter()
    for i in range(0, 400, 2):
        scene = source.scene(i)
        if scene.relation is None:
            continue
        a, b = scene.objects[:2]
        assert shapes.relation_holds(a, b, scene.relation, margin=0.049)
        # Pixel boxes keep a clear gap along the relation's axis.
        al, at, ar, ab = a.pixel_box(image_size)
        bl, bt, br, bb = b.pixel_box(image_size)
        gap = {"left of": bl - ar, "right of": al - br, "above": bt - ab, "below": at - bb}
        assert gap[scene.relation] >= 2, (scene, gap)
        # And the drawn pixels agree when the two colours are unique in the scene.
        colors = [o.color for o in scene.objects]
        if colors.count(a.color) == 1 and colors.count(b.color) == 1:
            image = source[i]["image"]
            ay, ax = _pixels_of(image, a.color)
            by, bx = _pixels_of(image, b.color)
            first, second = {
                "left of": (ax, bx),
                "right of": (bx, ax),
                "above": (ay, by),
                "below": (by, ay),
            }[scene.relation]
            assert first.max() < second.min()
            checked[scene.relation] += 1
    assert len(checked) == 4 and min(checked.values()) >= 5, checked


def test_objects_do_not_overlap_and_fit() -> None:
    source = shapes.ShapesSource("train", num_examples=1000)
    for i in range(0, 1000, 2):
        objs = source.scene(i).objects
        assert 1 <= len(objs) <= 3
        for o in objs:
            left, top, right, bottom = o.box()
            assert 0 <= left and right <= 1 and 0 <= top and bottom <= 1
        for j in range(len(objs)):
            for k in range(j + 1, len(objs)):
                a, b = objs[j].box(), objs[k].box()
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
