"""python -m vlp_jax.main --config configs/demo.py --workdir runs/demo   (or: make demo)

A tiny ALBEF (ViT + BERT-style text/fusion encoder; ITC + ITM + MLM) trained from scratch on the
embedded `shapes` dataset, on a 2-core CPU in about 8 minutes. Aims, on the 1,000 held-out test
pairs: a mean image→text / text→image R@1 of at least 10% (measured: 17.6%) and an ITM
hard-negative accuracy of at least 70% (measured: 63.5%, not yet reached; README has the table).
"""

import ml_collections

from vlp_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, steps=1100)
    c = config_lib.base_config()
    c.batch_size = 64
    c.total_steps = args.steps
    c.log_every_steps = 50
    c.eval_every_steps = args.steps
    c.checkpoint_every_steps = 500

    c.data.read_threads = 2
    config_lib.use_demo_towers(c, "albef")

    c.optimizer.learning_rate = 1e-3
    c.optimizer.min_learning_rate = 1e-5
    c.optimizer.warmup_init = 1e-5
    c.optimizer.warmup_steps = 200
    c.optimizer.weight_decay = 0.02

    c.eval.batch_size = 200
    c.eval.itm_rerank_k = 16
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """`python launch/sweep.py --config configs/demo.py --root runs/sweep [--run | --slurm ...]`"""
    del arg
    return config_lib.product(
        **{"optimizer.learning_rate": [5e-4, 1e-3], "mlm.mask_prob": [0.15, 0.3]}
    )
