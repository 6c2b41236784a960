"""Config building blocks shared by every recipe in `configs/`, and their validation.

A recipe is a `get_config(arg)` that starts from `base_config()` and changes fields. The keys made
here are the public interface: `--config.<key>=value` overrides any of them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from vlp_jax import sharding
from vlp_jax.grit import SCOPES as GRIT_SCOPES
from vlp_jax.models.vit import POS_EMBED_INITS
from vlp_jax.word_swap import DEFAULT_STOP_WORDS

MODEL_KINDS = ("albef", "dual_encoder")
TEXT_ARCHS = ("bert", "clip")
ACTIVATIONS = ("gelu", "quick_gelu")
DTYPES = ("float32", "bfloat16")
ITM_MODES = ("sample", "argmax")
SYNTH_TEACHERS = ("fusion_mlm", "text_mlm")
DATASETS = ("shapes", "mixture")
SOURCE_FORMATS = {  # a `mixture` entry's format → its required keys
    "annotations": ("annotations", "images"),
    "array_record": ("path",),
    "tfds": ("name", "split"),
}
BAD_RECORD_POLICIES = ("raise", "skip")
NORMALIZATIONS = ("clip", "imagenet", "half")  # vlp_jax.data.pipeline.NORMALIZATIONS
OBJECTIVES = {
    "albef": ("itc", "itc_consistency", "hn_nce", "concepts", "itm", "mlm"),
    "dual_encoder": ("itc", "itc_consistency", "hn_nce", "concepts"),
}

# Text tower sizes: (width, heads, mlp_dim, text_layers, fusion_layers).
TEXT_SIZES = {
    "mu": (32, 2, 64, 1, 1),
    "demo": (128, 4, 512, 2, 2),
    "tiny": (192, 3, 768, 2, 2),
    "base": (768, 12, 3072, 6, 6),
}


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `configs/x.py:key=value,flag` into a ConfigDict typed by `defaults`.

    A bare word sets the first default key (`albef.py:tiny` == `albef.py:size=tiny`); unknown keys
    are an error naming the key and the accepted ones.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    first = next(iter(defaults)) if defaults else None
    for part in filter(None, (p.strip() for p in arg.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            key, value = (first, key) if first is not None else (key, "True")
        if key not in defaults:
            raise ValueError(
                f"config argument {key!r} is unknown; accepted: {sorted(defaults)} (got {arg!r})"
            )
        default = defaults[key]
        if isinstance(default, bool):
            typed: Any = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            typed = int(value)
        elif isinstance(default, float):
            typed = float(value)
        else:
            typed = value
        out[key] = typed
    return out


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`configs/x.py:arg` → that file's `get_config(arg)`, as `--config` would load it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or module_spec.loader is None or not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def product(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """A grid sweep: `product(**{"optimizer.learning_rate": [1e-4, 3e-4], "seed": [0, 1]})` →
    four override dicts, for a config's `get_sweep` (see launch/sweep.py)."""
    points: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def model_config(
    kind: str = "albef",
    *,
    image_size: int = 256,
    image_variant: str = "B/16",
    text_size: str = "base",
    vocab_size: int = 30522,
    max_len: int = 32,
    embed_dim: int = 256,
    dtype: str = "float32",
) -> ml_collections.ConfigDict:
    width, heads, mlp, text_layers, fusion_layers = TEXT_SIZES[text_size]
    return ml_collections.ConfigDict(
        {
            "kind": kind,
            "embed_dim": embed_dim,
            "temperature_init": 0.07,
            # Std of every randomly initialised weight matrix and embedding (BERT/timm: 0.02);
            # the demo's narrow towers learn faster at about 1/sqrt(width).
            "init_std": 0.02,
            "num_concepts": 0,  # > 0: a concept-distillation head (DiHT; data.concept_targets)
            "dtype": dtype,
            "image": {
                "variant": image_variant,
                "image_size": image_size,
                "patch_size": 16,
                "width": 768,
                "depth": 12,
                "num_heads": 12,
                "mlp_ratio": 4.0,
                "dropout": 0.0,
                "remat": False,
                # CLIP's ViT: a LayerNorm before the blocks, quick_gelu, LN eps 1e-5 (HF ViT 1e-12).
                "pre_norm": False,
                "act": "gelu",
                "ln_eps": 1e-6,
                "pos_embed_init": "normal",  # or "sincos2d" (unit-scale 2-D sin/cos start)
            },
            "text": {
                "vocab_size": vocab_size,
                "width": width,
                "num_heads": heads,
                "mlp_dim": mlp,
                "text_layers": text_layers,
                "fusion_layers": fusion_layers,
                "max_len": max_len,
                "dropout": 0.1,
                "remat": False,
                # "clip": CLIP's causal pre-LN tower pooled at EOS (model.kind="dual_encoder").
                "arch": "bert",
                "act": "gelu",
                "ln_eps": 1e-12,
            },
        }
    )


def base_config() -> ml_collections.ConfigDict:
    """Every key a recipe shares, with ALBEF's defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 512  # global
    c.grad_accum_steps = 1  # >1: the batch runs as this many microbatches per update
    c.total_steps = 100_000
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 1_000
    c.keep_checkpoints = 3
    c.model = model_config()
    c.data = ml_collections.ConfigDict(
        {
            "name": "shapes",
            "tokenizer": "shapes",
            "max_len": 32,
            "image_size": 256,  # model input resolution
            "source_image_size": 64,  # rendering resolution of the embedded dataset
            "train_examples": 200_000,
            "crop_scale": (0.5, 1.0),
            "hflip_prob": 0.5,  # flips swap "left"/"right" in the caption too
            "read_threads": 2,
            "prefetch_batches": 4,
            # DiHT: a directory written by `python -m vlp_jax.tools.concept_targets`; its teacher
            # distributions join each training example as `concept_targets`.
            "concept_targets": "",
            # data.name="mixture": real pairs from `train_sources` (name → an entry made by
            # annotation_source / array_record_source / tfds_source, sampled by weight) and
            # `eval_source` (one entry; retrieval with every caption of each image).
            "train_sources": ml_collections.ConfigDict(),
            "eval_source": ml_collections.ConfigDict(),
            "clean_captions": True,  # ALBEF's pre_caption on real captions (not on shapes)
            "max_words": 30,
            # A malformed annotation record: "raise" (naming file:line) or "skip" (counted).
            "on_bad_record": "raise",
            # Missing/corrupt images are replaced by the next pair and counted (data/skipped);
            # above this fraction of the examples drawn the run stops.
            "max_skip_fraction": 0.01,
            "decode_max_side": 0,  # > 0: JPEGs decode at a reduced size at least this large
            # Image mean/std: "clip" (ALBEF), "imagenet" (DeiT/timm), "half" (Google's ViT).
            "normalization": "clip",
        }
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "learning_rate": 1e-4,
            "min_learning_rate": 1e-5,
            "warmup_init": 1e-5,
            "warmup_steps": 2_000,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.02,
            "grad_clip_norm": 5.0,
            # > 0: the cosine reaches min_learning_rate here rather than at total_steps.
            "schedule_steps": 0,
        }
    )
    c.loss_weights = ml_collections.ConfigDict(
        {"itc": 1.0, "itc_consistency": 0.0, "hn_nce": 0.0, "concepts": 0.0, "itm": 1.0, "mlm": 1.0}
    )
    # DiHT's HN-NCE (losses.hn_nce): α scales the positive in the denominator, β the importance
    # weights of the negatives; α = 1, β = 0 is ITC.
    c.hn_nce = ml_collections.ConfigDict({"alpha": 1.0, "beta": 0.5, "stop_grad_weights": False})
    c.itm = ml_collections.ConfigDict(
        {
            "mode": "sample",  # "argmax": GRIT-VLP's hardest negative
            "sample_temperature": 0.0,  # 0: ALBEF's, the learned ITC temperature
            # > 0 steps: negatives start easy, drawn at warmup_temperature, and the sampling
            # temperature moves linearly to the one above over warmup_steps (from scratch,
            # hard negatives from step 0 leave ITM at chance for hundreds of steps).
            "warmup_temperature": 0.0,
            "warmup_steps": 0,
            # > 0: never mine a candidate with cosine ≥ cap × the positive's (likely a false
            # negative; losses.itm_negatives).
            "positive_ratio_cap": 0.0,
            # > 0: with this probability a caption naming a left/right (above/below) relation
            # gets its own image mirrored as its negative image instead of the mined one.
            "flip_negatives": 0.0,
            # ViLTA: one more negative per pair, its caption rewritten by the MLM head (vilta.py).
            "synth": {"enabled": False, "teacher": "fusion_mlm", "temperature": 1.0, "top_k": 0},
            # One more negative per pair: the caption with two of its words swapped where the
            # MLM pass finds the swap plausible (word_swap.py); needs loss_weights.mlm > 0.
            "swap": {
                "enabled": False,
                "top_k": 5,
                "temperature": 1.0,
                "stop_words": DEFAULT_STOP_WORDS,
                # Also NegCLIP's ITC: the swapped captions as extra image→text columns.
                "itc": False,
            },
        }
    )
    c.mlm = ml_collections.ConfigDict({"mask_prob": 0.15})
    # ALBEF's momentum (EMA) teacher, feature queues and distillation (vlp_jax/momentum.py):
    # α ramps from 0 over alpha_ramp_steps (ALBEF: the first epoch); queue_size % batch_size == 0.
    c.momentum = ml_collections.ConfigDict(
        {
            "enabled": False,
            "decay": 0.995,
            "queue_size": 65_536,
            "alpha": 0.4,
            "alpha_ramp_steps": 0,
        }
    )
    # GRIT-VLP's grouped batches (vlp_jax/grit.py); search_space: a multiple of batch_size.
    # refresh_every_steps: 0 regroups every epoch (the paper), K > 0 every K steps.
    # scope: "global" groups all processes' pairs together; "process" groups each process's own
    # (search_space per process, a multiple of the local batch).
    # save_embeddings: write each epoch's collected pairs to WORKDIR/grit_embeddings*.npz as it
    # ends; warm_start: a path or glob of such files, to group epoch 0 by instead of at random.
    c.grit = ml_collections.ConfigDict(
        {
            "enabled": False,
            "search_space": 1920,
            "refresh_every_steps": 0,
            "scope": "global",
            "save_embeddings": False,
            "warm_start": "",
        }
    )
    # Axes data × fsdp × tensor (-1: the remaining devices). E.g. (("data", -1), ("fsdp", 4)).
    c.mesh = (("data", -1),)
    # Logical axis → mesh axes; one table for every mesh (see vlp_jax.sharding.DEFAULT_RULES).
    c.sharding_rules = sharding.DEFAULT_RULES
    c.eval = ml_collections.ConfigDict(
        {"split": "test", "batch_size": 200, "num_examples": 1_000, "itm_rerank_k": 0}
    )
    c.tensorboard = True
    # Pretrained towers imported into a fresh run (never on resume): a local Hugging Face
    # directory or a hub name; "" = random init. See vlp_jax/weights and
    # `weights.model_config_from_hf` for a matching `config.model`.
    c.init = ml_collections.ConfigDict({"text": "", "image": "", "clip": ""})
    return c


def annotation_source(annotations: str, images: str, weight: float = 1.0) -> dict[str, Any]:
    """A `data.train_sources` / `data.eval_source` entry: an ALBEF-style JSON (list or lines) of
    records with `image` (relative to `images`), `caption` (string or list), `image_id`."""
    return {"format": "annotations", "annotations": annotations, "images": images, "weight": weight}


def array_record_source(path: str, weight: float = 1.0) -> dict[str, Any]:
    """An entry for a directory packed by `python -m vlp_jax.tools.to_array_record`."""
    return {"format": "array_record", "path": path, "weight": weight}


def tfds_source(
    name: str,
    split: str,
    *,
    data_dir: str = "",
    image_key: str = "image",
    caption_key: str = "captions/text",
    captions_per_example: int = 0,
    weight: float = 1.0,
) -> dict[str, Any]:
    """An entry for a prepared TFDS dataset (e.g. `coco_captions`); see data/tfds_source.py."""
    return {
        "format": "tfds",
        "name": name,
        "split": split,
        "data_dir": data_dir,
        "image_key": image_key,
        "caption_key": caption_key,
        "captions_per_example": captions_per_example,
        "weight": weight,
    }


def use_base_towers(
    c: ml_collections.ConfigDict, kind: str, *, image_size: int, max_len: int
) -> None:
    """ViT-B/16 + BERT-base (WordPiece `bert-base-uncased`) in bfloat16 at `image_size`."""
    c.data.tokenizer = "bert-base-uncased"
    c.data.image_size = image_size
    c.data.max_len = max_len
    c.model = model_config(kind, image_size=image_size, image_variant="B/16")
    c.model.text.max_len = 512
    c.model.dtype = "bfloat16"


def use_demo_towers(c: ml_collections.ConfigDict, kind: str) -> None:
    """The CPU-sized towers of `make demo` on `shapes` (32 px, 8 px patches, width 128)."""
    c.data.image_size = 32
    c.data.max_len = 24
    c.data.crop_scale = (0.8, 1.0)
    c.model = model_config(
        kind,
        image_size=32,
        image_variant="",
        text_size="demo",
        vocab_size=128,
        max_len=24,
        embed_dim=64,
    )
    c.model.image.update(patch_size=8, width=128, depth=4, num_heads=4, mlp_ratio=2.0)
    c.model.text.update(mlp_dim=256, dropout=0.0)


def use_demo_run(c: ml_collections.ConfigDict, kind: str, *, steps: int) -> None:
    """`make demo`'s schedule: batch 64, lr 1e-3 with 200 warm-up steps, one evaluation at the
    end (with ITM re-ranking of the top 16), on the demo towers."""
    c.batch_size = 64
    c.total_steps = steps
    c.log_every_steps = 50
    c.eval_every_steps = steps
    c.checkpoint_every_steps = 500
    c.data.read_threads = 2
    use_demo_towers(c, kind)
    c.optimizer.learning_rate = 1e-3
    c.optimizer.min_learning_rate = 1e-5
    c.optimizer.warmup_init = 1e-5
    c.optimizer.warmup_steps = 200
    c.optimizer.weight_decay = 0.02
    c.eval.batch_size = 200
    c.eval.itm_rerank_k = 16


def use_tiny_run(c: ml_collections.ConfigDict, kind: str, *, steps: int) -> None:
    """Micro towers and a few steps: every code path of a recipe in seconds, for tests."""
    c.batch_size = 16
    c.total_steps = steps
    c.log_every_steps = 2
    c.eval_every_steps = steps
    c.checkpoint_every_steps = steps // 2
    c.data.image_size = 32
    c.data.max_len = 24
    c.data.train_examples = 2_000
    c.data.read_threads = 1
    c.model = model_config(
        kind,
        image_size=32,
        image_variant="mu",
        text_size="mu",
        vocab_size=128,
        max_len=24,
        embed_dim=32,
    )
    c.optimizer.warmup_steps = 2
    c.eval.num_examples = 64
    c.eval.batch_size = 32
    c.tensorboard = False


def _accepted(key: str, value: Any, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"config.{key}={value!r} is not accepted; use one of {list(accepted)}")


def _positive(config: ml_collections.ConfigDict, *keys: str) -> None:
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        if not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"config.{key}={value!r} must be a positive number")


def _validate_towers(config: ml_collections.ConfigDict) -> None:
    """The tower architecture options and `init`; `.get` keeps older configs valid."""
    image, text = config.model.image, config.model.text
    arch = text.get("arch", "bert")
    _accepted("model.text.arch", arch, TEXT_ARCHS)
    _accepted("model.text.act", text.get("act", "gelu"), ACTIVATIONS)
    _accepted("model.image.act", image.get("act", "gelu"), ACTIVATIONS)
    _accepted("model.image.pos_embed_init", image.get("pos_embed_init", "normal"), POS_EMBED_INITS)
    init_std = config.model.get("init_std", 0.02)
    if isinstance(init_std, bool) or not isinstance(init_std, int | float) or init_std <= 0:
        raise ValueError(f"config.model.init_std={init_std!r} must be a positive number")
    for key in ("image.ln_eps", "text.ln_eps"):
        tower, field = key.split(".")
        value = config.model[tower].get(field, 1e-6)
        if not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"config.model.{key}={value!r} must be in (0, 1)")
    if arch == "clip" and config.model.kind != "dual_encoder":
        raise ValueError(
            f"config.model.text.arch='clip' needs config.model.kind='dual_encoder' (ALBEF's "
            f"fusion layers are BERT layers), got {config.model.kind!r}"
        )
    init = config.get("init") or {}
    if init.get("clip") and (init.get("text") or init.get("image")):
        raise ValueError(
            "config.init.clip sets both towers; leave config.init.text and config.init.image empty"
        )
    if init.get("clip") and arch != "clip":
        raise ValueError(
            "config.init.clip needs config.model.text.arch='clip' (and a matching model config: "
            "`config.model = weights.model_config_from_hf(config.model, clip=PATH)`)"
        )
    if init.get("text") and arch != "bert":
        raise ValueError("config.init.text imports a BERT; it needs config.model.text.arch='bert'")


def _validate_source(key: str, entry: Mapping[str, Any]) -> None:
    fmt = entry.get("format")
    if fmt not in SOURCE_FORMATS:
        raise ValueError(
            f"config.{key}.format={fmt!r} is not accepted; use one of {list(SOURCE_FORMATS)}"
        )
    for field in SOURCE_FORMATS[fmt]:
        if not entry.get(field):
            raise ValueError(f"config.{key}.{field} must be set for format {fmt!r}")
    local_paths = {"annotations": ("annotations", "images"), "array_record": ("path",)}
    for field in local_paths.get(fmt, ()):
        if not os.path.exists(entry[field]):
            raise ValueError(f"config.{key}.{field}={entry[field]!r} does not exist")
    if entry.get("weight", 1.0) <= 0:
        raise ValueError(f"config.{key}.weight={entry.get('weight')} must be > 0")


def _validate_sources(config: ml_collections.ConfigDict) -> None:
    data = config.data
    if not data.train_sources:
        raise ValueError(
            "config.data.name='mixture' needs config.data.train_sources: name → an entry from "
            "config_lib.annotation_source / array_record_source / tfds_source"
        )
    for name, entry in data.train_sources.items():
        _validate_source(f"data.train_sources.{name}", entry)
    if not data.eval_source:
        raise ValueError("config.data.name='mixture' needs config.data.eval_source (one entry)")
    _validate_source("data.eval_source", data.eval_source)
    weights = {float(e.get("weight", 1.0)) for e in data.train_sources.values()}
    if config.grit.enabled and len(weights) > 1:
        raise ValueError(
            "config.grit.enabled groups whole epochs of the concatenated train_sources, so their "
            f"weights must be equal (got {sorted(weights)})"
        )
    if not 0.0 <= data.max_skip_fraction <= 1.0:
        raise ValueError(
            f"config.data.max_skip_fraction={data.max_skip_fraction} must be in [0, 1]"
        )


def _validate_momentum(config: ml_collections.ConfigDict) -> None:
    m = config.get("momentum")
    if not (m and m.enabled):
        return
    if config.model.kind != "albef":
        raise ValueError(
            f"config.momentum.enabled is ALBEF's (its ITC and MLM distillation); "
            f"model.kind={config.model.kind!r} has no MLM"
        )
    if config.grad_accum_steps != 1:
        raise ValueError(
            "config.momentum.enabled needs config.grad_accum_steps=1: the queue takes the whole "
            "batch's momentum features at once"
        )
    if m.queue_size < config.batch_size or m.queue_size % config.batch_size:
        raise ValueError(
            f"config.momentum.queue_size={m.queue_size} must be a multiple of "
            f"config.batch_size={config.batch_size} (the queue advances a whole batch at a time)"
        )
    if not 0.0 < m.decay < 1.0:
        raise ValueError(f"config.momentum.decay={m.decay} must be in (0, 1)")
    if not 0.0 <= m.alpha <= 1.0:
        raise ValueError(f"config.momentum.alpha={m.alpha} must be in [0, 1]")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key and what it accepts."""
    _accepted("model.kind", config.model.kind, MODEL_KINDS)
    _accepted("model.dtype", config.model.dtype, DTYPES)
    _accepted("itm.mode", config.itm.mode, ITM_MODES)
    if config.itm.get("warmup_steps", 0):
        if config.itm.mode != "sample":
            raise ValueError(
                f"config.itm.warmup_steps={config.itm.warmup_steps} anneals the sampling "
                f"temperature of config.itm.mode='sample', not {config.itm.mode!r}"
            )
        _positive(config, "itm.warmup_temperature", "itm.warmup_steps")
    _validate_towers(config)
    _accepted("data.name", config.data.name, DATASETS)
    _accepted("data.on_bad_record", config.data.on_bad_record, BAD_RECORD_POLICIES)
    _accepted("data.normalization", config.data.normalization, NORMALIZATIONS)
    if config.data.name == "mixture":
        _validate_sources(config)
    _accepted("itm.synth.teacher", config.itm.synth.teacher, SYNTH_TEACHERS)
    if (
        config.itm.synth.enabled
        and config.itm.synth.teacher == "fusion_mlm"
        and not config.loss_weights.get("mlm", 0.0)
    ):
        raise ValueError(
            "config.itm.synth.teacher='fusion_mlm' reuses the MLM pass, but loss_weights.mlm=0; "
            "use itm.synth.teacher='text_mlm'"
        )
    if config.itm.swap.enabled and not config.loss_weights.get("mlm", 0.0):
        raise ValueError(
            "config.itm.swap.enabled=True picks its words with the MLM pass, but loss_weights.mlm=0"
        )
    if config.itm.swap.enabled and config.itm.swap.itc and config.momentum.enabled:
        raise ValueError(
            "config.itm.swap.itc=True adds columns to the plain ITC; with momentum.enabled=True "
            "the ITC is ALBEF's distilled one (set one of them to False)"
        )
    _positive(
        config,
        "batch_size",
        "grad_accum_steps",
        "total_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "optimizer.learning_rate",
        "data.max_len",
    )
    schedule_steps = config.optimizer.get("schedule_steps", 0)
    if schedule_steps and schedule_steps < config.total_steps:
        raise ValueError(
            f"config.optimizer.schedule_steps={schedule_steps} ends the cosine before "
            f"config.total_steps={config.total_steps}; use 0 (the run's length) or more"
        )
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f"config.batch_size={config.batch_size} does not split into "
            f"config.grad_accum_steps={config.grad_accum_steps} microbatches"
        )
    scope = config.grit.get("scope", "global")
    _accepted("grit.scope", scope, GRIT_SCOPES)
    if config.grit.get("refresh_every_steps", 0) < 0:
        raise ValueError(
            f"config.grit.refresh_every_steps={config.grit.refresh_every_steps} must be >= 0 "
            "(0 regroups every epoch)"
        )
    if config.grit.enabled and scope == "global" and config.grit.search_space % config.batch_size:
        raise ValueError(
            f"config.grit.search_space={config.grit.search_space} must be a multiple of "
            f"config.batch_size={config.batch_size} (grouped batches are cut from search spaces)"
        )
    if config.grit.enabled and config.grad_accum_steps > 1:
        raise ValueError(
            "config.grit.enabled needs config.grad_accum_steps=1: the sampler collects each "
            "step's embeddings of the whole batch"
        )
    _validate_momentum(config)
    if config.hn_nce.alpha < 0:
        raise ValueError(f"config.hn_nce.alpha={config.hn_nce.alpha} must be >= 0")
    concepts_on = bool(config.loss_weights.get("concepts", 0.0))
    if concepts_on and not (config.model.num_concepts > 0 and config.data.concept_targets):
        raise ValueError(
            "config.loss_weights.concepts > 0 needs config.data.concept_targets (a directory from "
            "`python -m vlp_jax.tools.concept_targets`) and config.model.num_concepts > 0"
        )
    if not 0.0 < config.mlm.mask_prob < 1.0:
        raise ValueError(f"config.mlm.mask_prob={config.mlm.mask_prob} must be in (0, 1)")
    usable = OBJECTIVES[config.model.kind]
    weights: Mapping[str, float] = config.loss_weights
    for name, weight in weights.items():
        if name not in usable and weight:
            raise ValueError(
                f"config.loss_weights.{name}={weight} but model.kind={config.model.kind!r} "
                f"has no such objective; its objectives are {list(usable)}"
            )
        if weight < 0:
            raise ValueError(f"config.loss_weights.{name}={weight} must be >= 0")
    if not any(weights.get(name, 0.0) for name in usable):
        raise ValueError(f"config.loss_weights: every objective of {list(usable)} is switched off")
    if config.data.max_len > config.model.text.max_len:
        raise ValueError(
            f"config.data.max_len={config.data.max_len} exceeds the model's position table "
            f"config.model.text.max_len={config.model.text.max_len}"
        )
    if config.data.image_size != config.model.image.image_size:
        raise ValueError(
            f"config.data.image_size={config.data.image_size} differs from "
            f"config.model.image.image_size={config.model.image.image_size}"
        )
