"""The mesh, the logical-axis rule table, and host batches turned into global arrays.

Sharding is declared once: models name their parameter axes logically ("embed", "mlp", ...), and
`config.sharding_rules` maps those names to mesh axes. The batch is split over the mesh axes in
`BATCH_AXES` that the mesh has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes the global batch is split over (FSDP shards the batch too, ZeRO-3 style).
BATCH_AXES = ("data", "fsdp")

# Data parallel: every parameter replicated, activations split over the batch axes.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", None),
    ("mlp", None),
    ("heads", None),
    ("head_dim", None),
    ("vocab", None),
    ("patch", None),
    ("pos", None),
    ("proj", None),
    ("classes", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh from `(name, size)` pairs; one size may be -1 for "all remaining devices".

    Axes are `AxisType.Auto` so Linen's logical constraints work (the `make_mesh` default is
    Explicit, which rejects them).
    """
    devices = list(jax.devices() if devices is None else devices)
    names = [str(name) for name, _ in axes]
    sizes = [int(size) for _, size in axes]
    for name in names:
        if name not in MESH_AXES:
            raise ValueError(f"config.mesh: unknown axis {name!r}; accepted axes are {MESH_AXES}")
    if len(set(names)) != len(names):
        raise ValueError(f"config.mesh: repeated axis names in {names}")
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {list(axes)}")
    known = int(np.prod([s for s in sizes if s != -1])) if sizes else 1
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"config.mesh: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"config.mesh: axes {dict(zip(names, sizes))} need {int(np.prod(sizes))} devices, "
            f"but {len(devices)} are available"
        )
    return jax.make_mesh(
        tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names), devices=devices
    )


def batch_axes(mesh: Mesh | jax.sharding.AbstractMesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def active_batch_axes() -> tuple[str, ...] | None:
    """The batch axes of the mesh set by `jax.set_mesh`, or None when there is no split batch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    axes = batch_axes(mesh)
    if not axes or int(np.prod([mesh.shape[a] for a in axes])) == 1:
        return None
    return axes


def batch_size_per_shard(global_batch: int, mesh: Mesh) -> int:
    shards = int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))
    if global_batch % shards:
        raise ValueError(
            f"config.batch_size={global_batch} must divide by the {shards} batch shards of the mesh"
        )
    return global_batch // shards


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
    """The rule table as Flax wants it: (logical name, mesh axis | tuple of axes | None)."""
    if not rules:
        return DEFAULT_RULES
    out = []
    for rule in rules:
        name, target = rule[0], rule[1]
        if isinstance(target, list):
            target = tuple(target)
        out.append((str(name), target))
    return tuple(out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a tree of boxed (`nn.LogicallyPartitioned`) or plain abstract leaves.

    Plain leaves (step counters, optimiser scalars) are replicated.
    """
    specs = nn.get_partition_spec(abstract_tree)
    # Drop mesh axes this mesh does not have, so one rule table serves every mesh shape.
    present = set(mesh.axis_names)

    def keep(target):
        if target is None:
            return None
        if isinstance(target, str):
            return target if target in present else None
        kept = tuple(t for t in target if t in present)
        return kept or None

    rules = tuple((name, keep(target)) for name, target in rules)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the batch → global arrays split over the mesh's batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
