"""Pre-training objectives assembled per model kind: pure (params, batch, rng) → (loss, metrics).

ALBEF (Li et al., 2021):  L = w_itc·L_itc + w_itm·L_itm + w_mlm·L_mlm
  - L_itc on the global batch (`losses.itc`),
  - L_itm on G positives and 2G hard negatives mined over the global batch (`losses.itm_negatives`),
    plus, with `itm.synth.enabled`, G negatives synthesised by the language model (`vilta`),
  - L_mlm on a second, corrupted text pass through text + fusion layers with the image tokens.
CLIP-style dual encoder:  L = w_itc·L_itc.
With `momentum.enabled` (ALBEF's full recipe), L_itc and L_mlm are distilled from the EMA teacher
(`losses.itc_distill` with the feature queues, `losses.mlm_distill_loss`; vlp_jax/momentum.py).
Either may add GRIT-VLP's ITC consistency term, w_cons·L_cons (`losses.itc_consistency`), DiHT's
hard-negative NCE, w_hn·L_hn_nce (`losses.hn_nce`, in place of or beside ITC), and DiHT's concept
distillation, w_c·KL(p_teacher ‖ softmax(concept_head(v))) on stored teacher targets (`concepts`).

A weight of 0 removes the objective from the compiled step, so it costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from vlp_jax import losses, momentum, vilta, word_swap

Batch = dict[str, jax.Array]
Objective = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


class TokenInfo(NamedTuple):
    """What MLM corruption needs to know about the tokenizer."""

    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    # What word-order negatives (word_swap.py) must leave in place.
    stop_word_ids: tuple[int, ...] = ()
    continuation_ids: tuple[int, ...] = ()


def _weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    return {k: float(v) for k, v in config.loss_weights.items() if float(v) > 0}


def _total(weights: dict[str, float], parts: dict[str, jax.Array]) -> jax.Array:
    return sum(weights[k] * parts[k] for k in parts)


def _contrastive_parts(weights, v, t, temperature, config) -> dict[str, jax.Array]:
    parts = {}
    if "itc" in weights:
        parts["itc"] = losses.itc(v, t, temperature)
    if "itc_consistency" in weights:
        parts["itc_consistency"] = losses.itc_consistency(v, t, temperature)
    if "hn_nce" in weights:
        hn = config.hn_nce
        parts["hn_nce"] = losses.hn_nce(
            v,
            t,
            temperature,
            alpha=hn.alpha,
            beta=hn.beta,
            stop_grad_weights=hn.stop_grad_weights,
        )
    return parts


def _image_parts(weights, model, variables, v, batch) -> dict[str, jax.Array]:
    """Objectives on the image embedding alone (DiHT's concept distillation)."""
    if "concepts" not in weights:
        return {}
    logits = model.apply(variables, v, method="concept_logits")
    return {"concepts": losses.soft_label_kl(batch["concept_targets"], logits)}


def make_objective(
    model: nn.Module, config: ml_collections.ConfigDict, tokens: TokenInfo
) -> Objective:
    if config.model.kind == "albef":
        objective = _albef_objective(model, config, tokens)
    else:
        objective = _dual_encoder_objective(model, config)
    # GRIT's sampler reuses the step's normalised ITC embeddings (no extra forward); anyone
    # else drops them here, so XLA never materialises them as outputs.
    keep_embeddings = bool(config.get("grit", {}).get("enabled", False))

    def with_outputs(params, batch, rng):
        loss, metrics = objective(params, batch, rng)
        if not keep_embeddings:
            metrics = {k: v for k, v in metrics.items() if not k.startswith("out/")}
        return loss, metrics

    return with_outputs


def _dual_encoder_objective(model: nn.Module, config: ml_collections.ConfigDict) -> Objective:
    weights = _weights(config)

    def objective(params, batch, rng):
        variables = {"params": params}
        k_img, k_txt = jax.random.split(rng)
        img = model.apply(
            variables, batch["image"], train=True, method="encode_image", rngs={"dropout": k_img}
        )
        txt = model.apply(
            variables,
            batch["input_ids"],
            batch["attention_mask"],
            train=True,
            method="encode_text",
            rngs={"dropout": k_txt},
        )
        v = model.apply(variables, img, method="embed_image")
        t = model.apply(variables, txt, batch["attention_mask"], method="embed_text")
        temperature = model.apply(variables, method="temperature")
        parts = _contrastive_parts(weights, v, t, temperature, config)
        parts.update(_image_parts(weights, model, variables, v, batch))
        metrics = {f"train/{k}": val for k, val in parts.items()}
        metrics["train/temperature"] = temperature
        metrics["train/hardest_negative_sim"] = losses.hardest_negative_similarity(
            v, t, batch["image_id"]
        )
        metrics["out/image_emb"], metrics["out/text_emb"] = v, t
        return _total(weights, parts), metrics

    return objective


def _with_flip_negatives(apply, batch, neg_images, prob, key, dropout_key, metrics):
    """Relation negatives: for a caption that names a left/right (above/below) relation, its own
    image mirrored horizontally (vertically) makes it false. With probability `prob` such a
    mirrored image replaces the text's mined negative image."""
    pixels, axis = batch["image"], batch["flip_axis"]
    mirrored = jnp.where(
        (axis == 1)[:, None, None, None],
        pixels[:, :, ::-1],
        jnp.where((axis == 2)[:, None, None, None], pixels[:, ::-1], pixels),
    )
    use = (axis > 0) & jax.random.bernoulli(key, prob, axis.shape)
    tokens = apply(mirrored, train=True, method="encode_image", key=dropout_key)
    metrics["train/itm_flip_negatives"] = use.mean()
    return jnp.where(use[:, None, None], tokens, neg_images)


class _MomentumTeacher:
    """ALBEF's momentum model for one step: the EMA weights in train mode (dropout on), its image
    tokens computed once and reused by the MLM teacher; every output is stop-gradient."""

    def __init__(self, apply, teacher: dict[str, Any], key: jax.Array) -> None:
        self.apply = apply
        self.variables = {"params": teacher["params"]}
        self.queue = teacher["queue"]
        self.alpha = teacher["alpha"]
        self.keys = jax.random.split(key, 3)
        self.image_tokens = None

    def _run(self, *args, method, key=None, **kwargs):
        out = self.apply(*args, method=method, key=key, variables=self.variables, **kwargs)
        return jax.lax.stop_gradient(out)

    def embeddings(self, images, ids, mask) -> tuple[jax.Array, jax.Array]:
        self.image_tokens = self._run(images, train=True, method="encode_image", key=self.keys[0])
        text = self._run(ids, mask, train=True, method="encode_text", key=self.keys[1])
        v_m = self._run(self.image_tokens, method="embed_image")
        return v_m, self._run(text, mask, method="embed_text")

    def mlm_logits(self, corrupted, mask) -> jax.Array:
        return self._run(
            corrupted, mask, self.image_tokens, train=True, method="mlm_logits", key=self.keys[2]
        )


def warmed_up_temperature(
    step: jax.Array, start: float, end: jax.Array | float, steps: int
) -> jax.Array:
    """`start` at step 0, moving linearly to `end` at `steps`, then `end`: ITM negatives drawn
    from softmax(s / τ) go from easy (large τ) to hard. Linear rather than geometric, so they
    stay easy while ITM leaves chance (a geometric decay, measured, delays that as much as no
    warm-up at all)."""
    frac = jnp.clip(step.astype(jnp.float32) / steps, 0.0, 1.0)
    end = jax.lax.stop_gradient(jnp.asarray(end, jnp.float32))
    return (1.0 - frac) * start + frac * end


def _albef_objective(
    model: nn.Module, config: ml_collections.ConfigDict, tokens: TokenInfo
) -> Objective:
    weights = _weights(config)
    itm_mode = config.itm.mode
    itm_sample_temperature = float(config.itm.get("sample_temperature", 0.0))
    itm_warmup_temperature = float(config.itm.get("warmup_temperature", 0.0))
    itm_warmup_steps = int(config.itm.get("warmup_steps", 0))
    itm_positive_ratio_cap = float(config.itm.get("positive_ratio_cap", 0.0))
    mask_prob = float(config.mlm.mask_prob)
    synth = config.itm.synth if config.itm.get("synth") and config.itm.synth.enabled else None
    flip_prob = float(config.itm.get("flip_negatives", 0.0))
    swap = config.itm.swap if config.itm.get("swap") and config.itm.swap.enabled else None
    with_momentum = momentum.enabled(config)

    def objective(params, batch, rng):
        variables = {"params": params}
        keys = jax.random.split(rng, 10)
        k_img, k_txt, k_fuse, k_itm, k_mask, k_mlm, k_synth, k_flip, k_teacher, k_swap = keys
        ids, mask = batch["input_ids"], batch["attention_mask"]

        def apply(*args, method, key=None, variables=variables, **kwargs):
            rngs = {"dropout": key} if key is not None else {}
            return model.apply(variables, *args, method=method, rngs=rngs, **kwargs)

        if with_momentum:
            teacher = _MomentumTeacher(apply, batch["teacher"], k_teacher)

        img = apply(batch["image"], train=True, method="encode_image", key=k_img)
        txt = apply(ids, mask, train=True, method="encode_text", key=k_txt)
        v = apply(img, method="embed_image")
        t = apply(txt, mask, method="embed_text")
        temperature = apply(method="temperature")
        parts: dict[str, jax.Array] = {}
        metrics: dict[str, jax.Array] = {
            "train/temperature": temperature,
            "train/hardest_negative_sim": losses.hardest_negative_similarity(
                v, t, batch["image_id"]
            ),
            "out/image_emb": v,
            "out/text_emb": t,
        }

        parts.update(_contrastive_parts(weights, v, t, temperature, config))
        parts.update(_image_parts(weights, model, variables, v, batch))
        if with_momentum:
            v_m, t_m = teacher.embeddings(batch["image"], ids, mask)
            if "itc" in weights:
                queue = teacher.queue
                parts["itc"] = losses.itc_distill(
                    v, t, v_m, t_m, queue["image"], queue["text"], temperature, teacher.alpha
                )
            metrics["enqueue/image"], metrics["enqueue/text"] = v_m, t_m

        mlm_logits = selected = None
        if "mlm" in weights:
            corrupted, selected = losses.mask_tokens(
                k_mask,
                ids,
                mask,
                mask_prob=mask_prob,
                mask_id=tokens.mask_id,
                vocab_size=tokens.vocab_size,
                special_ids=tokens.special_ids,
            )
            mlm_logits = apply(corrupted, mask, img, train=True, method="mlm_logits", key=k_mlm)
            if with_momentum:
                parts["mlm"] = losses.mlm_distill_loss(
                    mlm_logits, ids, selected, teacher.mlm_logits(corrupted, mask), teacher.alpha
                )
            else:
                parts["mlm"] = losses.mlm_loss(mlm_logits, ids, selected)
            metrics["train/mlm_acc"] = losses.mlm_accuracy(mlm_logits, ids, selected)

        if swap is not None:
            swap_ids, swap_valid = word_swap.swap_negative_texts(
                k_swap,
                mlm_logits,
                ids,
                mask,
                selected,
                special_ids=tokens.special_ids,
                excluded_ids=tokens.stop_word_ids,
                continuation_ids=tokens.continuation_ids,
                top_k=swap.top_k,
                temperature=swap.temperature,
            )
            swap_txt = apply(swap_ids, mask, train=True, method="encode_text", key=k_txt)
            metrics["train/itm_swap_valid"] = swap_valid.mean()
            if swap.itc and "itc" in weights:
                parts["itc"] = losses.itc_with_text_negatives(
                    v, t, apply(swap_txt, mask, method="embed_text"), swap_valid, temperature
                )

        if "itm" in weights:
            # ALBEF samples with the ITC temperature; a fixed, larger one gives easier negatives.
            sample_temp = itm_sample_temperature or temperature
            if itm_warmup_steps:
                sample_temp = warmed_up_temperature(
                    batch["step"][0], itm_warmup_temperature, sample_temp, itm_warmup_steps
                )
                metrics["train/itm_sample_temperature"] = sample_temp
            neg_text, neg_image = losses.itm_negatives(
                k_itm,
                v,
                t,
                batch["image_id"],
                sample_temp,
                mode=itm_mode,
                positive_ratio_cap=itm_positive_ratio_cap,
            )
            # Pairs: (text b, image b) positive; (text b, image neg_image[b]) and
            # (text neg_text[b], image b) negative: one fusion pass over 3G pairs.
            texts = [txt, txt, txt[neg_text]]
            masks = [mask, mask, mask[neg_text]]
            images = [img, img[neg_image], img]
            if flip_prob > 0:
                images[1] = _with_flip_negatives(
                    apply, batch, images[1], flip_prob, k_flip, k_img, metrics
                )
            g = ids.shape[0]
            neg_weights = jnp.ones(2 * g, jnp.float32)
            if synth is not None:
                if synth.teacher == "text_mlm":
                    corrupted, selected = losses.mask_tokens(
                        k_mask,
                        ids,
                        mask,
                        mask_prob=mask_prob,
                        mask_id=tokens.mask_id,
                        vocab_size=tokens.vocab_size,
                        special_ids=tokens.special_ids,
                    )
                    teacher = apply(corrupted, mask, train=False, method="text_mlm_logits")
                else:
                    teacher = mlm_logits
                synth_ids, valid = vilta.synthesize_negative_texts(
                    k_synth,
                    teacher,
                    ids,
                    selected,
                    special_ids=tokens.special_ids,
                    temperature=synth.temperature,
                    top_k=synth.top_k,
                )
                # (image b, synthesised text b): a third negative per positive (ViLTA).
                texts.append(apply(synth_ids, mask, train=True, method="encode_text", key=k_txt))
                masks.append(mask)
                images.append(img)
                neg_weights = jnp.concatenate([neg_weights, valid])
                metrics["train/itm_synth_valid"] = valid.mean()
            if swap is not None:
                # (image b, caption b with two words swapped): one more negative per positive.
                texts.append(swap_txt)
                masks.append(mask)
                images.append(img)
                neg_weights = jnp.concatenate([neg_weights, swap_valid])
            fused = apply(
                jnp.concatenate(texts),
                jnp.concatenate(masks),
                jnp.concatenate(images),
                train=True,
                method="fuse",
                key=k_fuse,
            )
            logits = apply(fused, method="itm_logits")
            parts["itm"] = losses.itm_loss(logits[:g], logits[g:], neg_weights)
            metrics["train/itm_acc"] = losses.itm_accuracy(logits[:g], logits[g:], neg_weights)
            if swap is not None:
                # As evaluated on `shapes`' twins: does the caption outscore its swapped copy?
                margin = logits[:, 1] - logits[:, 0]
                metrics["train/itm_swap_acc"] = jnp.sum(
                    swap_valid * (margin[:g] > margin[-g:])
                ) / jnp.maximum(swap_valid.sum(), 1.0)

        metrics.update({f"train/{k}": val for k, val in parts.items()})
        return _total(weights, parts), metrics

    return objective
