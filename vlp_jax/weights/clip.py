"""CLIP (HF `CLIPModel`) <-> our DualEncoder with `model.image.pre_norm` and `text.arch='clip'`.

HF name                                          our path
vision_model.embeddings.class_embedding [D]      img/cls_token [1, 1, D]
vision_model.embeddings.position_embedding [N, D] img/pos_embed [1, N, D] (resampled if needed)
vision_model.embeddings.patch_embedding (no bias) img/patch_embed (bias set to zero)
vision_model.pre_layrnorm                        img/pre_norm
vision_model.encoder.layers.i                    img/blocks_i (layer_norm1/2 -> norm1/2,
                                                 self_attn.{q,k,v,out}_proj -> attn.*, mlp.*)
vision_model.post_layernorm (CLS only)           img/norm (all tokens; the CLS row is equal)
text_model.embeddings.{token,position}_embedding txt/{token,position}_embedding
text_model.encoder.layers.i                      txt/layers_i (same block layout)
text_model.final_layer_norm                      txt/final_norm
visual_projection / text_projection (no bias)    img_proj / txt_proj (bias set to zero)
logit_scale                                      temperature = exp(-logit_scale)

The text embedding pools the last real position (attention_mask.sum() - 1), which is HF's EOS
token for right-padded CLIP-tokenized text.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import ml_collections
import numpy as np

from vlp_jax.models.vlp import build_model, resolve_image_config
from vlp_jax.weights import hf
from vlp_jax.weights.convert import Flat, Rule, flatten, to_hf, to_ours, unflatten
from vlp_jax.weights.vit import resample_pos_embed

log = logging.getLogger(__name__)


def check_hf_config(config: Any, path: str) -> None:
    if config.model_type != "clip":
        raise ValueError(f"init.clip expects a CLIP checkpoint; {path} is {config.model_type!r}")


def model_fields_from_hf(config: Any) -> dict[str, dict[str, Any]]:
    """`config.model` fields (top level under "", then "image", "text") of a HF CLIP."""
    v, t = config.vision_config, config.text_config
    return {
        "": dict(
            kind="dual_encoder",
            embed_dim=config.projection_dim,
            temperature_init=float(math.exp(-config.logit_scale_init_value)),
        ),
        "image": dict(
            variant="",
            image_size=v.image_size,
            patch_size=v.patch_size,
            width=v.hidden_size,
            depth=v.num_hidden_layers,
            num_heads=v.num_attention_heads,
            mlp_ratio=v.intermediate_size / v.hidden_size,
            pre_norm=True,
            act=v.hidden_act,
            ln_eps=v.layer_norm_eps,
            dropout=0.0,
        ),
        "text": dict(
            arch="clip",
            vocab_size=t.vocab_size,
            width=t.hidden_size,
            num_heads=t.num_attention_heads,
            mlp_dim=t.intermediate_size,
            text_layers=t.num_hidden_layers,
            fusion_layers=0,
            max_len=t.max_position_embeddings,
            act=t.hidden_act,
            ln_eps=t.layer_norm_eps,
            dropout=0.0,
        ),
    }


def _block_rules(ours: str, theirs: str) -> list[Rule]:
    return [
        Rule(f"{ours}/norm1", f"{theirs}.layer_norm1", "ln"),
        Rule(f"{ours}/attn/query", f"{theirs}.self_attn.q_proj", "heads_in"),
        Rule(f"{ours}/attn/key", f"{theirs}.self_attn.k_proj", "heads_in"),
        Rule(f"{ours}/attn/value", f"{theirs}.self_attn.v_proj", "heads_in"),
        Rule(f"{ours}/attn/out", f"{theirs}.self_attn.out_proj", "heads_out"),
        Rule(f"{ours}/norm2", f"{theirs}.layer_norm2", "ln"),
        Rule(f"{ours}/mlp/fc1", f"{theirs}.mlp.fc1", "dense"),
        Rule(f"{ours}/mlp/fc2", f"{theirs}.mlp.fc2", "dense"),
    ]


def vision_rules(depth: int) -> list[Rule]:
    emb = "vision_model.embeddings"
    out = [
        Rule("img/cls_token", f"{emb}.class_embedding", "param"),
        Rule("img/pos_embed", f"{emb}.position_embedding.weight", "param"),
        Rule("img/patch_embed", f"{emb}.patch_embedding", "patch"),
        Rule("img/pre_norm", "vision_model.pre_layrnorm", "ln"),
        Rule("img/norm", "vision_model.post_layernorm", "ln"),
        Rule("img_proj", "visual_projection", "dense_nb"),
    ]
    for i in range(depth):
        out += _block_rules(f"img/blocks_{i}", f"vision_model.encoder.layers.{i}")
    return out


def text_rules(depth: int) -> list[Rule]:
    emb = "text_model.embeddings"
    out = [
        Rule("txt/token_embedding", f"{emb}.token_embedding", "embed"),
        Rule("txt/position_embedding", f"{emb}.position_embedding", "embed"),
        Rule("txt/final_norm", "text_model.final_layer_norm", "ln"),
        Rule("txt_proj", "text_projection", "dense_nb"),
    ]
    for i in range(depth):
        out += _block_rules(f"txt/layers_{i}", f"text_model.encoder.layers.{i}")
    return out


def load(path: str) -> hf.HFCheckpoint:
    check_hf_config(hf.read_config(path), path)
    return hf.load(path, "CLIPModel")


def check_model_config(model: ml_collections.ConfigDict, ckpt: hf.HFCheckpoint) -> None:
    """Errors naming the config key and the checkpoint's value when the towers differ."""
    expected = model_fields_from_hf(ckpt.config)
    ours = {"": dict(model), "image": {**model.image, **resolve_image_config(model.image)}}
    ours["text"] = dict(model.text)
    # Our resolution and text length may differ: positions are resampled / trimmed.
    skip = {"temperature_init", "variant", "image_size", "dropout", "max_len"}
    for section, fields in expected.items():
        for field, theirs in fields.items():
            value = ours[section].get(field)
            if field in skip or value == theirs:
                continue
            key = f"model.{section}.{field}" if section else f"model.{field}"
            raise hf.mismatch(key, value, "clip", ckpt.path, field, theirs)
    text_max = ckpt.config.text_config.max_position_embeddings
    if model.text.max_len > text_max:
        raise hf.mismatch(
            "model.text.max_len", model.text.max_len, "clip", ckpt.path,
            "text max_position_embeddings", text_max,
        )  # fmt: skip


def to_flat(ckpt: hf.HFCheckpoint, image_size: int, max_len: int) -> Flat:
    """Our root-level parameters of a CLIP DualEncoder at `image_size` and `max_len`."""
    v, t = ckpt.config.vision_config, ckpt.config.text_config
    flat = to_ours(vision_rules(v.num_hidden_layers), ckpt.state, v.num_attention_heads)
    flat.update(to_ours(text_rules(t.num_hidden_layers), ckpt.state, t.num_attention_heads))
    flat[("img", "cls_token")] = flat[("img", "cls_token")].reshape(1, 1, -1)
    pos = flat[("img", "pos_embed")][None]
    flat[("img", "pos_embed")] = resample_pos_embed(pos, image_size // v.patch_size, ckpt.path)
    key = ("txt", "position_embedding", "embedding")
    flat[key] = flat[key][:max_len]
    logit_scale = float(ckpt.state["logit_scale"])
    flat[("temperature",)] = np.asarray(math.exp(-logit_scale), np.float32)
    return flat


def import_for(model: ml_collections.ConfigDict, ckpt: hf.HFCheckpoint) -> Flat:
    """`config.init.clip`: every parameter of a CLIP-shaped DualEncoder."""
    check_model_config(model, ckpt)
    return to_flat(ckpt, model.image.image_size, model.text.max_len)


def model_config(config: Any, image_size: int | None = None) -> ml_collections.ConfigDict:
    """A complete `config.model` for a HF CLIP config."""
    from vlp_jax import config_lib

    fields = model_fields_from_hf(config)
    model = config_lib.model_config("dual_encoder")
    model.update(fields[""])
    model.image.update(fields["image"])
    model.text.update(fields["text"])
    if image_size:
        model.image.image_size = image_size
    return model


def hf_clip(path: str, image_size: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A HF CLIP as (DualEncoder, params): `encode_image`/`embed_image`, `encode_text`/
    `embed_text(hidden, attention_mask)` and `temperature` (= 1 / HF logit scale)."""
    ckpt = load(path)
    model_cfg = model_config(ckpt.config, image_size)
    flat = to_flat(ckpt, model_cfg.image.image_size, model_cfg.text.max_len)
    return build_model(model_cfg), unflatten(flat)


def hf_config_for(model: ml_collections.ConfigDict, eos_token_id: int | None) -> Any:
    import transformers

    image, text = model.image, model.text
    sizes = resolve_image_config(image)
    text_config = dict(
        vocab_size=text.vocab_size,
        hidden_size=text.width,
        intermediate_size=text.mlp_dim,
        num_hidden_layers=text.text_layers + text.fusion_layers,
        num_attention_heads=text.num_heads,
        max_position_embeddings=text.max_len,
        hidden_act=text.act,
        layer_norm_eps=text.ln_eps,
    )
    if eos_token_id is not None:
        text_config["eos_token_id"] = eos_token_id
    return transformers.CLIPConfig(
        text_config=text_config,
        vision_config=dict(
            hidden_size=sizes["width"],
            intermediate_size=int(sizes["width"] * sizes["mlp_ratio"]),
            num_hidden_layers=sizes["depth"],
            num_attention_heads=sizes["num_heads"],
            image_size=image.image_size,
            patch_size=sizes["patch_size"],
            hidden_act=image.act,
            layer_norm_eps=image.ln_eps,
        ),
        projection_dim=model.embed_dim,
    )


def export(
    params: dict[str, Any],
    model: ml_collections.ConfigDict,
    output: str,
    eos_token_id: int | None = None,
) -> str:
    """Saves a CLIP-shaped DualEncoder as a HF `CLIPModel` in `output`.

    HF pools text at the first `eos_token_id` (set it to the tokenizer's end token; HF's default
    is OpenAI CLIP's 49407). HF projections have no bias: a non-zero trained bias is dropped,
    with a warning giving its size.
    """
    if not (model.text.get("arch") == "clip" and model.image.get("pre_norm")):
        raise ValueError("export --tower clip needs model.text.arch='clip', model.image.pre_norm")
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    # HF's patch conv has no bias, but ours is added to every patch token exactly like the
    # patch rows of the position table, so it folds into them without changing any output.
    pos, patch_bias = flat[("img", "pos_embed")], flat[("img", "patch_embed", "bias")]
    flat[("img", "pos_embed")] = pos.copy()
    flat[("img", "pos_embed")][:, 1:] += patch_bias
    for proj in ("img_proj", "txt_proj"):
        bias = np.abs(flat[(proj, "bias")]).max()
        if bias > 0:
            log.warning("%s bias (max |b| = %.3g) has no place in HF CLIP; dropped", proj, bias)
    config = hf_config_for(model, eos_token_id)
    shapes = hf.hf_shapes("CLIPModel", config)
    v, t = config.vision_config, config.text_config
    rules = vision_rules(v.num_hidden_layers) + text_rules(t.num_hidden_layers)
    state = to_hf(rules, flat, shapes)
    temperature = float(flat[("temperature",)])
    state["logit_scale"] = np.asarray(-math.log(temperature), np.float32)
    hf.save("CLIPModel", config, state, output)
    return "CLIPModel"
