"""CLIP's text tower: a pre-LN *causal* Transformer with a final LayerNorm.

Pooled at the EOS token, which for right-padded (left-aligned) sequences is the last real
position, ``attention_mask.sum() - 1`` (see ``eos_pool``). The blocks are ``ViTBlock``s with a
causal mask, so the parameter layout matches the image tower's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models.layers import DEFAULT_INIT, Dtype, boxed, constrain, layer_norm
from vlp_jax.models.vit import ViTBlock

CLIP_LN_EPS = 1e-5


def causal_padding_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, L] (1 = token) -> boolean [B, 1, L, L]: query i sees real keys j <= i.

    A padding query still sees the real tokens before it, so no softmax row is empty.
    """
    length = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    return causal[None, None] & (attention_mask > 0)[:, None, None, :]


def eos_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """hidden [B, L, D] -> the state at the last real position [B, D] (CLIP's EOS token)."""
    last = jnp.maximum(jnp.sum(attention_mask > 0, axis=-1) - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class ClipTextEncoder(nn.Module):
    """input_ids, attention_mask [B, L] -> final-normed hidden states [B, L, width]."""

    vocab_size: int
    width: int
    num_heads: int
    mlp_dim: int
    num_layers: int
    max_len: int = 77
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: str = "quick_gelu"
    ln_eps: float = CLIP_LN_EPS

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, train: bool = False
    ) -> jax.Array:
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def embed(num: int, axes: tuple[str, str], name: str) -> nn.Embed:
            return nn.Embed(
                num, self.width, embedding_init=boxed(DEFAULT_INIT, axes), name=name, **kw
            )

        x = embed(self.vocab_size, ("vocab", "embed"), "token_embedding")(input_ids)
        x = x + embed(self.max_len, ("pos", "embed"), "position_embedding")(
            jnp.arange(length)[None, :]
        )
        x = constrain(nn.Dropout(self.dropout)(x, deterministic=not train))
        mask = causal_padding_mask(attention_mask)
        # static_argnums counts `self`, so 2 is `train`.
        block_cls = nn.remat(ViTBlock, static_argnums=(2,)) if self.remat else ViTBlock
        for i in range(self.num_layers):
            x = block_cls(
                self.num_heads,
                self.mlp_dim,
                dropout=self.dropout,
                act=self.act,
                ln_eps=self.ln_eps,
                name=f"layers_{i}",
                **kw,
            )(x, train, mask)
        return layer_norm(self.ln_eps, name="final_norm", **kw)(x)
