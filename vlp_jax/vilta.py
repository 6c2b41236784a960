"""ViLTA (Wang et al., ICCV 2023): ITM hard negatives synthesised by the language model.

For a positive pair (I, T), mask some tokens of T, let the model's own MLM head propose words for
them, and replace each masked token y_i by a sample

    ỹ_i ~ softmax(z_i / τ) restricted to v ≠ y_i (and to the top-k ids when k > 0),

where z_i are the MLM logits at position i (gradient stopped). The result T⁻ differs from T only
where the language model finds another word plausible ("left" → "right", "red" → "blue"), so
(I, T⁻) is a hard negative for ITM (label 0), added next to ALBEF's mined in-batch negatives.
A row whose masked positions all keep their token (none were masked) gives no negative.

Teachers (`itm.synth_teacher`):
  - "fusion_mlm": the logits of the MLM objective's own pass (text + fusion layers, with the
    image), so synthesis costs nothing beyond encoding T⁻; requires `loss_weights.mlm > 0`.
  - "text_mlm": ViLTA's language-only teacher, the MLM head on the text tower's output without
    the image; one more text-tower pass on the masked caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

TEACHERS = ("fusion_mlm", "text_mlm")


def synthesize_negative_texts(
    rng: jax.Array,
    logits: jax.Array,
    input_ids: jax.Array,
    selected: jax.Array,
    *,
    special_ids: Sequence[int],
    temperature: float = 1.0,
    top_k: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """(negative ids [B, L], validity [B] as 0/1 floats).

    logits [B, L, V] from the teacher; input_ids [B, L] the positive captions; selected [B, L]
    (> 0) marks the positions to replace. Special tokens are never proposed.
    """
    z = jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature
    vocab = z.shape[-1]
    banned = jax.nn.one_hot(input_ids, vocab, dtype=jnp.bool_)
    banned = banned | jnp.isin(jnp.arange(vocab), jnp.asarray(list(special_ids)))[None, None]
    z = jnp.where(banned, -jnp.inf, z)
    if top_k > 0:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    proposal = jax.random.categorical(rng, z, axis=-1).astype(input_ids.dtype)
    replace = selected > 0
    negative = jnp.where(replace, proposal, input_ids)
    valid = jnp.any(replace & (negative != input_ids), axis=1)
    return negative, valid.astype(jnp.float32)
