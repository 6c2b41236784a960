"""Hugging Face PyTorch checkpoints into our Flax towers, and back.

Import (a local directory or a hub name; read through transformers' PyTorch classes):
  `hf_text_encoder(path)`   BERT -> (BertTextEncoder, params); `hf_mlm_head(path)` its MLM head
  `hf_image_encoder(path, image_size)`  ViT / non-distilled DeiT -> (ViT, params)
  `hf_clip(path, image_size)`           CLIP -> (DualEncoder, params)
  `config.init.{text,image,clip}`       the same weights into a fresh training run
                                        (`init_train_state`, called by train.py)
  `model_config_from_hf(config.model, text=..., image=..., clip=...)`  a matching model config
Export (safetensors + config.json):
  `export_hf(params, config.model, output, tower)`  tower "text" (BERT, with the MLM head when
  the model has one), "image" (ViTModel) or "clip" (CLIPModel);
  CLI: python -m vlp_jax.weights export --config ... --workdir ... --output DIR --tower text

The per-tower name mappings are in `bert.py`, `vit.py` and `clip.py`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from vlp_jax.weights import bert, clip, hf, vit
from vlp_jax.weights.bert import hf_mlm_head, hf_text_encoder
from vlp_jax.weights.clip import hf_clip
from vlp_jax.weights.convert import Flat, flatten, unflatten
from vlp_jax.weights.vit import hf_image_encoder

log = logging.getLogger(__name__)

TOWERS = ("text", "image", "clip")
_IMPORTERS = {"clip": clip, "text": bert, "image": vit}


def model_config_from_hf(
    model: ml_collections.ConfigDict, *, text: str = "", image: str = "", clip: str = ""
) -> ml_collections.ConfigDict:
    """A copy of `model` (a `config.model`) whose towers match the named HF checkpoints.

    Only their config.json files are read. `text` (BERT): an ALBEF keeps its text/fusion split
    when it adds up to the checkpoint's layers, else splits them in half (BERT-base: 6 + 6); a
    dual encoder takes all as text layers. `image` (ViT) sets the sizes and keeps
    `image_size` (positions are resampled on import). `clip` sets everything, dual encoder.
    """
    out = copy.deepcopy(model)
    if clip:
        image_size = out.image.image_size
        out = _clip_model_config(clip)
        out.image.image_size = image_size
    if text:
        fields = bert.text_config_from_hf(_read(text, bert.check_hf_config))
        layers = fields.pop("text_layers")
        fields.pop("fusion_layers")
        if out.kind != "albef":
            out.text.update(text_layers=layers, fusion_layers=0)
        elif out.text.text_layers + out.text.fusion_layers != layers:
            out.text.update(text_layers=layers // 2, fusion_layers=layers - layers // 2)
        out.text.update(fields)
    if image:
        fields = vit.image_config_from_hf(_read(image, vit.check_hf_config))
        fields.pop("image_size")
        out.image.update(fields)
    return out


def _read(path: str, check) -> Any:
    config = hf.read_config(path)
    check(config, path)
    return config


# A helper because `model_config_from_hf`'s `clip` argument shadows the module there.
def _clip_model_config(path: str) -> ml_collections.ConfigDict:
    return clip.model_config(_read(path, clip.check_hf_config))


def pretrained_params(config: ml_collections.ConfigDict) -> tuple[Flat, dict]:
    """Reads every checkpoint in `config.init` -> (our root-level flat params, {path: init key})."""
    init = config.get("init") or {}
    flat: Flat = {}
    source: dict[tuple[str, ...], str] = {}
    for key, module in _IMPORTERS.items():
        path = init.get(key, "")
        if not path:
            continue
        part = module.import_for(config.model, module.load(path))
        flat.update(part)
        source.update({k: f"config.init.{key}={path}" for k in part})
    return flat, source


def check_against(params: Any, flat: Flat, source: dict) -> None:
    """Every imported tensor must exist in `params` with the same shape."""
    ours = flatten(params)
    for k, v in flat.items():
        name = "/".join(k)
        if k not in ours:
            raise ValueError(f"{source[k]}: our model has no parameter {name}")
        if tuple(ours[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{source[k]}: {name} has shape {tuple(v.shape)} in the checkpoint, "
                f"{tuple(ours[k].shape)} in our model"
            )


def _modules(keys) -> list[str]:
    """Parameter paths -> their distinct modules, in order ("txt/layers_0/attention")."""
    return sorted({"/".join(k[:-1]) if len(k) > 1 else k[0] for k in keys})


def describe(params: Any, flat: Flat, source: dict) -> str:
    """Which modules were imported (from which init key) and which stay freshly initialised."""
    lines = []
    for origin in sorted(set(source.values())):
        keys = [k for k in flat if source[k] == origin]
        lines.append(f"imported {len(keys)} tensors from {origin}")
    fresh = _modules(set(flatten(params)) - set(flat))
    lines.append("freshly initialised: " + (", ".join(fresh) if fresh else "nothing"))
    return "\n".join(lines)


def init_train_state(
    state: dict[str, Any], shardings: dict[str, Any], config, verbose: bool = True
) -> dict[str, Any]:
    """Overwrites `state["params"]` with the `config.init` checkpoints, in the params' shardings.

    For a fresh run only (train.py skips it on resume). The optimiser state stays as created:
    Adam's moments are zeros whatever the parameters are.
    """
    flat, source = pretrained_params(config)
    if not flat:
        return state
    params = state["params"]
    check_against(params, flat, source)
    ours, placed = flatten(params), flatten(shardings["params"])
    new = {
        k: jax.device_put(np.asarray(flat[k], ours[k].dtype), placed[k]) if k in flat else v
        for k, v in ours.items()
    }
    summary = describe(params, flat, source)
    log.info("%s", summary)
    if verbose:
        print(summary)
    return {**state, "params": unflatten(new)}


def export_hf(
    params: Any,
    model: ml_collections.ConfigDict,
    output: str,
    tower: str,
    eos_token_id: int | None = None,
) -> str:
    """Saves one tower of our `params` (for `model` = `config.model`) as a HF checkpoint.

    Returns the transformers class to load it with: BertForMaskedLM/BertModel, ViTModel or
    CLIPModel. `eos_token_id` matters for CLIP only (see `clip.export`).
    """
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), dict(params))
    if tower == "text":
        return bert.export(params, model, output)
    if tower == "image":
        return vit.export(params, model, output)
    if tower == "clip":
        return clip.export(params, model, output, eos_token_id)
    raise ValueError(f"tower={tower!r} is not one of {TOWERS}")


__all__ = [
    "TOWERS",
    "check_against",
    "describe",
    "export_hf",
    "hf_clip",
    "hf_image_encoder",
    "hf_mlm_head",
    "hf_text_encoder",
    "init_train_state",
    "model_config_from_hf",
    "pretrained_params",
]
