"""ALBEF-style annotation files: streamed JSON lists and JSON lines, errors naming file:line."""

import json

import pytest

from vlp_jax.data import annotations
from vlp_jax.tools import export_shapes


def test_exported_shapes_read_back_in_both_formats(tmp_path, monkeypatch):
    path = export_shapes.export("train", 10, str(tmp_path), image_size=32)
    records = [r for _, r in annotations.iter_records(path)]
    assert len(records) == 5  # two captions per image
    assert sum(len(annotations.captions_of(r)) for r in records) == 10
    assert all((tmp_path / r["image"]).exists() for r in records)

    monkeypatch.setattr(annotations, "_CHUNK", 7)  # records straddle every read
    assert [r for _, r in annotations.iter_records(path)] == records

    lines = tmp_path / "ann.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    got = list(annotations.iter_records(lines))
    assert [r for _, r in got] == records and [line for line, _ in got] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "text,message",
    [
        (
            '[{"image": "a.jpg", "caption": "x"},\n {"image": "b.jpg"}]',
            r":2: record has no 'caption'",
        ),
        (
            '[{"image": "a.jpg", "caption": "x"},\n\n {"image": "b.jpg", caption}]',
            r":3: invalid JSON",
        ),
        ('[{"image": "a.jpg", "caption": ""}]', r":1: 'caption' must be a non-empty string"),
        ('[{"image": "a.jpg", "caption": ["x", 3]}]', r":1: 'caption' must be"),
        ('[{"image": 7, "caption": "x"}]', r":1: 'image' must be a non-empty string"),
        ('[{"image": "a.jpg", "caption": "x"}', r":1: the JSON list is not closed"),
        ('[["a.jpg", "x"]]', r":1: a record must be a JSON object"),
        ('{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "caption": "y"\n', r":2: invalid"),
    ],
)
def test_malformed_annotations_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(annotations.AnnotationError, match=f"bad.json{message}"):
        list(annotations.iter_records(path))
