"""timm-style Vision Transformer (pre-norm, qkv bias, CLS token, learned positions)."""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.models.layers import (
    DEFAULT_INIT,
    Dtype,
    Mlp,
    MultiHeadAttention,
    boxed,
    constrain,
    dense,
    layer_norm,
)

# Keys a variant overrides in the image config.
VIT_VARIANTS: dict[str, dict] = {
    "mu": dict(width=32, depth=2, num_heads=2, mlp_ratio=4.0, patch_size=8),
    "tiny": dict(width=192, depth=12, num_heads=3, mlp_ratio=4.0, patch_size=16),
    "S/16": dict(width=384, depth=12, num_heads=6, mlp_ratio=4.0, patch_size=16),
    "S/32": dict(width=384, depth=12, num_heads=6, mlp_ratio=4.0, patch_size=32),
    "B/16": dict(width=768, depth=12, num_heads=12, mlp_ratio=4.0, patch_size=16),
    "B/32": dict(width=768, depth=12, num_heads=12, mlp_ratio=4.0, patch_size=32),
    "L/14": dict(width=1024, depth=24, num_heads=16, mlp_ratio=4.0, patch_size=14),
    "L/16": dict(width=1024, depth=24, num_heads=16, mlp_ratio=4.0, patch_size=16),
}

VIT_LN_EPS = 1e-6


class ViTBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    Also CLIP's text block, which passes a causal ``mask`` [B, 1, L, L] (True = attend).
    """

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: str = "gelu"
    ln_eps: float = VIT_LN_EPS

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layer_norm(self.ln_eps, name="norm1", **kw)(x)
        h = MultiHeadAttention(
            self.num_heads, x.shape[-1], dropout=self.dropout, name="attn", **kw
        )(h, h, mask, train)
        x = x + nn.Dropout(self.dropout)(h, deterministic=not train)
        h = layer_norm(self.ln_eps, name="norm2", **kw)(x)
        h = Mlp(self.mlp_dim, dropout=self.dropout, act=self.act, name="mlp", **kw)(h, train)
        x = x + nn.Dropout(self.dropout)(h, deterministic=not train)
        return constrain(x)


class ViT(nn.Module):
    """Images [B, H, W, 3] -> tokens [B, 1+N, width] (CLS first, final LayerNorm on all).

    ``pre_norm`` adds CLIP's LayerNorm (``pre_norm``) between the embeddings and the blocks;
    ``act`` and ``ln_eps`` are the MLP activation and every LayerNorm's epsilon (HF ViT: 1e-12,
    CLIP: quick_gelu and 1e-5). CLIP's post-LN on CLS alone equals our final norm's CLS row.
    """

    width: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 224
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    dropout: float = 0.0
    pre_norm: bool = False
    act: str = "gelu"
    ln_eps: float = VIT_LN_EPS
    pos_embed_init: str = "normal"

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = images.shape
        p = self.patch_size
        if h % p or w % p or (h // p) * (w // p) != self.num_patches:
            raise ValueError(
                f"ViT built for {self.image_size}px with patch {p} got images {h}x{w}; "
                "resample pos_embed with interpolate_pos_embed and rebuild at the new size."
            )
        # Reshape+dense equals a stride-p conv; the kernel is the conv's HWIO kernel flattened
        # in (ph, pw, c) order, which checkpoint converters rely on.
        x = images.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
        x = dense(
            self.width,
            ("patch", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="patch_embed",
        )(x)

        cls = self.param(
            "cls_token",
            boxed(DEFAULT_INIT, (None, None, "embed")),
            (1, 1, self.width),
            self.param_dtype,
        )
        pos = self.param(
            "pos_embed",
            boxed(pos_embed_initializer(self.pos_embed_init), (None, "pos", "embed")),
            (1, 1 + self.num_patches, self.width),
            self.param_dtype,
        )
        cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.width))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.pre_norm:
            x = layer_norm(self.ln_eps, name="pre_norm", **kw)(x)
        x = constrain(x)

        # static_argnums counts `self`, so 2 is `train`.
        block_cls = nn.remat(ViTBlock, static_argnums=(2,)) if self.remat else ViTBlock
        mlp_dim = int(self.width * self.mlp_ratio)
        for i in range(self.depth):
            x = block_cls(
                self.num_heads,
                mlp_dim,
                dropout=self.dropout,
                act=self.act,
                ln_eps=self.ln_eps,
                name=f"blocks_{i}",
                **kw,
            )(x, train)
        return layer_norm(self.ln_eps, name="norm", **kw)(x)


POS_EMBED_INITS: tuple[str, ...] = ("normal", "sincos2d")


def sincos2d_pos_embed(grid: int, dim: int, num_prefix: int = 1) -> np.ndarray:
    """[1, P+grid², dim] table: prefix rows 0; grid rows (sin x·ω, cos x·ω, sin y·ω, cos y·ω),
    ω_k = 10000^(-k/(dim/4)) (MoCo v3 / MAE). Unit-scale, so position is as loud as content
    from step 0, where normal(0.02) positions start ~10x quieter than the patch embeddings."""
    if dim % 4:
        raise ValueError(f"sincos2d position embeddings need a width divisible by 4, not {dim}")
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (np.arange(quarter) / quarter)
    y, x = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    x_angle = x.reshape(-1, 1) * omega
    y_angle = y.reshape(-1, 1) * omega
    table = np.concatenate(
        [np.sin(x_angle), np.cos(x_angle), np.sin(y_angle), np.cos(y_angle)], axis=1
    )
    table = np.concatenate([np.zeros((num_prefix, dim)), table])
    return table[None].astype(np.float32)


def pos_embed_initializer(kind: str) -> Callable:
    if kind == "normal":
        return DEFAULT_INIT
    if kind != "sincos2d":
        raise ValueError(f"model.image.pos_embed_init={kind!r} is not one of {POS_EMBED_INITS}")

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        del key
        _, length, dim = shape
        grid = math.isqrt(length - 1)
        return jnp.asarray(sincos2d_pos_embed(grid, dim), dtype)

    return init


def interpolate_pos_embed(pos_embed: jax.Array, new_grid: int, num_prefix: int = 1) -> jax.Array:
    """Resize a [1, P+N, D] position table to a new_grid x new_grid grid, keeping P prefix slots.

    Bicubic, as ALBEF/DeiT do when fine-tuning at another resolution. jax's cubic kernel
    (Keys, a=-0.5) differs slightly from torch's (a=-0.75), so values are close, not equal.
    """
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n, dim = grid.shape[1], grid.shape[2]
    old_grid = math.isqrt(n)
    if old_grid * old_grid != n:
        raise ValueError(f"pos_embed has {n} grid slots, not a square grid")
    if old_grid == new_grid:
        return pos_embed
    grid = grid.reshape(grid.shape[0], old_grid, old_grid, dim).astype(jnp.float32)
    grid = jax.image.resize(
        grid, (grid.shape[0], new_grid, new_grid, dim), method="bicubic", antialias=False
    )
    grid = grid.reshape(grid.shape[0], new_grid * new_grid, dim).astype(pos_embed.dtype)
    return jnp.concatenate([prefix, grid], axis=1)
