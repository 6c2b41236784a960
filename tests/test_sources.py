"""Real-data sources: annotation files over an image folder, ArrayRecord shards, TFDS; bad images
skipped and counted with full batches; malformed records; a weighted mixture trained end to end."""

import functools
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import load_config, read_metrics
from vlp_jax import config_lib, train
from vlp_jax.data import annotations, array_record, pipeline, sources
from vlp_jax.data.tokenizer import load_tokenizer
from vlp_jax.tools import export_shapes, to_array_record


def break_images(root: str) -> dict[str, str]:
    """Damages three images of an exported dataset: truncated, garbage, deleted."""
    records = [r for _, r in annotations.iter_records(os.path.join(root, "annotations.json"))]
    truncated, garbage, missing = (os.path.join(root, records[k]["image"]) for k in (1, 3, 4))
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    with open(garbage, "wb") as f:
        f.write(b"not an image at all")
    os.remove(missing)
    return {"truncated": truncated, "garbage": garbage, "missing": missing}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """40 `shapes` pairs (20 images × 2 captions) as JPEGs + annotations.json, 3 images broken."""
    root = str(tmp_path_factory.mktemp("exported"))
    export_shapes.export("train", 40, root, image_size=48)
    return root, break_images(root)


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_clean_caption_follows_albef_pre_caption():
    text = "A <person> rides a Bike-Path, near the river/lake!!  (Sunny) day."
    assert sources.clean_caption(text) == "a person rides a bike path near the river lake sunny day"
    assert sources.clean_caption("one two three four", max_words=2) == "one two"


def test_annotation_pairs_index_every_caption_and_share_image_ids(exported):
    root, _ = exported
    pairs = sources.AnnotationPairs(os.path.join(root, "annotations.json"), root)
    assert len(pairs) == 40 and pairs.num_images == 20
    first, second = pairs[0], pairs[1]
    assert first["image_id"] == second["image_id"] == 0 and first["caption"] != second["caption"]
    assert first["image_bytes"][:2] == b"\xff\xd8"  # a JPEG, still encoded


def test_bad_images_are_replaced_by_the_next_pair_and_counted(exported):
    root, broken = exported
    raw = sources.AnnotationPairs(os.path.join(root, "annotations.json"), root)
    decoded = sources.DecodedPairs(raw)
    # Images 1, 3 and 4 are broken: pairs 2-3, 6-7 and 8-9 (two captions each).
    got = [decoded[i] for i in range(len(decoded))]
    skipped = {i: int(g["skipped"]) for i, g in enumerate(got) if g["skipped"]}
    assert skipped == {2: 2, 3: 1, 6: 4, 7: 3, 8: 2, 9: 1}
    assert [int(got[i]["index"]) for i in (2, 6, 8)] == [4, 10, 10]
    assert all(g["image"].shape == (48, 48, 3) and g["image"].dtype == np.uint8 for g in got)
    assert got[4]["caption"] == sources.clean_caption(raw[4]["caption"])

    all_bad = sources.DecodedPairs(raw, max_consecutive=2)
    with pytest.raises(RuntimeError, match=r"2 images in a row from index 6 failed to decode"):
        all_bad[6]


def test_a_train_batch_stays_full_and_reports_skips(exported):
    root, _ = exported
    config = load_config("albef", "tiny")
    config.data.name = "mixture"
    config.data.train_sources = {
        "a": config_lib.annotation_source(os.path.join(root, "annotations.json"), root)
    }
    config.data.eval_source = config.data.train_sources.a
    config.batch_size = 40
    batch = next(iter(pipeline.train_dataset(config, load_tokenizer("shapes"))))
    assert batch["image"].shape == (40, 32, 32, 3)
    assert int(batch["skipped"].sum()) == 13  # every pair once: the table above
    counter = train.SkipCounter(max_fraction=0.5)
    counter.take(dict(batch))
    assert counter.report() == 13.0
    counter = train.SkipCounter(max_fraction=0.2)
    counter.take(dict(batch))
    with pytest.raises(RuntimeError, match=r"13 of 53 examples drawn \(24.5%\).*max_skip_fraction"):
        counter.report()


def test_malformed_records_raise_with_file_and_line_or_are_skipped(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    lines = [
        {"image": "a.png", "caption": "good one"},
        "{not json",
        {"image": "a.png"},
        {"image": "a.png", "caption": "  "},
        {"image": "a.png", "caption": 3},
        {"image": "a.png", "caption": ["good two", "good three"]},
    ]
    path = tmp_path / "ann.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    with pytest.raises(annotations.AnnotationError, match=r"ann.jsonl:2: invalid JSON"):
        sources.AnnotationPairs(str(path), str(tmp_path / "img"))
    pairs = sources.AnnotationPairs(str(path), str(tmp_path / "img"), on_bad_record="skip")
    assert pairs.bad_records == 4
    assert [pairs[i]["caption"] for i in range(len(pairs))] == [
        "good one",
        "good two",
        "good three",
    ]


def test_array_record_packing_resumes_skips_bad_images_and_reads_back(exported, tmp_path):
    root, _ = exported
    ann = os.path.join(root, "annotations.json")
    out = str(tmp_path / "packed")
    partial = to_array_record.run(ann, root, out, shards=3, workers=2, only_shards=1)
    assert partial == {"complete": False, "shards_done": 1, "shards": 3}
    first = os.path.join(out, array_record.shard_name(0, 3))
    mtime = os.path.getmtime(first)
    manifest = to_array_record.run(ann, root, out, shards=3, workers=2)
    assert os.path.getmtime(first) == mtime  # the finished shard was not redone
    assert manifest["skipped_images"] == 3 and manifest["records"] == 17
    assert manifest["pairs"] == 34 and manifest["num_images"] == 20
    assert to_array_record.verify(out) == []

    packed = array_record.ArrayRecordPairs(out)
    annotated = sources.AnnotationPairs(ann, root)
    good = sources.DecodedPairs(annotated)
    expected = sorted(
        (int(annotated[i]["image_id"]), annotated[i]["caption"])
        for i in range(len(annotated))
        if good.decode(annotated[i]) is not None
    )
    assert sorted((p["image_id"], p["caption"]) for p in packed) == expected
    item = packed[5]
    reference = next(
        annotated[i] for i in range(len(annotated)) if annotated[i]["caption"] == item["caption"]
    )
    assert item["image_bytes"] == reference["image_bytes"]

    with open(first, "r+b") as f:  # flip one byte: same size, wrong checksum
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert to_array_record.verify(out) == [array_record.shard_name(0, 3)]
    with open(first, "ab") as f:
        f.write(b"extra")
    with pytest.raises(ValueError, match=r"bytes on disk, the manifest says"):
        array_record.ArrayRecordPairs(out)


@functools.cache
def tiny_tfds_builder():
    """A two-split captioning dataset that TFDS writes in its ArrayRecord format from
    already-encoded PNGs (so no TensorFlow is needed to write it or to read it). Defined once:
    TFDS registers builder classes by name."""
    import tensorflow_datasets as tfds

    class TinyCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12), "test": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                texts = [f"a red circle number {i}", f"a blue square {i}"][: 1 + i % 2]
                yield i, {"image": png_bytes(10 * i), "captions": {"text": texts}}

    return TinyCaptions


def build_tiny_tfds(data_dir: str) -> None:
    tiny_tfds_builder()(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_pairs_read_captions_and_undecoded_images(tmp_path):
    build_tiny_tfds(str(tmp_path))
    entry = config_lib.tfds_source("tiny_captions", "train", data_dir=str(tmp_path))
    pairs = pipeline.raw_source(entry, load_config("albef", "tiny").data)
    assert len(pairs) == 18 and pairs.num_images == 12  # 6 examples with 1 caption, 6 with 2
    texts = {p["caption"] for p in pairs}
    assert "a blue square 11" in texts and "a blue square 10" not in texts
    for pair in pairs:  # TFDS stores examples in its own order; captions name their image
        image = sources.decode_image(pair["image_bytes"])
        assert image.shape == (20, 30, 3)
        assert int(image[0, 0, 0]) == 10 * int(pair["caption"].split()[-1])
    fixed = pipeline.raw_source(
        config_lib.tfds_source(
            "tiny_captions", "train", data_dir=str(tmp_path), captions_per_example=2
        ),
        load_config("albef", "tiny").data,
    )
    assert len(fixed) == 24
    for e in range(12):  # two pairs per example: its two captions, or its one caption twice
        first, second = fixed[2 * e]["caption"], fixed[2 * e + 1]["caption"]
        assert first.split()[-1] == second.split()[-1]
        assert (first == second) == (int(first.split()[-1]) % 2 == 0)


def test_weighted_mixture_of_three_formats_trains_and_evaluates(exported, tmp_path):
    root, _ = exported
    ann = os.path.join(root, "annotations.json")
    packed = str(tmp_path / "packed")
    to_array_record.run(ann, root, packed, shards=2, workers=1)
    build_tiny_tfds(str(tmp_path / "tfds"))
    config = load_config("albef", "tiny")
    config.data.name = "mixture"
    config.data.train_sources = {
        "files": config_lib.annotation_source(ann, root, weight=2.0),
        "packed": config_lib.array_record_source(packed, weight=1.0),
        "tfds": config_lib.tfds_source("tiny_captions", "train", data_dir=str(tmp_path / "tfds")),
    }
    config.data.eval_source = config_lib.annotation_source(ann, root)
    config.data.max_skip_fraction = 0.5
    config.eval.num_examples = 40
    config.eval.batch_size = 8
    workdir = str(tmp_path / "run")
    final = train.train_and_evaluate(config, workdir)

    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    assert all(np.isfinite(r["train/loss"]) for r in rows)
    assert sum(r["data/skipped"] for r in rows) > 0
    # 40 pairs, 3 images unreadable: 34 captions of 17 images, two captions each.
    assert final["eval/skipped_images"] == 6.0
    assert 0.0 <= final["eval/i2t_r1"] <= 100.0 and "eval/hardneg_acc_itc" not in final
    tokenizer = load_tokenizer(config.data.tokenizer)
    arrays = pipeline.eval_arrays(config, tokenizer)
    assert arrays["image"].shape == (17, 32, 32, 3) and arrays["image"].dtype == np.uint8
    assert np.bincount(arrays["text_image"]).tolist() == [2] * 17

    mix = pipeline.train_dataset(config, tokenizer)
    batch = next(iter(mix))
    source_of = np.searchsorted([40, 74, 92], batch["index"], side="right")
    assert set(source_of.tolist()) <= {0, 1, 2} and len(set(source_of.tolist())) >= 2


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: setattr(d, "train_sources", {}), r"needs config.data.train_sources"),
        (
            lambda d: d.train_sources.update(x={"format": "parquet"}),
            r"config.data.train_sources.x.format='parquet' is not accepted",
        ),
        (
            lambda d: d.train_sources.update(
                x=config_lib.annotation_source("/nowhere.json", "/tmp")
            ),
            r"config.data.train_sources.x.annotations='/nowhere.json' does not exist",
        ),
        (lambda d: d.update(on_bad_record="ignore"), r"config.data.on_bad_record='ignore'"),
    ],
)
def test_bad_source_config_names_the_key(exported, change, message):
    root, _ = exported
    config = load_config("albef", "tiny")
    config.data.name = "mixture"
    entry = config_lib.annotation_source(os.path.join(root, "annotations.json"), root)
    config.data.train_sources = {"a": entry}
    config.data.eval_source = entry
    config_lib.validate(config)
    change(config.data)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_files_config_reads_annotation_files_or_packed_shards(exported, tmp_path):
    root, _ = exported
    ann = os.path.join(root, "annotations.json")
    config = load_config("files", f"train={ann},images={root},size=tiny")
    config_lib.validate(config)
    assert config.data.train_sources.train.format == "annotations"
    packed = str(tmp_path / "packed")
    to_array_record.run(ann, root, packed, shards=1)
    arg = f"train={packed},format=array_record,eval={ann},eval_images={root},size=tiny"
    config = load_config("files", arg)
    config_lib.validate(config)
    assert len(pipeline.make_source(config.data, "train")) == 34
    with pytest.raises(ValueError, match=r"train_sources.train.annotations must be set"):
        config_lib.validate(load_config("files", "size=tiny"))
