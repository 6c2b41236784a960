"""python -m vlp_jax.main --config configs/demo.py --workdir runs/demo   (or: make demo)

A tiny ALBEF (ViT + BERT-style text/fusion encoder; ITC + ITM + MLM) trained from scratch on the
embedded `shapes` dataset, on a 2-core CPU in 5 to 7.5 minutes. Aims, on the 1,000 held-out test
pairs: a mean image→text / text→image R@1 of at least 10% (measured: 15.6 to 22.0%) and an ITM
hard-negative accuracy of at least 70% (measured: 72.2% once, but 64.2 to 68.6% in five other
runs: other seeds, or the same seed on another CPU; README, "Seeds and machines").
"""

import ml_collections

from vlp_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, steps=1100)
    c = config_lib.base_config()
    config_lib.use_demo_run(c, "albef", steps=args.steps)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """`python launch/sweep.py --config configs/demo.py --root runs/sweep [--run | --slurm ...]`"""
    del arg
    return config_lib.product(
        **{"optimizer.learning_rate": [5e-4, 1e-3], "mlm.mask_prob": [0.15, 0.3]}
    )
