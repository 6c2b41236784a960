"""Pre-training objectives as pure functions of arrays.

Global-batch objectives (`itc`, `itm_negatives`) are written once, for one shard of rows meeting the
all-gathered columns of every shard. Called under a mesh whose batch axes hold more than one device
(`jax.set_mesh`), they run in `jax.shard_map` with `lax.all_gather`; called without one they see the
whole batch as a single shard. Either way the value and gradients are those of the global formula,
while a device only holds a (local x global) similarity block, never (global x global).

ITC (ALBEF / CLIP InfoNCE), with s = image_emb @ text_emb.T / temperature over the global batch G:

    L_itc = 1/2 * [ -1/G sum_i log softmax_j(s_ij)[i]  -1/G sum_j log softmax_i(s_ij)[j] ]

ITM hard negatives (ALBEF): for image i a negative text j ~ softmax_j(s_ij) over j whose image id
differs from i's (`mode="sample"`), or its argmax (`mode="argmax"`, GRIT-VLP); symmetrically for
texts. MLM: BERT's 80/10/10 corruption of a Bernoulli(p) subset of real, non-special tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from vlp_jax.sharding import active_batch_axes

AxisName = tuple[str, ...] | None


# ---------------------------------------------------------------------------------------------
# Running a (local rows x gathered columns) computation on whatever mesh is active.


def _gather(x: jax.Array, axis: AxisName) -> jax.Array:
    return x if axis is None else lax.all_gather(x, axis, tiled=True)


def _row_offset(num_local_rows: int, axis: AxisName) -> jax.Array:
    return jnp.asarray(0) if axis is None else lax.axis_index(axis) * num_local_rows


def _psum(x: jax.Array, axis: AxisName) -> jax.Array:
    return x if axis is None else lax.psum(x, axis)


def on_batch_shards(
    local_fn: Callable[..., jax.Array | tuple[jax.Array, ...]],
    batched: Sequence[jax.Array],
    replicated: Sequence[jax.Array] = (),
    *,
    out_batched: tuple[bool, ...] = (False,),
):
    """Calls `local_fn(*batched, *replicated, axis=...)` once per batch shard of the active mesh.

    `batched` arrays are split along dim 0 over the mesh's batch axes, `replicated` ones are
    whole on every shard. `out_batched[k]` says whether output k is per-row (concatenated back
    along dim 0) or a scalar reduced inside `local_fn` with `psum` (replicated).
    """
    axes = active_batch_axes()
    if axes is None:
        return local_fn(*batched, *replicated, axis=None)
    spec = P(axes)
    out_specs = tuple(spec if b else P() for b in out_batched)
    single = len(out_batched) == 1

    def body(*args):
        out = local_fn(*args, axis=axes)
        return (out,) if single else out

    mapped = jax.shard_map(
        body,
        in_specs=tuple([spec] * len(batched) + [P()] * len(replicated)),
        out_specs=out_specs,
    )
    out = mapped(*batched, *replicated)
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# Image-text contrastive loss.


def _itc_local(image_emb, text_emb, temperature, *, axis: AxisName) -> jax.Array:
    local = image_emb.shape[0]
    all_text = _gather(text_emb, axis)
    all_image = _gather(image_emb, axis)
    labels = _row_offset(local, axis) + jnp.arange(local)
    i2t = image_emb @ all_text.T / temperature
    t2i = text_emb @ all_image.T / temperature
    ce_sum = (
        optax.softmax_cross_entropy_with_integer_labels(i2t, labels).sum()
        + optax.softmax_cross_entropy_with_integer_labels(t2i, labels).sum()
    )
    return _psum(ce_sum, axis) / (2 * all_text.shape[0])


def itc(image_emb: jax.Array, text_emb: jax.Array, temperature: jax.Array) -> jax.Array:
    """Symmetric InfoNCE over the global batch; inputs are L2-normalised [G, E] embeddings."""
    temperature = jnp.asarray(temperature, jnp.float32)
    return on_batch_shards(_itc_local, (image_emb, text_emb), (temperature,))


def _itc_text_negatives_local(
    image_emb, text_emb, negative_text, negative_valid, temperature, *, axis
) -> jax.Array:
    local = image_emb.shape[0]
    all_text = _gather(text_emb, axis)
    all_negative = _gather(negative_text, axis)
    usable = _gather(negative_valid, axis) > 0
    labels = _row_offset(local, axis) + jnp.arange(local)
    to_negatives = jnp.where(usable[None], image_emb @ all_negative.T, -1e9)
    i2t = jnp.concatenate([image_emb @ all_text.T, to_negatives], axis=1) / temperature
    t2i = text_emb @ _gather(image_emb, axis).T / temperature
    ce_sum = (
        optax.softmax_cross_entropy_with_integer_labels(i2t, labels).sum()
        + optax.softmax_cross_entropy_with_integer_labels(t2i, labels).sum()
    )
    return _psum(ce_sum, axis) / (2 * all_text.shape[0])


def itc_with_text_negatives(
    image_emb: jax.Array,
    text_emb: jax.Array,
    negative_text_emb: jax.Array,
    negative_valid: jax.Array,
    temperature: jax.Array,
) -> jax.Array:
    """NegCLIP's ITC (Yuksekgonul et al., 2023): `itc` whose image→text rows also meet G extra
    text columns, hard negatives such as each caption with two words swapped (word_swap.py):

        s_i2t = v [T ; T⁻]ᵀ / τ  (columns with negative_valid = 0 left out),  s_t2i = t Vᵀ / τ
        L = 1/(2G) Σ_b [ CE(s_i2t[b], b) + CE(s_t2i[b], b) ]

    All inputs [G, ...] are batch-sharded; global over the mesh like `itc`.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    return on_batch_shards(
        _itc_text_negatives_local,
        (image_emb, text_emb, negative_text_emb, negative_valid),
        (temperature,),
    )


def _itc_distill_local(
    image_emb, text_emb, image_m, text_m, image_queue, text_queue, temperature, alpha, *, axis
) -> jax.Array:
    local = image_emb.shape[0]
    text_cols = jnp.concatenate([_gather(text_m, axis), text_queue])
    image_cols = jnp.concatenate([_gather(image_m, axis), image_queue])
    positive = jax.nn.one_hot(_row_offset(local, axis) + jnp.arange(local), text_cols.shape[0])

    def direction(anchor, anchor_m, cols):
        teacher = jax.nn.softmax(lax.stop_gradient(anchor_m @ cols.T / temperature), axis=-1)
        target = alpha * teacher + (1.0 - alpha) * positive
        return -(target * jax.nn.log_softmax(anchor @ cols.T / temperature, axis=-1)).sum()

    total = direction(image_emb, image_m, text_cols) + direction(text_emb, text_m, image_cols)
    return _psum(total, axis) / (2 * _gather(image_m, axis).shape[0])


def itc_distill(
    image_emb: jax.Array,
    text_emb: jax.Array,
    image_m: jax.Array,
    text_m: jax.Array,
    image_queue: jax.Array,
    text_queue: jax.Array,
    temperature: jax.Array,
    alpha: jax.Array | float,
) -> jax.Array:
    """ALBEF's ITC with a momentum model, feature queues and momentum distillation.

    Columns are the momentum features of the global batch followed by the queue,
    T = [t_m ; Q_t], V = [v_m ; Q_v] (G + Q rows, no gradient). With s_i2t = v Tᵀ / τ and the
    teacher's s^m_i2t = v_m Tᵀ / τ (and symmetrically for text):

        y_i2t = α · softmax(s^m_i2t) + (1 − α) · onehot(own column)
        L = 1/(2G) Σ_b [ CE(s_i2t[b], y_i2t[b]) + CE(s_t2i[b], y_t2i[b]) ]

    α = 0 with an empty queue is `itc` with momentum columns. Global like `itc`: each shard's
    rows meet every shard's momentum features and the (replicated) queue.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    alpha = jnp.asarray(alpha, jnp.float32)
    return on_batch_shards(
        _itc_distill_local,
        (image_emb, text_emb, lax.stop_gradient(image_m), lax.stop_gradient(text_m)),
        (lax.stop_gradient(image_queue), lax.stop_gradient(text_queue), temperature, alpha),
    )


def _itc_consistency_local(image_emb, text_emb, temperature, *, axis: AxisName) -> jax.Array:
    i2t = image_emb @ _gather(text_emb, axis).T / temperature
    t2i = text_emb @ _gather(image_emb, axis).T / temperature

    def soft_ce(logits, target_logits):
        target = jax.nn.softmax(lax.stop_gradient(target_logits), axis=-1)
        return -(target * jax.nn.log_softmax(logits, axis=-1)).sum()

    total = soft_ce(i2t, t2i) + soft_ce(t2i, i2t)
    return _psum(total, axis) / (2 * _gather(image_emb, axis).shape[0])


def itc_consistency(image_emb: jax.Array, text_emb: jax.Array, temperature: jax.Array) -> jax.Array:
    """GRIT-VLP's ITC consistency over the global batch, with s = v tᵀ / τ:

        L_cons = 1/(2G) Σ_b [ CE(s[b,:], softmax(sg(s[:,b]))) + CE(s[:,b], softmax(sg(s[b,:]))) ]

    i.e. p(text | image b) is pulled toward p(image | text b) and vice versa, each toward a
    stop-gradient target. GRIT-VLP adds it to ITC with weight 0.2 (`loss_weights.itc_consistency`).
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    return on_batch_shards(_itc_consistency_local, (image_emb, text_emb), (temperature,))


def _hn_nce_direction(logits, positive_col, alpha, beta, stop_grad_weights):
    """Σ over local anchor rows of log Σ_j w_ij e^{s_ij} − s_ii, with log w in closed form."""
    is_positive = jnp.arange(logits.shape[1])[None, :] == positive_col[:, None]
    beta_logits = jnp.where(is_positive, -jnp.inf, beta * logits)
    log_neg_weights = (
        jnp.log(logits.shape[1] - 1.0)
        + beta * logits
        - jax.nn.logsumexp(beta_logits, axis=-1, keepdims=True)
    )
    if stop_grad_weights:
        log_neg_weights = lax.stop_gradient(log_neg_weights)
    log_weights = jnp.where(is_positive, jnp.log(alpha), log_neg_weights)
    positive = jnp.take_along_axis(logits, positive_col[:, None], axis=-1)[:, 0]
    return (jax.nn.logsumexp(logits + log_weights, axis=-1) - positive).sum()


def _hn_nce_local(
    image_emb, text_emb, temperature, *, axis: AxisName, alpha, beta, stop_grad_weights
) -> jax.Array:
    local = image_emb.shape[0]
    all_text = _gather(text_emb, axis)
    all_image = _gather(image_emb, axis)
    positive_col = _row_offset(local, axis) + jnp.arange(local)
    i2t = image_emb @ all_text.T / temperature
    t2i = text_emb @ all_image.T / temperature
    total = _hn_nce_direction(i2t, positive_col, alpha, beta, stop_grad_weights)
    total += _hn_nce_direction(t2i, positive_col, alpha, beta, stop_grad_weights)
    return _psum(total, axis) / (2 * all_text.shape[0])


def hn_nce(
    image_emb: jax.Array,
    text_emb: jax.Array,
    temperature: jax.Array,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    stop_grad_weights: bool = False,
) -> jax.Array:
    """DiHT's hard-negative NCE (Radenovic et al., CVPR 2023) over the global batch of k pairs.

    With s_ij = v_i·t_j / τ, image→text (text→image is the same on sᵀ):

        L_v2t = −1/k Σ_i log[ e^{s_ii} / (α e^{s_ii} + Σ_{j≠i} w_ij e^{s_ij}) ],
        w_ij  = (k−1) e^{β s_ij} / Σ_{p≠i} e^{β s_ip}

    and L = (L_v2t + L_t2v) / 2. The negatives' weights average 1, so α = 1, β = 0 is `itc`
    exactly; β > 0 up-weights similar negatives (self-normalised importance sampling). Computed
    as logsumexp_j(s_ij + log w_ij) − s_ii with log w in closed form: finite at τ = 0.01. Rows
    are local, columns all-gathered, k the global batch. `stop_grad_weights` treats w as
    constants (an ablation; DiHT's formula differentiates through them).
    """
    if alpha < 0:
        raise ValueError(f"hn_nce alpha must be >= 0, got {alpha}")
    local = functools.partial(
        _hn_nce_local,
        alpha=float(alpha),
        beta=float(beta),
        stop_grad_weights=bool(stop_grad_weights),
    )
    temperature = jnp.asarray(temperature, jnp.float32)
    return on_batch_shards(local, (image_emb, text_emb), (temperature,))


def soft_label_kl(target_probs: jax.Array, logits: jax.Array) -> jax.Array:
    """Mean over rows of KL(p ‖ softmax(logits)) for teacher distributions p [B, C] (rows sum to
    1): DiHT's concept-distillation term. Zero exactly when the student matches the teacher."""
    p = target_probs.astype(jnp.float32)
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_p = jnp.log(jnp.where(p > 0, p, 1.0))
    return (p * (log_p - log_q)).sum(-1).mean()


def hardest_negative_similarity(
    image_emb: jax.Array, text_emb: jax.Array, image_ids: jax.Array
) -> jax.Array:
    """Mean over images of the cosine to their most similar in-batch text of another image:
    how hard the batch's negatives are (GRIT's grouped batches raise it). A metric, no gradient."""
    v, t = lax.stop_gradient(image_emb), lax.stop_gradient(text_emb)
    sims = v @ t.T
    same = image_ids[:, None] == image_ids[None, :]
    return jnp.where(same, -jnp.inf, sims).max(axis=1).mean()


# ---------------------------------------------------------------------------------------------
# ITM hard-negative mining.


def _pick_negatives(key_rows, logits, allowed, mode: str) -> tuple[jax.Array, jax.Array]:
    """One column per row from softmax(logits) restricted to `allowed` (or its argmax)."""
    masked = jnp.where(allowed, logits, -jnp.inf)
    if mode == "argmax":
        picked = jnp.argmax(masked, axis=-1)
    else:
        picked = jax.vmap(jax.random.categorical)(key_rows, masked)
    return picked, allowed.any(axis=-1)


def _itm_negatives_local(
    image_emb,
    text_emb,
    image_ids,
    key_data,
    temperature,
    *,
    axis: AxisName,
    mode: str,
    positive_ratio_cap: float,
):
    local = image_emb.shape[0]
    all_text = _gather(text_emb, axis)
    all_image = _gather(image_emb, axis)
    all_ids = _gather(image_ids, axis)
    rows = _row_offset(local, axis) + jnp.arange(local)
    allowed = image_ids[:, None] != all_ids[None, :]
    sims_i2t = image_emb @ all_text.T
    sims_t2i = text_emb @ all_image.T
    allowed_i2t = allowed_t2i = allowed
    if positive_ratio_cap > 0:
        # A candidate nearly as similar as the positive is more likely an unlabelled positive
        # (a caption that is also true of the image) than a hard negative.
        positive = jnp.sum(image_emb * text_emb, axis=-1, keepdims=True)
        allowed_i2t = allowed & (sims_i2t < positive_ratio_cap * positive)
        allowed_t2i = allowed & (sims_t2i < positive_ratio_cap * positive)
    # A per-row key folded from the global row index makes the draw independent of the mesh.
    base = jax.random.wrap_key_data(key_data)
    keys_i2t = jax.vmap(lambda r: jax.random.fold_in(base, 2 * r))(rows)
    keys_t2i = jax.vmap(lambda r: jax.random.fold_in(base, 2 * r + 1))(rows)
    neg_text, ok_t = _pick_negatives(keys_i2t, sims_i2t / temperature, allowed_i2t, mode)
    neg_image, ok_i = _pick_negatives(keys_t2i, sims_t2i / temperature, allowed_t2i, mode)
    # A row with no admissible column (all share its image id, or all pass the cap) has no
    # negative: take the next column rather than an index drawn from an all -inf distribution.
    fallback = (rows + 1) % all_ids.shape[0]
    neg_text = jnp.where(ok_t, neg_text, fallback).astype(jnp.int32)
    neg_image = jnp.where(ok_i, neg_image, fallback).astype(jnp.int32)
    return neg_text, neg_image


def itm_negatives(
    rng: jax.Array,
    image_emb: jax.Array,
    text_emb: jax.Array,
    image_ids: jax.Array,
    temperature: jax.Array,
    *,
    mode: Literal["sample", "argmax"] = "sample",
    positive_ratio_cap: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Global indices of a hard negative text per image and a hard negative image per text.

    Candidates are every pair of the global batch whose image id differs from the anchor's (so the
    positive and same-image duplicates are never picked). Weights are softmax(s / temperature) of
    the ITC similarities under stop-gradient. Returns (neg_text_idx, neg_image_idx), each [G].

    `positive_ratio_cap` > 0 also drops candidates with cosine s_ij ≥ cap · s_ii (positive-aware
    mining, as NV-Retriever's "TopK-PercPos"): when captions under-describe their images, the
    most similar "negative" is often a true caption of the anchor.
    """
    if mode not in ("sample", "argmax"):
        raise ValueError(f"itm mode must be 'sample' or 'argmax', got {mode!r}")
    key_data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    temperature = lax.stop_gradient(jnp.asarray(temperature, jnp.float32))
    local = functools.partial(
        _itm_negatives_local, mode=mode, positive_ratio_cap=float(positive_ratio_cap)
    )
    return on_batch_shards(
        local,
        (lax.stop_gradient(image_emb), lax.stop_gradient(text_emb), image_ids),
        (key_data, temperature),
        out_batched=(True, True),
    )


def itm_loss(
    pos_logits: jax.Array, neg_logits: jax.Array, neg_weights: jax.Array | None = None
) -> jax.Array:
    """2-way cross-entropy over G positives (label 1) and the negatives (label 0): ALBEF's 2G
    mined ones, plus any synthesised ones. `neg_weights` (0/1) drops negatives that are unusable
    (a synthesised text identical to its positive)."""
    logits = jnp.concatenate([pos_logits, neg_logits]).astype(jnp.float32)
    labels = jnp.concatenate(
        [jnp.ones(pos_logits.shape[0], jnp.int32), jnp.zeros(neg_logits.shape[0], jnp.int32)]
    )
    weights = _pair_weights(pos_logits, neg_logits, neg_weights)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return (ce * weights).sum() / weights.sum()


def itm_accuracy(
    pos_logits: jax.Array, neg_logits: jax.Array, neg_weights: jax.Array | None = None
) -> jax.Array:
    correct = jnp.concatenate([pos_logits.argmax(-1) == 1, neg_logits.argmax(-1) == 0])
    weights = _pair_weights(pos_logits, neg_logits, neg_weights)
    return (correct * weights).sum() / weights.sum()


def _pair_weights(pos_logits, neg_logits, neg_weights) -> jax.Array:
    if neg_weights is None:
        neg_weights = jnp.ones(neg_logits.shape[0], jnp.float32)
    return jnp.concatenate([jnp.ones(pos_logits.shape[0], jnp.float32), neg_weights])


# ---------------------------------------------------------------------------------------------
# Masked language modelling.


def mask_tokens(
    rng: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    mask_prob: float,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
) -> tuple[jax.Array, jax.Array]:
    """BERT corruption: returns (corrupted ids, float weights marking the positions to predict).

    Each real, non-special token is selected with probability `mask_prob`; a selected token becomes
    [MASK] with probability 0.8, a uniformly random id with 0.1, and stays unchanged with 0.1.
    Padding, [CLS], [SEP] and other special tokens are never selected.
    """
    k_select, k_replace, k_random, k_ids = jax.random.split(rng, 4)
    special = jnp.isin(input_ids, jnp.asarray(list(special_ids), input_ids.dtype))
    candidate = (attention_mask > 0) & ~special
    selected = jax.random.bernoulli(k_select, mask_prob, input_ids.shape) & candidate
    to_mask = selected & jax.random.bernoulli(k_replace, 0.8, input_ids.shape)
    to_random = selected & ~to_mask & jax.random.bernoulli(k_random, 0.5, input_ids.shape)
    random_ids = jax.random.randint(k_ids, input_ids.shape, 0, vocab_size, input_ids.dtype)
    corrupted = jnp.where(to_mask, mask_id, jnp.where(to_random, random_ids, input_ids))
    return corrupted, selected.astype(jnp.float32)


def mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean cross-entropy over the selected positions of the whole (global) batch."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def mlm_distill_loss(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    teacher_logits: jax.Array,
    alpha: jax.Array | float,
) -> jax.Array:
    """ALBEF's MLM with momentum distillation, over the selected positions:

    L = (1 − α) · CE(logits, labels) + α · mean_selected( −Σ_v softmax(teacher)_v ·
        log_softmax(logits)_v )   (softmax over the vocabulary axis)
    """
    soft = optax.softmax_cross_entropy(
        logits.astype(jnp.float32),
        jax.nn.softmax(lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1),
    )
    soft = (soft * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    return (1.0 - alpha) * mlm_loss(logits, labels, weights) + alpha * soft


def mlm_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    correct = (logits.argmax(-1) == labels).astype(jnp.float32)
    return (correct * weights).sum() / jnp.maximum(weights.sum(), 1.0)
