"""Metrics out: `{workdir}/metrics.jsonl`, TensorBoard event files and a console progress line.

Only process 0 writes; other processes get a writer that drops everything.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, float(value), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One console line: step, loss, throughput and ETA (a progress bar without a dependency)."""

    def __init__(self, total_steps: int, *, enabled: bool = True, width: int = 24):
        self.total = total_steps
        self.enabled = enabled
        self.width = width
        self.start = time.perf_counter()
        self.start_step: int | None = None

    def update(self, step: int, loss: float, pairs_per_sec: float) -> None:
        if not self.enabled:
            return
        if self.start_step is None:
            self.start_step, self.start = step, time.perf_counter()
        done = step / max(self.total, 1)
        bar = "#" * int(done * self.width)
        elapsed = time.perf_counter() - self.start
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else math.inf
        eta_s = "?" if math.isinf(eta) else time.strftime("%M:%S", time.gmtime(eta))
        if eta >= 3600 and not math.isinf(eta):
            eta_s = f"{eta / 3600:.1f}h"
        sys.stdout.write(
            f"\r[{bar:<{self.width}}] step {step}/{self.total} loss {loss:.4f} "
            f"{pairs_per_sec:,.0f} pairs/s ETA {eta_s}   "
        )
        sys.stdout.flush()

    def newline(self) -> None:
        if self.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()
