"""python -m vlp_jax.main --config configs/clip.py --workdir runs/clip
   python -m vlp_jax.main --config configs/clip.py:size=demo --workdir runs/clip_demo
   python -m vlp_jax.main --config configs/clip.py:size=tiny --workdir runs/clip_tiny   (tests)

CLIP-style dual encoder (no fusion layers) trained with ITC only over the global batch: ViT-B/16
and a 12-layer BERT-style text tower, 224 px, global batch 32,768 as in OpenCLIP's B/16 runs.
`size=demo` matches configs/demo.py's towers on `shapes` (a CPU-sized contrastive baseline);
`size=tiny` is a micro model for tests.
"""

import ml_collections

from vlp_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, size="base")
    c = config_lib.base_config()
    c.loss_weights.update(itm=0.0, mlm=0.0)  # a dual encoder has no fusion
    if args.size == "base":
        c.batch_size = 32_768
        c.total_steps = 12_000
        config_lib.use_base_towers(c, "dual_encoder", image_size=224, max_len=32)
        c.model.embed_dim = 512
        c.optimizer.learning_rate = 5e-4
        c.optimizer.weight_decay = 0.2
        c.optimizer.b2 = 0.98
        c.optimizer.eps = 1e-6
        return c
    if args.size == "demo":
        c.batch_size = 64
        c.total_steps = 2_400
        c.log_every_steps = 50
        c.eval_every_steps = 2_400
        c.checkpoint_every_steps = 500
        config_lib.use_demo_towers(c, "dual_encoder")
        c.optimizer.update(learning_rate=1e-3, warmup_steps=200)
        return c
    if args.size != "tiny":
        raise ValueError(f"configs/clip.py: size={args.size!r}; accepted: ['base', 'demo', 'tiny']")
    config_lib.use_tiny_run(c, "dual_encoder", steps=4)
    return c
