"""python -m vlp_jax.main --config configs/demo.py --workdir runs/demo   (or: make demo)

A tiny ALBEF (ViT + BERT-style text/fusion encoder; ITC + ITM + MLM) trained from scratch on the
embedded `shapes` dataset, on a 2-core CPU in 5 to 7.5 minutes. Aims, on the 1,000 held-out test
pairs: a mean image→text / text→image R@1 of at least 10% (measured with this config, seeds
0 to 4: 22.7 to 26.25%) and an ITM hard-negative accuracy of at least 70% (measured: 68.8 /
68.6 / 70.4 / 70.4 / 70.4%, so met in three of five; README, "Initial weight scale").
"""

import ml_collections

from vlp_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, steps=1100)
    c = config_lib.base_config()
    config_lib.use_demo_run(c, "albef", steps=args.steps)
    # About 1/sqrt(width) for the width-128 towers rather than BERT's 0.02, so attention does not
    # start uniform: ITC learns faster and swapped attributes are caught more often (README,
    # "Initial weight scale").
    c.model.init_std = 0.09
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """`python launch/sweep.py --config configs/demo.py --root runs/sweep [--run | --slurm ...]`"""
    del arg
    return config_lib.product(
        **{"optimizer.learning_rate": [5e-4, 1e-3], "mlm.mask_prob": [0.15, 0.3]}
    )
