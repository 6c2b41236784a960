"""Plot one metric of several runs (each run's `metrics.jsonl`; drawn with PIL only):

    python -m vlp_jax.benchmark.plot --key train/itc --run demo=runs/demo --run grit=runs/grit \
        --out curve.png
"""

from __future__ import annotations

import json
import os
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
) -> None:
    """Lines on shared axes with a legend, written as PNG."""
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
            left + (x - x0) / max(x1 - x0, 1) * (w - left - right),
            top + (y1 - y) / (y1 - y0) * (h - top - bottom),
        )

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        _, py = px(x0, y)
        draw.line([left - 4, py, left, py], fill=(0, 0, 0))
        draw.text((4, py - 6), f"{y:.3g}", fill=(0, 0, 0))
        x = x0 + (x1 - x0) * i / 4
        qx, _ = px(x, y0)
        draw.line([qx, h - bottom, qx, h - bottom + 4], fill=(0, 0, 0))
        draw.text((qx - 12, h - bottom + 8), f"{x:.0f}", fill=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text((w - right - 30, h - 16), "step", fill=(0, 0, 0))
    for k, (name, (steps, values)) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        draw.line([px(x, y) for x, y in zip(steps, values)], fill=colour, width=2)
        draw.text((left + 10, top + 8 + 14 * k), name, fill=colour)
    img.save(out)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    runs = dict(part.split("=", 1) for part in f.run)
    series = {name: read_series(path, f.key) for name, path in runs.items()}
    line_plot(series, f.title or f.key, f.out)
    print(f"written to {f.out}")


if __name__ == "__main__":
    flags.DEFINE_string("key", "train/itc", "Metric to plot.")
    flags.DEFINE_multi_string("run", None, "name=workdir (repeat for each run).")
    flags.DEFINE_string("title", "", "Plot title (default: the key).")
    flags.DEFINE_string("out", "plot.png", "Output PNG.")
    flags.mark_flags_as_required(["run"])
    app.run(main)
