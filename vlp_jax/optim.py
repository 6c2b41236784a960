"""AdamW with linear warm-up, cosine decay, a weight-decay mask and global-norm clipping."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from `warmup_init` to `learning_rate`, then cosine decay to
    `min_learning_rate` at `opt.schedule_steps`, or at `total_steps` where that is 0 (ALBEF:
    1e-5 → 1e-4 → 1e-5). A schedule longer than the run stops part-way down the cosine, as
    GRIT-VLP's 30-epoch cosine stopped after 20 epochs."""
    warmup = int(opt.warmup_steps)
    decay_steps = max(int(opt.get("schedule_steps", 0) or total_steps) - warmup, 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=float(opt.warmup_init),
        peak_value=float(opt.learning_rate),
        warmup_steps=warmup,
        decay_steps=warmup + decay_steps,
        end_value=float(opt.min_learning_rate),
    )


def weight_decay_mask(params: Any) -> Any:
    """Decay matrices and higher-rank tensors only; biases, LayerNorm scales, scalars are exempt.

    A deliberate difference from the timm-style filter ALBEF's code uses, which exempts tensors
    with `len(shape) == 1` and so decays a 0-d τ: decay would only pull the temperature
    toward 0."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(opt, total_steps)
    parts = []
    if opt.grad_clip_norm and opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(opt.b1),
            b2=float(opt.b2),
            eps=float(opt.eps),
            weight_decay=float(opt.weight_decay),
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*parts), schedule
