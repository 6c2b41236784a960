"""Orbax checkpoints of the train state together with every process's data-iterator state.

Layout: `{workdir}/checkpoints/<step>/state/...` (sharded arrays, each process writes its shards)
and `<step>/data/process_<i>-of-<n>.json` (Grain iterator positions), plus `<step>/sampler/`
when a batch sampler keeps state (GRIT's epoch order and collected embeddings), and
`<step>/fingerprint` (what the saved token ids and data positions mean: a resume or evaluation
with another tokenizer vocabulary or dataset version stops instead of running wrong). Orbax
writes a step into a temporary directory and renames it when complete, so a save interrupted by
a crash is never the one restored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from vlp_jax.data import shapes
from vlp_jax.data.tokenizer import Tokenizer


def run_fingerprint(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> dict[str, str]:
    """What a checkpoint's weights and data positions mean, beyond array shapes: the tokenizer's
    vocabulary (a changed one keeps every shape but shifts the token ids) and, for `shapes`, the
    generator version."""
    vocab = json.dumps(sorted(tokenizer.backend.get_vocab().items()))
    out = {"tokenizer_vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest()}
    if config.data.name == "shapes":
        out["shapes_generator_version"] = str(shapes.GENERATOR_VERSION)
    return out


def check_fingerprint(manager: ocp.CheckpointManager, step: int, expected: dict[str, str]) -> None:
    """Raises if checkpoint `step` was saved with another `run_fingerprint`; warns if it has
    none (saved before fingerprints, so it cannot be checked)."""
    where = f"{manager.directory}/{step}"
    if not (epath.Path(manager.directory) / str(step) / "fingerprint").exists():
        logging.warning(
            "checkpoint %s has no fingerprint (saved by an older vlp_jax): its tokenizer and "
            "dataset version cannot be checked against this run's",
            where,
        )
        return
    saved = manager.restore(step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore()))
    saved = dict(saved["fingerprint"])
    differ = sorted(k for k in expected if saved.get(k) != expected[k])
    if differ:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {expected[k]!r}" for k in differ)
        raise ValueError(
            f"checkpoint {where} was made with another tokenizer or dataset ({details}). Its "
            "weights would read this run's token ids or examples wrongly; use a new --workdir "
            "(or the tokenizer and data it was trained with)."
        )


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
                "fingerprint": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def check_fingerprint(self, expected: dict[str, str]) -> None:
        """`check_fingerprint` against the latest checkpoint, if there is one."""
        step = self.manager.latest_step()
        if step is not None:
            check_fingerprint(self.manager, step, expected)

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
        fingerprint: dict[str, str] | None = None,
    ) -> None:
        items = {
            "state": ocp.args.StandardSave(state),
            "data": grain.checkpoint.CheckpointSave(data_iter),
        }
        if fingerprint is not None:
            items["fingerprint"] = ocp.args.JsonSave(fingerprint)
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
