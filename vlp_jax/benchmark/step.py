"""Train-step speed and MFU: `python -m vlp_jax.benchmark --config configs/x.py --workdir DIR`.

Times the jitted train step of the config (the trainer's own step, on its mesh and shardings) on
synthetic batches after warm-up, measures the data pipeline separately, and writes
`{workdir}/benchmark.json`:

- step time (median, p10, p90, min, max) and pairs/s, global and per device;
- data-pipeline pairs/s of this process (a loader slower than the step shows here);
- compile time, per-device memory from the compiled step, peak device memory where the runtime
  reports it;
- MFU = FLOPs per step / (median step time × devices × peak FLOP/s per device). FLOPs are the
  global step's, from XLA's cost analysis of the lowered program (`setup_report.model_flops`):
  the compiled program's count misses the library matmuls on GPU. With remat on they include the
  recomputed forward, so the figure is then hardware FLOP utilisation rather than model FLOP
  utilisation.

Peak bf16 FLOP/s per device is looked up from the device kind (`PEAK_BF16_FLOPS`) or given with
`--peak_flops`; on CPU, MFU is not reported.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import jax
import numpy as np
from etils import epath

# Dense bf16 peak FLOP/s per device (chip for TPU, GPU for NVIDIA), from the vendors' data
# sheets. Matched in order against the lower-cased `device_kind`.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("a100", 312e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
    kind = device_kind.lower()
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in kind), None)


def mfu(
    flops_per_step: float | None,
    step_seconds: float,
    devices: int,
    peak: float | None,
    device_kind: str,
) -> dict[str, Any]:
    """`{"mfu": ...}`, or `{"mfu": None, "mfu_note": why}` naming what is missing."""
    if peak and flops_per_step:
        return {"mfu": flops_per_step / (step_seconds * devices * peak)}
    why = (
        f"no peak FLOP/s known for device kind {device_kind!r}; pass --peak_flops"
        if not peak
        else "no model FLOP count: no backend could analyse the lowered step"
    )
    return {"mfu": None, "mfu_note": why}


def _spread(seconds: list[float]) -> dict[str, float]:
    q = np.percentile(seconds, [10, 50, 90])
    return {
        "median": float(q[1]),
        "p10": float(q[0]),
        "p90": float(q[2]),
        "min": float(min(seconds)),
        "max": float(max(seconds)),
        "mean": float(statistics.fmean(seconds)),
    }


def time_steps(step_fn, state, batch, steps: int, warmup: int) -> tuple[Any, list[float]]:
    """Runs `warmup` untimed steps, then `steps` steps each timed to completion."""
    for _ in range(warmup):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(state)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready((state, metrics))
        seconds.append(time.perf_counter() - start)
    return state, seconds


def time_pipeline(config, tokenizer, batches: int) -> dict[str, float]:
    """Pairs/s this process's Grain pipeline delivers (after two warm-up batches)."""
    from vlp_jax.data import pipeline

    iterator = iter(
        pipeline.train_dataset(
            config,
            tokenizer,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    rows = sum(len(next(iterator)["input_ids"]) for _ in range(batches))
    elapsed = time.perf_counter() - start
    return {
        "pairs_per_sec_this_process": rows / elapsed,
        "pairs_per_sec_all_processes": rows / elapsed * jax.process_count(),
        "batches": batches,
    }


def run_benchmark(
    config,
    workdir: str,
    *,
    steps: int = 20,
    warmup: int = 3,
    data_batches: int = 10,
    peak_flops: float | None = None,
) -> dict[str, Any]:
    """Measures the config's train step (and pipeline) and writes `{workdir}/benchmark.json`."""
    from vlp_jax import config_lib, objectives, optim, setup_report, sharding, train
    from vlp_jax.data.synthetic import synthetic_batch
    from vlp_jax.data.tokenizer import load_tokenizer
    from vlp_jax.models import build_model

    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.rules_from_config(config.sharding_rules)
    tokenizer = load_tokenizer(config.data.tokenizer)
    tokens = train.token_info(tokenizer, config.itm.swap.stop_words)
    model = build_model(config.model)
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
    state, shardings = train.create_state(model, tx, config, mesh, rules)
    objective = objectives.make_objective(model, config, tokens)
    step_fn = train.make_train_step(
        objective, tx, schedule, shardings, mesh, config.grad_accum_steps, config
    )
    # Each process feeds its share of the global batch, as the pipeline does.
    local_rows = config.batch_size // jax.process_count()
    host_batch = synthetic_batch(
        config,
        tokens.special_ids,
        tokens.vocab_size,
        np.random.default_rng(jax.process_index()),
        batch_size=local_rows,
    )

    with sharding.activate(mesh, rules):
        batch = sharding.to_global(host_batch, mesh)
        start = time.perf_counter()
        lowered = step_fn.lower(state, batch)
        compiled = lowered.compile()
        compile_seconds = time.perf_counter() - start
        state, seconds = time_steps(compiled, state, batch, steps, warmup)

    setup = setup_report.describe(
        mesh, state["params"], shardings["params"], compiled, 0.0, lowered=lowered
    )
    devices = jax.device_count()
    step = _spread(seconds)
    result: dict[str, Any] = {
        "config": {
            "model": config.model.kind,
            "dtype": config.model.dtype,
            "batch_size": config.batch_size,
            "grad_accum_steps": config.grad_accum_steps,
            "image_size": config.data.image_size,
            "text_len": config.data.max_len,
            "loss_weights": dict(config.loss_weights),
            "remat": {
                "image": bool(config.model.image.remat),
                "text": bool(config.model.text.remat),
            },
        },
        "mesh": setup["mesh"],
        "devices": devices,
        "processes": jax.process_count(),
        "device_kind": setup["device_kind"],
        "params": setup["params"],
        "steps_timed": steps,
        "warmup_steps": warmup,
        "compile_seconds": compile_seconds,
        "step_seconds": step,
        "pairs_per_sec": config.batch_size / step["median"],
        "pairs_per_sec_per_device": config.batch_size / step["median"] / devices,
        "memory_per_device": setup.get("memory_per_device"),
        "flops_per_step": setup.get("flops_per_step"),
        "compiled_flops_per_device": setup.get("compiled_flops_per_device"),
    }
    stats = jax.local_devices()[0].memory_stats() or {}
    result["peak_device_memory_bytes"] = stats.get("peak_bytes_in_use")

    peak = peak_flops or peak_flops_per_device(setup["device_kind"])
    result["peak_flops_per_device"] = peak
    kind = setup["device_kind"]
    result.update(mfu(result["flops_per_step"], step["median"], devices, peak, kind))

    if data_batches > 0:
        result["data_pipeline"] = time_pipeline(config, tokenizer, data_batches)

    if jax.process_index() == 0:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "benchmark.json").write_text(json.dumps(result, indent=1))
    return result


def format_result(r: dict[str, Any]) -> str:
    s = r["step_seconds"]
    lines = [
        f"{r['config']['model']} {r['config']['dtype']} batch {r['config']['batch_size']} "
        f"on {r['devices']} × {r['device_kind']} mesh {r['mesh']}, {r['params'] / 1e6:.1f}M params",
        f"compile            {r['compile_seconds']:.1f} s",
        f"step time          {s['median'] * 1e3:.1f} ms median "
        f"(p10 {s['p10'] * 1e3:.1f}, p90 {s['p90'] * 1e3:.1f}; {r['steps_timed']} steps)",
        f"throughput         {r['pairs_per_sec']:.1f} pairs/s "
        f"({r['pairs_per_sec_per_device']:.1f} per device)",
    ]
    if r.get("flops_per_step"):
        lines.append(f"FLOPs per step     {r['flops_per_step'] / 1e12:.3f} TFLOP (model)")
    if r.get("mfu") is not None:
        lines.append(f"MFU                {100 * r['mfu']:.1f}%")
    else:
        lines.append(f"MFU                n/a ({r.get('mfu_note', '')})")
    if r.get("memory_per_device"):
        lines.append(f"memory per device  {r['memory_per_device']['total_bytes'] / 2**30:.2f} GiB")
    if r.get("peak_device_memory_bytes"):
        lines.append(f"peak device memory {r['peak_device_memory_bytes'] / 2**30:.2f} GiB")
    if "data_pipeline" in r:
        lines.append(
            f"data pipeline      {r['data_pipeline']['pairs_per_sec_this_process']:.1f} pairs/s "
            "per process"
        )
    return "\n".join(lines)
