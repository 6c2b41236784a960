"""The one trainer every recipe runs: config in, checkpoints, metrics and evaluations out."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.experimental import multihost_utils

from vlp_jax import (
    checkpoint,
    config_lib,
    evaluate,
    grit,
    momentum,
    objectives,
    optim,
    setup_report,
    sharding,
    weights,
)
from vlp_jax.data import pipeline
from vlp_jax.data.tokenizer import Tokenizer, load_tokenizer
from vlp_jax.metrics import MetricWriter, Progress
from vlp_jax.models import build_model, scale_initial_weights

State = dict[str, Any]


def token_info(tokenizer: Tokenizer, stop_words: Sequence[str] = ()) -> objectives.TokenInfo:
    """The ids the objectives treat specially. Continuation pieces are WordPiece's "##" ones."""
    vocab = tokenizer.backend.get_vocab()
    return objectives.TokenInfo(
        vocab_size=tokenizer.vocab_size,
        mask_id=tokenizer.mask_id,
        special_ids=tuple(tokenizer.special_ids),
        stop_word_ids=tuple(sorted(vocab[w] for w in stop_words if w in vocab)),
        continuation_ids=tuple(sorted(i for t, i in vocab.items() if t.startswith("##"))),
    )


def dummy_inputs(config: ml_collections.ConfigDict, batch: int = 2) -> tuple[jax.Array, ...]:
    size = config.data.image_size
    images = jnp.zeros((batch, size, size, 3), jnp.float32)
    ids = jnp.zeros((batch, config.data.max_len), jnp.int32)
    return images, ids, jnp.ones_like(ids)


def init_state_fn(model: nn.Module, tx: optax.GradientTransformation, config) -> Any:
    """A function rng → train state whose parameters are still boxed with logical axis names."""

    def init(rng: jax.Array) -> State:
        k_params, k_dropout = jax.random.split(rng)
        variables = model.init({"params": k_params, "dropout": k_dropout}, *dummy_inputs(config))
        params = scale_initial_weights(variables["params"], config.model)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(config.seed + 1)),
            "params": params,
            "opt_state": tx.init(params),
        }
        if momentum.enabled(config):  # ALBEF's EMA teacher and queues (vlp_jax/momentum.py)
            state["momentum"] = momentum.init_state(params, jax.random.key(config.seed + 2), config)
        return state

    return init


def create_state(
    model: nn.Module, tx: optax.GradientTransformation, config, mesh, rules
) -> tuple[State, Any]:
    """Initialises the state directly in its shardings; returns (state, state shardings)."""
    init = init_state_fn(model, tx, config)
    rng = jax.random.key(config.seed)
    with sharding.activate(mesh, rules):
        abstract = jax.eval_shape(init, rng)
        shardings = sharding.logical_shardings(abstract, mesh, rules)
        state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    return state, shardings


def microbatches(batch: dict[str, jax.Array], steps: int) -> dict[str, jax.Array]:
    """[B, ...] → [steps, B/steps, ...]; microbatch i takes rows i, i+steps, i+2·steps, ...

    Strided rows keep every device's share of each microbatch on that device (the batch is split
    over devices in contiguous blocks), so splitting moves no data.
    """

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % steps:
            raise ValueError(f"batch of {x.shape[0]} does not split into {steps} microbatches")
        x = x.reshape(x.shape[0] // steps, steps, *x.shape[1:])
        return jnp.moveaxis(x, 1, 0)

    return {k: split(v) for k, v in batch.items()}


def accumulated_grads(
    objective: objectives.Objective,
    params: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    steps: int,
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
    """(loss, metrics, grads) averaged over `steps` microbatches of `batch`.

    For objectives that are a mean over examples this equals one pass over the whole batch. The
    global-batch objectives (ITC, ITM mining) see one microbatch at a time: their negatives come
    from B/steps pairs, as if the batch were that size (memory of B/steps, statistics of
    B/steps). Microbatch i draws its randomness from `fold_in(rng, i)`.
    """
    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def one(micro: dict[str, jax.Array], key: jax.Array):
        (loss, metrics), grads = grad_fn(params, micro, key)
        return loss, metrics, grads

    if steps == 1:
        return one(batch, rng)
    split = microbatches(batch, steps)

    def body(total, xs):
        index, micro = xs
        out = one(micro, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, total, out), None

    shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], split), rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(steps), split))
    return jax.tree.map(lambda x: x / steps, total)


def make_train_step(
    objective: objectives.Objective,
    tx,
    schedule,
    state_shardings,
    mesh,
    grad_accum_steps: int = 1,
    config: ml_collections.ConfigDict | None = None,
):
    """The jitted step: (state, global batch) → (state, metrics); the state buffer is donated.

    With `config.momentum.enabled`, the EMA teacher is updated first and reaches the objective as
    `batch["teacher"]`; the features it returns are enqueued after (`vlp_jax.momentum`)."""
    with_momentum = config is not None and momentum.enabled(config)
    # Objectives with a schedule read the step from the batch, one copy per row so that
    # microbatches split it like any other entry.
    with_step = config is not None and config.get("itm", {}).get("warmup_steps", 0) > 0

    def train_step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if with_step:
            rows = jax.tree.leaves(batch)[0].shape[0]
            batch = {**batch, "step": jnp.broadcast_to(state["step"], (rows,))}
        if with_momentum:
            teacher_params, batch = momentum.before_step(state, batch, config)
        loss, metrics, grads = accumulated_grads(
            objective, state["params"], batch, rng, grad_accum_steps
        )
        if with_momentum:
            new_momentum, metrics = momentum.after_step(
                teacher_params, state["momentum"]["queue"], metrics
            )
            metrics["train/distill_alpha"] = batch["teacher"]["alpha"]
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if "temperature" in params:  # ALBEF clamps τ in place, so it never drifts out of range
            params = {**params, "temperature": jnp.clip(params["temperature"], 1e-3, 0.5)}
        metrics = {
            **metrics,
            "train/loss": loss,
            "train/lr": schedule(state["step"]),
            "train/grad_norm": optax.tree.norm(grads),
        }
        new_state = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
        if with_momentum:
            new_state["momentum"] = new_momentum
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def check_workdir(workdir: str, min_free_mb: int = 64) -> None:
    """Fails before any training if the workdir can't be written or its disk is (nearly) full."""
    if "://" in workdir:
        return  # remote storage (gs://): Orbax and TensorBoard check it themselves
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise RuntimeError(f"workdir {workdir!r} is not writable: {e}") from e
    free_mb = shutil.disk_usage(workdir).free / 2**20
    if free_mb < min_free_mb:
        raise RuntimeError(
            f"workdir {workdir!r} has {free_mb:.0f} MiB free; at least {min_free_mb} MiB needed"
        )


def first_nonfinite(history: list[tuple[int, dict[str, float]]]) -> str | None:
    """A message naming the first step and objective whose value is NaN or inf, if any."""
    for step, metrics in history:
        bad = [k for k, v in metrics.items() if not np.isfinite(v)]
        if bad:
            # Name the objective that broke, not the totals and norms it poisoned.
            derived = ("train/loss", "train/grad_norm")
            parts = [k for k in bad if k not in derived] or bad
            return (
                f"non-finite loss at step {step}: {', '.join(sorted(parts))} = "
                f"{[metrics[k] for k in sorted(parts)]}; the run stops and the last checkpoint "
                "(before this step) is kept"
            )
    return None


class SkipCounter:
    """Images the data sources passed over (missing/corrupt, `sources.DecodedPairs`), against
    examples drawn; over all processes, checked against `data.max_skip_fraction`."""

    def __init__(self, max_fraction: float) -> None:
        self.max_fraction = max_fraction
        self.pending = np.zeros(2, np.int64)  # (skipped, drawn) since the last report
        self.total = np.zeros(2, np.int64)

    def take(self, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Counts a local batch's skips and returns the batch without that field."""
        skipped = local.pop("skipped", None)
        if skipped is not None:
            # Drawn = examples in the batch + the bad ones passed over to fill it.
            self.pending += (int(np.sum(skipped)), len(skipped) + int(np.sum(skipped)))
        return local

    def report(self) -> float:
        """Global skips since the last report; raises past the allowed fraction."""
        pending = self.pending
        if jax.process_count() > 1:
            pending = np.asarray(multihost_utils.process_allgather(pending)).sum(0)
        self.total += pending
        self.pending = np.zeros(2, np.int64)
        skipped, drawn = (int(x) for x in self.total)
        if drawn and skipped / drawn > self.max_fraction:
            raise RuntimeError(
                f"{skipped} of {drawn} examples drawn ({100 * skipped / drawn:.1f}%) had a "
                f"missing or undecodable image, more than config.data.max_skip_fraction="
                f"{self.max_fraction}; the log names each bad file"
            )
        return float(pending[0])


def _mean_metrics(history: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    keys = history[-1][1].keys()
    return {k: float(np.mean([m[k] for _, m in history])) for k in keys}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final
    evaluation metrics.

    `stop_at_step` ends this run early, after saving a checkpoint there, as a time-boxed job (or a
    crash) would: running the same command again continues to `config.total_steps` exactly as an
    uninterrupted run.
    """
    config_lib.validate(config)
    check_workdir(workdir)
    is_main = jax.process_index() == 0
    logging.info(
        "process %d of %d holding %d of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )

    # --- Mesh, tokenizer, model, optimiser, state ------------------------------------------
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.rules_from_config(config.sharding_rules)
    # Each microbatch is split over the batch shards too.
    sharding.batch_size_per_shard(
        config.batch_size // config.grad_accum_steps,
        mesh,
        what=f"config.batch_size / config.grad_accum_steps ({config.grad_accum_steps})",
    )
    tokenizer = load_tokenizer(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.text.vocab_size:
        raise ValueError(
            f"config.model.text.vocab_size={config.model.text.vocab_size} is smaller than the "
            f"tokenizer's vocabulary ({tokenizer.vocab_size}) from data.tokenizer="
            f"{config.data.tokenizer!r}"
        )
    model = build_model(config.model)
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
    state, state_shardings = create_state(model, tx, config, mesh, rules)

    objective = objectives.make_objective(
        model, config, token_info(tokenizer, config.itm.swap.stop_words)
    )
    train_step = make_train_step(
        objective, tx, schedule, state_shardings, mesh, config.grad_accum_steps, config
    )

    # --- Data and checkpoints ----------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
    )
    fingerprint = checkpoint.run_fingerprint(config, tokenizer)
    ckpt.check_fingerprint(fingerprint)
    sampler = None
    if config.grit.enabled:
        train_size = len(pipeline.make_source(config.data, "train", config.data.train_examples))
        sampler = grit.GritSampler(
            train_size,
            config.batch_size,
            config.grit.search_space,
            config.seed,
            refresh_every_steps=int(config.grit.get("refresh_every_steps", 0)),
            scope=config.grit.get("scope", "global"),
        )
        grit.check_process_blocks(sharding.batch_sharding(mesh), config.batch_size)
        saved = ckpt.restore_sampler(sampler.restore_target)
        if saved is not None:
            sampler.load_state(saved)
        elif config.grit.get("warm_start"):
            sampler.warm_start(*grit.load_embeddings(config.grit.warm_start, train_size))

    def open_data() -> Any:
        """This process's batch iterator: endless for plain sampling, one epoch for GRIT."""
        return iter(
            pipeline.train_dataset(
                config,
                tokenizer,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                order=None if sampler is None else sampler.order,
                epoch=0 if sampler is None else sampler.epoch,
            )
        )

    data_iter = open_data()
    restored = ckpt.restore(checkpoint.abstract_like(state), data_iter)
    if restored is not None:
        state = restored
        if is_main:
            print(f"resumed from the checkpoint of step {int(state['step'])} in {workdir}")
    else:  # a fresh run: pretrained towers from config.init (a resumed run keeps its own)
        state = weights.init_train_state(state, state_shardings, config, verbose=is_main)
        if "momentum" in state:  # the teacher starts as a copy of the (imported) weights
            state["momentum"]["params"] = jax.tree.map(jnp.copy, state["params"])
    start_step = int(jax.device_get(state["step"]))

    writer = MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard)
    progress = Progress(config.total_steps, enabled=is_main)
    evaluator = evaluate.Evaluator(model, config, tokenizer, mesh)

    # --- Loop --------------------------------------------------------------------------------
    history: list[tuple[int, Any]] = []  # device metrics not yet checked
    embedded: list[tuple[np.ndarray, Any]] = []  # GRIT: (dataset indices, device embeddings)
    since_log: list[tuple[int, dict[str, float]]] = []  # checked, not yet logged
    skips = SkipCounter(float(config.data.max_skip_fraction))
    grouping_seconds = 0.0  # GRIT: host time spent regrouping since the last log
    final: dict[str, float] = {}
    t_log, pairs_since_log = time.perf_counter(), 0
    step = start_step
    with sharding.activate(mesh, rules):
        end = config.total_steps if stop_at_step is None else min(stop_at_step, config.total_steps)
        local = skips.take(next(data_iter)) if step < end else None
        if local is not None:
            batch = sharding.to_global(local, mesh)
            t_compile = time.perf_counter()
            lowered_step = train_step.lower(state, batch)
            compiled_step = lowered_step.compile()
            setup = setup_report.describe(
                mesh,
                state["params"],
                state_shardings["params"],
                compiled_step,
                time.perf_counter() - t_compile,
                lowered=lowered_step,
            )
            setup_report.write(workdir, setup)
            if is_main:
                print(f"model {config.model.kind}; " + setup_report.format_setup(setup))
            t_log = time.perf_counter()
        while step < end:
            if local is None:
                local = skips.take(next(data_iter))
                batch = sharding.to_global(local, mesh)
            state, metrics = compiled_step(state, batch)
            step += 1
            pairs_since_log += config.batch_size
            if sampler is not None:
                embedded.append((local["index"], [metrics.pop(k) for k in grit.OUTPUTS]))
            history.append((step, metrics))
            local = None

            log_now = step % config.log_every_steps == 0 or step == config.total_steps
            ckpt_now = ckpt.due(step) or step in (config.total_steps, end)
            eval_now = step % config.eval_every_steps == 0 or step == config.total_steps
            epoch_end = sampler is not None and step % sampler.steps_per_epoch == 0
            if sampler is not None and (log_now or ckpt_now or epoch_end):
                for index, (v, t) in embedded:
                    if sampler.scope == "global":
                        index = grit.concat_over_processes(index)
                    sampler.collect(index, grit.host_rows(v, sampler), grit.host_rows(t, sampler))
                embedded = []
            if epoch_end:
                if config.grit.get("save_embeddings") and (
                    sampler.scope == "process" or jax.process_index() == 0
                ):
                    grit.save_embeddings(
                        grit.embeddings_path(workdir, sampler), *sampler.collected()
                    )
                t_group = time.perf_counter()
                sampler.advance()  # the next epoch's batches are grouped by this epoch's pairs
                grouping_seconds += time.perf_counter() - t_group
                data_iter = open_data()
            if not (log_now or ckpt_now or eval_now):
                continue
            # Every step since the last check is inspected before a checkpoint can be written,
            # so a NaN never reaches disk.
            fetched = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in history]
            history = []
            since_log += fetched
            message = first_nonfinite(fetched)
            if message:
                progress.newline()
                ckpt.close()
                writer.close()
                raise FloatingPointError(message)
            if log_now:
                elapsed = time.perf_counter() - t_log
                row = _mean_metrics(since_log)
                row["data/skipped"] = skips.report()
                if sampler is not None:
                    # Share of the wall time since the last log spent grouping (the sampler's
                    # overhead; the collection itself rides on the step's outputs).
                    row["perf/grit_grouping_fraction"] = grouping_seconds / elapsed
                    grouping_seconds = 0.0
                    row.update({f"grit/{k}": v for k, v in sampler.batch_hardness.items()})
                    sampler.batch_hardness = {}
                row["perf/pairs_per_sec"] = pairs_since_log / elapsed
                row["perf/pairs_per_sec_per_device"] = (
                    row["perf/pairs_per_sec"] / jax.device_count()
                )
                writer.write(step, row)
                progress.update(step, row["train/loss"], row["perf/pairs_per_sec"])
                t_log, pairs_since_log, since_log = time.perf_counter(), 0, []
            if ckpt_now:
                ckpt.save(
                    step,
                    state,
                    data_iter,
                    None if sampler is None else sampler.state(),
                    fingerprint,
                )
            if eval_now:
                final = evaluator.run(state["params"])
                writer.write(step, final)
                t_log = time.perf_counter()  # evaluation time is not training throughput
    progress.newline()
    ckpt.close()
    if end < config.total_steps:
        writer.close()
        return {}
    if not final:  # resumed at the end: evaluate the restored state
        with sharding.activate(mesh, rules):
            final = evaluator.run(state["params"])
    writer.close()
    return final
