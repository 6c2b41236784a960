"""Plot one metric of several runs (each run's `metrics.jsonl`; drawn with PIL only):

    python -m vlp_jax.benchmark.plot --key train/itc --run demo=runs/demo --run grit=runs/grit \
        --out curve.png

or the grouping benchmark's seconds against pairs, log-log, the median over its result files:

    python -m vlp_jax.benchmark.plot --grouping 'bench/*.json' --out grouping_speed.png
"""

from __future__ import annotations

import glob
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence

from absl import app, flags
from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def read_series(workdir: str, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if key in row:
                steps.append(int(row["step"]))
                values.append(float(row[key]))
    if not steps:
        raise ValueError(f"{workdir}/metrics.jsonl has no {key!r}")
    return steps, values


def line_plot(
    series: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    title: str,
    out: str,
    size: tuple[int, int] = (720, 420),
    *,
    x_label: str = "step",
    log_x: bool = False,
    log_y: bool = False,
) -> None:
    """Lines on shared axes with a legend, written as PNG; a log axis is ticked in its values."""
    fx = math.log10 if log_x else float
    fy = math.log10 if log_y else float
    series = {name: ([fx(x) for x in xs], [fy(y) for y in ys]) for name, (xs, ys) in series.items()}
    w, h = size
    left, right, top, bottom = 60, 20, 34, 40
    xs = [x for s, _ in series.values() for x in s]
    ys = [y for _, v in series.values() for y in v]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / ((x1 - x0) or 1.0) * (w - left - right),
            top + (y1 - y) / (y1 - y0) * (h - top - bottom),
        )

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for y, label in _ticks(y0, y1, log_y):
        _, py = px(x0, y)
        draw.line([left - 4, py, left, py], fill=(0, 0, 0))
        draw.text((4, py - 6), label, fill=(0, 0, 0))
    for x, label in _ticks(x0, x1, log_x):
        qx, _ = px(x, y0)
        draw.line([qx, h - bottom, qx, h - bottom + 4], fill=(0, 0, 0))
        draw.text((qx - 3 * len(label), h - bottom + 8), label, fill=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text((w - right - 6 * len(x_label), h - 16), x_label, fill=(0, 0, 0))
    for k, (name, (steps, values)) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [px(x, y) for x, y in zip(steps, values)]
        draw.line(points, fill=colour, width=2)
        if len(points) <= 20:  # few measurements: mark them
            for qx, qy in points:
                draw.ellipse([qx - 3, qy - 3, qx + 3, qy + 3], fill=colour)
        draw.text((left + 10, top + 8 + 14 * k), name, fill=colour)
    img.save(out)


def _short(value: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:.3g}"


def _ticks(lo: float, hi: float, log: bool) -> list[tuple[float, str]]:
    """(position, label) pairs: five even ticks on a linear axis; 1-2-5 values on a log axis
    (`lo`, `hi` are then log10s), only powers of ten where that gives more than eight."""
    if not log:
        return [(lo + (hi - lo) * i / 4, _short(lo + (hi - lo) * i / 4)) for i in range(5)]
    for mantissas in ((1, 2, 5), (1,)):
        values = [
            m * 10.0**e
            for e in range(math.floor(lo), math.ceil(hi) + 1)
            for m in mantissas
            if lo - 1e-9 <= math.log10(m * 10.0**e) <= hi + 1e-9
        ]
        if len(values) <= 8:
            break
    return [(math.log10(v), _short(v)) for v in values]


GROUPING_LINES = {
    "grouped_order": "jax_seconds",
    "similarity matmuls (floor)": "matmul_floor_seconds",
    "lean Python loop": "lean_loop_seconds",
    "paper's Python loop": "paper_loop_seconds",
}


def grouping_series(rows: Sequence[Mapping]) -> dict[str, tuple[list[int], list[float]]]:
    """Rows of `vlp_jax.benchmark.grouping` results → per timed form, the median seconds at
    each number of pairs (forms not run at a size are left out there)."""
    series = {}
    for name, key in GROUPING_LINES.items():
        by_size: dict[int, list[float]] = {}
        for row in rows:
            if row.get(key) is not None:
                by_size.setdefault(int(row["pairs"]), []).append(float(row[key]))
        if by_size:
            sizes = sorted(by_size)
            series[name] = (sizes, [statistics.median(by_size[n]) for n in sizes])
    if not series:
        raise ValueError("no grouping benchmark rows with timings")
    return series


def read_grouping_results(pattern: str) -> list[dict]:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"--grouping {pattern!r}: no such file")
    rows = []
    for path in paths:
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, list) or not all("pairs" in r for r in data):
            raise ValueError(f"{path}: not a list of grouping benchmark rows (each with 'pairs')")
        rows.extend(data)
    return rows


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.grouping:
        rows = read_grouping_results(f.grouping)
        title = f.title or "grouping seconds (median over runs) against pairs, log-log"
        line_plot(grouping_series(rows), title, f.out, x_label="pairs", log_x=True, log_y=True)
        print(f"written to {f.out}")
        return
    if not f.run:
        raise app.UsageError("give --run name=workdir (repeated) or --grouping FILES")
    runs = dict(part.split("=", 1) for part in f.run)
    series = {name: read_series(path, f.key) for name, path in runs.items()}
    line_plot(series, f.title or f.key, f.out)
    print(f"written to {f.out}")


if __name__ == "__main__":
    flags.DEFINE_string("key", "train/itc", "Metric to plot.")
    flags.DEFINE_multi_string("run", None, "name=workdir (repeat for each run).")
    flags.DEFINE_string("title", "", "Plot title (default: the key).")
    flags.DEFINE_string("grouping", "", "Glob of `vlp_jax.benchmark.grouping` result files.")
    flags.DEFINE_string("out", "plot.png", "Output PNG.")
    app.run(main)
