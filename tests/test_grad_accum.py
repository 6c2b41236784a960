"""Gradient accumulation: equal to the large batch for per-example objectives; for contrastive
ones, the mean over microbatches of the microbatch loss (the documented semantics)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlp_jax import config_lib, losses, objectives, sharding, train


def _regression(params, batch, rng):
    """A per-example objective: mean squared error, plus a metric."""
    del rng
    err = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(err**2), {"train/abs_err": jnp.mean(jnp.abs(err))}


def _problem(rng: np.random.Generator, batch: int = 32, dim: int = 6):
    params = {"w": jnp.asarray(rng.normal(size=(dim,)), jnp.float32)}
    data = {
        "x": rng.normal(size=(batch, dim)).astype(np.float32),
        "y": rng.normal(size=(batch,)).astype(np.float32),
    }
    return params, data


def test_microbatches_take_strided_rows():
    batch = {"x": jnp.arange(12).reshape(12, 1)}
    split = train.microbatches(batch, 3)["x"]
    assert split.shape == (3, 4, 1)
    np.testing.assert_array_equal(split[1, :, 0], [1, 4, 7, 10])


def test_accumulation_equals_the_large_batch_for_a_per_example_objective():
    params, data = _problem(np.random.default_rng(0))
    mesh = sharding.make_mesh((("data", 8),))
    batch = sharding.to_global(data, mesh)
    rng = jax.random.key(0)
    full = train.accumulated_grads(_regression, params, batch, rng, 1)
    with jax.set_mesh(mesh):
        accumulated = jax.jit(train.accumulated_grads, static_argnums=(0, 4))(
            _regression, params, batch, rng, 4
        )
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(accumulated)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_accumulated_contrastive_loss_is_the_mean_of_microbatch_losses():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(8, 4)).astype(np.float32)
    t = rng.normal(size=(8, 4)).astype(np.float32)

    def itc(params, batch, key):
        del key
        norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        return losses.itc(norm(batch["v"] * params), norm(batch["t"]), 0.1), {}

    loss, _, _ = train.accumulated_grads(itc, 1.0, {"v": v, "t": t}, jax.random.key(0), 2)
    halves = [itc(1.0, {"v": v[i::2], "t": t[i::2]}, None)[0] for i in range(2)]
    np.testing.assert_allclose(loss, np.mean(halves), rtol=1e-6)
    whole = itc(1.0, {"v": v, "t": t}, None)[0]
    assert abs(float(loss) - float(whole)) > 1e-3  # fewer negatives: a different loss


def test_train_step_with_accumulation_makes_the_same_update():
    params, data = _problem(np.random.default_rng(2))
    mesh = sharding.make_mesh((("data", 8),))
    tx = optax.adamw(1e-2)
    schedule = optax.constant_schedule(1e-2)
    replicated = sharding.replicated(mesh)

    def run(steps: int):
        state = {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(0)),
            "params": jax.tree.map(jnp.copy, params),  # the step donates its state
            "opt_state": tx.init(params),
        }
        shardings = jax.tree.map(lambda _: replicated, state)
        step = train.make_train_step(_regression, tx, schedule, shardings, mesh, steps)
        with jax.set_mesh(mesh):
            state, metrics = step(state, sharding.to_global(data, mesh))
        return jax.device_get(state["params"]["w"]), jax.device_get(metrics)

    w_1, m_1 = run(1)
    w_4, m_4 = run(4)
    np.testing.assert_allclose(w_4, w_1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m_4["train/loss"], m_1["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(m_4["train/abs_err"], m_1["train/abs_err"], rtol=1e-5)


def test_scheduled_objectives_see_the_step_in_every_microbatch():
    """With `itm.warmup_steps`, the step reaches the objective as `batch["step"]`, one copy per
    row, so accumulation splits it like the data."""
    params, data = _problem(np.random.default_rng(3))
    mesh = sharding.make_mesh((("data", 8),))
    config = config_lib.base_config()
    config.itm.warmup_steps = 10

    def sees_step(params, batch, rng):
        loss, metrics = _regression(params, batch, rng)
        step = batch["step"]
        return loss, {**metrics, "seen": jnp.mean(step), "spread": jnp.ptp(step)}

    tx = optax.sgd(0.0)
    state = {
        "step": jnp.asarray(7, jnp.int32),
        "rng": jax.random.key_data(jax.random.key(0)),
        "params": params,
        "opt_state": tx.init(params),
    }
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    step = train.make_train_step(
        sees_step, tx, optax.constant_schedule(0.0), shardings, mesh, 4, config
    )
    with jax.set_mesh(mesh):
        _, metrics = step(state, sharding.to_global(data, mesh))
    assert float(metrics["seen"]) == 7.0 and float(metrics["spread"]) == 0.0


def test_itm_warmup_temperature_moves_linearly_to_the_sampling_one():
    at = lambda s: float(objectives.warmed_up_temperature(jnp.asarray(s), 1.0, 0.01, 100))  # noqa: E731
    np.testing.assert_allclose(
        [at(0), at(50), at(100), at(400)], [1.0, 0.505, 0.01, 0.01], rtol=1e-5
    )
