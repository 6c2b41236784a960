"""Expands a config's sweep into one run per point: printed, run here, or submitted to SLURM.

    python launch/sweep.py --config configs/demo.py --root runs/sweep            # print commands
    python launch/sweep.py --config configs/demo.py --root runs/sweep --run      # run them here
    python launch/sweep.py --config configs/albef.py --root /shared/sweep \\
        --slurm launch/slurm_gpu.sbatch                                           # one job each

A sweep is the config file's `get_sweep(arg)`: a list of override dicts `{"key.path": value}`,
usually built with `vlp_jax.config_lib.product`. Each point runs
`python -m vlp_jax.main --config FILE[:ARG] --workdir ROOT/<overrides> --config.key=value ...`;
every override is checked against the config before anything is launched. Arguments after `--`
are appended to every command.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Config files import vlp_jax; make a checkout work without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def point_name(point: Mapping[str, Any]) -> str:
    """A directory name for one point: `optimizer.learning_rate=0.001,mlm.mask_prob=0.5`."""
    parts = [f"{key}={value}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts)) or "default"


def check_point(config, point: Mapping[str, Any], index: int) -> None:
    for key in point:
        node = config
        for part in key.split("."):
            if part not in node:
                raise SystemExit(f"error: sweep point {index} overrides unknown key config.{key}")
            node = node[part]


def commands(
    config_arg: str, root: str, points: Sequence[Mapping[str, Any]], extra: Sequence[str]
) -> list[list[str]]:
    out = []
    for point in points:
        cmd = ["--config", config_arg, "--workdir", f"{root.rstrip('/')}/{point_name(point)}"]
        cmd += [f"--config.{k}={v}" for k, v in point.items()]
        out.append(cmd + list(extra))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/x.py or configs/x.py:arg")
    parser.add_argument("--root", required=True, help="parent directory of the runs' workdirs")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="run the points one after another here")
    mode.add_argument("--slurm", metavar="SBATCH", help="submit one job per point with sbatch")
    args = parser.parse_args(argv)

    path, _, arg = args.config.partition(":")
    module = load_module(path)
    if not hasattr(module, "get_sweep"):
        raise SystemExit(f"error: {path} has no get_sweep(); nothing to sweep")
    points = list(module.get_sweep(arg or None))
    config = module.get_config(arg or None)
    for i, point in enumerate(points):
        check_point(config, point, i)

    for cmd in commands(args.config, args.root, points, extra):
        if args.slurm:
            name = "vlp_jax-" + cmd[3].rsplit("/", 1)[-1][:80]
            full = ["sbatch", f"--job-name={name}", args.slurm, *cmd]
        else:
            full = [sys.executable, "-m", "vlp_jax.main", *cmd]
        print(shlex.join(full), flush=True)
        if args.run or args.slurm:
            status = subprocess.call(full)
            if status:
                print(f"error: exit status {status}", file=sys.stderr)
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
