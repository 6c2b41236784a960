"""BERT (HF `BertForMaskedLM` / `BertModel`) <-> our `txt`, `fusion` and `mlm_head`.

HF name (under `bert.`)                       our path
embeddings.{word,position,token_type}_embeddings  txt/embeddings/{same}/embedding
embeddings.LayerNorm                          txt/embeddings/norm
encoder.layer.j.attention.self.{query,key,value}  <layer j>/attention/{query,key,value}
encoder.layer.j.attention.output.dense        <layer j>/attention/out
encoder.layer.j.attention.output.LayerNorm    <layer j>/attention_norm
encoder.layer.j.intermediate.dense / output.dense  <layer j>/mlp/fc1 / fc2
encoder.layer.j.output.LayerNorm              <layer j>/mlp_norm
cls.predictions.transform.{dense,LayerNorm}   mlm_head/{dense,norm}
cls.predictions.bias                          mlm_head/bias (the decoder is our tied word table)

<layer j> is txt/layers_j for j < text_layers and fusion/layers_{j - text_layers} after (ALBEF);
a dual encoder's txt holds all of them. Fusion cross-attention has no HF counterpart and stays
freshly initialised, as in ALBEF.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from vlp_jax.models.bert import BertMLMHead, BertTextEncoder
from vlp_jax.models.layers import ACTIVATIONS
from vlp_jax.weights import hf
from vlp_jax.weights.convert import Flat, Rule, flatten, subtree, to_hf, to_ours, unflatten

TYPE_VOCAB_SIZE = 2  # build_model's BertTextEncoder default


def check_hf_config(config: Any, path: str) -> None:
    """Rejects BERT-family checkpoints our BertTextEncoder cannot represent exactly."""
    if config.model_type != "bert":
        raise ValueError(
            f"init.text expects a BERT checkpoint (model_type 'bert'); {path} is "
            f"{config.model_type!r}"
        )
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"bert at {path} uses hidden_act {config.hidden_act!r}; supported: {list(ACTIVATIONS)}"
        )
    position = getattr(config, "position_embedding_type", "absolute") or "absolute"
    if position != "absolute":
        raise ValueError(f"bert at {path} uses {position!r} position embeddings, not 'absolute'")


def text_config_from_hf(config: Any) -> dict[str, Any]:
    """`config.model.text` fields of a BERT (text_layers = all layers, fusion_layers = 0)."""
    return dict(
        arch="bert",
        vocab_size=config.vocab_size,
        width=config.hidden_size,
        num_heads=config.num_attention_heads,
        mlp_dim=config.intermediate_size,
        text_layers=config.num_hidden_layers,
        fusion_layers=0,
        max_len=config.max_position_embeddings,
        act=config.hidden_act,
        ln_eps=config.layer_norm_eps,
        dropout=config.hidden_dropout_prob,
    )


def layer_paths(kind: str, text_layers: int, fusion_layers: int) -> list[str]:
    """Our path of each HF layer, in HF order."""
    if kind == "albef":
        return [f"txt/layers_{j}" for j in range(text_layers)] + [
            f"fusion/layers_{j}" for j in range(fusion_layers)
        ]
    return [f"txt/layers_{j}" for j in range(text_layers + fusion_layers)]


def _layer_rules(ours: str, theirs: str) -> list[Rule]:
    return [
        Rule(f"{ours}/attention/query", f"{theirs}.attention.self.query", "heads_in"),
        Rule(f"{ours}/attention/key", f"{theirs}.attention.self.key", "heads_in"),
        Rule(f"{ours}/attention/value", f"{theirs}.attention.self.value", "heads_in"),
        Rule(f"{ours}/attention/out", f"{theirs}.attention.output.dense", "heads_out"),
        Rule(f"{ours}/attention_norm", f"{theirs}.attention.output.LayerNorm", "ln"),
        Rule(f"{ours}/mlp/fc1", f"{theirs}.intermediate.dense", "dense"),
        Rule(f"{ours}/mlp/fc2", f"{theirs}.output.dense", "dense"),
        Rule(f"{ours}/mlp_norm", f"{theirs}.output.LayerNorm", "ln"),
    ]


MLM_RULES = [
    Rule("mlm_head/dense", "cls.predictions.transform.dense", "dense"),
    Rule("mlm_head/norm", "cls.predictions.transform.LayerNorm", "ln"),
    Rule("mlm_head/bias", "cls.predictions.bias", "param"),
]


def rules(paths: list[str], *, mlm: bool, hf_prefix: str = "bert.") -> list[Rule]:
    """Rules for HF layer j -> `paths[j]`, the embeddings, and the MLM head if `mlm`."""
    emb = f"{hf_prefix}embeddings"
    out = [
        Rule("txt/embeddings/word_embeddings", f"{emb}.word_embeddings", "embed"),
        Rule("txt/embeddings/position_embeddings", f"{emb}.position_embeddings", "embed"),
        Rule("txt/embeddings/token_type_embeddings", f"{emb}.token_type_embeddings", "embed"),
        Rule("txt/embeddings/norm", f"{emb}.LayerNorm", "ln"),
    ]
    for j, path in enumerate(paths):
        out += _layer_rules(path, f"{hf_prefix}encoder.layer.{j}")
    return out + (MLM_RULES if mlm else [])


def load(path: str) -> hf.HFCheckpoint:
    """A BERT through `BertForMaskedLM`; `has_mlm_head(ckpt)` says whether it held the head."""
    check_hf_config(hf.read_config(path), path)
    return hf.load(path, "BertForMaskedLM")


def has_mlm_head(ckpt: hf.HFCheckpoint) -> bool:
    return not any(k.startswith("cls.") for k in ckpt.missing)


def check_model_config(model: ml_collections.ConfigDict, ckpt: hf.HFCheckpoint) -> None:
    """Errors naming the config key and the checkpoint's value when the towers differ."""
    text, c, p = model.text, ckpt.config, ckpt.path
    layers = text.text_layers + text.fusion_layers
    pairs = [
        ("model.text.arch", text.get("arch", "bert"), "model_type", "bert"),
        ("model.text.width", text.width, "hidden_size", c.hidden_size),
        ("model.text.num_heads", text.num_heads, "num_attention_heads", c.num_attention_heads),
        ("model.text.mlp_dim", text.mlp_dim, "intermediate_size", c.intermediate_size),
        ("model.text.vocab_size", text.vocab_size, "vocab_size", c.vocab_size),
        ("model.text.act", text.get("act", "gelu"), "hidden_act", c.hidden_act),
        ("model.text.ln_eps", text.get("ln_eps", 1e-12), "layer_norm_eps", c.layer_norm_eps),
        ("model.text.text_layers + fusion_layers", layers, "num_hidden_layers", None),
    ]
    for key, ours, field, theirs in pairs:
        theirs = c.num_hidden_layers if theirs is None else theirs
        if ours != theirs:
            raise hf.mismatch(key, ours, "bert", p, field, theirs)
    if text.max_len > c.max_position_embeddings:
        raise hf.mismatch(
            "model.text.max_len", text.max_len, "bert", p, "max_position_embeddings",
            c.max_position_embeddings,
        )  # fmt: skip
    if c.type_vocab_size != TYPE_VOCAB_SIZE:
        raise ValueError(f"bert at {p} has type_vocab_size {c.type_vocab_size}, ours is 2")


def to_flat(ckpt: hf.HFCheckpoint, paths: list[str], *, mlm: bool, max_len: int) -> Flat:
    """Our root-level flat parameters; position rows beyond `max_len` are dropped."""
    flat = to_ours(rules(paths, mlm=mlm), ckpt.state, ckpt.config.num_attention_heads)
    pos = ("txt", "embeddings", "position_embeddings", "embedding")
    flat[pos] = flat[pos][:max_len]
    return flat


def import_for(model: ml_collections.ConfigDict, ckpt: hf.HFCheckpoint) -> Flat:
    """`config.init.text`: the parameters of `model` (ALBEF or dual encoder) this BERT sets."""
    check_model_config(model, ckpt)
    text = model.text
    paths = layer_paths(model.kind, text.text_layers, text.fusion_layers)
    mlm = model.kind == "albef" and has_mlm_head(ckpt)
    return to_flat(ckpt, paths, mlm=mlm, max_len=text.max_len)


def _encoder(config: Any, max_len: int) -> BertTextEncoder:
    return BertTextEncoder(
        vocab_size=config.vocab_size,
        width=config.hidden_size,
        num_heads=config.num_attention_heads,
        mlp_dim=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        max_len=max_len,
        type_vocab_size=config.type_vocab_size,
        act=config.hidden_act,
        ln_eps=config.layer_norm_eps,
    )


def hf_text_encoder(
    path: str, max_len: int | None = None
) -> tuple[BertTextEncoder, dict[str, Any]]:
    """A BERT checkpoint as (BertTextEncoder, params); `model.apply({'params': params}, ids,
    mask)` gives the last hidden states. `max_len` (default: all HF positions) trims positions."""
    ckpt = load(path)
    max_len = max_len or ckpt.config.max_position_embeddings
    paths = layer_paths("dual_encoder", ckpt.config.num_hidden_layers, 0)
    flat = to_flat(ckpt, paths, mlm=False, max_len=max_len)
    return _encoder(ckpt.config, max_len), unflatten(subtree(flat, "txt"))


def hf_mlm_head(path: str) -> tuple[BertMLMHead, dict[str, Any]]:
    """The checkpoint's MLM head as (BertMLMHead, params); apply it to hidden states and the
    encoder's word table (`params['embeddings']['word_embeddings']['embedding']`)."""
    ckpt = load(path)
    if not has_mlm_head(ckpt):
        raise ValueError(f"bert at {path} has no MLM head (cls.predictions.*)")
    flat = to_ours(MLM_RULES, ckpt.state, ckpt.config.num_attention_heads)
    c = ckpt.config
    head = BertMLMHead(c.vocab_size, act=c.hidden_act, ln_eps=c.layer_norm_eps)
    return head, unflatten(subtree(flat, "mlm_head"))


def hf_config_for(model: ml_collections.ConfigDict) -> Any:
    """A `transformers.BertConfig` for our text tower (all text + fusion layers)."""
    import transformers

    text = model.text
    return transformers.BertConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.width,
        num_hidden_layers=text.text_layers + text.fusion_layers,
        num_attention_heads=text.num_heads,
        intermediate_size=text.mlp_dim,
        hidden_act=text.get("act", "gelu"),
        layer_norm_eps=text.get("ln_eps", 1e-12),
        max_position_embeddings=text.max_len,
        type_vocab_size=TYPE_VOCAB_SIZE,
    )


def export(params: dict[str, Any], model: ml_collections.ConfigDict, output: str) -> str:
    """Saves our text tower (and `mlm_head` when present) as a HF BERT in `output`.

    With an MLM head the class is `BertForMaskedLM` (decoder tied to the word table), without
    one `BertModel` (no pooler). ALBEF's fusion layers become HF layers text_layers..., their
    cross-attention is dropped. Returns the class name.
    """
    if model.text.get("arch", "bert") != "bert":
        raise ValueError("export --tower text needs model.text.arch='bert'; use --tower clip")
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    mlm = any(k[0] == "mlm_head" for k in flat)
    cls_name = "BertForMaskedLM" if mlm else "BertModel"
    prefix = "bert." if mlm else ""
    config = hf_config_for(model)
    paths = layer_paths(model.kind, model.text.text_layers, model.text.fusion_layers)
    kwargs = {} if mlm else {"add_pooling_layer": False}
    state = to_hf(rules(paths, mlm=mlm, hf_prefix=prefix), flat, hf.hf_shapes(cls_name, config))
    if mlm:  # tied in HF too; the state dict lists both names
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    hf.save(cls_name, config, state, output, **kwargs)
    return cls_name
