"""`python -m vlp_jax.benchmark --config configs/x.py --workdir DIR [--steps N] [--peak_flops F]`

Times the config's train step and writes DIR/benchmark.json (see `vlp_jax.benchmark.step`).
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vlp_jax.benchmark.step import format_result, run_benchmark


def main(argv: list[str]) -> None:
    del argv
    from vlp_jax.distributed import initialize_distributed
    from vlp_jax.host_memory import reuse_freed_blocks

    reuse_freed_blocks()  # before JAX starts its threads
    initialize_distributed()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    result = run_benchmark(
        f.config,
        f.workdir,
        steps=f.steps,
        warmup=f.warmup,
        data_batches=f.data_batches,
        peak_flops=f.peak_flops or None,
    )
    if jax.process_index() == 0:
        print(format_result(result))
        print(f"written to {f.workdir}/benchmark.json")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for benchmark.json.")
    flags.DEFINE_integer("steps", 20, "Timed train steps.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps before timing.")
    flags.DEFINE_integer("data_batches", 10, "Batches to time the data pipeline on (0: skip).")
    flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s per device (0: from the device kind).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
