"""The relation probe masks exactly the relation word of each relational caption."""

import numpy as np

from vlp_jax.data.tokenizer import load_tokenizer
from vlp_jax.tools.relation_probe import mask_relation_words, relation_token_ids


def test_relation_words_are_masked_and_labelled():
    tokenizer = load_tokenizer("shapes")
    captions = [
        "a small red circle to the left of a large blue square",
        "a picture of a small green diamond",
        "there is a yellow square below a white circle",
        "a red triangle above a green circle and also a blue square",
    ]
    ids, _ = tokenizer.encode(captions, 24)
    relation_ids = relation_token_ids(tokenizer)
    assert len(set(relation_ids)) == 4
    masked, rows, positions, truth = mask_relation_words(ids, relation_ids, tokenizer.mask_id)
    np.testing.assert_array_equal(rows, [0, 2, 3])
    np.testing.assert_array_equal(truth, [0, 3, 2])  # left, below, above
    assert all(ids[r, p] == relation_ids[k] for r, p, k in zip(rows, positions, truth))
    assert (masked == tokenizer.mask_id).sum() == 3
    np.testing.assert_array_equal(masked[np.arange(3), positions], tokenizer.mask_id)
    unchanged = np.ones_like(masked, bool)
    unchanged[np.arange(3), positions] = False
    np.testing.assert_array_equal(masked[unchanged], ids[rows][unchanged])
