"""Word-order hard negatives: the caption itself with two of its words swapped.

Contrastive image-text models tend to learn bags of words (Yuksekgonul et al., ICLR 2023, "When
and why vision-language models behave like bags-of-words"): "a red circle left of a blue square"
and "a blue circle left of a red square" hold the same words, and random batches almost never
put the two side by side, so nothing asks the model to tell them apart. NegCLIP's remedy is to
train against the caption with some of its words swapped. NegCLIP picks the words with a
part-of-speech tagger; here the model's own MLM head picks them, so no tagger or word list is
needed beyond a few stop words:

For a caption y with MLM logits z_i at its masked positions i ∈ M (the MLM objective's own pass,
gradient stopped), and swappable positions W (real tokens that are not special, stop words or
pieces of a longer word),

    (i*, j*) ~ softmax_{i,j} ( z_i[y_j] / τ ),   i ∈ M ∩ W,  j ∈ W,  y_j ≠ y_i,
                                                 y_j among the top-k words of z_i other than y_i,

and the negative T⁻ is y with y_i* and y_j* exchanged: a word the language model would put at
i*, taken from elsewhere in the same caption ("red" ↔ "blue", "circle" ↔ "square"). (I, T⁻) is an
ITM negative (label 0), added next to ALBEF's mined in-batch negatives. A caption without such a
pair (nothing masked, one object, one colour) gives no negative (weight 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Swapping these changes little or nothing of what a caption says ("the dog on a mat").
DEFAULT_STOP_WORDS = ("a", "an", "the", "is", "are", "and", "of", "to", "there", ".", ",")


def swap_negative_texts(
    rng: jax.Array,
    logits: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    selected: jax.Array,
    *,
    special_ids: Sequence[int],
    excluded_ids: Sequence[int] = (),
    continuation_ids: Sequence[int] = (),
    top_k: int = 5,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(negative ids [B, L], validity [B] as 0/1 floats).

    logits [B, L, V]: the MLM pass over the corrupted captions; input_ids, attention_mask [B, L]
    the positive captions; selected [B, L] (> 0) the positions the MLM pass had to predict.
    excluded_ids (stop words) are never swapped, nor is a word split into pieces: a
    continuation piece (continuation_ids, "##s") or the piece before one.
    """
    z = jax.lax.stop_gradient(logits).astype(jnp.float32)
    b, length, vocab = z.shape
    ids = input_ids

    def member(x: jax.Array, table: Sequence[int]) -> jax.Array:
        if not table:
            return jnp.zeros(x.shape, bool)
        return jnp.isin(x, jnp.asarray(list(table), x.dtype))

    swappable = (attention_mask > 0) & ~member(ids, (*special_ids, *excluded_ids))
    piece = member(ids, continuation_ids)
    before_piece = jnp.pad(piece[:, 1:], ((0, 0), (0, 1)))
    swappable &= ~piece & ~before_piece

    # pair_logit[b, i, j] = z[b, i, y_j]: how much the MLM head wants word j at position i.
    pair_logit = jnp.take_along_axis(z, jnp.broadcast_to(ids[:, None, :], (b, length, length)), -1)
    rivals = jnp.where(
        jax.nn.one_hot(ids, vocab, dtype=jnp.bool_) | member(jnp.arange(vocab), special_ids),
        -jnp.inf,
        z,
    )
    kth_best = jax.lax.top_k(rivals, min(top_k, vocab))[0][..., -1]
    allowed = (
        ((selected > 0) & swappable)[:, :, None]
        & swappable[:, None, :]
        & (ids[:, :, None] != ids[:, None, :])
        & (pair_logit >= kth_best[:, :, None])
    )
    score = pair_logit / temperature + jax.random.gumbel(rng, allowed.shape)
    flat = jnp.argmax(jnp.where(allowed, score, -jnp.inf).reshape(b, -1), axis=1)
    i, j = flat // length, flat % length
    y_i = jnp.take_along_axis(ids, i[:, None], 1)
    y_j = jnp.take_along_axis(ids, j[:, None], 1)
    pos = jnp.arange(length)[None]
    swapped = jnp.where(pos == i[:, None], y_j, jnp.where(pos == j[:, None], y_i, ids))
    valid = allowed.reshape(b, -1).any(axis=1)
    return jnp.where(valid[:, None], swapped, ids), valid.astype(jnp.float32)
