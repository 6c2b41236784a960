"""What a run is about to do, from the compiled step: mesh, parameters and their shardings,
per-device memory and FLOPs. Printed at start-up and written to `{workdir}/setup.json`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jax
import numpy as np
from etils import epath

_LAYER_INDEX = re.compile(r"layers_\d+")
_MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
)


def _path(key_path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def parameter_groups(params: Any, shardings: Any) -> list[dict[str, Any]]:
    """One row per parameter kind (layer indices folded to `layers_*`): count, shape, spec."""
    groups: dict[str, dict[str, Any]] = {}
    flat_shardings = dict(jax.tree_util.tree_flatten_with_path(shardings)[0])
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _LAYER_INDEX.sub("layers_*", _path(key_path))
        spec = flat_shardings[key_path].spec
        row = groups.setdefault(
            name,
            {
                "name": name,
                "arrays": 0,
                "params": 0,
                "shape": list(leaf.shape),
                "spec": str(spec),
                "sharded": any(axis is not None for axis in spec),
            },
        )
        row["arrays"] += 1
        row["params"] += int(np.prod(leaf.shape))
    return list(groups.values())


def _flops(cost: Any) -> float | None:
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def compiled_cost(compiled: Any) -> dict[str, Any]:
    """Per-device memory (`memory_analysis`) and FLOPs (`cost_analysis`) of a compiled step.

    XLA reports the FLOPs of one device's program after SPMD partitioning; on GPU that count
    leaves out the matmuls and convolutions XLA hands to cuBLAS/cuDNN (library calls count zero:
    a CLIP B/16 step of 31 TFLOP read 0.29 TFLOP on an H100), so MFU uses `model_flops`.
    """
    out: dict[str, Any] = {}
    memory = compiled.memory_analysis()
    if memory is not None:
        per_device = {f: int(getattr(memory, f, 0) or 0) for f in _MEMORY_FIELDS}
        # Donated inputs alias outputs, so they are counted once.
        per_device["total_bytes"] = (
            per_device["argument_size_in_bytes"]
            + per_device["output_size_in_bytes"]
            + per_device["temp_size_in_bytes"]
            - per_device["alias_size_in_bytes"]
        )
        out["memory_per_device"] = per_device
    flops = _flops(compiled.cost_analysis())
    if flops is not None:
        out["compiled_flops_per_device"] = flops
    return out


def model_flops(lowered: Any) -> float | None:
    """FLOPs of the whole global step as the program writes it: XLA's cost analysis of the
    lowered, not yet partitioned or optimised module. Independent of the backend and of the
    device count (the demo step: 24.37 GFLOP on 1 and on 8 CPU devices; the compiled count was
    24.56 and 8 × 3.11); with remat it includes the recomputed forward.

    Backends reached through a PJRT plugin (the CUDA and TPU plugins) cannot analyse a lowered
    module (JAX raises NotImplementedError, or gives nothing), so there the same HLO module is
    analysed by the CPU backend, which every jaxlib has."""
    try:
        flops = _flops(lowered.cost_analysis())
    except NotImplementedError:
        flops = None
    return flops if flops is not None else _flops_on_cpu_backend(lowered)


def _flops_on_cpu_backend(lowered: Any) -> float | None:
    try:
        from jax._src.lib import _jax  # the analysis has no public entry point
        from jax.extend import backend

        module = lowered.compiler_ir("hlo").as_hlo_module()
        return _flops(_jax.hlo_module_cost_analysis(backend.get_backend("cpu"), module))
    except (ImportError, AttributeError, NotImplementedError, RuntimeError):
        return None


def describe(
    mesh,
    params: Any,
    shardings: Any,
    compiled: Any,
    compile_seconds: float,
    lowered: Any = None,
) -> dict:
    """The setup as a JSON-ready dict (`flops_per_step` from `lowered` when given)."""
    info = {
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
        "parameter_groups": parameter_groups(params, shardings),
        "compile_seconds": round(compile_seconds, 2),
        **compiled_cost(compiled),
    }
    flops = model_flops(lowered) if lowered is not None else None
    if flops is not None:
        info["flops_per_step"] = flops
    return info


def format_setup(info: dict[str, Any], max_groups: int = 12) -> str:
    """A few console lines; the full table is in setup.json."""
    lines = [
        f"mesh {info['mesh']} on {info['devices']} × {info['device_kind']} "
        f"({info['processes']} process(es)); {info['params'] / 1e6:.2f}M params; "
        f"step compiled in {info['compile_seconds']:.1f} s"
    ]
    if "memory_per_device" in info:
        m = info["memory_per_device"]
        lines.append(
            f"per-device memory {m['total_bytes'] / 2**20:.1f} MiB "
            f"(arguments {m['argument_size_in_bytes'] / 2**20:.1f}, "
            f"temporaries {m['temp_size_in_bytes'] / 2**20:.1f})"
        )
    if "flops_per_step" in info:
        lines.append(f"{info['flops_per_step'] / 1e9:.2f} GFLOP per step (model FLOPs)")
    sharded = [g for g in info["parameter_groups"] if g["sharded"]]
    specs = {g["spec"] for g in sharded}
    lines.append(
        f"{len(sharded)} of {len(info['parameter_groups'])} parameter groups sharded"
        + (f" ({', '.join(sorted(specs))})" if specs else " (all replicated)")
    )
    # Replicated groups need no listing; setup.json has every group.
    biggest = sorted(sharded, key=lambda g: -g["params"])[:max_groups]
    for g in biggest:
        lines.append(f"  {g['name']:<48} {str(g['shape']):<18} {g['spec']}")
    return "\n".join(lines)


def write(workdir: str, info: dict[str, Any]) -> None:
    """Process 0 writes `{workdir}/setup.json` (a gs:// workdir works through etils.epath)."""
    if jax.process_index() == 0:
        (epath.Path(workdir) / "setup.json").write_text(json.dumps(info, indent=1))
