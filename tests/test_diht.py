"""DiHT: HN-NCE against the paper's direct formula and ITC, globally over a mesh; the concept
distillation KL; the few-shot probe from the zero-shot prior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax import fewshot, losses
from vlp_jax.sharding import make_mesh


def _normalised(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_hn_nce(v, t, temperature, alpha, beta):
    """The paper's formula term by term (float64): w_ij = (k−1)e^{βs_ij}/Σ_{p≠i}e^{βs_ip}."""
    s = v @ t.T / temperature
    k = s.shape[0]

    def direction(m):
        total = 0.0
        for i in range(k):
            others = [j for j in range(k) if j != i]
            z = sum(np.exp(beta * m[i, p]) for p in others)
            neg = sum((k - 1) * np.exp(beta * m[i, j]) / z * np.exp(m[i, j]) for j in others)
            total -= np.log(np.exp(m[i, i]) / (alpha * np.exp(m[i, i]) + neg))
        return total / k

    return (direction(s) + direction(s.T)) / 2


@pytest.mark.parametrize(
    "alpha,beta", [(1.0, 0.0), (1.0, 0.25), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
)
def test_hn_nce_matches_direct_formula(alpha, beta):
    rng = np.random.default_rng(0)
    v, t = _normalised(rng, 12, 8), _normalised(rng, 12, 8)
    got = losses.hn_nce(
        jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), 0.1, alpha=alpha, beta=beta
    )
    np.testing.assert_allclose(got, numpy_hn_nce(v, t, 0.1, alpha, beta), rtol=1e-5)


def test_hn_nce_alpha1_beta0_is_itc_in_value_and_gradient():
    rng = np.random.default_rng(1)
    v, t = (jnp.asarray(_normalised(rng, 16, 8), jnp.float32) for _ in range(2))
    grad = jax.value_and_grad
    hn_val, hn_g = grad(
        lambda a, b: losses.hn_nce(a, b, 0.07, alpha=1.0, beta=0.0), argnums=(0, 1)
    )(v, t)
    itc_val, itc_g = grad(lambda a, b: losses.itc(a, b, 0.07), argnums=(0, 1))(v, t)
    np.testing.assert_allclose(hn_val, itc_val, rtol=1e-6)
    for a, b in zip(hn_g, itc_g):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_hn_nce_finite_at_extreme_logits():
    rng = np.random.default_rng(2)
    v = jnp.asarray(_normalised(rng, 16, 8), jnp.float32)
    t = v.at[1:].set(v[:-1])  # near-duplicate columns: |s| up to 1/τ = 1000
    for temperature, beta in [(0.01, 0.5), (0.001, 1.0), (0.001, 4.0)]:
        val, grads = jax.value_and_grad(
            lambda a, b, tau=temperature, bb=beta: losses.hn_nce(a, b, tau, beta=bb),
            argnums=(0, 1),
        )(v, t)
        assert np.isfinite(val)
        assert all(np.isfinite(g).all() for g in grads)


def test_hn_nce_upweights_hard_negatives():
    """β > 0 makes the loss larger whenever negatives are similar (their weights exceed 1)."""
    rng = np.random.default_rng(3)
    v, t = (jnp.asarray(_normalised(rng, 16, 8), jnp.float32) for _ in range(2))
    values = [float(losses.hn_nce(v, t, 0.1, beta=b)) for b in (0.0, 0.5, 1.0)]
    assert values[0] < values[1] < values[2]


def test_hn_nce_stop_grad_weights_changes_gradient_not_value():
    rng = np.random.default_rng(4)
    v, t = (jnp.asarray(_normalised(rng, 16, 8), jnp.float32) for _ in range(2))

    def run(stop):
        return jax.value_and_grad(
            lambda a: losses.hn_nce(a, t, 0.1, beta=1.0, stop_grad_weights=stop)
        )(v)

    (val, g), (val_sg, g_sg) = run(False), run(True)
    np.testing.assert_allclose(val, val_sg, rtol=1e-6)
    assert not np.allclose(g, g_sg, atol=1e-4)


@pytest.mark.parametrize("mesh_axes", [(("data", 8),), (("data", 4), ("fsdp", 2))])
def test_hn_nce_global_over_mesh_equals_one_device(mesh_axes):
    rng = np.random.default_rng(5)
    v, t = (jnp.asarray(_normalised(rng, 32, 8), jnp.float32) for _ in range(2))
    temperature = jnp.float32(0.05)
    fn = jax.jit(
        jax.value_and_grad(
            lambda a, b, tau: losses.hn_nce(a, b, tau, alpha=0.8, beta=0.5), argnums=(0, 1, 2)
        )
    )
    ref_val, ref_grads = fn(v, t, temperature)
    with jax.set_mesh(make_mesh(mesh_axes)):
        val, grads = fn(v, t, temperature)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-6, rtol=1e-5)


def test_soft_label_kl_matches_numpy_and_is_zero_at_the_teacher():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    p = np.exp(rng.normal(size=(5, 7)))
    p[0, :3] = 0.0  # a teacher may give exact zeros
    p /= p.sum(-1, keepdims=True)
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.mean(np.nansum(np.where(p > 0, p * np.log(p / q), 0.0), -1))
    got = losses.soft_label_kl(jnp.asarray(p), jnp.asarray(logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert abs(float(losses.soft_label_kl(jnp.asarray(q), jnp.asarray(logits)))) < 1e-6


def _toy_problem(seed=0, classes=5, dim=16, per_class=40, prior_noise=1.5):
    """Separable clusters; a zero-shot prior that points roughly (not exactly) at them."""
    rng = np.random.default_rng(seed)
    centres = _normalised(rng, classes, dim)

    def draw(n):
        y = np.repeat(np.arange(classes), n)
        x = centres[y] + 0.35 * rng.normal(size=(len(y), dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y.astype(np.int32)

    prior = _normalised(rng, classes, dim) * prior_noise + centres
    prompts = prior[:, None, :] / np.linalg.norm(prior, axis=-1, keepdims=True)[:, None, :]
    w0 = fewshot.zero_shot_classifier(prompts, logit_scale=10.0)
    return draw(per_class), draw(per_class), draw(per_class), w0


def test_fit_probe_stays_inside_its_norm_balls():
    (x, y), _, _, w0 = _toy_problem()
    for radius, bias_radius in [(0.5, 0.2), (2.0, 0.0), (0.0, 1.0)]:
        w, b = fewshot.fit_probe(
            jnp.asarray(x), jnp.asarray(y), jnp.asarray(w0), radius=radius, bias_radius=bias_radius
        )
        assert float(jnp.linalg.norm(w)) <= radius * (1 + 1e-5) + 1e-7
        assert float(jnp.linalg.norm(b)) <= bias_radius * (1 + 1e-5) + 1e-7


def test_fewshot_probe_from_prior_beats_zero_shot_on_a_separable_toy():
    train, val, test, w0 = _toy_problem()
    table = fewshot.few_shot_table(train, val, test, w0, ks=(1, 4), seeds=(0, 1))
    assert table["zero_shot"] < 70.0  # the prior is imperfect ...
    assert table["k"]["4"]["prior"] > table["zero_shot"] + 5  # ... and a few shots fix it
    assert table["k"]["1"]["prior"] >= table["zero_shot"]
    assert "radius" in table["k"]["1"]["prior_choice"][0]
