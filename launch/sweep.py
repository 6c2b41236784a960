"""Expands a config's sweep into one run per point: printed, run here, or submitted to SLURM.

    python launch/sweep.py --config configs/demo.py --root runs/sweep            # print commands
    python launch/sweep.py --config configs/demo.py --root runs/sweep --run      # run them here
    python launch/sweep.py --config configs/demo.py --root runs/seeds --seeds 0,1,2,3,4 \\
        --run --parallel 5                                 # 5 runs at once (small runs, one GPU)
    python launch/sweep.py --config configs/demo.py --root runs/seeds --seeds 0,1,2,3,4 \\
        --summary                                          # final evaluations, and over seeds
    python launch/sweep.py --config configs/albef.py --root /shared/sweep \\
        --slurm launch/slurm_gpu.sbatch                                           # one job each

A sweep is the config file's `get_sweep(arg)`: a list of override dicts `{"key.path": value}`,
usually built with `vlp_jax.config_lib.product` (a config without one sweeps only `--seeds`).
Each point runs `python -m vlp_jax.main --config FILE[:ARG] --workdir ROOT/<overrides>
--config.key=value ...`; every override is checked against the config before anything is
launched. `--seeds` repeats every point once per seed (`seed=S` ends its directory name).
Arguments after `--` are appended to every command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Config files import vlp_jax; make a checkout work without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SUMMARY_KEYS = ("eval/i2t_r1", "eval/t2i_r1", "eval/hardneg_acc_itc", "eval/hardneg_acc_itm")


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


def with_seeds(points: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> list[dict]:
    """Every point once per seed (seed last, so the name reads `...,seed=3`); no seeds: as is."""
    if not seeds:
        return [dict(p) for p in points]
    return [
        {**{k: v for k, v in p.items() if k != "seed"}, "seed": s} for p in points for s in seeds
    ]


def workdir(root: str, point: Mapping[str, Any]) -> str:
    return f"{root.rstrip('/')}/{point_name(point)}"


def commands(
    config_arg: str, root: str, points: Sequence[Mapping[str, Any]], extra: Sequence[str]
) -> list[list[str]]:
    out = []
    for point in points:
        cmd = ["--config", config_arg, "--workdir", workdir(root, point)]
        cmd += [f"--config.{k}={v}" for k, v in point.items()]
        out.append(cmd + list(extra))
    return out


def run_parallel(commands_: Sequence[list[str]], logs: Sequence[str], parallel: int) -> int:
    """Runs the commands, at most `parallel` at a time, each one's console output to its log.
    Every command runs whatever the others do; returns the first non-zero status (or 0)."""
    pending = list(zip(commands_, logs))
    running: list[tuple[subprocess.Popen, str]] = []
    failed = 0
    while pending or running:
        while pending and len(running) < parallel:
            cmd, log = pending.pop(0)
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            running.append((proc, log))
        time.sleep(0.2)
        for proc, log in list(running):
            if proc.poll() is None:
                continue
            running.remove((proc, log))
            if proc.returncode:
                print(f"error: exit status {proc.returncode}; see {log}", file=sys.stderr)
                failed = failed or proc.returncode
            else:
                print(f"done: {log}", flush=True)
    return failed


def final_eval(metrics_path: Path) -> dict[str, Any] | None:
    """The last line of a run's metrics.jsonl that holds evaluation metrics, or None."""
    if not metrics_path.exists():
        return None
    last = None
    for number, line in enumerate(metrics_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"error: {metrics_path}:{number} is not JSON ({err})") from None
        if any(key.startswith("eval/") for key in row):
            last = row
    return last


def summary(root: str, points: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict:
    """Each point's final evaluation, and for points that differ only by seed, the mean, min
    and max over the seeds that have one."""
    runs, groups = [], {}
    for point in points:
        row = final_eval(Path(workdir(root, point)) / "metrics.jsonl")
        values = {k: row.get(k) for k in keys} if row else {}
        runs.append({"point": point_name(point), "step": row and row.get("step"), **values})
        group = point_name({k: v for k, v in point.items() if k != "seed"})
        if row:
            groups.setdefault(group, []).append(values)
    over_seeds = {}
    for group, rows in groups.items():
        over_seeds[group] = {"runs": len(rows)}
        for key in keys:
            xs = [r[key] for r in rows if r.get(key) is not None]
            if xs:
                over_seeds[group][key] = {
                    "mean": statistics.fmean(xs),
                    "min": min(xs),
                    "max": max(xs),
                }
    return {"runs": runs, "over_seeds": over_seeds}


def format_summary(result: dict, keys: Sequence[str]) -> str:
    short = [k.removeprefix("eval/") for k in keys]
    lines = ["\t".join(["point", "step", *short])]
    for run in result["runs"]:
        cells = ["–" if run.get(k) is None else f"{run[k]:.2f}" for k in keys]
        step = "no evaluation" if run["step"] is None else str(run["step"])
        lines.append("\t".join([run["point"], step, *cells]))
    if any(g["runs"] > 1 for g in result["over_seeds"].values()):
        lines += ["", "\t".join(["over seeds", "runs", *(f"{s} mean [min, max]" for s in short)])]
        for group, stats in result["over_seeds"].items():
            cells = [
                f"{stats[k]['mean']:.2f} [{stats[k]['min']:.2f}, {stats[k]['max']:.2f}]"
                if k in stats
                else "–"
                for k in keys
            ]
            lines.append("\t".join([group, str(stats["runs"]), *cells]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/x.py or configs/x.py:arg")
    parser.add_argument("--root", required=True, help="parent directory of the runs' workdirs")
    parser.add_argument("--seeds", default="", help="comma-separated seeds to run every point with")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="run the points here")
    mode.add_argument("--slurm", metavar="SBATCH", help="submit one job per point with sbatch")
    mode.add_argument(
        "--summary", action="store_true", help="print the points' final evaluations; run nothing"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="with --run: points at once (>1 sends each one's output to ROOT/<point>.log)",
    )
    parser.add_argument(
        "--keys", default=",".join(SUMMARY_KEYS), help="with --summary: metrics to show"
    )
    args = parser.parse_args(argv)
    if args.parallel < 1:
        raise SystemExit(f"error: --parallel must be at least 1, got {args.parallel}")
    if args.parallel > 1 and not args.run:
        raise SystemExit("error: --parallel runs points here, so it needs --run")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds takes integers like 0,1,2, got {args.seeds!r}") from None

    path, _, arg = args.config.partition(":")
    module = load_module(path)
    if hasattr(module, "get_sweep"):
        points = list(module.get_sweep(arg or None))
    elif seeds:
        points = [{}]
    else:
        raise SystemExit(f"error: {path} has no get_sweep() and no --seeds; nothing to sweep")
    config = module.get_config(arg or None)
    points = with_seeds(points, seeds)
    for i, point in enumerate(points):
        check_point(config, point, i)

    if args.summary:
        keys = [k.strip() for k in args.keys.split(",") if k.strip()]
        result = summary(args.root, points, keys)
        print(format_summary(result, keys))
        Path(args.root).mkdir(parents=True, exist_ok=True)
        Path(args.root, "summary.json").write_text(json.dumps(result, indent=1) + "\n")
        return 0

    cmds = commands(args.config, args.root, points, extra)
    fulls = []
    for cmd in cmds:
        if args.slurm:
            name = "vlp_jax-" + cmd[3].rsplit("/", 1)[-1][:80]
            fulls.append(["sbatch", f"--job-name={name}", args.slurm, *cmd])
        else:
            fulls.append([sys.executable, "-m", "vlp_jax.main", *cmd])
    for full in fulls:
        print(shlex.join(full), flush=True)
    if args.run and args.parallel > 1:
        logs = [f"{cmd[3]}.log" for cmd in cmds]  # cmd[3] is the point's workdir
        return run_parallel(fulls, logs, args.parallel)
    if args.run or args.slurm:
        for full in fulls:
            status = subprocess.call(full)
            if status:
                print(f"error: exit status {status}", file=sys.stderr)
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
