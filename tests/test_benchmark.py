"""The benchmark writes every figure it promises; MFU needs a known (or given) peak."""

import json
import math
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


def _fake_run(final_r1: float, *, itm: float, hardness: float, total: int = 400) -> list[dict]:
    """A run's metrics.jsonl rows: training every 50 steps, evaluation every 100, mean R@1
    rising linearly to `final_r1`."""
    rows = []
    for step in range(50, total + 1, 50):
        first_epoch = step <= 200
        rows.append(
            {
                "step": step,
                "train/itm": itm if step > total - 100 else 9.0,
                "train/hardest_negative_sim": 0.1 if first_epoch else hardness,
            }
        )
        if step % 100 == 0:
            r1 = final_r1 * step / total
            rows.append(
                {
                    "step": step,
                    "eval/i2t_r1": r1 - 1,
                    "eval/t2i_r1": r1 + 1,
                    "eval/hardneg_acc_itm": 60.0,
                    "eval/hardneg_acc_itm_swap": 50.0,
                    "eval/hardneg_acc_itc": 65.0,
                }
            )
    return rows


def test_grit_recipe_summary_reports_itm_loss_hardness_retrieval_and_steps_to_baselines(tmp_path):
    from vlp_jax.benchmark import grit_recipe

    metrics = {
        "albef_momentum": _fake_run(10.0, itm=0.5, hardness=0.3),
        "grit_random": _fake_run(20.0, itm=0.6, hardness=0.4),
        "grit_grouped": _fake_run(8.0, itm=0.7, hardness=0.9),
    }
    for step, grouped in ((250, 0.9), (350, 1.0)):  # as the trainer logs each regrouping
        metrics["grit_grouped"].append(
            {
                "step": step,
                "grit/hardest_negative_sim_grouped": grouped,
                "grit/hardest_negative_sim_random": 0.5,
            }
        )
    runs = {
        row: {0: grit_recipe.summarise_run(rows, first_epoch_steps=200)}
        for row, rows in metrics.items()
    }
    summary = grit_recipe.summarise(runs)
    grouped = summary["grit_grouped"]["seeds"][0]
    assert grouped["itm_loss"] == pytest.approx(0.7)  # steps 350 and 400 only
    assert grouped["hardest_negative_sim"] == pytest.approx(0.9)  # after the first epoch only
    assert grouped["final"]["r_mean_r1"] == pytest.approx(8.0)
    assert grouped["final_step"] == 400
    # R@1 at 100..400: grouped 2, 4, 6, 8; albef 2.5 … 10; random 5 … 20.
    assert grouped["steps_to"] == {"albef_momentum": None, "grit_random": None}
    assert summary["grit_random"]["seeds"][0]["steps_to"] == {
        "albef_momentum": 200,
        "grit_random": 400,
    }
    assert summary["albef_momentum"]["mean"]["itm_loss"] == pytest.approx(0.5)
    assert grit_recipe.steps_to_reach([(100, 1.0), (200, 3.0)], 2.0) == 200
    table = grit_recipe.markdown(summary)
    assert (
        "| grit_grouped | 0 | 0.700 | 0.900 | 0.950 / 0.500 | 8.00 | 60.0 (– / 50.0 / –) | 65.0 |"
        in table
    )
    assert "| albef_momentum | 0 | 0.500 | 0.300 | – / – | 10.00 |" in table
    assert "not reached / not reached" in table
    grit_recipe.write_plots(str(tmp_path), metrics, seed=0)
    for name in grit_recipe.PLOTS:
        assert (tmp_path / name).stat().st_size > 1000

    # Two seeds: a mean line per row.
    two = {row: {0: r[0], 1: r[0]} for row, r in runs.items()}
    assert "| grit_grouped | mean | 0.700 | 0.900 | 0.950 / 0.500 | 8.00 |" in grit_recipe.markdown(
        grit_recipe.summarise(two)
    )


def test_grit_recipe_rows_differ_only_by_recipe():
    from vlp_jax import config_lib
    from vlp_jax.benchmark import grit_recipe

    def flat(config, prefix=""):
        out = {}
        for key, value in config.items():
            if hasattr(value, "items"):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    albef = flat(config_lib.load_config_file(grit_recipe.ROWS["albef_momentum"][0]))
    grit = flat(config_lib.load_config_file(grit_recipe.ROWS["grit_grouped"][0]))
    differing = {k for k in albef.keys() | grit.keys() if albef.get(k) != grit.get(k)}
    assert differing == {
        "grit.enabled",
        "itm.mode",
        "loss_weights.itc_consistency",
        "mlm.mask_prob",
        "momentum.enabled",
        "momentum.queue_size",
        "momentum.alpha_ramp_steps",
    }
    assert albef["momentum.alpha_ramp_steps"] * 64 == albef["data.train_examples"]  # one epoch
    command = grit_recipe.train_command("grit_random", 3, "/w")
    assert "--config.grit.enabled=False" in command
    assert command[-2:] == ["--config.seed=3", "--workdir=/w/grit_random_s3"]


def test_grit_recipe_reads_metrics_of_killed_runs_and_knows_finished_ones(tmp_path):
    from vlp_jax.benchmark import grit_recipe

    run = tmp_path / "grit_grouped_s0"
    assert not grit_recipe.finished(str(run), 100)
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 100, "train/itm": 1.0}\n{"step": 100, "ev')
    assert grit_recipe.read_metrics(str(run / "metrics.jsonl")) == [{"step": 100, "train/itm": 1.0}]
    assert not grit_recipe.finished(str(run), 100)
    (run / "metrics.jsonl").write_text('{"step": 100, "eval/i2t_r1": 1.0}\n')
    assert grit_recipe.finished(str(run), 100)
    assert not grit_recipe.finished(str(run), 200)
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        grit_recipe.read_metrics(str(run / "metrics.jsonl"))


def test_grouping_plot_draws_the_median_of_each_form_per_size(tmp_path):
    from vlp_jax.benchmark import plot

    for name, scale in (("a", 1.0), ("b", 3.0), ("c", 2.0)):
        rows = [
            {"pairs": 1000, "jax_seconds": scale, "matmul_floor_seconds": 0.5 * scale},
            {"pairs": 8000, "jax_seconds": 8 * scale, "paper_loop_seconds": 80.0},
        ]
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    series = plot.grouping_series(plot.read_grouping_results(str(tmp_path / "*.json")))
    assert series["grouped_order"] == ([1000, 8000], [2.0, 16.0])
    assert series["similarity matmuls (floor)"] == ([1000], [1.0])
    assert series["paper's Python loop"] == ([8000], [80.0])
    assert "lean Python loop" not in series
    out = tmp_path / "speed.png"
    plot.line_plot(series, "t", str(out), x_label="pairs", log_x=True, log_y=True)
    assert out.stat().st_size > 1000
    assert [label for _, label in plot._ticks(3.0, math.log10(8000), log=True)] == [
        "1k",
        "2k",
        "5k",
    ]
    (tmp_path / "bad.json").write_text('{"pairs": 1}')
    with pytest.raises(ValueError, match=r"bad.json: not a list of grouping benchmark rows"):
        plot.read_grouping_results(str(tmp_path / "*.json"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        plot.read_grouping_results(str(tmp_path / "none*.json"))
