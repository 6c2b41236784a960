"""Offline teacher soft labels for DiHT's concept distillation, once per dataset.

    python -m vlp_jax.tools.concept_targets --config configs/diht.py:size=tiny --output DIR \
        (--teacher_workdir RUN --teacher_config configs/x.py  |  --teacher_hf PATH) \
        (--vocab FILE  |  --vocab_from_captions N) [--prompt "a picture of a {}"]

For every distinct training image of `--config`'s data, the teacher's distribution over the
concept vocabulary is stored in `DIR` (`vlp_jax.data.concepts`: npz shards + manifest). Teachers:
  - one of our runs (`--teacher_workdir`, `--teacher_config`): p = softmax(v · t_c / τ) of its
    image embedding against each concept's prompt embedding, at its own temperature τ;
  - a Hugging Face PyTorch CLIP model from a local directory or hub name (`--teacher_hf`):
    the same with its logit scale;
  - a Hugging Face image classifier (`--teacher_hf` with an `...ForImageClassification`
    checkpoint): softmax of its logits; its label names are the vocabulary.
The vocabulary is a file (one concept per line) or the N most frequent nouns of the training
captions (spaCy, `[filter]` extra). Shards are written atomically, so a rerun skips finished
ones. Training then reads the targets with `--config.data.concept_targets=DIR
--config.model.num_concepts=C --config.loss_weights.concepts=W`: the student's linear head costs
one small matmul and the teacher nothing at train time.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import app, flags

from vlp_jax import config_lib
from vlp_jax.data import concepts, pipeline

Teacher = Callable[[np.ndarray], np.ndarray]  # uint8 images [B, H, W, 3] -> probs [B, C]


def distinct_images(config: ml_collections.ConfigDict) -> Iterator[tuple[int, np.ndarray]]:
    """(image_id, image) for each distinct image of the training split, in index order."""
    source = pipeline.make_source(config.data, "train", int(config.data.train_examples))
    seen: set[int] = set()
    for i in range(len(source)):
        example = source[i]
        image_id = int(example["image_id"])
        if image_id not in seen:
            seen.add(image_id)
            yield image_id, example["image"]


def frequent_nouns(config: ml_collections.ConfigDict, n: int, spacy_model: str) -> list[str]:
    """The n most frequent noun lemmas of the training captions."""
    import spacy

    nlp = spacy.load(spacy_model, disable=["ner"])
    source = pipeline.make_source(config.data, "train", int(config.data.train_examples))
    counts: collections.Counter[str] = collections.Counter()
    captions = (source[i]["caption"] for i in range(len(source)))
    for doc in nlp.pipe(captions, batch_size=256):
        counts.update(t.lemma_.lower() for t in doc if t.pos_ in ("NOUN", "PROPN"))
    return [word for word, _ in counts.most_common(n)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def vlp_jax_teacher(
    config: ml_collections.ConfigDict, workdir: str, vocabulary: list[str], prompt: str
) -> Teacher:
    """A trained vlp_jax model (latest checkpoint of `workdir`) as a zero-shot concept teacher."""
    from vlp_jax import evaluate, sharding
    from vlp_jax.data.tokenizer import load_tokenizer
    from vlp_jax.models import build_model

    mesh = sharding.make_mesh(config.mesh)
    model = build_model(config.model)
    _, params = evaluate.restore_params(config, workdir, mesh, model)
    variables = {"params": params}
    tokenizer = load_tokenizer(config.data.tokenizer)
    ids, mask = tokenizer.encode([prompt.format(c) for c in vocabulary], int(config.data.max_len))

    @jax.jit
    def text_emb(ids, mask):
        hidden = model.apply(variables, ids, mask, method="encode_text")
        return model.apply(variables, hidden, mask, method="embed_text")

    @jax.jit
    def image_emb(x):
        tokens = model.apply(variables, x, method="encode_image")
        return model.apply(variables, tokens, method="embed_image")

    concepts_emb = np.asarray(text_emb(ids, mask))
    scale = 1.0 / float(model.apply(variables, method="temperature"))
    size = int(config.data.image_size)

    def teach(images: np.ndarray) -> np.ndarray:
        kind = config.data.normalization
        x = np.stack([pipeline.normalize(pipeline.resize(im, size), kind) for im in images])
        return _softmax(scale * np.asarray(image_emb(x)) @ concepts_emb.T)

    return teach


def hf_teacher(path: str, vocabulary: list[str] | None, prompt: str) -> tuple[Teacher, list[str]]:
    """A Hugging Face PyTorch CLIP model or image classifier as the teacher; returns it with its
    vocabulary (the classifier's label names, or the given one for CLIP)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    if config.model_type == "clip":
        if not vocabulary:
            raise SystemExit("a CLIP teacher needs --vocab or --vocab_from_captions")
        model = transformers.CLIPModel.from_pretrained(path).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        tokens = tokenizer(
            [prompt.format(c) for c in vocabulary], padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            text = _features(model.get_text_features(**tokens))
            text = torch.nn.functional.normalize(text, dim=-1)
        image_size = config.vision_config.image_size
        scale = float(model.logit_scale.detach().exp())

        def forward(pixels):
            image = _features(model.get_image_features(pixel_values=pixels))
            image = torch.nn.functional.normalize(image, dim=-1)
            return scale * image @ text.T

    else:
        model = transformers.AutoModelForImageClassification.from_pretrained(path).eval()
        labels = model.config.id2label
        vocabulary = [labels[i] for i in range(len(labels))]
        size = getattr(config, "image_size", 224)
        image_size = size if isinstance(size, int) else size["height"]

        def forward(pixels):
            return model(pixel_values=pixels).logits

    mean, std = _image_stats(path)

    def teach(images: np.ndarray) -> np.ndarray:
        x = np.stack([pipeline.resize(im, image_size) for im in images]).astype(np.float32) / 255
        x = (x - mean) / std
        with torch.no_grad():
            logits = forward(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        return _softmax(logits.float().numpy())

    return teach, vocabulary


def _features(output):
    """Projected features: a tensor before transformers 5, an output's `pooler_output` since."""
    return getattr(output, "pooler_output", output)


def _image_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's image mean/std (preprocessor_config.json), else CLIP's."""
    mean, std = pipeline.MEAN / 255.0, pipeline.STD / 255.0
    config_file = os.path.join(path, "preprocessor_config.json")
    if os.path.exists(config_file):
        with open(config_file) as f:
            pre = json.load(f)
        mean = np.asarray(pre.get("image_mean", mean), np.float32)
        std = np.asarray(pre.get("image_std", std), np.float32)
    return mean.astype(np.float32), std.astype(np.float32)


def extract(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    vocabulary: list[str],
    output: str,
    *,
    teacher_name: str,
    prompt: str,
    shard_size: int = 4096,
    batch_size: int = 256,
) -> dict:
    """Writes every distinct training image's targets to `output`; returns the manifest."""
    os.makedirs(output, exist_ok=True)
    shards = []
    images = distinct_images(config)
    index = 0
    while True:
        rows = [row for _, row in zip(range(shard_size), images, strict=False)]
        if not rows:
            break
        path = os.path.join(output, concepts.shard_name(index))
        if os.path.exists(path):  # finished by an earlier run
            with np.load(path) as done:
                count = len(done["image_id"])
            shards.append(
                {
                    "file": concepts.shard_name(index),
                    "count": count,
                    "sha256": concepts.sha256(path),
                }
            )
        else:
            ids = np.asarray([image_id for image_id, _ in rows])
            probs = np.concatenate(
                [
                    teacher(np.stack([im for _, im in rows[i : i + batch_size]]))
                    for i in range(0, len(rows), batch_size)
                ]
            )
            shards.append(concepts.write_shard(output, index, ids, probs))
        index += 1
    manifest = {
        "vocabulary": vocabulary,
        "teacher": teacher_name,
        "prompt": prompt,
        "data": {k: config.data[k] for k in ("name", "train_examples")},
        "num_images": sum(s["count"] for s in shards),
        "shards": shards,
    }
    tmp = os.path.join(output, concepts.MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(output, concepts.MANIFEST))
    return manifest


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    config = config_lib.load_config_file(f.config)
    if f.vocab:
        with open(f.vocab) as fh:
            vocabulary = [line.strip() for line in fh if line.strip()]
    elif f.vocab_from_captions:
        vocabulary = frequent_nouns(config, f.vocab_from_captions, f.spacy_model)
    else:
        vocabulary = []
    if f.teacher_hf:
        teacher, vocabulary = hf_teacher(f.teacher_hf, vocabulary, f.prompt)
        name = f"hf:{f.teacher_hf}"
    elif f.teacher_workdir and f.teacher_config:
        if not vocabulary:
            raise SystemExit("a vlp_jax teacher needs --vocab or --vocab_from_captions")
        teacher_config = config_lib.load_config_file(f.teacher_config)
        teacher = vlp_jax_teacher(teacher_config, f.teacher_workdir, vocabulary, f.prompt)
        name = f"vlp_jax:{f.teacher_config}@{f.teacher_workdir}"
    else:
        raise SystemExit("name a teacher: --teacher_hf, or --teacher_workdir and --teacher_config")
    manifest = extract(
        config,
        teacher,
        vocabulary,
        f.output,
        teacher_name=name,
        prompt=f.prompt,
        shard_size=f.shard_size,
    )
    print(
        f"wrote targets of {manifest['num_images']} images over {len(vocabulary)} concepts "
        f"to {f.output} ({len(manifest['shards'])} shards)"
    )


if __name__ == "__main__":
    flags.DEFINE_string("config", None, "The training config whose data gets targets (path:arg).")
    flags.DEFINE_string("output", None, "Directory for the shards and manifest.")
    flags.DEFINE_string("teacher_hf", None, "Hugging Face CLIP or image classifier (dir or name).")
    flags.DEFINE_string("teacher_workdir", None, "A vlp_jax run to use as the teacher.")
    flags.DEFINE_string("teacher_config", None, "That run's config (path:arg).")
    flags.DEFINE_string("vocab", None, "Concept vocabulary file, one per line.")
    flags.DEFINE_integer("vocab_from_captions", 0, "Use the N most frequent caption nouns.")
    flags.DEFINE_string("spacy_model", "en_core_web_sm", "For --vocab_from_captions.")
    flags.DEFINE_string(
        "prompt", "a picture of a {}", "Prompt around each concept (CLIP teachers)."
    )
    flags.DEFINE_integer("shard_size", 4096, "Images per shard.")
    flags.mark_flags_as_required(["config", "output"])
    app.run(main)
