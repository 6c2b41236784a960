"""Word-order negatives: two of a caption's words exchanged where the MLM head likes it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax import word_swap

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square"]
WORDS += ["left", "of", "green", "##s", "dot"]
ID = {w: i for i, w in enumerate(WORDS)}
SPECIAL = (0, 1, 2, 3, 4)
STOP = (ID["a"], ID["of"])
PIECES = (ID["##s"],)


def _ids(*captions: str, length: int = 12) -> np.ndarray:
    rows = [[ID["[CLS]"], *(ID[w] for w in c.split()), ID["[SEP]"]] for c in captions]
    return np.array([r + [0] * (length - len(r)) for r in rows], np.int32)


def _swap(ids, logits, selected, *, key=0, top_k=5):
    neg, valid = word_swap.swap_negative_texts(
        jax.random.key(key),
        jnp.asarray(logits),
        jnp.asarray(ids),
        jnp.asarray(ids > 0, jnp.int32),
        jnp.asarray(selected, jnp.float32),
        special_ids=SPECIAL,
        excluded_ids=STOP,
        continuation_ids=PIECES,
        top_k=top_k,
    )
    return np.asarray(neg), np.asarray(valid)


def test_masked_colour_is_swapped_with_the_other_colour_of_the_caption():
    ids = _ids("a red circle left of a blue square")
    logits = np.zeros((1, ids.shape[1], len(WORDS)), np.float32)
    logits[0, 2, ID["blue"]] = 8.0  # at the masked "red", the head wants "blue"
    selected = np.zeros(ids.shape)
    selected[0, 2] = 1
    neg, valid = _swap(ids, logits, selected, top_k=1)
    np.testing.assert_array_equal(neg, _ids("a blue circle left of a red square"))
    np.testing.assert_array_equal(valid, [1.0])


def test_no_plausible_pair_gives_no_negative():
    ids = _ids(
        "a red circle left of a red square",  # the head's best rivals of "red" are not here
        "a green dot",  # "dot" is a rival of "green", but not among the head's best two
        "a blue circle ##s left of a green square",  # "circle" "##s" make one word
    )
    logits = np.zeros((3, ids.shape[1], len(WORDS)), np.float32)
    logits[:, :, ID["a"]] = 9.0
    logits[:, :, ID["blue"]] = 8.0
    logits[0, 2, ID["green"]] = 7.0
    logits[1, 2, ID["dot"]] = 7.0
    logits[2, 3, ID["square"]] = 10.0
    selected = np.zeros(ids.shape)
    selected[0, 2] = selected[1, 2] = selected[2, 3] = 1
    # top_k=2: the head's best rivals are "a" (a stop word) and "blue".
    neg, valid = _swap(ids, logits, selected, top_k=2)
    np.testing.assert_array_equal(neg, ids)
    np.testing.assert_array_equal(valid, [0.0, 0.0, 0.0])


def test_random_negatives_exchange_two_distinct_plausible_words():
    rng = np.random.default_rng(0)
    content = [ID[w] for w in ("red", "blue", "circle", "square", "left", "green", "dot")]
    pool = np.array(content + list(STOP) + list(PIECES))
    ids = np.zeros((64, 12), np.int32)
    ids[:, 0] = ID["[CLS]"]
    lengths = rng.integers(3, 10, 64)
    for b, n in enumerate(lengths):
        ids[b, 1 : n + 1] = rng.choice(pool, n)
        ids[b, n + 1] = ID["[SEP]"]
    logits = rng.normal(size=(*ids.shape, len(WORDS))).astype(np.float32)
    selected = (rng.random(ids.shape) < 0.4) & (ids > 4)
    top_k = 3
    neg, valid = _swap(ids, logits, selected, top_k=top_k)

    changed = neg != ids
    assert set(changed.sum(1)) <= {0, 2}
    np.testing.assert_array_equal(valid, (changed.sum(1) == 2).astype(np.float32))
    assert 0.2 < valid.mean() < 1.0
    np.testing.assert_array_equal(np.sort(neg, 1), np.sort(ids, 1))  # a permutation
    piece = np.isin(ids, PIECES)
    before_piece = np.pad(piece[:, 1:], ((0, 0), (0, 1)))
    for b in np.flatnonzero(valid):
        i, j = np.flatnonzero(changed[b])
        assert ids[b, i] != ids[b, j]
        for p in (i, j):
            assert ids[b, p] in content and not piece[b, p] and not before_piece[b, p]
        rivals = logits[b].copy()
        rivals[np.arange(12), ids[b]] = -np.inf
        rivals[:, list(SPECIAL)] = -np.inf
        kth = np.sort(rivals, -1)[:, -top_k]
        # At a masked one of the two positions, the word moved in is among the head's best.
        assert any(selected[b, p] and logits[b, p, neg[b, p]] >= kth[p] for p in (i, j))


def test_swap_needs_the_mlm_pass_and_no_momentum_itc():
    from tests.helpers import load_config
    from vlp_jax import config_lib

    config = load_config("albef", "tiny")  # momentum model on
    config.itm.swap.update(enabled=True, itc=True)
    with pytest.raises(ValueError, match="momentum.enabled=True"):
        config_lib.validate(config)
    config.momentum.enabled = False
    config_lib.validate(config)
    config.loss_weights.mlm = 0.0
    with pytest.raises(ValueError, match="loss_weights.mlm=0"):
        config_lib.validate(config)


def test_albef_objective_adds_word_order_negatives():
    from tests.helpers import load_config
    from vlp_jax import objectives, optim, train
    from vlp_jax.data.synthetic import synthetic_batch
    from vlp_jax.data.tokenizer import load_tokenizer
    from vlp_jax.models import build_model

    config = load_config("albef", "tiny")
    config.itm.swap.update(enabled=True, itc=True, top_k=config.model.text.vocab_size)
    config.momentum.enabled = False
    config.mlm.mask_prob = 0.5
    tokens = train.token_info(load_tokenizer(config.data.tokenizer), config.itm.swap.stop_words)
    assert len(tokens.stop_word_ids) == len(word_swap.DEFAULT_STOP_WORDS) - 1  # no "are"
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
    params = train.nn.unbox(train.init_state_fn(model, tx, config)(jax.random.key(0))["params"])
    batch = synthetic_batch(config, tokens.special_ids, tokens.vocab_size, np.random.default_rng(0))
    objective = jax.jit(objectives.make_objective(model, config, tokens))
    loss, metrics = objective(params, batch, jax.random.key(1))
    assert np.isfinite(loss)
    # Synthetic captions are random ids, a few of them stop words or pieces: with half of them
    # masked and every rival allowed, most get a swapped copy.
    assert 0.5 < float(metrics["train/itm_swap_valid"]) <= 1.0
    assert 0.0 <= float(metrics["train/itm_swap_acc"]) <= 1.0
    assert {"train/itm", "train/itc", "train/mlm"} <= set(metrics)


def test_itc_with_text_negatives_matches_numpy_and_the_mesh():
    from tests.test_losses import _log_softmax, _normalised, numpy_itc
    from vlp_jax import losses
    from vlp_jax.sharding import make_mesh

    rng = np.random.default_rng(3)
    v, t, t_neg = (_normalised(rng, 16, 8) for _ in range(3))
    valid = (rng.random(16) < 0.6).astype(np.float32)
    s = np.concatenate([v @ t.T, (v @ t_neg.T)[:, valid > 0]], axis=1) / 0.1
    want = -np.mean(np.diag(_log_softmax(s, 1))) - np.mean(np.diag(_log_softmax(v @ t.T / 0.1, 0)))
    fn = jax.jit(jax.value_and_grad(losses.itc_with_text_negatives, argnums=(0, 1, 2, 4)))
    val, grads = fn(v, t, t_neg, valid, jnp.float32(0.1))
    np.testing.assert_allclose(val, want / 2, rtol=1e-5)
    # No usable negative: plain ITC.
    np.testing.assert_allclose(
        losses.itc_with_text_negatives(v, t, t_neg, np.zeros(16, np.float32), 0.1),
        numpy_itc(v, t, 0.1),
        rtol=1e-5,
    )
    with jax.set_mesh(make_mesh((("data", 4), ("fsdp", 2)))):
        mesh_val, mesh_grads = fn(v, t, t_neg, valid, jnp.float32(0.1))
    np.testing.assert_allclose(mesh_val, val, rtol=1e-6)
    for g, r in zip(mesh_grads, grads):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)
