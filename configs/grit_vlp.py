"""python -m vlp_jax.main --config configs/grit_vlp.py --workdir runs/grit_vlp
   python -m vlp_jax.main --config configs/grit_vlp.py:size=demo --workdir runs/grit_demo
   python -m vlp_jax.main --config configs/grit_vlp.py:size=tiny --workdir runs/grit_tiny  (tests)

GRIT-VLP (Byun et al., NeurIPS 2022): ALBEF without the momentum model, plus
  - grouped mini-batches: from the second epoch on, each batch is a run of GRIT's greedy
    image → text → image chain over the previous epoch's ITC embeddings, so in-batch negatives
    are hard (`vlp_jax/grit.py`, `vlp_jax/data/grouping.py`). The paper searches 1,920 pairs per
    GPU; `base` groups globally, so its search space is 4 × 1,920 = 7,680 over the global batch
    of 512 (1,920 is not a multiple of 512); `demo` uses 1,920 with batch 64;
  - ITM with the hardest (argmax) in-batch negative, mined over the global batch, never a pair
    that shares the image;
  - ITC + 0.2 · ITC consistency (`vlp_jax.losses.itc_consistency`);
  - MLM with masking probability 0.5.
The paper reports ALBEF's quality with a third of its epochs (≈ 10 vs 30 on 4M); the released
config trains 20 epochs at batch 512 (4 × 128), AdamW lr 1e-4, wd 0.02, on ALBEF's 30-epoch
cosine, stopped after 20 (its last lr ≈ 3.3e-5 here, stepped per step; 3.67e-5 per epoch).

`size=demo` is the CPU demo model on `shapes` with 16,000 training pairs (so 1,100 steps of 64
cover 4.4 epochs, and 3 of them are grouped); `size=tiny` is a micro model for tests.
"""

import ml_collections

from vlp_jax import config_lib


def use_grit(c: ml_collections.ConfigDict, search_space: int) -> None:
    c.grit.enabled = True
    c.grit.search_space = search_space
    c.itm.mode = "argmax"
    c.mlm.mask_prob = 0.5
    c.loss_weights.itc_consistency = 0.2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, size="base")
    c = config_lib.base_config()
    if args.size == "base":
        c.batch_size = 512
        c.total_steps = 20 * 10_000  # 20 epochs of ~5.1M pairs
        c.optimizer.schedule_steps = 30 * 10_000  # GRIT's 30-epoch cosine, stopped after 20
        config_lib.use_base_towers(c, "albef", image_size=256, max_len=25)
        use_grit(c, search_space=1920 * 4)  # GRIT's 1,920 per GPU × 4 GPUs, grouped globally
        return c
    if args.size == "demo":
        config_lib.use_demo_run(c, "albef", steps=1100)
        c.data.train_examples = 16_000
        use_grit(c, search_space=1920)
        return c
    if args.size != "tiny":
        raise ValueError(f"configs/grit_vlp.py: size={args.size!r}; accepted: base, demo, tiny")
    config_lib.use_tiny_run(c, "albef", steps=8)
    c.data.train_examples = 48  # 3 steps per epoch: epochs 1 and 2 are grouped
    c.checkpoint_every_steps = 4
    use_grit(c, search_space=32)
    return c
