"""Model zoo: ViT and BERT towers, ALBEF and DualEncoder, and ``build_model``."""

from vlp_jax.models.bert import (
    BertEmbeddings,
    BertFusionEncoder,
    BertLayer,
    BertMLMHead,
    BertTextEncoder,
)
from vlp_jax.models.clip_text import ClipTextEncoder
from vlp_jax.models.layers import (
    ACTIVATION_AXES,
    PARAM_AXES,
    HeadsOutput,
    HeadsProjection,
    Mlp,
    MultiHeadAttention,
    l2_normalize,
    padding_to_attention_mask,
)
from vlp_jax.models.vit import VIT_VARIANTS, ViT, ViTBlock, interpolate_pos_embed
from vlp_jax.models.vlp import (
    ALBEF,
    MODEL_KINDS,
    TEMPERATURE_MAX,
    TEMPERATURE_MIN,
    DualEncoder,
    build_model,
    resolve_image_config,
    scale_initial_weights,
)

__all__ = [
    "ACTIVATION_AXES",
    "ALBEF",
    "MODEL_KINDS",
    "PARAM_AXES",
    "TEMPERATURE_MAX",
    "TEMPERATURE_MIN",
    "VIT_VARIANTS",
    "BertEmbeddings",
    "BertFusionEncoder",
    "BertLayer",
    "BertMLMHead",
    "BertTextEncoder",
    "ClipTextEncoder",
    "DualEncoder",
    "HeadsOutput",
    "HeadsProjection",
    "Mlp",
    "MultiHeadAttention",
    "ViT",
    "ViTBlock",
    "build_model",
    "interpolate_pos_embed",
    "l2_normalize",
    "padding_to_attention_mask",
    "resolve_image_config",
    "scale_initial_weights",
]
