"""Shared Transformer building blocks with logically named parameters.

Every parameter is boxed by ``nn.with_logical_partitioning`` so a rule table elsewhere can map
the logical names below onto mesh axes; model code never names mesh axes itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

Dtype = Any
Initializer = Callable[..., jax.Array]

# Logical axis names a parameter may carry (None means "never sharded").
PARAM_AXES = frozenset(
    {"embed", "mlp", "heads", "head_dim", "vocab", "patch", "pos", "proj", "classes", "norm"}
)
# Logical names of the residual stream between blocks.
ACTIVATION_AXES = ("batch", "length", "act_embed")

# BERT and timm both initialise linear layers and embeddings with std 0.02 (`model.init_std`
# rescales them afterwards, see `vlp.scale_initial_weights`).
INIT_STD = 0.02
DEFAULT_INIT: Initializer = nn.initializers.normal(stddev=INIT_STD)


def boxed(init: Initializer, names: Sequence[str | None]) -> Initializer:
    """Wrap an initializer so its output carries logical axis names."""
    return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jax.Array) -> jax.Array:
    """Annotate the residual stream [B, L, D] (a no-op without a mesh)."""
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Initializer = DEFAULT_INIT,
    use_bias: bool = True,
    name: str | None = None,
) -> nn.Dense:
    """``nn.Dense`` whose kernel is named ``axes`` and whose bias is named ``axes[1]``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=boxed(kernel_init, axes),
        bias_init=boxed(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


def layer_norm(
    epsilon: float,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.LayerNorm:
    """LayerNorm with float32 statistics and output cast to ``dtype``."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        # The two-pass variance keeps checkpoint parity at BERT's eps of 1e-12.
        use_fast_variance=False,
        force_float32_reductions=True,
        scale_init=boxed(nn.initializers.ones, ("norm",)),
        bias_init=boxed(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def padding_to_attention_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """Text padding mask [B, L] (1 = token) -> boolean key mask [B, 1, 1, L]."""
    if attention_mask is None:
        return None
    return (attention_mask > 0)[:, None, None, :]


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """Float32 L2 normalisation (matches ``F.normalize`` up to eps placement)."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


# nn.DenseGeneral initialises a flattened 2D kernel and unboxes it before reshaping, which
# applies a 3-name sharding constraint to a 2D array and fails under a mesh; hence these two.
class HeadsProjection(nn.Module):
    """[..., D] -> [..., heads, head_dim]; kernel [embed, heads, head_dim]."""

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.num_heads, self.head_dim)
        kernel = self.param(
            "kernel",
            boxed(self.kernel_init, ("embed", "heads", "head_dim")),
            (x.shape[-1], *shape),
            self.param_dtype,
        )
        bias = self.param(
            "bias", boxed(nn.initializers.zeros, ("heads", "head_dim")), shape, self.param_dtype
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("...d,dhk->...hk", x, kernel) + bias


class HeadsOutput(nn.Module):
    """[..., heads, head_dim] -> [..., D]; kernel [heads, head_dim, embed], bias [embed]."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            boxed(self.kernel_init, ("heads", "head_dim", "embed")),
            (*x.shape[-2:], self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias", boxed(nn.initializers.zeros, ("embed",)), (self.features,), self.param_dtype
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("...hk,hkd->...d", x, kernel) + bias


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (HF/timm layout).

    q/k/v kernels are [embed, heads, head_dim] with biases [heads, head_dim]; the output kernel is
    [heads, head_dim, embed]. The key/value input width may differ from the query width (ALBEF
    cross-attention reads ViT tokens), it is inferred from ``inputs_kv``.
    """

    num_heads: int
    out_features: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        mask: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        if self.out_features % self.num_heads:
            raise ValueError(
                f"width {self.out_features} is not divisible by num_heads {self.num_heads}"
            )
        head_dim = self.out_features // self.num_heads

        def in_proj(name: str) -> HeadsProjection:
            return HeadsProjection(
                self.num_heads,
                head_dim,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                name=name,
            )

        q = in_proj("query")(inputs_q)
        k = in_proj("key")(inputs_kv)
        v = in_proj("value")(inputs_kv)

        if train and self.dropout > 0.0:
            # jax.nn.dot_product_attention has no probability dropout, which BERT trains with.
            out = self._attention_with_dropout(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)

        return HeadsOutput(
            self.out_features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="out",
        )(out)

    def _attention_with_dropout(
        self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None
    ) -> jax.Array:
        scale = q.shape[-1] ** -0.5
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits * scale
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = nn.Dropout(self.dropout)(probs, deterministic=False)
        return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU (HF "quick_gelu")."""
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
    """erf GELU, as in timm and HF "gelu"."""
    return nn.gelu(x, approximate=False)


# Config value (`model.{image,text}.act`, named as in HF's `hidden_act`) -> activation.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": exact_gelu,
    "quick_gelu": quick_gelu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Mlp(nn.Module):
    """Two-layer feed-forward block; exact (erf) GELU by default, as in timm and HF "gelu"."""

    hidden_dim: int
    dropout: float = 0.0
    act: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        width = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        h = dense(self.hidden_dim, ("embed", "mlp"), name="fc1", **kw)(x)
        h = activation(self.act)(h)
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        return dense(width, ("mlp", "embed"), name="fc2", **kw)(h)
