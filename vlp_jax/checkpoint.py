"""Orbax checkpoints of the train state together with every process's data-iterator state.

Layout: `{workdir}/checkpoints/<step>/state/...` (sharded arrays, each process writes its shards)
and `<step>/data/process_<i>-of-<n>.json` (Grain iterator positions), plus `<step>/sampler/`
when a batch sampler keeps state (GRIT's epoch order and collected embeddings). Orbax writes a
step into a temporary directory and renames it when complete, so a save interrupted by a crash
is never the one restored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every `every` steps (and on demand), keeps the newest `keep`, restores the latest."""

    def __init__(self, directory: str, *, every: int, keep: int):
        self.directory = os.path.abspath(directory) if "://" not in directory else directory
        self.every = every
        self.manager = ocp.CheckpointManager(
            self.directory,
            # Handlers named up front, so a fresh manager can read a saved item's metadata.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "sampler": ocp.StandardCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any, data_iter: grain.DatasetIterator) -> Any | None:
        """The latest complete checkpoint into `abstract_state`'s shardings (and `data_iter`)."""
        step = self.manager.latest_step()
        if step is None:
            return None
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        return restored["state"]

    def restore_sampler(self, target: Callable[[Any], Any] | None = None) -> dict[str, Any] | None:
        """The batch sampler's state (GRIT's order and embeddings) of the latest checkpoint, if
        it saved one; restored first, because the data iterator is built from it. `target` maps
        the saved item's metadata (shapes, dtypes) to what to restore into."""
        step = self.manager.latest_step()
        if step is None:
            return None
        metadata = self.manager.item_metadata(step)
        if metadata.get("sampler") is None:
            return None
        abstract = None if target is None else target(metadata["sampler"])
        restored = self.manager.restore(
            step, args=ocp.args.Composite(sampler=ocp.args.StandardRestore(abstract))
        )
        return dict(restored["sampler"])

    def save(
        self,
        step: int,
        state: Any,
        data_iter: grain.DatasetIterator,
        sampler: dict[str, Any] | None = None,
    ) -> None:
        items = {
            "state": ocp.args.StandardSave(state),
            "data": grain.checkpoint.CheckpointSave(data_iter),
        }
        if sampler is not None:
            items["sampler"] = ocp.args.StandardSave(sampler)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding: the restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
