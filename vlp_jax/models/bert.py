"""BERT-style post-LN text encoder, ALBEF fusion encoder and tied MLM head.

ALBEF splits one 12-layer BERT into ``txt`` (HF layers [0, text_layers)) and ``fusion``
(HF layers [text_layers, text_layers + fusion_layers), with cross-attention); ``fusion/layers_0``
is HF layer ``text_layers``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models.layers import (
    DEFAULT_INIT,
    Dtype,
    Mlp,
    MultiHeadAttention,
    activation,
    boxed,
    constrain,
    dense,
    layer_norm,
    padding_to_attention_mask,
)

BERT_LN_EPS = 1e-12


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings -> LayerNorm -> dropout."""

    vocab_size: int
    width: int
    max_len: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    ln_eps: float = BERT_LN_EPS

    def setup(self) -> None:
        def embed(num: int, axes: tuple[str | None, str]) -> nn.Embed:
            return nn.Embed(
                num,
                self.width,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                embedding_init=boxed(DEFAULT_INIT, axes),
            )

        self.word_embeddings = embed(self.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(self.max_len, ("pos", "embed"))
        # Two rows only: never worth sharding, hence no logical name on that axis.
        self.token_type_embeddings = embed(self.type_vocab_size, (None, "embed"))
        self.norm = layer_norm(self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        self.drop = nn.Dropout(self.dropout)

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.word_embeddings(input_ids)
        x = x + self.position_embeddings(jnp.arange(length)[None, :])
        x = x + self.token_type_embeddings(token_type_ids)
        x = self.norm(x)
        return constrain(self.drop(x, deterministic=not train))

    def word_table(self) -> jax.Array:
        """The [vocab, width] word table, shared with the MLM decoder."""
        return self.word_embeddings.embedding


class BertLayer(nn.Module):
    """self-attn -> (cross-attn on image tokens) -> FFN; each sub-block residual + post-LN."""

    width: int
    num_heads: int
    mlp_dim: int
    cross_attention: bool = False
    # Optional check on the image-token width; K/V kernels infer it from the input anyway.
    encoder_width: int | None = None
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: str = "gelu"
    ln_eps: float = BERT_LN_EPS

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        encoder_hidden: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """x [B, L, D]; mask boolean [B, 1, 1, L] or None; encoder_hidden [B, M, Dv]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(self.dropout)

        h = MultiHeadAttention(
            self.num_heads, self.width, dropout=self.dropout, name="attention", **kw
        )(x, x, mask, train)
        x = layer_norm(self.ln_eps, name="attention_norm", **kw)(
            x + drop(h, deterministic=not train)
        )

        if self.cross_attention:
            if encoder_hidden is None:
                raise ValueError("a cross-attention layer needs encoder_hidden (image tokens)")
            if self.encoder_width is not None and encoder_hidden.shape[-1] != self.encoder_width:
                raise ValueError(
                    f"image tokens have width {encoder_hidden.shape[-1]}, "
                    f"expected encoder_width {self.encoder_width}"
                )
            # Image tokens are never masked.
            h = MultiHeadAttention(
                self.num_heads, self.width, dropout=self.dropout, name="crossattention", **kw
            )(x, encoder_hidden.astype(self.dtype), None, train)
            x = layer_norm(self.ln_eps, name="crossattention_norm", **kw)(
                x + drop(h, deterministic=not train)
            )

        # HF BERT has no dropout inside the FFN, only on its output.
        h = Mlp(self.mlp_dim, dropout=0.0, act=self.act, name="mlp", **kw)(x, train)
        x = layer_norm(self.ln_eps, name="mlp_norm", **kw)(x + drop(h, deterministic=not train))
        return constrain(x)


def _layer_cls(remat: bool) -> type[BertLayer]:
    # static_argnums counts `self`: (self, x, mask, encoder_hidden, train) -> 4 is `train`.
    return nn.remat(BertLayer, static_argnums=(4,)) if remat else BertLayer


class BertTextEncoder(nn.Module):
    """Text tower: embeddings + ``num_layers`` self-attention layers (ALBEF "text" mode)."""

    vocab_size: int
    width: int
    num_heads: int
    mlp_dim: int
    num_layers: int
    max_len: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: str = "gelu"
    ln_eps: float = BERT_LN_EPS

    def setup(self) -> None:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = BertEmbeddings(
            self.vocab_size,
            self.width,
            self.max_len,
            self.type_vocab_size,
            dropout=self.dropout,
            ln_eps=self.ln_eps,
            **kw,
        )
        layer_cls = _layer_cls(self.remat)
        self.layers = [
            layer_cls(
                self.width,
                self.num_heads,
                self.mlp_dim,
                dropout=self.dropout,
                act=self.act,
                ln_eps=self.ln_eps,
                **kw,
            )
            for _ in range(self.num_layers)
        ]

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, train: bool = False
    ) -> jax.Array:
        """input_ids, attention_mask [B, L] (1 = token) -> hidden [B, L, width]."""
        x = self.embeddings(input_ids, None, train)
        mask = padding_to_attention_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, mask, None, train)
        return x

    def word_table(self) -> jax.Array:
        return self.embeddings.word_table()


class BertFusionEncoder(nn.Module):
    """Fusion tower: ``num_layers`` layers with cross-attention to image tokens."""

    width: int
    num_heads: int
    mlp_dim: int
    num_layers: int
    encoder_width: int | None = None
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: str = "gelu"
    ln_eps: float = BERT_LN_EPS

    def setup(self) -> None:
        layer_cls = _layer_cls(self.remat)
        self.layers = [
            layer_cls(
                self.width,
                self.num_heads,
                self.mlp_dim,
                cross_attention=True,
                encoder_width=self.encoder_width,
                dropout=self.dropout,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                act=self.act,
                ln_eps=self.ln_eps,
            )
            for _ in range(self.num_layers)
        ]

    def __call__(
        self,
        text_hidden: jax.Array,
        attention_mask: jax.Array,
        image_tokens: jax.Array,
        train: bool = False,
    ) -> jax.Array:
        """text_hidden [B, L, D], attention_mask [B, L], image_tokens [B, M, Dv] -> [B, L, D]."""
        x = text_hidden.astype(self.dtype)
        mask = padding_to_attention_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, mask, image_tokens, train)
        return x


class BertMLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the word table, plus a vocab bias."""

    vocab_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: str = "gelu"
    ln_eps: float = BERT_LN_EPS

    @nn.compact
    def __call__(self, hidden: jax.Array, word_table: jax.Array) -> jax.Array:
        """hidden [B, L, D], word_table [V, D] -> float32 logits [B, L, V]."""
        width = hidden.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # Square kernel: Flax forbids a logical name twice in one spec, so the output is unnamed.
        h = dense(width, ("embed", None), name="dense", **kw)(hidden)
        # HF's `transform_act_fn` is the encoder's `hidden_act`.
        h = activation(self.act)(h)
        h = layer_norm(self.ln_eps, name="norm", **kw)(h)
        bias = self.param(
            "bias", boxed(nn.initializers.zeros, ("vocab",)), (self.vocab_size,), self.param_dtype
        )
        logits = jnp.einsum(
            "bld,vd->blv",
            h.astype(self.dtype),
            word_table.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits + bias.astype(jnp.float32)
