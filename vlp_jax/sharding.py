"""The mesh, the logical-axis rule table, and host batches turned into global arrays.

Sharding is declared once: models name their parameter axes logically ("embed", "mlp", ...), and
`config.sharding_rules` maps those names to mesh axes. The batch is split over the mesh axes in
`BATCH_AXES` that the mesh has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes the global batch is split over (FSDP shards the batch too, ZeRO-3 style).
BATCH_AXES = ("data", "fsdp")

# One table for every mesh: axes a mesh lacks (or has at size 1) are dropped, so on a pure
# data-parallel mesh this is plain replication; with `fsdp > 1` every weight matrix is split
# along its model width (ZeRO-3: XLA gathers each layer's weights where they are used); with
# `tensor > 1` attention heads, MLP hidden units and the vocabulary are split (Megatron style).
# Activations have their own names ("act_*") so a weight rule never reshapes the residual stream.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", None),  # "tensor" also works, but XLA then gathers the embedding table
    ("head_dim", None),
    ("patch", None),
    ("pos", None),
    ("proj", None),
    ("classes", None),
    ("norm", None),
    ("length", None),
    ("act_embed", None),
)
# Plain data parallelism whatever the mesh: every parameter replicated.
REPLICATED_RULES: tuple[tuple[str, Any], ...] = tuple(
    (name, BATCH_AXES if name == "batch" else None) for name, _ in DEFAULT_RULES
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


def batch_size_per_shard(global_batch: int, mesh: Mesh, what: str = "config.batch_size") -> int:
    shards = int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))
    if global_batch % shards:
        raise ValueError(
            f"{what}={global_batch} must divide by the {shards} batch shards of the mesh"
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
    for i, rule in enumerate(rules):
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(
                f"config.sharding_rules[{i}]={rule!r} is not a (logical name, mesh axes) pair"
            )
        name, target = rule
        if isinstance(target, list):
            target = tuple(target)
        for axis in (target,) if isinstance(target, str) else target or ():
            if axis not in MESH_AXES:
                raise ValueError(
                    f"config.sharding_rules[{i}]: {name!r} -> unknown mesh axis {axis!r}; "
                    f"accepted axes are {MESH_AXES}"
                )
        out.append((name, target))
    return tuple(out)


def rules_for_mesh(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """The rules with the mesh axes this mesh lacks (or has at size 1) removed."""
    useful = {a for a in mesh.axis_names if mesh.shape[a] > 1}

    def keep(target):
        if target is None:
            return None
        if isinstance(target, str):
            return target if target in useful else None
        kept = tuple(t for t in target if t in useful)
        return kept or None

    return tuple((name, keep(target)) for name, target in rules)


def resolve_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, Any]]
) -> P:
    """Logical axis names of one array → its PartitionSpec on `mesh`.

    A mesh axis is used at most once per array, and only where it divides the dimension: a
    dimension it does not divide (a 2-class head on `tensor=4`) stays whole rather than failing.
    """
    table = dict(rules_for_mesh(mesh, rules))
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if axes and size % int(np.prod([mesh.shape[a] for a in axes])) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return P(*spec)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a tree of boxed (`nn.LogicallyPartitioned`) or plain abstract leaves.

    Plain leaves (step counters, optimiser scalars) are replicated.
    """

    def leaf_sharding(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, resolve_spec(leaf.names, leaf.value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(
        leaf_sharding, abstract_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Sets the mesh and the logical rules that the models' activation constraints read."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for_mesh(mesh, rules)):
        yield


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the batch → global arrays split over the mesh's batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
