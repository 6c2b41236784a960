"""Does the fusion encoder know where things are? On `shapes`' relational test captions:

    python -m vlp_jax.tools.relation_probe --config configs/demo.py --workdir runs/demo

Each caption's relation word ("left", "right", "above", "below") is replaced by [MASK], and the
MLM head, given the true image, picks one of the four. The templates give the axis away ("to the
left of" against "above"), so the figure that matters is the direction given the axis: 50% is
chance, and a model that reads object positions from the image scores well above it. This tells
a relation problem in the image-text fusion apart from one in the ITM head alone (the demo's
ITM relation negatives sit at chance; README, "The demo").
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vlp_jax import config_lib, evaluate, sharding
from vlp_jax.data import pipeline
from vlp_jax.data.tokenizer import Tokenizer, load_tokenizer
from vlp_jax.models import build_model

RELATION_WORDS = ("left", "right", "above", "below")  # pairs of opposites: index // 2 = axis


def mask_relation_words(
    input_ids: np.ndarray, relation_ids: list[int], mask_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows that hold a relation word → (those rows with their first one masked, row numbers,
    masked positions, index of the true word in `relation_ids`)."""
    hits = np.isin(input_ids, relation_ids)
    rows = np.where(hits.any(axis=1))[0]
    positions = hits[rows].argmax(axis=1)
    which = {token: k for k, token in enumerate(relation_ids)}
    truth = np.asarray([which[int(t)] for t in input_ids[rows, positions]], np.int64)
    masked = input_ids[rows].copy()
    masked[np.arange(len(rows)), positions] = mask_id
    return masked, rows, positions, truth


def relation_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The token id of each relation word; each must be one known token of the vocabulary."""
    ids = []
    for word in RELATION_WORDS:
        tokens, mask = tokenizer.encode([word], 4)
        if mask[0].sum() != 3 or tokens[0, 1] == tokenizer.unk_id:  # [CLS] word [SEP]
            raise ValueError(f"the tokenizer does not hold {word!r} as one token")
        ids.append(int(tokens[0, 1]))
    return ids


def relation_word_accuracy(
    model, params, config: ml_collections.ConfigDict, tokenizer: Tokenizer, batch: int = 100
) -> dict[str, float]:
    """Percentages over the evaluation split's relational captions: the right word, the right
    axis, and the right direction among captions whose axis it got right."""
    data = pipeline.eval_arrays(config, tokenizer)
    relation_ids = relation_token_ids(tokenizer)
    masked, rows, positions, truth = mask_relation_words(
        data["input_ids"], relation_ids, tokenizer.mask_id
    )
    if not len(rows):
        raise ValueError(f"no caption of config.data.name={config.data.name!r} names a relation")
    mean, std = pipeline.image_stats(config.data.get("normalization", "clip"))

    @jax.jit
    def logits_at(pixels, ids, mask, where):
        tokens = model.apply({"params": params}, (pixels - mean) / std, method="encode_image")
        logits = model.apply({"params": params}, ids, mask, tokens, method="mlm_logits")
        return logits[np.arange(len(ids)), where][:, np.asarray(relation_ids)]

    picks = []
    for lo in range(0, len(rows), batch):
        # Pad the last batch to the batch size: one compilation.
        take = np.resize(np.arange(lo, min(lo + batch, len(rows))), batch)
        pixels = data["image"][data["text_image"][rows[take]]].astype(np.float32)
        scores = logits_at(
            pixels, masked[take], data["attention_mask"][rows[take]], positions[take]
        )
        picks.append(np.asarray(scores).argmax(axis=1)[: min(batch, len(rows) - lo)])
    pick = np.concatenate(picks)
    axis = pick // 2 == truth // 2
    return {
        "captions": float(len(rows)),
        "word": float(100 * np.mean(pick == truth)),
        "axis": float(100 * np.mean(axis)),
        "direction_given_axis": float(100 * np.mean(pick[axis] == truth[axis]))
        if axis.any()
        else 0.0,
    }


def main(argv: list[str]) -> None:
    del argv
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    config_lib.validate(config)
    if config.model.kind != "albef":
        raise SystemExit(
            f"the probe reads the MLM head of model.kind='albef', not {config.model.kind!r}"
        )
    mesh = sharding.make_mesh(config.mesh)
    model = build_model(config.model)
    step, params = evaluate.restore_params(config, workdir, mesh, model)
    with sharding.activate(mesh, sharding.rules_from_config(config.sharding_rules)):
        result = relation_word_accuracy(
            model, params, config, load_tokenizer(config.data.tokenizer)
        )
    print(
        f"step {step} of {workdir}: {int(result['captions'])} relational captions; the MLM head "
        f"picks the right word {result['word']:.1f}% (chance 25), the right axis "
        f"{result['axis']:.1f}% (the template tells it), the right direction given the axis "
        f"{result['direction_given_axis']:.1f}% (chance 50)"
    )


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory holding the run's checkpoints.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
