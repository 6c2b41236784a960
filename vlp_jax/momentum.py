"""ALBEF's momentum model and feature queues (Li et al., NeurIPS 2021, §3.3), as train state.

    θ_m ← m · θ_m + (1 − m) · θ            every step, before the forward (m = 0.995)
    queues Q_v, Q_t ∈ R^{Q×E}: the momentum features of each global batch are enqueued after the
    step, ptr ← (ptr + G) mod Q (Q a multiple of G, as ALBEF asserts)
    α_step = α · min(1, step / ramp)        distillation weight, ramped over the first epoch

The teacher (θ_m, the queues, α_step) reaches the objective inside the batch as
`batch["teacher"]`, so objectives stay pure functions of (params, batch, rng); the ITC and MLM
distillation losses are `losses.itc_distill` and `losses.mlm_distill_loss`. The teacher runs in
train mode (dropout on), as in ALBEF. `config.momentum.enabled` switches it all on (ALBEF
only; `configs/albef.py` uses it, `configs/grit_vlp.py` does not, as GRIT-VLP drops it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

ENQUEUE_KEYS = ("enqueue/image", "enqueue/text")


def enabled(config: ml_collections.ConfigDict) -> bool:
    return bool(config.get("momentum") and config.momentum.enabled)


def init_queue(rng: jax.Array, size: int, dim: int) -> dict[str, jax.Array]:
    """Random unit vectors (ALBEF's initialisation) and a zero pointer."""
    k_image, k_text = jax.random.split(rng)

    def unit(key):
        x = jax.random.normal(key, (size, dim), jnp.float32)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    return {"image": unit(k_image), "text": unit(k_text), "ptr": jnp.zeros((), jnp.int32)}


def init_state(params: Any, rng: jax.Array, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The momentum state of a fresh run: θ_m = θ, random queues."""
    return {
        "params": jax.tree.map(jnp.copy, params),
        "queue": init_queue(rng, int(config.momentum.queue_size), int(config.model.embed_dim)),
    }


def ema(teacher: Any, params: Any, decay: float) -> Any:
    return jax.tree.map(lambda m, p: decay * m + (1.0 - decay) * p, teacher, params)


def enqueue(queue: dict[str, jax.Array], image: jax.Array, text: jax.Array) -> dict[str, jax.Array]:
    """Writes the global batch's momentum features at ptr; ptr advances by G (mod Q)."""
    ptr = queue["ptr"]
    return {
        "image": jax.lax.dynamic_update_slice(queue["image"], image.astype(jnp.float32), (ptr, 0)),
        "text": jax.lax.dynamic_update_slice(queue["text"], text.astype(jnp.float32), (ptr, 0)),
        "ptr": (ptr + image.shape[0]) % queue["image"].shape[0],
    }


def alpha_at(step: jax.Array, alpha: float, ramp_steps: int) -> jax.Array:
    if ramp_steps <= 0:
        return jnp.asarray(alpha, jnp.float32)
    return alpha * jnp.minimum(1.0, step.astype(jnp.float32) / ramp_steps)


def before_step(state: dict[str, Any], batch: dict, config: ml_collections.ConfigDict):
    """(EMA-updated momentum params, the batch with `teacher` added)."""
    m = config.momentum
    teacher_params = ema(state["momentum"]["params"], state["params"], float(m.decay))
    teacher = {
        "params": teacher_params,
        "queue": state["momentum"]["queue"],
        "alpha": alpha_at(state["step"], float(m.alpha), int(m.alpha_ramp_steps)),
    }
    return teacher_params, {**batch, "teacher": teacher}


def after_step(teacher_params: Any, queue: dict, metrics: dict) -> tuple[dict, dict]:
    """(the new momentum state, metrics without the features it enqueued)."""
    metrics = dict(metrics)
    image, text = (metrics.pop(k) for k in ENQUEUE_KEYS)
    return {"params": teacher_params, "queue": enqueue(queue, image, text)}, metrics
