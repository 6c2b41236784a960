"""ALBEF's momentum model: distilled ITC with queues and distilled MLM against numpy formulas,
global over a mesh, the EMA and queue updates, and the config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config
from vlp_jax import config_lib, losses, momentum, sharding


def unit(rng, *shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def itc_distill_numpy(v, t, v_m, t_m, qv, qt, tau, alpha):
    g = v.shape[0]
    text_cols, image_cols = np.concatenate([t_m, qt]), np.concatenate([v_m, qv])
    onehot = np.eye(g, text_cols.shape[0])
    total = 0.0
    for anchor, anchor_m, cols in ((v, v_m, text_cols), (t, t_m, image_cols)):
        target = alpha * np.exp(log_softmax(anchor_m @ cols.T / tau)) + (1 - alpha) * onehot
        total += -(target * log_softmax(anchor @ cols.T / tau)).sum() / g
    return total / 2


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return [unit(rng, 16, 8) for _ in range(4)] + [unit(rng, 32, 8), unit(rng, 32, 8)]


def test_itc_distill_matches_the_formula_and_reduces_to_itc(features):
    v, t, v_m, t_m, qv, qt = features
    got = losses.itc_distill(v, t, v_m, t_m, qv, qt, 0.07, 0.4)
    np.testing.assert_allclose(got, itc_distill_numpy(v, t, v_m, t_m, qv, qt, 0.07, 0.4), rtol=1e-5)
    empty = np.zeros((0, 8), np.float32)
    np.testing.assert_allclose(
        losses.itc_distill(v, t, v, t, empty, empty, 0.07, 0.0), losses.itc(v, t, 0.07), rtol=1e-6
    )


def test_itc_distill_on_a_mesh_equals_one_device(features):
    v, t, v_m, t_m, qv, qt = features

    def loss(v, t):
        return losses.itc_distill(v, t, v_m, t_m, qv, qt, 0.07, 0.4)

    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(v, t)
    mesh = sharding.make_mesh((("data", 8),))
    with sharding.activate(mesh, sharding.DEFAULT_RULES):
        shard = sharding.batch_sharding(mesh)
        value_8, grads_8 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
            jax.device_put(v, shard), jax.device_put(t, shard)
        )
    np.testing.assert_allclose(value_8, value, rtol=1e-5)
    for a, b in zip(grads_8, grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mlm_distill_matches_the_formula():
    rng = np.random.default_rng(1)
    logits, teacher = rng.normal(size=(2, 3, 2, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (3, 2))
    weights = np.asarray([[1, 0], [1, 1], [0, 1]], np.float32)
    hard = -np.take_along_axis(log_softmax(logits), labels[..., None], -1)[..., 0]
    soft = -(np.exp(log_softmax(teacher)) * log_softmax(logits)).sum(-1)
    expected = (0.6 * hard + 0.4 * soft)[weights > 0].mean()
    got = losses.mlm_distill_loss(logits, labels, weights, teacher, 0.4)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(
        losses.mlm_distill_loss(logits, labels, weights, teacher, 0.0),
        losses.mlm_loss(logits, labels, weights),
        rtol=1e-6,
    )


def test_queue_wraps_and_ema_moves_toward_the_params():
    queue = momentum.init_queue(jax.random.key(0), 8, 4)
    np.testing.assert_allclose(np.linalg.norm(queue["image"], axis=-1), 1.0, rtol=1e-5)
    for k in range(3):  # 3 batches of 4 into 8 slots: slots 0-3 hold the third batch
        queue = momentum.enqueue(queue, jnp.full((4, 4), k + 1.0), jnp.full((4, 4), -(k + 1.0)))
    assert int(queue["ptr"]) == 4
    np.testing.assert_array_equal(queue["image"][:4], 3.0)
    np.testing.assert_array_equal(queue["text"][4:], -2.0)
    teacher = momentum.ema({"w": jnp.zeros(3)}, {"w": jnp.ones(3)}, 0.995)
    np.testing.assert_allclose(teacher["w"], 0.005, rtol=1e-6)
    np.testing.assert_allclose(momentum.alpha_at(jnp.asarray(5), 0.4, 10), 0.2)
    np.testing.assert_allclose(momentum.alpha_at(jnp.asarray(50), 0.4, 10), 0.4)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c.model.update(kind="dual_encoder"), r"momentum.enabled is ALBEF's"),
        (lambda c: c.momentum.update(queue_size=40), r"queue_size=40 must be a multiple of"),
        (lambda c: c.update(grad_accum_steps=2), r"needs config.grad_accum_steps=1"),
        (lambda c: c.momentum.update(alpha=1.5), r"momentum.alpha=1.5 must be in"),
    ],
)
def test_momentum_config_errors_name_the_key(change, message):
    config = load_config("albef", "tiny")
    assert config.momentum.enabled
    config_lib.validate(config)
    change(config)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)
