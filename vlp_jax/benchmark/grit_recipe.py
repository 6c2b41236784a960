"""GRIT-VLP against its baselines on `shapes`, at equal data, towers and steps:

    python -m vlp_jax.benchmark.grit_recipe --workdir runs/grit_compare --seeds 0,1

Every row of `ROWS` is trained for every seed (one `python -m vlp_jax.main` run each, skipped
when its workdir already holds the final evaluation; a crashed run resumes from its checkpoint),
evaluated every 100 steps without ITM re-ranking. The runs' `metrics.jsonl` are then summarised
into WORKDIR/summary.json and WORKDIR/summary.md, with the first seed's curves drawn to
WORKDIR/r_mean.png, hardest_negative_sim.png and itm_loss.png. Per run:

- `itm_loss`: the training ITM loss, mean of the steps logged in the last 100;
- `hardest_negative_sim`: the mean cosine of each example's hardest in-batch negative
  (`train/hardest_negative_sim`), over the steps logged after the first epoch, which is the
  only random epoch of a grouped run. Each run measures it by its own model, whose embedding
  geometry the batches it trained on shaped;
- `regrouped_sim_grouped` / `_random` (grouped runs): the same measure by the same embeddings,
  for the new grouped order's batches and for random batches, at each regrouping
  (`grit/hardest_negative_sim_*`, `grit.order_hardness`), averaged over the regroupings;
- the final evaluation: mean i→t / t→i R@1, ITM and ITC hard-negative accuracy;
- `steps_to`: the first evaluated step whose mean R@1 reaches each baseline row's final mean R@1
  (the same seed's), or None.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence

from absl import app, flags

from vlp_jax import config_lib
from vlp_jax.benchmark.plot import line_plot

# name -> (config, overrides): the rows differ only by recipe (configs/albef.py's `demo` shares
# GRIT's demo schedule, towers and 16,000 training pairs).
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "albef_momentum": ("configs/albef.py:size=demo", ()),
    "grit_random": ("configs/grit_vlp.py:size=demo", ("--config.grit.enabled=False",)),
    "grit_grouped": ("configs/grit_vlp.py:size=demo", ()),
}
BASELINES = ("albef_momentum", "grit_random")
COMMON_OVERRIDES = ("--config.eval_every_steps=100", "--config.eval.itm_rerank_k=0")
FINAL_EVAL_KEYS = (
    "eval/r_mean_r1",
    "eval/i2t_r1",
    "eval/t2i_r1",
    "eval/hardneg_acc_itm",
    "eval/hardneg_acc_itm_attribute",
    "eval/hardneg_acc_itm_swap",
    "eval/hardneg_acc_itm_relation",
    "eval/hardneg_acc_itc",
)


def run_dir(workdir: str, row: str, seed: int) -> str:
    return os.path.join(workdir, f"{row}_s{seed}")


def train_command(row: str, seed: int, workdir: str) -> list[str]:
    config, overrides = ROWS[row]
    return [
        sys.executable,
        "-m",
        "vlp_jax.main",
        f"--config={config}",
        *overrides,
        *COMMON_OVERRIDES,
        f"--config.seed={seed}",
        f"--workdir={run_dir(workdir, row, seed)}",
    ]


def read_metrics(path: str) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order; a truncated last line (a killed run) is
    dropped, any other bad line raises naming the file and line."""
    rows = []
    with open(path) as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON object ({e})") from None
    return rows


def _mean_r1(row: Mapping[str, float]) -> float:
    return (row["eval/i2t_r1"] + row["eval/t2i_r1"]) / 2


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """The first step of `curve` (step, mean R@1) at or above `target`."""
    return next((step for step, value in curve if value >= target), None)


def summarise_run(
    rows: Sequence[Mapping], *, first_epoch_steps: int, last_steps: int = 100
) -> dict:
    evals = [r for r in rows if "eval/i2t_r1" in r]
    if not evals:
        raise ValueError("no evaluation in the run's metrics")
    final_step = evals[-1]["step"]
    train = [r for r in rows if "train/itm" in r or "train/hardest_negative_sim" in r]
    last = [r for r in train if r["step"] > final_step - last_steps and "train/itm" in r]
    after_first = [
        r["train/hardest_negative_sim"]
        for r in train
        if r["step"] > first_epoch_steps and "train/hardest_negative_sim" in r
    ]
    final = {**evals[-1], "eval/r_mean_r1": _mean_r1(evals[-1])}
    regrouped = {
        kind: [
            r[f"grit/hardest_negative_sim_{kind}"]
            for r in rows
            if f"grit/hardest_negative_sim_{kind}" in r
        ]
        for kind in ("grouped", "random")
    }
    return {
        "final_step": final_step,
        "itm_loss": statistics.fmean(r["train/itm"] for r in last) if last else None,
        "hardest_negative_sim": statistics.fmean(after_first) if after_first else None,
        **{
            f"regrouped_sim_{kind}": statistics.fmean(values) if values else None
            for kind, values in regrouped.items()
        },
        "final": {k.removeprefix("eval/"): final[k] for k in FINAL_EVAL_KEYS if k in final},
        "r1_curve": [(r["step"], _mean_r1(r)) for r in evals],
    }


def summarise(runs: Mapping[str, Mapping[int, dict]]) -> dict:
    """`runs[row][seed]` = summarise_run(...) → per-row per-seed values, their means, and the
    steps each run needs to reach each baseline's final mean R@1 of the same seed."""
    out = {}
    for row, seeds in runs.items():
        per_seed = {}
        for seed, run in seeds.items():
            steps_to = {}
            for base in BASELINES:
                if seed in runs.get(base, {}):
                    target = runs[base][seed]["final"]["r_mean_r1"]
                    steps_to[base] = steps_to_reach(run["r1_curve"], target)
            per_seed[seed] = {**run, "steps_to": steps_to}
        scalars = (
            "itm_loss",
            "hardest_negative_sim",
            "regrouped_sim_grouped",
            "regrouped_sim_random",
        )
        mean = {k: _mean_or_none([s[k] for s in per_seed.values()]) for k in scalars}
        for k in FINAL_EVAL_KEYS:
            key = k.removeprefix("eval/")
            mean[key] = _mean_or_none([s["final"].get(key) for s in per_seed.values()])
        out[row] = {"seeds": per_seed, "mean": mean}
    return out


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return statistics.fmean(values) if values and None not in values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cells(seed: str, values: Mapping, final: Mapping, steps: str) -> list[str]:
    itm_kinds = " / ".join(
        _fmt(final.get(f"hardneg_acc_itm_{kind}"), 1) for kind in ("attribute", "swap", "relation")
    )
    return [
        seed,
        _fmt(values.get("itm_loss"), 3),
        _fmt(values.get("hardest_negative_sim"), 3),
        f"{_fmt(values.get('regrouped_sim_grouped'), 3)} / "
        f"{_fmt(values.get('regrouped_sim_random'), 3)}",
        _fmt(final.get("r_mean_r1")),
        f"{_fmt(final.get('hardneg_acc_itm'), 1)} ({itm_kinds})",
        _fmt(final.get("hardneg_acc_itc"), 1),
        steps,
    ]


def markdown(summary: Mapping[str, dict]) -> str:
    """One line per run, and a mean line per row when it has several seeds."""
    header = [
        "row",
        "seed",
        "ITM loss, last 100 steps",
        "hardest-neg. sim. after epoch 1",
        "at each regrouping, same embeddings: grouped / random batches",
        "mean R@1",
        "ITM hard-neg. (attribute / swap / relation)",
        "ITC hard-neg.",
        "steps to " + " / ".join(f"{b}'s R@1" for b in BASELINES),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, entry in summary.items():
        for seed, s in entry["seeds"].items():
            steps = " / ".join(
                "–" if base not in s["steps_to"] else str(s["steps_to"][base] or "not reached")
                for base in BASELINES
            )
            lines.append("| " + " | ".join([row, *_cells(str(seed), s, s["final"], steps)]) + " |")
        if len(entry["seeds"]) > 1:
            cells = _cells("mean", entry["mean"], entry["mean"], "")
            lines.append("| " + " | ".join([row, *cells]) + " |")
    return "\n".join(lines) + "\n"


def finished(run_workdir: str, total_steps: int) -> bool:
    """Whether the run's metrics hold an evaluation at its last step."""
    path = os.path.join(run_workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return False
    return any(r.get("step") == total_steps and "eval/i2t_r1" in r for r in read_metrics(path))


PLOTS = {
    "r_mean.png": ("mean R@1 on the test pairs", "eval/mean_r1"),
    "hardest_negative_sim.png": ("hardest in-batch negative cosine", "train/hardest_negative_sim"),
    "itm_loss.png": ("training ITM loss", "train/itm"),
}


def write_plots(workdir: str, metrics: Mapping[str, Sequence[Mapping]], seed: int) -> None:
    """One PNG per entry of PLOTS, a line per row (`metrics[row]`: that seed's rows)."""
    for filename, (title, key) in PLOTS.items():
        series = {}
        for row, rows in metrics.items():
            if key == "eval/mean_r1":
                points = [(r["step"], _mean_r1(r)) for r in rows if "eval/i2t_r1" in r]
            else:
                points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                steps, values = zip(*points)
                series[row] = (list(steps), list(values))
        line_plot(series, f"{title}, seed {seed}", os.path.join(workdir, filename))


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    seeds = [int(s) for s in f.seeds.split(",")]
    rows = f.rows.split(",") if f.rows else list(ROWS)
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise app.UsageError(f"--rows: unknown {unknown}; accepted: {list(ROWS)}")
    configs = {row: config_lib.load_config_file(ROWS[row][0]) for row in rows}
    runs: dict[str, dict[int, dict]] = {row: {} for row in rows}
    first_seed_metrics = {}
    for seed in seeds:
        for row in rows:
            directory = run_dir(f.workdir, row, seed)
            config = configs[row]
            if f.train and not finished(directory, config.total_steps):
                os.makedirs(directory, exist_ok=True)
                command = train_command(row, seed, f.workdir)
                print(" ".join(command), flush=True)
                with open(directory + ".log", "a") as log:
                    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
                if done.returncode:
                    raise SystemExit(
                        f"{row} seed {seed} failed (exit {done.returncode}); see {directory}.log"
                    )
            metrics = read_metrics(os.path.join(directory, "metrics.jsonl"))
            first_epoch_steps = config.data.train_examples // config.batch_size
            runs[row][seed] = summarise_run(metrics, first_epoch_steps=first_epoch_steps)
            if seed == seeds[0]:
                first_seed_metrics[row] = metrics
    summary = summarise(runs)
    with open(os.path.join(f.workdir, "summary.json"), "w") as out:
        json.dump(summary, out, indent=1)
    table = markdown(summary)
    with open(os.path.join(f.workdir, "summary.md"), "w") as out:
        out.write(table)
    print(table)
    write_plots(f.workdir, first_seed_metrics, seeds[0])
    print(f"written to {f.workdir}/summary.json, summary.md and " + ", ".join(PLOTS))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "runs/grit_compare", "One subdirectory per row and seed.")
    flags.DEFINE_string("seeds", "0", "Comma-separated seeds.")
    flags.DEFINE_string("rows", "", f"Comma-separated rows (default: all of {list(ROWS)}).")
    flags.DEFINE_bool("train", True, "Train runs that have not finished (else: summarise only).")
    app.run(main)
