"""ViT (HF `ViTModel`, also non-distilled DeiT) <-> our `img` tower.

HF name                                     our path
embeddings.cls_token                        img/cls_token
embeddings.position_embeddings              img/pos_embed (resampled to our grid if it differs)
embeddings.patch_embeddings.projection      img/patch_embed (conv [D, C, p, p] -> dense on
                                            (ph, pw, c)-flattened NHWC patches)
layers.i.layernorm_before / layernorm_after img/blocks_i/norm1 / norm2
layers.i.attention.{q,k,v,o}_proj           img/blocks_i/attn/{query,key,value,out}
layers.i.mlp.fc1 / fc2                      img/blocks_i/mlp/fc1 / fc2
layernorm                                   img/norm (on all tokens, like ours)

HF ViT's LayerNorms use eps 1e-12: the import sets `model.image.ln_eps` from the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from vlp_jax.models.layers import ACTIVATIONS
from vlp_jax.models.vit import ViT, interpolate_pos_embed
from vlp_jax.models.vlp import resolve_image_config
from vlp_jax.weights import hf
from vlp_jax.weights.convert import Flat, Rule, flatten, subtree, to_hf, to_ours, unflatten


def check_hf_config(config: Any, path: str) -> None:
    """Rejects image checkpoints our ViT cannot represent exactly."""
    if config.model_type == "deit":
        raise ValueError(
            f"{path} is a distilled DeiT (model_type 'deit'): its distillation token has no "
            "place in our ViT (CLS only). Use a non-distilled DeiT/ViT checkpoint (model_type "
            "'vit', e.g. facebook/deit-base-patch16-224)."
        )
    if config.model_type != "vit":
        raise ValueError(f"init.image expects a ViT (model_type 'vit'); {path} is "
                         f"{config.model_type!r}")  # fmt: skip
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"vit at {path} uses hidden_act {config.hidden_act!r}; supported: {list(ACTIVATIONS)}"
        )
    if not config.qkv_bias or config.num_channels != 3:
        raise ValueError(f"vit at {path}: qkv_bias=False or num_channels != 3 is not supported")


def image_config_from_hf(config: Any) -> dict[str, Any]:
    """`config.model.image` fields of a HF ViT."""
    return dict(
        variant="",
        image_size=config.image_size,
        patch_size=config.patch_size,
        width=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        pre_norm=False,
        act=config.hidden_act,
        ln_eps=config.layer_norm_eps,
        dropout=config.hidden_dropout_prob,
    )


def _block_rules(ours: str, theirs: str) -> list[Rule]:
    return [
        Rule(f"{ours}/norm1", f"{theirs}.layernorm_before", "ln"),
        Rule(f"{ours}/attn/query", f"{theirs}.attention.q_proj", "heads_in"),
        Rule(f"{ours}/attn/key", f"{theirs}.attention.k_proj", "heads_in"),
        Rule(f"{ours}/attn/value", f"{theirs}.attention.v_proj", "heads_in"),
        Rule(f"{ours}/attn/out", f"{theirs}.attention.o_proj", "heads_out"),
        Rule(f"{ours}/norm2", f"{theirs}.layernorm_after", "ln"),
        Rule(f"{ours}/mlp/fc1", f"{theirs}.mlp.fc1", "dense"),
        Rule(f"{ours}/mlp/fc2", f"{theirs}.mlp.fc2", "dense"),
    ]


def rules(depth: int) -> list[Rule]:
    out = [
        Rule("img/cls_token", "embeddings.cls_token", "param"),
        Rule("img/pos_embed", "embeddings.position_embeddings", "param"),
        Rule("img/patch_embed", "embeddings.patch_embeddings.projection", "patch"),
        Rule("img/norm", "layernorm", "ln"),
    ]
    for i in range(depth):
        out += _block_rules(f"img/blocks_{i}", f"layers.{i}")
    return out


def load(path: str) -> hf.HFCheckpoint:
    check_hf_config(hf.read_config(path), path)
    return hf.load(path, "ViTModel", add_pooling_layer=False)


def resample_pos_embed(pos: np.ndarray, grid: int, what: str) -> np.ndarray:
    """[1, 1+N, D] -> [1, 1+grid², D] (bicubic, see `interpolate_pos_embed`)."""
    n = pos.shape[1] - 1
    if math.isqrt(n) ** 2 != n:
        raise ValueError(f"{what}: position table of {n} patches is not a square grid")
    return np.asarray(interpolate_pos_embed(jnp.asarray(pos), grid), np.float32)


def check_model_config(model: ml_collections.ConfigDict, ckpt: hf.HFCheckpoint) -> None:
    """Errors naming the config key and the checkpoint's value when the towers differ."""
    image, c, p = model.image, ckpt.config, ckpt.path
    sizes = resolve_image_config(image)
    pairs = [
        ("model.image.width", sizes["width"], "hidden_size", c.hidden_size),
        ("model.image.depth", sizes["depth"], "num_hidden_layers", c.num_hidden_layers),
        ("model.image.num_heads", sizes["num_heads"], "num_attention_heads",
         c.num_attention_heads),
        ("model.image.mlp_ratio * width", int(sizes["width"] * sizes["mlp_ratio"]),
         "intermediate_size", c.intermediate_size),
        ("model.image.patch_size", sizes["patch_size"], "patch_size", c.patch_size),
        ("model.image.act", image.get("act", "gelu"), "hidden_act", c.hidden_act),
        ("model.image.ln_eps", image.get("ln_eps", 1e-6), "layer_norm_eps", c.layer_norm_eps),
        ("model.image.pre_norm", bool(image.get("pre_norm", False)), "pre_layrnorm", False),
    ]  # fmt: skip
    for key, ours, field, theirs in pairs:
        if ours != theirs:
            raise hf.mismatch(key, ours, "vit", p, field, theirs)


def to_flat(ckpt: hf.HFCheckpoint, image_size: int) -> Flat:
    """Our root-level `img/...` parameters at `image_size` (positions resampled if needed)."""
    flat = to_ours(
        rules(ckpt.config.num_hidden_layers), ckpt.state, ckpt.config.num_attention_heads
    )
    key = ("img", "pos_embed")
    flat[key] = resample_pos_embed(flat[key], image_size // ckpt.config.patch_size, ckpt.path)
    return flat


def import_for(model: ml_collections.ConfigDict, ckpt: hf.HFCheckpoint) -> Flat:
    """`config.init.image`: the `img` parameters of `model` this ViT sets."""
    check_model_config(model, ckpt)
    return to_flat(ckpt, model.image.image_size)


def hf_image_encoder(path: str, image_size: int | None = None) -> tuple[ViT, dict[str, Any]]:
    """A HF ViT as (ViT, params) for NHWC images at `image_size` (default: the checkpoint's)."""
    ckpt = load(path)
    c = ckpt.config
    image_size = image_size or c.image_size
    fields = image_config_from_hf(c)
    model = ViT(
        width=c.hidden_size,
        depth=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        mlp_ratio=fields["mlp_ratio"],
        patch_size=c.patch_size,
        image_size=image_size,
        act=c.hidden_act,
        ln_eps=c.layer_norm_eps,
    )
    return model, unflatten(subtree(to_flat(ckpt, image_size), "img"))


def hf_config_for(model: ml_collections.ConfigDict) -> Any:
    """A `transformers.ViTConfig` for our image tower."""
    import transformers

    image = model.image
    sizes = resolve_image_config(image)
    return transformers.ViTConfig(
        hidden_size=sizes["width"],
        num_hidden_layers=sizes["depth"],
        num_attention_heads=sizes["num_heads"],
        intermediate_size=int(sizes["width"] * sizes["mlp_ratio"]),
        hidden_act=image.get("act", "gelu"),
        layer_norm_eps=image.get("ln_eps", 1e-6),
        image_size=image.image_size,
        patch_size=sizes["patch_size"],
        num_channels=3,
        qkv_bias=True,
    )


def export(params: dict[str, Any], model: ml_collections.ConfigDict, output: str) -> str:
    """Saves our `img` tower as a HF `ViTModel` (no pooler) in `output`."""
    if model.image.get("pre_norm", False):
        raise ValueError("export --tower image: a pre_norm (CLIP) ViT is no ViTModel; use clip")
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items() if k[0] == "img"}
    config = hf_config_for(model)
    shapes = hf.hf_shapes("ViTModel", config, add_pooling_layer=False)
    state = to_hf(rules(config.num_hidden_layers), flat, shapes)
    hf.save("ViTModel", config, state, output, add_pooling_layer=False)
    return "ViTModel"
