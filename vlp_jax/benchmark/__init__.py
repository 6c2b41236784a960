"""Benchmarks: the train step (`python -m vlp_jax.benchmark`) and GRIT grouping
(`python -m vlp_jax.benchmark.grouping`). Results are written to files, never asserted in tests."""

from vlp_jax.benchmark.step import (
    PEAK_BF16_FLOPS,
    format_result,
    peak_flops_per_device,
    run_benchmark,
)

__all__ = ["PEAK_BF16_FLOPS", "format_result", "peak_flops_per_device", "run_benchmark"]
