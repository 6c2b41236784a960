"""Few-shot linear probing from the zero-shot prior (DiHT, Radenovic et al., CVPR 2023, §3.4):

    min_{W, b}  Σ_i CE(y_i, x_iᵀ(W₀ + W) + b)   subject to  ‖W‖_F ≤ δ,  ‖b‖₂ ≤ δ_b

x_i are L2-normalised image embeddings and W₀ the zero-shot classifier: per class, the
renormalised mean of its prompts' text embeddings, times the model's logit scale 1/τ. Projected
gradient descent keeps (W, b) in the balls: after every Adam step, W ← W·min(1, δ/‖W‖) and
b ← b·min(1, δ_b/‖b‖). δ = 0 is zero-shot; δ → ∞ is a linear probe started at W₀. The radii are
picked on a validation split. The baseline is a plain probe (W₀ = 0, no balls, L2 weight decay
picked on the same split).

    python -m vlp_jax.fewshot --config configs/diht.py:size=tiny --workdir runs/diht_tiny

prints (and writes to `{workdir}/fewshot_{attribute}.json`) accuracy for k = 1, 2, 4, 8, 16
examples per class against zero-shot and the plain probe, on `shapes`' one-object scenes labelled
by colour, shape or size (`--attribute`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

KS = (1, 2, 4, 8, 16)
# Radii as fractions of ‖W₀‖_F (so the grid does not depend on the logit scale), bias radii in
# logits; the plain probe's L2 weight decays.
RADIUS_GRID = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)
BIAS_RADIUS_GRID = (0.0, 1.0, 4.0)
WEIGHT_DECAY_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


def zero_shot_classifier(prompt_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """[C, T, E] normalised text embeddings of T prompts per class → W₀ [E, C]."""
    mean = prompt_emb.mean(axis=1)
    mean = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    return (logit_scale * mean.T).astype(np.float32)


def _project(x: jax.Array, radius: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(x)
    return x * jnp.minimum(1.0, radius / jnp.maximum(norm, 1e-12))


def fit_probe(
    x: jax.Array,
    y: jax.Array,
    w0: jax.Array,
    *,
    radius: jax.Array,
    bias_radius: jax.Array,
    weight_decay: jax.Array = 0.0,
    steps: int = 300,
    learning_rate: float = 0.05,
) -> tuple[jax.Array, jax.Array]:
    """(W, b) minimising the mean CE of x·(w0 + W) + b (+ weight_decay·‖W‖²/2) by Adam with a
    projection onto ‖W‖ ≤ radius, ‖b‖ ≤ bias_radius after every step (pass inf to disable)."""
    num_classes = w0.shape[1]
    tx = optax.adam(learning_rate)

    def loss_fn(params):
        w, b = params
        logits = x @ (w0 + w) + b
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * weight_decay * jnp.sum(w * w)

    def step(carry, _):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        w, b = optax.apply_updates(params, updates)
        return ((_project(w, radius), _project(b, bias_radius)), opt_state), None

    params = (jnp.zeros_like(w0), jnp.zeros((num_classes,), w0.dtype))
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params


@jax.jit
def _grid_accuracies(x, y, w0, val_x, val_y, radii, bias_radii, decays):
    """Validation accuracy of a probe fitted at every (radius, bias_radius, decay) triple."""

    def one(radius, bias_radius, decay):
        w, b = fit_probe(x, y, w0, radius=radius, bias_radius=bias_radius, weight_decay=decay)
        return w, b, accuracy(val_x, val_y, w0 + w, b)

    return jax.vmap(one)(radii, bias_radii, decays)


def accuracy(x: jax.Array, y: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    return 100.0 * jnp.mean(jnp.argmax(x @ w + b, axis=-1) == y)


def _best(x, y, w0, splits, grid) -> tuple[float, dict[str, float]]:
    """Fits the whole grid at once, keeps the best on validation, scores it on test."""
    (val_x, val_y), (test_x, test_y) = splits
    radii, bias_radii, decays = (jnp.asarray(g, jnp.float32) for g in zip(*grid, strict=True))
    w, b, val_acc = _grid_accuracies(x, y, w0, val_x, val_y, radii, bias_radii, decays)
    best = int(jnp.argmax(val_acc))
    test_acc = float(accuracy(test_x, test_y, w0 + w[best], b[best]))
    chosen = {"radius": float(radii[best]), "bias_radius": float(bias_radii[best])}
    chosen["weight_decay"] = float(decays[best])
    return test_acc, chosen


def sample_k_per_class(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k examples of every class (classes with fewer than k use all they have)."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.concatenate(picked)


def few_shot_table(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    w0: np.ndarray,
    *,
    ks: Sequence[int] = KS,
    seeds: Sequence[int] = (0, 1, 2),
) -> dict[str, object]:
    """Test accuracy of zero-shot, the PGD probe from W₀ and the plain probe, per k (mean over
    `seeds` draws of the k-shot training set), with the hyperparameters each draw chose."""
    w0 = jnp.asarray(w0)
    splits = tuple((jnp.asarray(x), jnp.asarray(y)) for x, y in (validation, test))
    norm0 = float(jnp.linalg.norm(w0))
    prior_grid = [(r * norm0, rb, 0.0) for r in RADIUS_GRID for rb in BIAS_RADIUS_GRID]
    plain_grid = [(np.inf, np.inf, wd) for wd in WEIGHT_DECAY_GRID]
    zeros = jnp.zeros_like(w0)
    no_bias = jnp.zeros((w0.shape[1],))
    table: dict[str, object] = {
        "zero_shot": float(accuracy(*splits[1], w0, no_bias)),
        "num_classes": int(w0.shape[1]),
        "k": {},
    }
    for k in ks:
        rows: dict[str, list] = {"prior": [], "plain": [], "prior_choice": [], "plain_choice": []}
        for seed in seeds:
            idx = sample_k_per_class(train[1], k, seed)
            x, y = jnp.asarray(train[0][idx]), jnp.asarray(train[1][idx])
            acc, choice = _best(x, y, w0, splits, prior_grid)
            rows["prior"].append(acc)
            rows["prior_choice"].append(choice)
            acc, choice = _best(x, y, zeros, splits, plain_grid)
            rows["plain"].append(acc)
            rows["plain_choice"].append(choice)
        table["k"][str(k)] = {
            "prior": float(np.mean(rows["prior"])),
            "plain": float(np.mean(rows["plain"])),
            "prior_choice": rows["prior_choice"],
            "plain_choice": rows["plain_choice"],
        }
    return table


def format_table(table: dict[str, object]) -> str:
    lines = [
        f"zero-shot: {table['zero_shot']:.1f}%  ({table['num_classes']} classes)",
        "k    from W₀ (PGD)   plain probe",
    ]
    for k, row in table["k"].items():
        lines.append(f"{k:<4} {row['prior']:>12.1f}   {row['plain']:>11.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line: a trained workdir, `shapes`' one-object scenes as the labelled dataset.


def _embed_view(config, workdir, attribute: str, per_split: dict[str, int]):
    from vlp_jax import evaluate, sharding
    from vlp_jax.data import pipeline, shapes
    from vlp_jax.data.tokenizer import load_tokenizer
    from vlp_jax.models import build_model

    mesh = sharding.make_mesh(config.mesh)
    model = build_model(config.model)
    _, params = evaluate.restore_params(config, workdir, mesh, model)
    tokenizer = load_tokenizer(config.data.tokenizer)
    embed_images = jax.jit(
        lambda p, x: model.apply(
            {"params": p},
            model.apply({"params": p}, x, method="encode_image"),
            method="embed_image",
        )
    )
    embed_texts = jax.jit(
        lambda p, ids, mask: model.apply(
            {"params": p},
            model.apply({"params": p}, ids, mask, method="encode_text"),
            mask,
            method="embed_text",
        )
    )
    views = {}
    with sharding.activate(mesh, sharding.rules_from_config(config.sharding_rules)):
        for split, n in per_split.items():
            images, labels, names = shapes.classification_view(
                split, attribute, n, image_size=int(config.data.source_image_size)
            )
            x = np.stack(
                [
                    pipeline.normalize(
                        pipeline.resize(im, config.data.image_size), config.data.normalization
                    )
                    for im in images
                ]
            )
            emb = np.concatenate(
                [np.asarray(embed_images(params, x[i : i + 256])) for i in range(0, len(x), 256)]
            )
            views[split] = (emb, labels)
        prompts = [shapes.class_prompts(attribute, name) for name in names]
        flat = [p for ps in prompts for p in ps]
        ids, mask = tokenizer.encode(flat, int(config.data.max_len))
        t = np.asarray(embed_texts(params, ids, mask)).reshape(len(names), len(prompts[0]), -1)
        scale = 1.0 / float(model.apply({"params": params}, method="temperature"))
    return views, zero_shot_classifier(t, scale), names


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    attribute: str = "color",
    *,
    train_pool: int = 2000,
    eval_size: int = 1000,
    ks: Sequence[int] = KS,
) -> dict[str, object]:
    """The few-shot table of `workdir`'s latest checkpoint, also written to
    `{workdir}/fewshot_{attribute}.json`."""
    per_split = {"train": train_pool, "validation": eval_size, "test": eval_size}
    views, w0, names = _embed_view(config, workdir, attribute, per_split)
    table = few_shot_table(views["train"], views["validation"], views["test"], w0, ks=ks)
    table.update(attribute=attribute, classes=list(names))
    with open(os.path.join(workdir, f"fewshot_{attribute}.json"), "w") as f:
        json.dump(table, f, indent=1)
    return table


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    table = run(f.config, f.workdir, f.attribute, train_pool=f.train_pool, eval_size=f.eval_size)
    print(format_table(table))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "A training run's directory (its latest checkpoint).")
    flags.DEFINE_enum("attribute", "color", ["color", "shape", "size"], "What the classes are.")
    flags.DEFINE_integer("train_pool", 2000, "One-object scenes to draw the k shots from.")
    flags.DEFINE_integer("eval_size", 1000, "One-object scenes in validation and in test.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
