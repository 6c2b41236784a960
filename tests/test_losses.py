"""Objectives against direct numpy formulas, and global (sharded) against single-device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from vlp_jax import losses
from vlp_jax.sharding import make_mesh


def _normalised(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def numpy_itc(v, t, temp):
    s = v @ t.T / temp
    i2t = -np.mean(np.diag(_log_softmax(s, 1)))
    t2i = -np.mean(np.diag(_log_softmax(s, 0)))
    return (i2t + t2i) / 2


MESHES = [(("data", 8),), (("data", 4), ("fsdp", 2)), (("data", 2), ("fsdp", 2), ("tensor", 2))]


def test_itc_matches_numpy_formula():
    rng = np.random.default_rng(0)
    v, t = _normalised(rng, 16, 8), _normalised(rng, 16, 8)
    got = losses.itc(jnp.asarray(v), jnp.asarray(t), 0.07)
    np.testing.assert_allclose(got, numpy_itc(v, t, 0.07), rtol=1e-5)


@pytest.mark.parametrize("mesh_axes", MESHES)
def test_itc_global_over_mesh_equals_one_device(mesh_axes):
    rng = np.random.default_rng(1)
    v, t = jnp.asarray(_normalised(rng, 32, 8)), jnp.asarray(_normalised(rng, 32, 8))
    temp = jnp.float32(0.1)
    grad_fn = jax.jit(jax.value_and_grad(losses.itc, argnums=(0, 1, 2)))
    ref_val, ref_grads = grad_fn(v, t, temp)
    mesh = make_mesh(mesh_axes)
    with jax.set_mesh(mesh):
        val, grads = grad_fn(v, t, temp)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    for g, r in zip(grads, ref_grads):  # float32 round-off: the temperature's gradient is ≈ -58
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def test_make_mesh_uses_auto_axes_and_fills_minus_one():
    mesh = make_mesh((("data", -1), ("fsdp", 2)))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="config.mesh: unknown axis 'model'"):
        make_mesh((("model", 8),))
    with pytest.raises(ValueError, match="need 16 devices"):
        make_mesh((("data", 16),))


def _mining_inputs(seed=2, n=32):
    rng = np.random.default_rng(seed)
    v, t = _normalised(rng, n, 8), _normalised(rng, n, 8)
    # Pairs share images in runs of 2 (several captions per image), plus one image with 4.
    ids = np.arange(n) // 2
    ids[:4] = 0
    return jnp.asarray(v), jnp.asarray(t), jnp.asarray(ids, jnp.int32)


@pytest.mark.parametrize("mode", ["sample", "argmax"])
def test_itm_negatives_never_positive_or_same_image(mode):
    v, t, ids = _mining_inputs()
    mine = jax.jit(lambda k: losses.itm_negatives(k, v, t, ids, 0.07, mode=mode))
    for seed in range(20):
        neg_t, neg_i = mine(jax.random.key(seed))
        ids_np = np.asarray(ids)
        assert not np.any(ids_np[np.asarray(neg_t)] == ids_np)
        assert not np.any(ids_np[np.asarray(neg_i)] == ids_np)


def test_itm_argmax_is_hardest_allowed_column():
    v, t, ids = _mining_inputs()
    neg_t, neg_i = losses.itm_negatives(jax.random.key(0), v, t, ids, 0.07, mode="argmax")
    sims = np.asarray(v) @ np.asarray(t).T
    allowed = np.asarray(ids)[:, None] != np.asarray(ids)[None, :]
    np.testing.assert_array_equal(neg_t, np.where(allowed, sims, -np.inf).argmax(1))
    np.testing.assert_array_equal(neg_i, np.where(allowed, sims.T, -np.inf).argmax(1))


def test_itm_sampling_follows_softmax_weights():
    # Row 0 has one near-duplicate negative: it must be drawn most of the time at low temperature.
    n = 8
    v = np.eye(n, 4, dtype=np.float32)[np.arange(n) % 4]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = jnp.arange(n)
    counts = np.zeros(n)
    for seed in range(50):
        neg_t, _ = losses.itm_negatives(jax.random.key(seed), v, v, ids, 0.05)
        counts[int(neg_t[0])] += 1
    assert counts[4] >= 45  # row 4 holds the same vector as row 0


@pytest.mark.parametrize("mesh_axes", MESHES)
def test_itm_negatives_mesh_independent(mesh_axes):
    v, t, ids = _mining_inputs()
    mine = jax.jit(lambda k: losses.itm_negatives(k, v, t, ids, 0.07))
    ref = mine(jax.random.key(3))
    with jax.set_mesh(make_mesh(mesh_axes)):
        got = mine(jax.random.key(3))
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


def test_itm_negatives_when_whole_batch_is_one_image():
    v, t, _ = _mining_inputs(n=8)
    neg_t, neg_i = losses.itm_negatives(jax.random.key(0), v, t, jnp.zeros(8, jnp.int32), 0.07)
    np.testing.assert_array_equal(neg_t, (np.arange(8) + 1) % 8)
    np.testing.assert_array_equal(neg_i, (np.arange(8) + 1) % 8)


def test_itm_loss_and_mlm_loss_match_numpy():
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(size=(4, 2)), rng.normal(size=(8, 2))
    logits = np.concatenate([pos, neg])
    labels = np.array([1] * 4 + [0] * 8)
    expected = -np.mean(_log_softmax(logits, 1)[np.arange(12), labels])
    np.testing.assert_allclose(
        losses.itm_loss(jnp.asarray(pos), jnp.asarray(neg)), expected, rtol=1e-5
    )

    lg = rng.normal(size=(2, 5, 7)).astype(np.float32)
    lab = rng.integers(0, 7, size=(2, 5))
    w = (rng.uniform(size=(2, 5)) < 0.5).astype(np.float32)
    ce = -np.take_along_axis(_log_softmax(lg, -1), lab[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.mlm_loss(lg, lab, w), (ce * w).sum() / w.sum(), rtol=1e-5)


def test_mask_tokens_statistics_and_exclusions():
    pad, cls, sep, mask_id, vocab = 0, 2, 3, 4, 100
    n, length = 400, 32
    rng = np.random.default_rng(5)
    ids = rng.integers(5, vocab, size=(n, length)).astype(np.int32)
    lengths = rng.integers(4, length, size=n)
    attn = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = cls
    ids[np.arange(n), lengths - 1] = sep
    ids[attn == 0] = pad
    corrupted, selected = losses.mask_tokens(
        jax.random.key(0),
        jnp.asarray(ids),
        jnp.asarray(attn),
        mask_prob=0.5,
        mask_id=mask_id,
        vocab_size=vocab,
        special_ids=(pad, 1, cls, sep, mask_id),
    )
    corrupted, selected = np.asarray(corrupted), np.asarray(selected).astype(bool)
    special = (ids == cls) | (ids == sep) | (attn == 0)
    assert not selected[special].any()
    np.testing.assert_array_equal(corrupted[~selected], ids[~selected])
    rate = selected.sum() / (~special).sum()
    assert abs(rate - 0.5) < 0.02
    as_mask = (corrupted[selected] == mask_id).mean()
    unchanged = (corrupted[selected] == ids[selected]).mean()
    assert abs(as_mask - 0.8) < 0.02
    # ≈ 10% kept plus the ≈ 1% of random draws that hit the same id.
    assert abs(unchanged - 0.1) < 0.02


def numpy_itc_consistency(v, t, temp):
    s = v @ t.T / temp
    p_i2t, p_t2i = np.exp(_log_softmax(s, 1)), np.exp(_log_softmax(s.T, 1))
    ce_i2t = -(p_t2i * _log_softmax(s, 1)).sum(1)  # row b of s against softmax of column b
    ce_t2i = -(p_i2t * _log_softmax(s.T, 1)).sum(1)
    return (ce_i2t.mean() + ce_t2i.mean()) / 2


def test_itc_consistency_matches_numpy_and_is_global_over_a_mesh():
    rng = np.random.default_rng(4)
    v, t = _normalised(rng, 16, 8), _normalised(rng, 16, 8)
    got = losses.itc_consistency(jnp.asarray(v), jnp.asarray(t), 0.1)
    np.testing.assert_allclose(got, numpy_itc_consistency(v, t, 0.1), rtol=1e-5)
    grad_fn = jax.jit(jax.value_and_grad(losses.itc_consistency, argnums=(0, 1)))
    ref_val, ref_grads = grad_fn(v, t, 0.1)
    with jax.set_mesh(make_mesh((("data", 4), ("fsdp", 2)))):
        val, grads = grad_fn(v, t, 0.1)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-6)
    # A symmetric similarity makes p(text | image b) = p(image | text b): the loss is its entropy.
    sym = losses.itc_consistency(jnp.asarray(v), jnp.asarray(v), 0.1)
    s = v @ v.T / 0.1
    entropy = -(np.exp(_log_softmax(s, 1)) * _log_softmax(s, 1)).sum(1).mean()
    np.testing.assert_allclose(sym, entropy, rtol=1e-5)


def test_hardest_negative_similarity_skips_pairs_of_the_same_image():
    rng = np.random.default_rng(5)
    v, t = _normalised(rng, 6, 4), _normalised(rng, 6, 4)
    ids = np.array([0, 0, 1, 2, 3, 4])
    s = v @ t.T
    s[ids[:, None] == ids[None, :]] = -np.inf
    got = losses.hardest_negative_similarity(jnp.asarray(v), jnp.asarray(t), jnp.asarray(ids))
    np.testing.assert_allclose(got, s.max(axis=1).mean(), rtol=1e-6)


def test_positive_ratio_cap_never_mines_a_candidate_as_similar_as_the_positive():
    rng = np.random.default_rng(7)
    v = _normalised(rng, 16, 8)
    t = _normalised(rng, 16, 8)
    t[5] = v[3]  # text 5 describes image 3 better than image 3's own caption
    ids = np.arange(16)
    v, t = jnp.asarray(v), jnp.asarray(t)
    plain, _ = losses.itm_negatives(jax.random.key(0), v, t, ids, 0.07, mode="argmax")
    capped, _ = losses.itm_negatives(
        jax.random.key(0), v, t, ids, 0.07, mode="argmax", positive_ratio_cap=0.95
    )
    assert int(plain[3]) == 5 and int(capped[3]) != 5
    sims = np.asarray(v @ t.T)
    positive = np.diag(sims)
    for row, col in enumerate(np.asarray(capped)):
        if (sims[row] < 0.95 * positive[row]).sum() > 1:  # an admissible column exists
            assert sims[row, col] < 0.95 * positive[row]
