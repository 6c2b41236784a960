"""Vision-language models: ALBEF (ViT + BERT text/fusion towers) and a CLIP-style DualEncoder.

Top-level parameter names: ``img``, ``txt``, ``fusion`` (ALBEF), ``img_proj``, ``txt_proj``,
``itm_head`` (ALBEF), ``mlm_head`` (ALBEF), ``temperature``, and ``concept_head`` when
``model.num_concepts`` > 0 (DiHT's concept distillation).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.models.bert import BERT_LN_EPS, BertFusionEncoder, BertMLMHead, BertTextEncoder
from vlp_jax.models.clip_text import ClipTextEncoder, eos_pool
from vlp_jax.models.layers import INIT_STD, Dtype, boxed, dense, l2_normalize
from vlp_jax.models.vit import VIT_LN_EPS, VIT_VARIANTS, ViT

# ALBEF clamps its learnable temperature to this range before every pre-training forward.
TEMPERATURE_MIN = 0.001
TEMPERATURE_MAX = 0.5

MODEL_KINDS = ("albef", "dual_encoder")
TEXT_ARCHS = ("bert", "clip")
DTYPES: dict[str, Dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class _TwoTowerBase(nn.Module):
    """Methods shared by ALBEF and DualEncoder; subclasses declare ``img``, ``txt`` and sizes."""

    def _setup_contrastive(self) -> None:
        # Projections and the temperature run in float32: tiny, and they feed the ITC softmax.
        kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
        self.img_proj = dense(self.embed_dim, ("embed", "proj"), **kw)
        self.txt_proj = dense(self.embed_dim, ("embed", "proj"), **kw)
        self.temperature_raw = self.param(
            "temperature",
            boxed(nn.initializers.constant(self.temperature_init), ()),
            (),
            jnp.float32,
        )
        if self.num_concepts:
            # DiHT's concept-distillation head on the image embedding (dropped at export).
            self.concept_head = dense(self.num_concepts, ("proj", "vocab"), **kw)

    def concept_logits(self, image_emb: jax.Array) -> jax.Array:
        """Normalised image embedding [B, E] -> concept logits [B, num_concepts]."""
        return self.concept_head(image_emb)

    def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [B, H, W, 3] float -> tokens [B, 1+N, Dv]."""
        return self.img(images, train)

    def encode_text(
        self, input_ids: jax.Array, attention_mask: jax.Array, train: bool = False
    ) -> jax.Array:
        """input_ids, attention_mask [B, L] -> hidden [B, L, Dt] (embeddings + text layers)."""
        return self.txt(input_ids, attention_mask, train)

    def embed_image(self, image_tokens: jax.Array) -> jax.Array:
        """CLS token -> L2-normalised float32 embedding [B, E]."""
        return l2_normalize(self.img_proj(image_tokens[:, 0].astype(jnp.float32)))

    def embed_text(
        self, text_hidden: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """Pooled text -> L2-normalised float32 embedding [B, E].

        BERT pools the CLS position; the CLIP arch its EOS token, the last real position, so it
        needs ``attention_mask``.
        """
        if isinstance(self.txt, ClipTextEncoder):
            if attention_mask is None:
                raise ValueError("embed_text of a CLIP text tower needs attention_mask (EOS pool)")
            pooled = eos_pool(text_hidden, attention_mask)
        else:
            pooled = text_hidden[:, 0]
        return l2_normalize(self.txt_proj(pooled.astype(jnp.float32)))

    def _tower_outputs(
        self, images: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, train: bool
    ) -> dict[str, jax.Array]:
        image_tokens = self.encode_image(images, train)
        text_hidden = self.encode_text(input_ids, attention_mask, train)
        out = {
            "image_tokens": image_tokens,
            "text_hidden": text_hidden,
            "image_embed": self.embed_image(image_tokens),
            "text_embed": self.embed_text(text_hidden, attention_mask),
            "temperature": self.temperature(),
        }
        if self.num_concepts:
            out["concept_logits"] = self.concept_logits(out["image_embed"])
        return out

    def temperature(self) -> jax.Array:
        """The temperature clamped to [0.001, 0.5].

        The value is clamped but the gradient passes straight through, as with ALBEF's in-place
        clamp; the trainer may also clip the raw parameter after each update.
        """
        raw = self.temperature_raw
        # Exactly the clamped value; the zero-valued term carries an identity gradient.
        return jnp.clip(raw, TEMPERATURE_MIN, TEMPERATURE_MAX) + (raw - jax.lax.stop_gradient(raw))


class ALBEF(_TwoTowerBase):
    """ALBEF: ViT image tower, BERT text tower, BERT fusion tower with cross-attention.

    Build with ``build_model``; the towers are passed in so their parameters are named after
    these fields (``img``, ``txt``, ``fusion``).
    """

    img: ViT
    txt: BertTextEncoder
    fusion: BertFusionEncoder
    embed_dim: int = 256
    temperature_init: float = 0.07
    num_concepts: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self._setup_contrastive()
        self.itm_head = dense(
            2, ("embed", "classes"), dtype=jnp.float32, param_dtype=self.param_dtype
        )
        self.mlm_head = BertMLMHead(
            self.txt.vocab_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            act=self.txt.act,
            ln_eps=self.txt.ln_eps,
        )

    def fuse(
        self,
        text_hidden: jax.Array,
        attention_mask: jax.Array,
        image_tokens: jax.Array,
        train: bool = False,
    ) -> jax.Array:
        """Fusion layers only: text states [B, L, Dt] + image tokens -> [B, L, Dt]."""
        return self.fusion(text_hidden, attention_mask, image_tokens, train)

    def itm_logits(self, fused_hidden: jax.Array) -> jax.Array:
        """Fusion CLS -> float32 match/no-match logits [B, 2]."""
        return self.itm_head(fused_hidden[:, 0].astype(jnp.float32))

    def mlm_logits(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        image_tokens: jax.Array,
        train: bool = False,
    ) -> jax.Array:
        """Full mode (text then fusion layers) -> float32 logits [B, L, V] (tied decoder)."""
        text_hidden = self.encode_text(input_ids, attention_mask, train)
        fused = self.fuse(text_hidden, attention_mask, image_tokens, train)
        return self.mlm_head(fused, self.txt.word_table())

    def text_mlm_logits(
        self, input_ids: jax.Array, attention_mask: jax.Array, train: bool = False
    ) -> jax.Array:
        """Text tower only (no image) -> MLM logits [B, L, V]: ViLTA's language-only teacher."""
        return self.mlm_head(
            self.encode_text(input_ids, attention_mask, train), self.txt.word_table()
        )

    def __call__(
        self,
        images: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        train: bool = False,
    ) -> dict[str, jax.Array]:
        """Runs every head once (used by ``init``)."""
        out = self._tower_outputs(images, input_ids, attention_mask, train)
        fused = self.fuse(out["text_hidden"], attention_mask, out["image_tokens"], train)
        out["fused_hidden"] = fused
        out["itm_logits"] = self.itm_logits(fused)
        out["mlm_logits"] = self.mlm_head(fused, self.txt.word_table())
        return out


class DualEncoder(_TwoTowerBase):
    """CLIP-style dual encoder: ViT + BERT (or CLIP causal) text tower, no fusion."""

    img: ViT
    txt: BertTextEncoder | ClipTextEncoder
    embed_dim: int = 256
    temperature_init: float = 0.07
    num_concepts: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self._setup_contrastive()

    def __call__(
        self,
        images: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        train: bool = False,
    ) -> dict[str, jax.Array]:
        """Runs both towers and projections (used by ``init``)."""
        return self._tower_outputs(images, input_ids, attention_mask, train)


def _parse_dtype(name: str) -> Dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not one of {tuple(DTYPES)}")
    return DTYPES[name]


def resolve_image_config(image: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ViT sizes after applying ``model.image.variant`` (if set) over the explicit fields."""
    sizes = {
        "width": image.width,
        "depth": image.depth,
        "num_heads": image.num_heads,
        "mlp_ratio": image.mlp_ratio,
        "patch_size": image.patch_size,
    }
    variant = image.get("variant", "") or ""
    if variant:
        if variant not in VIT_VARIANTS:
            raise ValueError(
                f"model.image.variant={variant!r} is not one of {('',) + tuple(VIT_VARIANTS)}"
            )
        sizes.update(VIT_VARIANTS[variant])
    if image.image_size % sizes["patch_size"]:
        raise ValueError(
            f"model.image.image_size={image.image_size} is not a multiple of "
            f"patch_size={sizes['patch_size']}"
        )
    return sizes


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """Build ALBEF or DualEncoder from the ``config.model`` sub-config."""
    kind = config.kind
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind={kind!r} is not one of {MODEL_KINDS}")
    dtype = _parse_dtype(config.get("dtype", "float32"))

    image = config.image
    sizes = resolve_image_config(image)
    img = ViT(
        image_size=image.image_size,
        dtype=dtype,
        remat=bool(image.get("remat", False)),
        dropout=float(image.get("dropout", 0.0)),
        pre_norm=bool(image.get("pre_norm", False)),
        act=image.get("act", "gelu"),
        ln_eps=float(image.get("ln_eps", VIT_LN_EPS)),
        pos_embed_init=image.get("pos_embed_init", "normal"),
        **sizes,
    )

    text = config.text
    arch = text.get("arch", "bert")
    if arch not in TEXT_ARCHS:
        raise ValueError(f"model.text.arch={arch!r} is not one of {TEXT_ARCHS}")
    if arch == "clip" and kind != "dual_encoder":
        raise ValueError(
            f"model.text.arch='clip' is a causal text tower without fusion layers; it needs "
            f"model.kind='dual_encoder', not {kind!r}"
        )
    text_kw = dict(
        width=text.width,
        num_heads=text.num_heads,
        mlp_dim=text.mlp_dim,
        dropout=float(text.get("dropout", 0.0)),
        remat=bool(text.get("remat", False)),
        dtype=dtype,
        act=text.get("act", "gelu"),
        ln_eps=float(text.get("ln_eps", BERT_LN_EPS)),
    )
    common = dict(
        embed_dim=config.embed_dim,
        temperature_init=config.temperature_init,
        num_concepts=int(config.get("num_concepts", 0)),
        dtype=dtype,
    )

    if kind == "albef":
        txt = BertTextEncoder(
            vocab_size=text.vocab_size,
            num_layers=text.text_layers,
            max_len=text.max_len,
            **text_kw,
        )
        fusion = BertFusionEncoder(
            num_layers=text.fusion_layers, encoder_width=sizes["width"], **text_kw
        )
        return ALBEF(img=img, txt=txt, fusion=fusion, **common)

    # A dual encoder has no fusion, so every text layer is a plain text layer.
    text_cls = ClipTextEncoder if arch == "clip" else BertTextEncoder
    txt = text_cls(
        vocab_size=text.vocab_size,
        num_layers=text.text_layers + text.fusion_layers,
        max_len=text.max_len,
        **text_kw,
    )
    return DualEncoder(img=img, txt=txt, **common)


def scale_initial_weights(params: Any, config: ml_collections.ConfigDict) -> Any:
    """Freshly initialised ``params`` as if drawn with std ``config.init_std`` (``config.model``).

    BERT and timm draw every weight matrix and embedding from normal(0.02) (``DEFAULT_INIT``),
    a scale set for widths of 768 and more. On unit-variance (LayerNorm-ed) inputs of width D,
    attention logits q·k/√d_head start with std D·s² (biases are 0): 0.05 for D = 128 and
    s = 0.02, against 1 at s = 1/√D ≈ 0.088. So at the demo's width every attention, the
    fusion's cross-attention included, starts uniform and slow to leave it.
    A draw from normal(0.02) times s/0.02 is a draw from normal(s), so this multiplies every leaf
    drawn from ``DEFAULT_INIT`` (``kernel``, ``embedding``, ``cls_token``, and ``pos_embed`` when
    it starts normal) by ``init_std / 0.02``; biases, norms and the temperature keep their
    values. Imported weights (``config.init``) replace these afterwards and are not scaled.
    """
    factor = float(config.get("init_std", INIT_STD)) / INIT_STD
    if factor == 1.0:
        return params
    names = {"kernel", "embedding", "cls_token"}
    if config.image.get("pos_embed_init", "normal") == "normal":
        names.add("pos_embed")

    def scale(path: tuple, leaf: jax.Array) -> jax.Array:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return leaf * factor if keys and keys[-1] in names else leaf

    return jax.tree_util.tree_map_with_path(scale, params)
