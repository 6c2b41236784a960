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

MODEL_KINDS = ("albef", "dual_encoder")
DTYPES = ("float32", "bfloat16")
ITM_MODES = ("sample", "argmax")
SYNTH_TEACHERS = ("fusion_mlm", "text_mlm")
DATASETS = ("shapes",)
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
            # > 0: never mine a candidate with cosine ≥ cap × the positive's (likely a false
            # negative; losses.itm_negatives).
            "positive_ratio_cap": 0.0,
            # > 0: with this probability a caption naming a left/right (above/below) relation
            # gets its own image mirrored as its negative image instead of the mined one.
            "flip_negatives": 0.0,
            # ViLTA: one more negative per pair, its caption rewritten by the MLM head (vilta.py).
            "synth": {"enabled": False, "teacher": "fusion_mlm", "temperature": 1.0, "top_k": 0},
        }
    )
    c.mlm = ml_collections.ConfigDict({"mask_prob": 0.15})
    # GRIT-VLP's grouped batches (vlp_jax/grit.py); search_space: a multiple of batch_size.
    c.grit = ml_collections.ConfigDict({"enabled": False, "search_space": 1920})
    # Axes data × fsdp × tensor (-1: the remaining devices). E.g. (("data", -1), ("fsdp", 4)).
    c.mesh = (("data", -1),)
    # Logical axis → mesh axes; one table for every mesh (see vlp_jax.sharding.DEFAULT_RULES).
    c.sharding_rules = sharding.DEFAULT_RULES
    c.eval = ml_collections.ConfigDict(
        {"split": "test", "batch_size": 200, "num_examples": 1_000, "itm_rerank_k": 0}
    )
    c.tensorboard = True
    return c


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
    # From scratch on `shapes`, negatives drawn with the (quickly small) ITC temperature are
    # near-duplicates the fusion cannot tell apart yet, and ITM stays at chance for ~500 of the
    # 1,100 steps; drawn at τ = 1 they are still similarity-weighted and ITM learns from step
    # ~200 (README, "The demo").
    c.itm.sample_temperature = 1.0
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


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key and what it accepts."""
    _accepted("model.kind", config.model.kind, MODEL_KINDS)
    _accepted("model.dtype", config.model.dtype, DTYPES)
    _accepted("itm.mode", config.itm.mode, ITM_MODES)
    _accepted("data.name", config.data.name, DATASETS)
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
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f"config.batch_size={config.batch_size} does not split into "
            f"config.grad_accum_steps={config.grad_accum_steps} microbatches"
        )
    if config.grit.enabled and config.grit.search_space % config.batch_size:
        raise ValueError(
            f"config.grit.search_space={config.grit.search_space} must be a multiple of "
            f"config.batch_size={config.batch_size} (grouped batches are cut from search spaces)"
        )
    if config.grit.enabled and config.grad_accum_steps > 1:
        raise ValueError(
            "config.grit.enabled needs config.grad_accum_steps=1: the sampler collects each "
            "step's embeddings of the whole batch"
        )
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
