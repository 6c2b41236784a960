"""python -m vlp_jax.main --config configs/diht.py --workdir runs/diht
   python -m vlp_jax.main --config configs/diht.py:size=tiny --workdir runs/diht_tiny
   python -m vlp_jax.main --config configs/diht.py:size=test --workdir runs/diht_test   (tests)

DiHT (Radenovic et al., CVPR 2023): a CLIP-style dual encoder trained with HN-NCE
(`vlp_jax.losses.hn_nce`, α = 1, β = 0.5: negatives importance-weighted by exp(β·s_ij)) in place
of InfoNCE, on CAT-filtered data (`python -m vlp_jax.tools.cat_filter`), optionally with concept
distillation from a frozen teacher's stored soft labels (`python -m vlp_jax.tools.concept_targets`,
then `--config.data.concept_targets=DIR --config.model.num_concepts=C
--config.loss_weights.concepts=1`). Few-shot evaluation from the zero-shot prior:
`python -m vlp_jax.fewshot --config configs/diht.py:size=tiny --workdir runs/diht_tiny`.

`size=base` is ViT-B/16 + a 12-layer text tower at 224 px, batch 32,768 (OpenCLIP's B/16
recipe; DiHT's own training hyperparameters are unpublished). `size=tiny` is configs/clip.py's
demo towers on `shapes` for 1,200 steps of 64 (about 4 minutes on 2 CPU cores), the run README's
β table compares with plain ITC; `size=test` is a micro model for tests.
"""

import ml_collections

from vlp_jax import config_lib


def use_hn_nce(c: ml_collections.ConfigDict, beta: float) -> None:
    c.loss_weights.update(itc=0.0, hn_nce=1.0, itm=0.0, mlm=0.0)
    c.hn_nce.update(alpha=1.0, beta=beta)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, size="base", beta=0.5)
    c = config_lib.base_config()
    use_hn_nce(c, args.beta)
    if args.size == "base":
        c.batch_size = 32_768
        c.total_steps = 12_000
        config_lib.use_base_towers(c, "dual_encoder", image_size=224, max_len=32)
        c.model.embed_dim = 512
        c.optimizer.update(learning_rate=5e-4, weight_decay=0.2, b2=0.98, eps=1e-6)
        return c
    if args.size == "tiny":
        config_lib.use_demo_run(c, "dual_encoder", steps=1200)
        c.data.train_examples = 40_000
        c.eval.itm_rerank_k = 0
        return c
    if args.size != "test":
        raise ValueError(f"configs/diht.py: size={args.size!r}; accepted: base, tiny, test")
    config_lib.use_tiny_run(c, "dual_encoder", steps=4)
    return c
