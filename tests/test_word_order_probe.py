"""The word-order probe: swap twins hold the same words, so a bag-of-words text embedding cannot
tell them apart, and a position-aware one can."""

import flax.linen as nn
import jax
import numpy as np

from tests.helpers import load_config
from vlp_jax import train
from vlp_jax.data import pipeline
from vlp_jax.data.tokenizer import load_tokenizer
from vlp_jax.models import build_model
from vlp_jax.tools.word_order_probe import swap_twin_separation, twin_separation


def _normalised(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_bag_of_words_gives_no_separation_to_swap_twins_and_positions_do():
    config = load_config("demo")
    config.eval.num_examples = 200
    data = pipeline.eval_arrays(config, load_tokenizer(config.data.tokenizer))
    swap = data["hard_negative_kind"] == "swap"
    assert swap.sum() >= 20
    table = np.random.default_rng(0).normal(size=(config.model.text.vocab_size, 16))

    def bag_of_words(ids, mask):
        return _normalised(np.einsum("bl,bld->bd", mask, table[ids]))

    def positional(ids, mask):
        weights = mask * np.arange(1, ids.shape[1] + 1)
        return _normalised(np.einsum("bl,bld->bd", weights, table[ids]))

    for embed, twin_is_zero in ((bag_of_words, True), (positional, False)):
        result = twin_separation(
            embed(data["input_ids"][swap], data["attention_mask"][swap]),
            embed(data["neg_input_ids"][swap], data["neg_attention_mask"][swap]),
        )
        assert result["pairs"] == swap.sum() and result["other"] > 0.1
        assert (result["twin"] < 1e-6) == twin_is_zero, (embed.__name__, result)


def test_probe_embeds_the_swap_captions_with_the_text_tower():
    config = load_config("albef", "tiny")
    model = build_model(config.model)
    variables = model.init(jax.random.key(0), *train.dummy_inputs(config))
    # Scaled up, so that attention is far from uniform and captions embed far apart.
    params = jax.tree.map(lambda x: 10 * x, nn.unbox(variables["params"]))
    result = swap_twin_separation(model, params, config, batch=8)  # 19 pairs: 3 batches
    data = pipeline.eval_arrays(config, load_tokenizer(config.data.tokenizer))
    swap = data["hard_negative_kind"] == "swap"

    def embed(ids, mask):
        hidden = model.apply({"params": params}, ids, mask, method="encode_text")
        return np.asarray(model.apply({"params": params}, hidden, mask, method="embed_text"))

    direct = twin_separation(
        embed(data["input_ids"][swap], data["attention_mask"][swap]),
        embed(data["neg_input_ids"][swap], data["neg_attention_mask"][swap]),
    )
    assert result["pairs"] == direct["pairs"] == swap.sum() > 8
    np.testing.assert_allclose(
        [result["twin"], result["other"]], [direct["twin"], direct["other"]], rtol=1e-4, atol=1e-6
    )
    assert direct["other"] > 1e-2 and direct["twin"] > 1e-4, direct
