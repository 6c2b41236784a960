"""python -m vlp_jax.main --config configs/demo.py --workdir runs/demo   (or: make demo)

A tiny ALBEF (ViT + BERT-style text/fusion encoder; ITC + ITM + MLM) trained from scratch on the
embedded `shapes` dataset for 1,200 steps of 64 pairs, on a 2-core CPU in 6.5 to 8 minutes
(measured over seeds 0 to 4: 6 min 35 s to 7 min 45 s). Aims, on the 1,000 held-out test pairs:
a mean image→text / text→image R@1 of at least 10% (measured with this config, seeds 0 to 4:
24.55 to 26.35%) and an ITM hard-negative accuracy of at least 70% (measured: 71.4 / 71.2 / 71.0
/ 72.5 / 71.8%; README, "The demo").
"""

import ml_collections

from vlp_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(arg, steps=1200)
    c = config_lib.base_config()
    config_lib.use_demo_run(c, "albef", steps=args.steps)
    # About 1/sqrt(width) for the width-128 towers rather than BERT's 0.02, so attention does not
    # start uniform: ITC learns faster and swapped attributes are caught more often (README,
    # "Initial weight scale").
    c.model.init_std = 0.09
    # GRIT-VLP's masking probability: MLM predicts half of each caption from the image instead
    # of 15%, and ITM catches more swapped attributes (README, "The demo").
    c.mlm.mask_prob = 0.5
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """`python launch/sweep.py --config configs/demo.py --root runs/sweep [--run | --slurm ...]`"""
    del arg
    return config_lib.product(
        **{"optimizer.learning_rate": [5e-4, 1e-3], "mlm.mask_prob": [0.15, 0.5]}
    )
