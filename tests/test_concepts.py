"""DiHT's concept distillation: offline teacher targets (Hugging Face CLIP, image classifier, or
one of our runs), stored in shards, resumable, and trained against by a linear head."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.helpers import load_config, train_rows  # noqa: E402
from vlp_jax import fewshot, train  # noqa: E402
from vlp_jax.data import concepts, pipeline  # noqa: E402
from vlp_jax.data.shapes import VOCAB_PATH  # noqa: E402
from vlp_jax.tools import concept_targets  # noqa: E402

VOCAB = ["circle", "square", "triangle", "diamond", "red", "blue"]


def _config(images: int = 20):
    config = load_config("diht", "size=test")
    config.data.train_examples = 2 * images  # two captions per image
    return config


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf_clip"))
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=128, max_position_embeddings=32, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    transformers.CLIPModel(config).save_pretrained(path)
    transformers.BertTokenizerFast(vocab_file=str(VOCAB_PATH)).save_pretrained(path)
    return path


def test_hf_clip_targets_are_stored_by_image_and_resume(hf_clip, tmp_path):
    config = _config()
    teacher, vocab = concept_targets.hf_teacher(hf_clip, VOCAB, "a picture of a {}")
    out = str(tmp_path / "targets")
    kw = dict(teacher_name="hf", prompt="{}", shard_size=8, batch_size=4)
    manifest = concept_targets.extract(config, teacher, vocab, out, **kw)
    assert manifest["num_images"] == 20 and [s["count"] for s in manifest["shards"]] == [8, 8, 4]

    stored = concepts.ConceptTargets(out, verify=True)
    ids, images = zip(*concept_targets.distinct_images(config), strict=True)
    assert list(ids) == list(range(20))
    got = stored.lookup(np.asarray([3, 3, 17]))
    direct = teacher(np.stack([images[3], images[17]]))
    np.testing.assert_allclose(got[[0, 2]], direct, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(KeyError, match="no concept targets for image ids \\[99\\]"):
        stored.lookup(np.asarray([1, 99]))

    # An interrupted extraction (last shard and manifest missing) resumes: done shards are kept.
    first = os.path.join(out, concepts.shard_name(0))
    before = os.stat(first).st_mtime_ns
    os.remove(os.path.join(out, concepts.shard_name(2)))
    os.remove(os.path.join(out, concepts.MANIFEST))
    again = concept_targets.extract(config, teacher, vocab, out, **kw)
    assert again["shards"] == manifest["shards"]
    assert os.stat(first).st_mtime_ns == before


def test_hf_image_classifier_teacher_uses_its_label_names(tmp_path):
    torch.manual_seed(0)
    labels = {0: "circle", 1: "square", 2: "triangle"}
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    transformers.ViTForImageClassification(config).save_pretrained(str(tmp_path))
    teacher, vocab = concept_targets.hf_teacher(str(tmp_path), None, "{}")
    assert vocab == ["circle", "square", "triangle"]
    probs = teacher(np.zeros((2, 64, 64, 3), np.uint8))
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_training_distils_stored_concepts_and_a_run_can_teach(hf_clip, tmp_path):
    config = _config()
    teacher, vocab = concept_targets.hf_teacher(hf_clip, VOCAB, "a picture of a {}")
    out = str(tmp_path / "targets")
    concept_targets.extract(config, teacher, vocab, out, teacher_name="hf", prompt="{}")
    config.data.concept_targets = out
    config.loss_weights.concepts = 1.0
    config.model.num_concepts = 5
    with pytest.raises(ValueError, match="num_concepts=5 but .* holds 6 concepts"):
        pipeline.load_concept_targets(config)
    config.model.num_concepts = len(VOCAB)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    rows = train_rows(workdir)
    assert all(np.isfinite(r["train/concepts"]) and r["train/concepts"] > 0 for r in rows.values())
    assert set(rows[4]) >= {"train/hn_nce", "train/concepts"}

    # The run itself as a zero-shot concept teacher.
    own = concept_targets.vlp_jax_teacher(config, workdir, VOCAB, "a {}")
    probs = own(np.zeros((3, 64, 64, 3), np.uint8))
    assert probs.shape == (3, len(VOCAB))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)

    # Few-shot probing of the same run from its zero-shot prior (tiny pools: a smoke test).
    table = fewshot.run(config, workdir, "color", train_pool=28, eval_size=14, ks=(1, 2))
    assert set(table["k"]) == {"1", "2"} and table["num_classes"] == 7
    assert os.path.exists(os.path.join(workdir, "fewshot_color.json"))
