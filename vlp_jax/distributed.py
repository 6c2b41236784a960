"""Joining a multi-process job: `jax.distributed.initialize()` with what the launcher provides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax


def is_multiprocess_launch() -> bool:
    """True when this process is one of several of a job."""
    env = os.environ
    if int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def distributed_args(env: Mapping[str, str]) -> dict[str, Any]:
    """Arguments for `jax.distributed.initialize` from the launcher's environment.

    - `launch/local.sh` (and any launcher) may set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
      and JAX_PROCESS_ID explicitly.
    - Under SLURM, JAX reads the cluster itself and gives each task the one GPU of its local
      rank; with one task per node (`--ntasks-per-node=1`) that task gets all the node's GPUs.
    - Cloud TPU pods describe themselves; nothing to pass.
    """
    if "JAX_COORDINATOR_ADDRESS" in env:
        return {
            "coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
            "num_processes": int(env["JAX_NUM_PROCESSES"]),
            "process_id": int(env["JAX_PROCESS_ID"]),
        }
    if "SLURM_JOB_ID" in env and "SLURM_GPUS_ON_NODE" in env:
        nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        # SLURM writes e.g. "8" or "8(x2)".
        per_node = env.get("SLURM_NTASKS_PER_NODE", str(int(env["SLURM_NTASKS"]) // nodes))
        per_node = int(per_node.split("(")[0])
        if per_node == 1:
            return {"local_device_ids": list(range(int(env["SLURM_GPUS_ON_NODE"])))}
    return {}


def initialize_distributed() -> None:
    if jax.distributed.is_initialized() or not is_multiprocess_launch():
        return
    jax.distributed.initialize(**distributed_args(os.environ))
