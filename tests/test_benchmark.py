"""The benchmark writes every figure it promises; MFU needs a known (or given) peak."""

import json
import os

import pytest

from tests.helpers import load_config
from vlp_jax import benchmark


def test_peak_flops_table_matches_device_kinds():
    assert benchmark.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert benchmark.peak_flops_per_device("NVIDIA H100 PCIe") == 756e12
    assert benchmark.peak_flops_per_device("TPU v5 lite") == 197e12
    assert benchmark.peak_flops_per_device("TPU v5p") == 459e12
    assert benchmark.peak_flops_per_device("cpu") is None


def test_mfu_note_names_what_is_missing():
    from vlp_jax.benchmark.step import mfu

    assert mfu(2e12, 0.5, 2, 4e12, "x") == {"mfu": 0.5}
    assert "pass --peak_flops" in mfu(2e12, 0.5, 2, None, "cpu")["mfu_note"]
    assert "no model FLOP count" in mfu(None, 0.5, 2, 989e12, "NVIDIA H100")["mfu_note"]


def test_model_flops_count_a_matmul_exactly():
    import jax
    import jax.numpy as jnp

    from vlp_jax.setup_report import model_flops

    lowered = jax.jit(jnp.matmul).lower(jnp.ones((64, 32)), jnp.ones((32, 16)))
    assert model_flops(lowered) == 2 * 64 * 32 * 16


def test_model_flops_of_a_plugin_backend_come_from_the_cpu_backend():
    """The CUDA and TPU plugins raise NotImplementedError for `Lowered.cost_analysis` (seen on
    an H100 with JAX 0.11.2: the benchmark reported no FLOPs and so no MFU)."""
    import jax
    import jax.numpy as jnp

    from vlp_jax.setup_report import model_flops

    lowered = jax.jit(jnp.matmul).lower(jnp.ones((64, 32)), jnp.ones((32, 16)))

    class PluginLowered:
        def cost_analysis(self):
            raise NotImplementedError("Lowered.cost_analysis not implemented on platform 'cuda'")

        def compiler_ir(self, dialect):
            return lowered.compiler_ir(dialect)

    assert model_flops(PluginLowered()) == 2 * 64 * 32 * 16


def test_benchmark_writes_step_time_throughput_memory_and_mfu(tmp_path):
    config = load_config("clip", "tiny")
    result = benchmark.run_benchmark(
        config, str(tmp_path), steps=3, warmup=1, data_batches=2, peak_flops=1e12
    )
    saved = json.loads(open(os.path.join(tmp_path, "benchmark.json")).read())
    assert saved.keys() == result.keys()
    assert saved["step_seconds"] == result["step_seconds"]
    step = result["step_seconds"]
    assert 0 < step["min"] <= step["median"] <= step["max"]
    assert result["pairs_per_sec"] == pytest.approx(config.batch_size / step["median"])
    assert result["pairs_per_sec_per_device"] == pytest.approx(result["pairs_per_sec"] / 8)
    assert result["flops_per_step"] > 0 and result["compiled_flops_per_device"] > 0
    assert result["memory_per_device"]["total_bytes"] > 0
    assert result["data_pipeline"]["pairs_per_sec_this_process"] > 0
    expected_mfu = result["flops_per_step"] / (step["median"] * 8 * 1e12)
    assert result["mfu"] == pytest.approx(expected_mfu)
    assert "MFU" in benchmark.format_result(result)


def test_pipeline_benchmark_times_both_formats(tmp_path):
    from vlp_jax.benchmark import pipeline as pipeline_bench

    rows = pipeline_bench.run(
        str(tmp_path),
        pairs=16,
        source_size=48,
        image_sizes=(32,),
        threads=(1,),
        batch_size=8,
        batches=2,
    )
    assert [(r["format"], r["image_size"], r["threads"]) for r in rows] == [
        ("json+jpeg", 32, 1),
        ("array_record", 32, 1),
    ]
    assert all(r["pairs_per_sec"] > 0 for r in rows)


def test_grouping_benchmark_times_every_loop_at_equal_quality():
    from vlp_jax.benchmark import grouping as bench

    row = bench.measure(
        3 * 64,
        8,
        search_space=64,
        batch=16,
        reference_up_to=10**6,
        repeats=2,
        loops=("lean", "paper", "device"),
        chunk_spaces=2,
        workers=2,
    )
    assert row["workers"] == 2 and row["repeats"] == 2
    for key in ("jax", "jax_one_thread", "matmul_floor"):
        assert row[f"{key}_seconds"] > 0
    # The same chains, so the same batches' hardness; all harder than random batches.
    for loop in ("paper", "device"):
        assert row[f"hardest_negative_sim_{loop}_loop"] == pytest.approx(
            row["hardest_negative_sim_lean_loop"]
        )
    assert row["hardest_negative_sim_grouped"] == pytest.approx(
        row["hardest_negative_sim_lean_loop"]
    )
    assert row["hardest_negative_sim_grouped"] > row["hardest_negative_sim_random"]
    assert row["speedup_vs_device_loop"] > 0 and row["ratio_to_matmul_floor"] > 0
    # The strictest floor: the fastest of the batched, the one-space-at-a-time and the threaded
    # matmuls.
    assert row["matmul_floor_seconds"] == min(
        row[f"matmul_floor_{form}_seconds"] for form in ("batched", "per_space", "threaded")
    )
    # Every round's times are kept, and each round's ratio is to the fastest floor form of
    # that same round.
    rounds = row["round_seconds"]
    assert all(len(times) == 2 for times in rounds.values())
    assert row["jax_seconds"] == pytest.approx(sum(rounds["jax"]) / 2)  # the median of two
    forms = ("batched", "per_space", "threaded")
    assert row["ratio_to_matmul_floor_per_round"] == pytest.approx(
        [rounds["jax"][i] / min(rounds[f"matmul_floor_{f}"][i] for f in forms) for i in range(2)]
    )


def test_grouping_hop_costs_time_each_piece_of_one_search_space():
    from vlp_jax.benchmark import grouping as bench

    costs = bench.hop_costs(64, 8, repeats=1)
    assert set(costs) == {
        "matmul_ms",
        "native_chain_ms",
        "lazy_chain_ms",
        "lockstep_chain_ms",
        "chain_budget_ms",
        "row_argmax_us_per_hop",
        "column_argmax_us_per_hop",
        "row_max_us_per_hop",
    }
    assert costs["chain_budget_ms"] == pytest.approx(0.3 * costs["matmul_ms"])
    assert all(costs[k] > 0 for k in costs if not k.endswith("_chain_ms"))
