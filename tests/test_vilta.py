"""ViLTA's synthesised ITM negatives: only masked positions change, never to the original."""

import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax import losses, vilta

SPECIAL = (0, 1, 2, 3)


def _case(rng, b=16, length=10, vocab=30):
    ids = rng.integers(4, vocab, (b, length)).astype(np.int32)
    selected = (rng.random((b, length)) < 0.3).astype(np.float32)
    selected[0] = 0.0  # a row with nothing masked gives no negative
    logits = rng.normal(size=(b, length, vocab)).astype(np.float32)
    return ids, selected, logits


def test_synthesised_text_changes_exactly_the_masked_tokens():
    ids, selected, logits = _case(np.random.default_rng(0))
    # The teacher is sure of the original word; it must still never be proposed.
    logits = logits + 50.0 * jax.nn.one_hot(ids, logits.shape[-1])
    neg, valid = vilta.synthesize_negative_texts(
        jax.random.key(0), jnp.asarray(logits), jnp.asarray(ids), selected, special_ids=SPECIAL
    )
    neg = np.asarray(neg)
    masked = selected > 0
    assert np.all(neg[masked] != ids[masked])
    np.testing.assert_array_equal(neg[~masked], ids[~masked])
    assert not np.isin(neg[masked], SPECIAL).any()
    np.testing.assert_array_equal(valid, masked.any(axis=1).astype(np.float32))


def test_top_k_keeps_proposals_among_the_teachers_best():
    ids, selected, logits = _case(np.random.default_rng(1))
    neg, _ = vilta.synthesize_negative_texts(
        jax.random.key(1), logits, ids, selected, special_ids=SPECIAL, top_k=2
    )
    z = np.where(np.eye(logits.shape[-1], dtype=bool)[ids], -np.inf, logits)
    z[..., list(SPECIAL)] = -np.inf
    top2 = np.argsort(-z, axis=-1)[..., :2]
    masked = selected > 0
    assert np.all((top2 == np.asarray(neg)[..., None]).any(-1)[masked])


def test_itm_loss_ignores_negatives_with_zero_weight():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(size=(4, 2)), rng.normal(size=(8, 2))
    weights = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    np.testing.assert_allclose(
        losses.itm_loss(pos, neg, weights), losses.itm_loss(pos, neg[:6]), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.itm_accuracy(pos, neg, weights), losses.itm_accuracy(pos, neg[:6]), rtol=1e-6
    )


def test_albef_objective_adds_synthesised_negatives_with_either_teacher():
    from tests.helpers import load_config
    from vlp_jax import objectives, optim, train
    from vlp_jax.data.synthetic import synthetic_batch
    from vlp_jax.data.tokenizer import load_tokenizer
    from vlp_jax.models import build_model

    for teacher in vilta.TEACHERS:
        config = load_config("albef", "tiny")
        config.itm.synth.update(enabled=True, teacher=teacher, top_k=3)
        config.momentum.enabled = False  # ViLTA's negatives alone
        tokens = train.token_info(load_tokenizer(config.data.tokenizer))
        model = build_model(config.model)
        tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
        params = jax.eval_shape(train.init_state_fn(model, tx, config), jax.random.key(0))
        batch = synthetic_batch(
            config, tokens.special_ids, tokens.vocab_size, np.random.default_rng(0)
        )
        objective = objectives.make_objective(model, config, tokens)
        loss, metrics = jax.eval_shape(
            objective, train.nn.unbox(params["params"]), batch, jax.random.key(1)
        )
        assert loss.shape == ()
        assert {"train/itm", "train/itm_synth_valid", "train/mlm"} <= set(metrics)


def test_flip_negatives_replace_mined_images_only_for_relational_captions():
    from tests.helpers import load_config
    from vlp_jax import objectives, optim, train
    from vlp_jax.data.synthetic import synthetic_batch
    from vlp_jax.data.tokenizer import load_tokenizer
    from vlp_jax.models import build_model

    config = load_config("albef", "tiny")
    config.itm.flip_negatives = 1.0
    config.momentum.enabled = False
    tokens = train.token_info(load_tokenizer(config.data.tokenizer))
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
    params = train.nn.unbox(train.init_state_fn(model, tx, config)(jax.random.key(0))["params"])
    batch = synthetic_batch(config, tokens.special_ids, tokens.vocab_size, np.random.default_rng(0))
    objective = jax.jit(objectives.make_objective(model, config, tokens))
    loss, metrics = objective(params, batch, jax.random.key(1))
    assert np.isfinite(loss)
    np.testing.assert_allclose(metrics["train/itm_flip_negatives"], np.mean(batch["flip_axis"] > 0))
    batch["flip_axis"][:] = 0
    _, metrics = objective(params, batch, jax.random.key(1))
    assert float(metrics["train/itm_flip_negatives"]) == 0.0
