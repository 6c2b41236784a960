"""python -m vlp_jax.main --config configs/albef.py --workdir runs/albef
   python -m vlp_jax.main --config configs/albef.py:size=demo --workdir runs/albef_demo
   python -m vlp_jax.main --config configs/albef.py:size=tiny --workdir runs/albef_tiny   (tests)

ALBEF (Li et al., 2021): ViT-B/16 image encoder + BERT-base split 6 text + 6 fusion layers, 256 px,
ITC + ITM (sampled in-batch hard negatives) + MLM (p = 0.15), AdamW lr 1e-4 / wd 0.02, global batch
512, 30 epochs of the 4M set (≈ 305k steps at 5.2M pairs), with the momentum model (EMA 0.995),
65,536-entry feature queues and momentum distillation (α = 0.4, ramped over the first epoch,
≈ 10k steps) for ITC and MLM (vlp_jax/momentum.py). With the paper's data and DeiT/BERT
initialisation it reaches COCO-5K zero-shot TR@1 ≈ 68.7 / IR@1 ≈ 50.1 (paper, 4M); on `shapes`
it is a throughput and sharding reference. Real data: configs/files.py; pretrained towers:
`--config.init.text=bert-base-uncased --config.init.image=...` (README, "Pretrained weights").

`size=demo` is GRIT-VLP's comparison baseline on `shapes`: the schedule, towers and 16,000 training
pairs of `configs/grit_vlp.py:size=demo` (1,100 steps of 64), so the two differ only by recipe; the
queue holds 4,096 pairs (a quarter of an epoch) and α ramps over the first epoch (250 steps).
`size=tiny` keeps every code path with a micro model for tests (seconds per step on CPU).
"""

import ml_collections

from vlp_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, size="base")
    c = config_lib.base_config()
    if args.size == "base":
        c.batch_size = 512
        c.total_steps = 305_000
        # ALBEF's pre-training pads captions to 25 tokens (30 is its retrieval fine-tuning's) and
        # does not clip gradients.
        config_lib.use_base_towers(c, "albef", image_size=256, max_len=25)
        c.optimizer.grad_clip_norm = 0.0
        ramp = c.total_steps // 30  # the first of 30 epochs
        c.momentum.update(enabled=True, queue_size=65_536, alpha=0.4, alpha_ramp_steps=ramp)
        return c
    if args.size == "demo":
        config_lib.use_demo_run(c, "albef", steps=1100)
        c.data.train_examples = 16_000
        c.momentum.update(enabled=True, queue_size=4096, alpha=0.4, alpha_ramp_steps=250)
        return c
    if args.size != "tiny":
        raise ValueError(
            f"configs/albef.py: size={args.size!r}; accepted: ['base', 'demo', 'tiny']"
        )
    config_lib.use_tiny_run(c, "albef", steps=6)
    c.momentum.update(enabled=True, queue_size=32, alpha=0.4, alpha_ramp_steps=3)
    c.eval.itm_rerank_k = 4
    return c
