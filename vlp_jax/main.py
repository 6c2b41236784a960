"""Entry point: `python -m vlp_jax.main --config configs/<recipe>.py[:arg] --workdir DIR`.

Any config field can be overridden with `--config.<key>=<value>`. The same command runs on one CPU
or as one of many processes: it joins the others through `jax.distributed.initialize()` when the
environment says it is one of several (SLURM, Cloud TPU pods, or the JAX_* variables that
`launch/local.sh` sets).
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vlp_jax.distributed import initialize_distributed
from vlp_jax.host_memory import reuse_freed_blocks

config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_integer(
    "stop_at_step",
    None,
    "End this run after this step (with a checkpoint), e.g. to fit a job's time limit; running "
    "the same command again continues to config.total_steps.",
)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with a bad config override reported in one line naming the key."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        override = next((a for a in argv[1:] if a.startswith("--config.")), None)
        detail = " ".join(str(e).replace("\\n", " ").replace("\\", "").replace("'", "").split())
        where = f" in {override.split('=')[0]}" if override else ""
        sys.stderr.write(f"error: bad command line{where}: {detail}\n")
        sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    reuse_freed_blocks()  # before JAX starts its threads
    initialize_distributed()
    # Orbax and Grain log every save and read at INFO; keep the console to our progress line.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    # Imported after distributed initialisation: importing the trainer touches no device, but
    # keeping it here makes that ordering obvious.
    from vlp_jax import evaluate, train

    metrics = train.train_and_evaluate(
        flags.FLAGS.config, flags.FLAGS.workdir, stop_at_step=flags.FLAGS.stop_at_step
    )
    if jax.process_index() == 0 and metrics:
        logging.info("final evaluation: %s", metrics)
        print(evaluate.format_table(metrics))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
