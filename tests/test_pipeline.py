"""The Grain pipeline: deterministic for a seed, process shards partition the global batch,
iterator state round-trips."""

import numpy as np
import pytest

from tests.helpers import load_config
from vlp_jax import config_lib
from vlp_jax.data import pipeline
from vlp_jax.data.tokenizer import load_tokenizer


def _batches(config, n, **kwargs):
    it = iter(pipeline.train_dataset(config, load_tokenizer("shapes"), **kwargs))
    return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_other_seed_differs():
    config = load_config("albef", "tiny")
    a, b = _batches(config, 3), _batches(config, 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    config.seed = 1
    c = _batches(config, 1)
    assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_batch_contents_and_shapes():
    config = load_config("albef", "tiny")
    (batch,) = _batches(config, 1)
    b, size, length = config.batch_size, config.data.image_size, config.data.max_len
    assert batch["image"].shape == (b, size, size, 3) and batch["image"].dtype == np.float32
    assert batch["input_ids"].shape == (b, length) and batch["attention_mask"].shape == (b, length)
    assert batch["image_id"].shape == (b,) and batch["index"].shape == (b,)
    assert abs(float(batch["image"].mean())) < 2.0


def test_process_batches_concatenate_to_the_single_process_batch():
    config = load_config("albef", "tiny")
    whole = _batches(config, 2)
    parts = [_batches(config, 2, process_index=p, process_count=2) for p in range(2)]
    for step in range(2):
        for key in whole[step]:
            joined = np.concatenate([parts[p][step][key] for p in range(2)])
            np.testing.assert_array_equal(joined, whole[step][key], err_msg=key)


def test_iterator_state_restores_the_same_next_batch():
    config = load_config("albef", "tiny")
    it = iter(pipeline.train_dataset(config, load_tokenizer("shapes")))
    next(it)
    state = it.get_state()
    expected = next(it)
    fresh = iter(pipeline.train_dataset(config, load_tokenizer("shapes")))
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["index"], expected["index"])


def test_flip_keeps_captions_true():
    config = load_config("albef", "tiny")
    config.data.hflip_prob = 1.0
    aug = pipeline.TrainAugment(32, (1.0, 1.0), 1.0)
    source = pipeline.make_source(config.data, "train", 100)
    item = next(source[i] for i in range(100) if "left" in source[i]["caption"])
    out = aug.random_map(item, np.random.default_rng(0))
    assert "right" in out["caption"] and "left" not in out["caption"]


def test_relation_flip_axis_reads_the_caption_after_augmentation():
    from vlp_jax.data.pipeline import relation_flip_axis

    assert relation_flip_axis("a red circle to the left of a blue square") == 1
    assert relation_flip_axis("a red circle right of a blue square") == 1
    assert relation_flip_axis("there is a red circle above a blue square") == 2
    assert relation_flip_axis("a picture of a red circle") == 0
    assert relation_flip_axis("a bright circle") == 0  # "right" only as a word


def test_normalization_matches_the_pretrained_towers_convention():
    white, black = np.full((2, 2, 3), 255, np.uint8), np.zeros((2, 2, 3), np.uint8)
    np.testing.assert_allclose(pipeline.normalize(white, "half"), 1.0)
    np.testing.assert_allclose(pipeline.normalize(black, "half"), -1.0)
    np.testing.assert_allclose(
        pipeline.normalize(black, "imagenet")[0, 0], [-2.1179, -2.0357, -1.8044], rtol=1e-4
    )
    np.testing.assert_array_equal(pipeline.normalize(white), pipeline.normalize(white, "clip"))
    aug = pipeline.TrainAugment(2, (1.0, 1.0), 0.0, normalization="half")
    out = aug.random_map(
        {"image": white, "caption": "a", "image_id": 0, "index": 0}, np.random.default_rng(0)
    )
    np.testing.assert_allclose(out["image"], 1.0)
    config = load_config("albef", "tiny")
    config.data.normalization = "inception"
    with pytest.raises(ValueError, match=r"config.data.normalization='inception' is not accepted"):
        config_lib.validate(config)
