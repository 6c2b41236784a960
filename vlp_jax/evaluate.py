"""Zero-shot retrieval and hard-negative accuracy, in the training loop or standalone:

    python -m vlp_jax.evaluate --config configs/demo.py --workdir runs/demo

Retrieval (ALBEF's protocol): image→text and text→image R@1/5/10 by ITC cosine similarity over
the evaluation split; with `eval.itm_rerank_k = k > 0` the top-k candidates of every query are
re-scored by the ITM head (reported as `eval/itm_*`). Images are grouped by image id, so a text
query is right when it finds its image, and an image query when it finds any of its captions.

Hard-negative accuracy (sources that have hard negatives, i.e. `shapes`): how often the true
caption scores above its hard-negative twin (swapped attributes, changed relation or one changed
attribute), by ITC similarity and by ITM score. On real evaluation sets (COCO/Flickr files in any
source format) every caption of an image is a query and each image is decoded once; pairs whose
image cannot be read are left out and counted (`eval/skipped_images`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from ml_collections import config_flags

from vlp_jax import checkpoint, config_lib, optim, sharding
from vlp_jax.data import pipeline
from vlp_jax.data.tokenizer import Tokenizer, load_tokenizer
from vlp_jax.models import build_model

RECALL_AT = (1, 5, 10)


def recall_at_k(scores: np.ndarray, positives: list[np.ndarray], ks=RECALL_AT) -> dict[int, float]:
    """Percent of queries (rows) whose best-ranked positive column is within the top k."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty(scores.shape[0], np.int64)
    for q, pos in enumerate(positives):
        ranks[q] = np.where(np.isin(order[q], pos))[0].min()
    return {k: float(100.0 * np.mean(ranks < k)) for k in ks}


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Evaluator:
    """Evaluation on `config.eval.split`; data is prepared once, jitted functions are cached."""

    def __init__(self, model, config: ml_collections.ConfigDict, tokenizer: Tokenizer, mesh: Mesh):
        self.model = model
        self.config = config
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.is_fusion = config.model.kind == "albef"
        self._data = None
        self.batch = int(config.eval.batch_size)
        sharding.batch_size_per_shard(self.batch, mesh)

    @property
    def data(self) -> dict[str, np.ndarray]:
        if self._data is None:
            self._data = pipeline.eval_arrays(self.config, self.tokenizer)
        return self._data

    def _batched(self, fn: Callable, *arrays: np.ndarray) -> list[np.ndarray]:
        """Runs `fn` over fixed-size chunks (padded; one compilation) split over the mesh."""
        n = arrays[0].shape[0]
        outs: list[list[np.ndarray]] = []
        shard = sharding.batch_sharding(self.mesh)
        for start in range(0, n, self.batch):
            chunk = [a[start : start + self.batch] for a in arrays]
            pad = self.batch - chunk[0].shape[0]
            if pad:
                chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
            dev = [
                jax.make_array_from_callback(c.shape, shard, lambda idx, c=c: c[idx]) for c in chunk
            ]
            res = fn(*dev)
            res = res if isinstance(res, tuple) else (res,)
            outs.append([_to_host(r)[: self.batch - pad] for r in res])
        return [np.concatenate(parts) for parts in zip(*outs)]

    @functools.cached_property
    def _fns(self) -> dict[str, Callable]:
        model = self.model
        mean, std = pipeline.image_stats(self.config.data.get("normalization", "clip"))

        def images(params, pixels):
            x = (pixels.astype(jnp.float32) - mean) / std
            tokens = model.apply({"params": params}, x, method="encode_image")
            return tokens, model.apply({"params": params}, tokens, method="embed_image")

        def texts(params, ids, mask):
            hidden = model.apply({"params": params}, ids, mask, method="encode_text")
            return hidden, model.apply({"params": params}, hidden, mask, method="embed_text")

        def itm(params, hidden, mask, tokens):
            fused = model.apply({"params": params}, hidden, mask, tokens, method="fuse")
            logits = model.apply({"params": params}, fused, method="itm_logits")
            return (logits[:, 1] - logits[:, 0]).astype(jnp.float32)

        return {"images": jax.jit(images), "texts": jax.jit(texts), "itm": jax.jit(itm)}

    def run(self, params) -> dict[str, float]:
        d, fns = self.data, self._fns
        run = self._batched
        # One row per distinct image; every caption points at its image's row.
        img_tokens, v_img = run(functools.partial(fns["images"], params), d["image"])
        txt_hidden, t = run(
            functools.partial(fns["texts"], params), d["input_ids"], d["attention_mask"]
        )
        text_to_image = d["text_image"]
        scores = v_img @ t.T  # [images, texts]
        by_image = np.argsort(text_to_image, kind="stable")
        caps_of = np.split(by_image, np.cumsum(np.bincount(text_to_image))[:-1])
        i2t = recall_at_k(scores, caps_of)
        t2i = recall_at_k(scores.T, [np.array([i]) for i in text_to_image])
        metrics = {f"eval/i2t_r{k}": i2t[k] for k in RECALL_AT}
        metrics.update({f"eval/t2i_r{k}": t2i[k] for k in RECALL_AT})
        metrics["eval/r_mean"] = float(np.mean([*i2t.values(), *t2i.values()]))
        if int(d["skipped_images"]):
            metrics["eval/skipped_images"] = float(d["skipped_images"])
        itm = functools.partial(fns["itm"], params)
        if self.is_fusion and int(self.config.eval.itm_rerank_k) > 0:
            metrics.update(
                self._rerank(
                    scores,
                    caps_of,
                    text_to_image,
                    img_tokens,
                    txt_hidden,
                    d["attention_mask"],
                    itm,
                    int(self.config.eval.itm_rerank_k),
                )
            )
        if "neg_input_ids" in d:
            metrics.update(self._hard_negatives(params, d, v_img, t, img_tokens, txt_hidden, itm))
        return metrics

    def _hard_negatives(self, params, d, v_img, t, img_tokens, txt_hidden, itm) -> dict:
        """How often each caption beats its hard-negative twin, by ITC and (ALBEF) by ITM."""
        neg_hidden, t_neg = self._batched(
            functools.partial(self._fns["texts"], params),
            d["neg_input_ids"],
            d["neg_attention_mask"],
        )
        v = v_img[d["text_image"]]
        itc_right = np.sum(v * t, -1) > np.sum(v * t_neg, -1)
        metrics = {"eval/hardneg_acc_itc": float(100.0 * itc_right.mean())}
        if not self.is_fusion:
            return metrics
        tokens = img_tokens[d["text_image"]]
        (pos,) = self._batched(itm, txt_hidden, d["attention_mask"], tokens)
        (neg,) = self._batched(itm, neg_hidden, d["neg_attention_mask"], tokens)
        itm_right = pos > neg
        metrics["eval/hardneg_acc_itm"] = float(100.0 * itm_right.mean())
        kinds = d["hard_negative_kind"]
        for kind in np.unique(kinds):
            sel = kinds == kind
            metrics[f"eval/hardneg_acc_itm_{kind}"] = float(100.0 * itm_right[sel].mean())
            metrics[f"eval/hardneg_acc_itc_{kind}"] = float(100.0 * itc_right[sel].mean())
        return metrics

    def _rerank(self, scores, caps_of, text_to_image, img_tokens, txt_hidden, mask, itm, k):
        """ITM scores for each query's top-k ITC candidates; the rest rank below them."""
        k_i2t, k_t2i = min(k, scores.shape[1]), min(k, scores.shape[0])
        top_t = np.argsort(-scores, axis=1)[:, :k_i2t]  # [images, k]
        rows = np.repeat(np.arange(scores.shape[0]), k_i2t)
        cols = top_t.reshape(-1)
        (s_i2t,) = self._batched(itm, txt_hidden[cols], mask[cols], img_tokens[rows])
        re_i2t = np.full(scores.shape, -np.inf)
        re_i2t[rows, cols] = s_i2t
        top_i = np.argsort(-scores.T, axis=1)[:, :k_t2i]  # [texts, k]
        rows_t = np.repeat(np.arange(scores.shape[1]), k_t2i)
        cols_i = top_i.reshape(-1)
        (s_t2i,) = self._batched(itm, txt_hidden[rows_t], mask[rows_t], img_tokens[cols_i])
        re_t2i = np.full(scores.T.shape, -np.inf)
        re_t2i[rows_t, cols_i] = s_t2i
        i2t = recall_at_k(re_i2t, caps_of)
        t2i = recall_at_k(re_t2i, [np.array([i]) for i in text_to_image])
        out = {f"eval/itm_i2t_r{kk}": i2t[kk] for kk in RECALL_AT}
        out.update({f"eval/itm_t2i_r{kk}": t2i[kk] for kk in RECALL_AT})
        return out


def format_table(metrics: dict[str, float]) -> str:
    """A short console table of the headline evaluation metrics."""
    rows = [
        ("image→text R@1/5/10", [f"eval/i2t_r{k}" for k in RECALL_AT]),
        ("text→image R@1/5/10", [f"eval/t2i_r{k}" for k in RECALL_AT]),
        ("ITM re-ranked i→t R@1/5/10", [f"eval/itm_i2t_r{k}" for k in RECALL_AT]),
        ("ITM re-ranked t→i R@1/5/10", [f"eval/itm_t2i_r{k}" for k in RECALL_AT]),
        ("hard-negative acc. (ITC)", ["eval/hardneg_acc_itc"]),
        ("hard-negative acc. (ITM)", ["eval/hardneg_acc_itm"]),
    ]
    lines = ["metric                         value (%)", "-" * 44]
    for name, keys in rows:
        if all(k in metrics for k in keys):
            lines.append(f"{name:<30} " + " / ".join(f"{metrics[k]:.1f}" for k in keys))
    if "eval/i2t_r1" in metrics:
        mean_r1 = (metrics["eval/i2t_r1"] + metrics["eval/t2i_r1"]) / 2
        lines.append(f"{'mean R@1 (i→t, t→i)':<30} {mean_r1:.1f}")
    return "\n".join(lines)


def restore_params(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, model):
    """The parameters of the latest checkpoint in `workdir`, in their training shardings."""
    from vlp_jax import train  # train imports this module

    manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "fingerprint": ocp.JsonCheckpointHandler(),
        },
    )
    step = manager.latest_step()
    if step is None:
        raise SystemExit(f"no checkpoint in {workdir}/checkpoints to evaluate")
    tokenizer = load_tokenizer(config.data.tokenizer)
    checkpoint.check_fingerprint(manager, step, checkpoint.run_fingerprint(config, tokenizer))
    tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
    rules = sharding.rules_from_config(config.sharding_rules)
    state, _ = train.create_state(model, tx, config, mesh, rules)
    target = ocp.args.StandardRestore(checkpoint.abstract_like(state))
    restored = manager.restore(step, args=ocp.args.Composite(state=target))["state"]
    return step, restored["params"]


def main(argv) -> None:
    del argv
    from vlp_jax.distributed import initialize_distributed
    from vlp_jax.host_memory import reuse_freed_blocks

    reuse_freed_blocks()  # before JAX starts its threads
    initialize_distributed()
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh)
    model = build_model(config.model)
    step, params = restore_params(config, workdir, mesh, model)
    with sharding.activate(mesh, sharding.rules_from_config(config.sharding_rules)):
        metrics = Evaluator(model, config, load_tokenizer(config.data.tokenizer), mesh).run(params)
    print(f"step {step} of {workdir}")
    print(format_table(metrics))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory holding the run's checkpoints.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
