"""GRIT-VLP's sampler (Byun et al., NeurIPS 2022): each epoch's batches are groups of similar pairs.

    epoch 0:   a seeded random order of the N training examples;
    epoch e:   every step returns the normalised ITC embeddings (v, t) it computed anyway, with
               the examples' dataset indices; they are collected on the host;
    epoch e+1: the collected pairs are shuffled, cut into search spaces of M pairs and ordered
               by the greedy image → text → image chain (`vlp_jax.data.grouping`); consecutive
               runs of one global batch become batches, and the batches are shuffled.

With `refresh_every_steps = K > 0` the order is regrouped every K steps instead of every epoch:
each period is a fresh grouped permutation of all N examples, by the latest embedding of each
example seen so far (examples not yet seen fill random batches).

Grouping is global: every process holds the embeddings of the whole global batch, so all compute
the same order, and each process reads its block of every grouped global batch. No process is
locked to one shard of the data (unlike the public code), and examples the first epoch dropped
(the remainder of N / batch) are placed in random batches rather than lost. Its whole state
(epoch, order, pairs collected so far) is saved with each checkpoint, so a resumed run replays the
same batches.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from vlp_jax.data.grouping import grouped_order

# What the train step returns for the sampler (besides its scalar metrics).
OUTPUTS = ("out/image_emb", "out/text_emb")


class GritSampler:
    """The epoch orders of GRIT-VLP and the embeddings that make the next one."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        search_space: int,
        seed: int,
        refresh_every_steps: int = 0,
    ):
        if search_space % batch_size:
            raise ValueError(
                f"config.grit.search_space={search_space} must be a multiple of the global "
                f"batch_size={batch_size}, so search spaces split into whole batches"
            )
        if num_examples < batch_size:
            raise ValueError(f"{num_examples} training examples do not fill one batch")
        if refresh_every_steps < 0:
            raise ValueError(f"config.grit.refresh_every_steps={refresh_every_steps} must be >= 0")
        self.num_examples = num_examples
        self.refresh_every_steps = refresh_every_steps
        self.batch_size = batch_size
        self.search_space = search_space
        self.seed = seed
        self.epoch = 0
        self.order = np.random.default_rng([seed, 0]).permutation(num_examples)
        self._collected: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def steps_per_epoch(self) -> int:
        """Steps between regroupings: an epoch, or `refresh_every_steps`."""
        return self.refresh_every_steps or self.num_examples // self.batch_size

    def collect(self, index: np.ndarray, image_emb: np.ndarray, text_emb: np.ndarray) -> None:
        """One global batch: dataset indices [B] and L2-normalised embeddings [B, d]."""
        self._collected.append(
            (np.asarray(index, np.int64), np.asarray(image_emb), np.asarray(text_emb))
        )

    def collected(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._collected:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, 0))
        index, v, t = (np.concatenate(parts) for parts in zip(*self._collected))
        # The latest embedding of each example (a refresh period can revisit examples).
        _, last = np.unique(index[::-1], return_index=True)
        keep = np.sort(len(index) - 1 - last)
        index, v, t = index[keep], v[keep], t[keep]
        self._collected = [(index, v, t)]
        return index, v, t

    def next_order(self) -> np.ndarray:
        """The grouped order for the next epoch, from this epoch's collected embeddings."""
        rng = np.random.default_rng([self.seed, self.epoch + 1])
        index, v, t = self.collected()
        grouped = np.zeros(0, np.int64)
        spaces = len(index) // self.search_space
        if spaces:
            pick = rng.permutation(len(index))[: spaces * self.search_space]
            chain = grouped_order(
                v[pick], t[pick], search_space=self.search_space, seed=int(rng.integers(2**31))
            )
            grouped = index[pick][chain]
        # Pairs left out (a search space's remainder, examples never seen) fill random batches.
        rest = np.setdiff1d(np.arange(self.num_examples), grouped)
        order = np.concatenate([grouped, rng.permutation(rest)])
        full = len(order) - len(order) % self.batch_size
        batches = order[:full].reshape(-1, self.batch_size)
        return np.concatenate([batches[rng.permutation(len(batches))].reshape(-1), order[full:]])

    def advance(self) -> None:
        """Ends the epoch (or refresh period): the next order is grouped. Epoch mode starts the
        collection afresh; refresh mode keeps the latest embeddings of examples not revisited."""
        self.order = self.next_order()
        self.epoch += 1
        if not self.refresh_every_steps:
            self._collected = []

    def state(self) -> dict[str, Any]:
        """Epoch, order and collected pairs; right after an epoch ends nothing is collected yet,
        and since checkpoints cannot hold empty arrays, one placeholder row is stored instead
        (`collected` says how many rows are real)."""
        index, v, t = self.collected()
        count = len(index)
        if not count:
            index, v, t = np.full(1, -1, np.int64), np.zeros((1, 1)), np.zeros((1, 1))
        return {
            "epoch": np.int64(self.epoch),
            "order": self.order,
            "collected": np.int64(count),
            "index": index,
            "image_emb": v.astype(np.float32),
            "text_emb": t.astype(np.float32),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.order = np.asarray(state["order"], np.int64)
        count = int(state.get("collected", len(state["index"])))
        index = np.asarray(state["index"], np.int64)[:count]
        self._collected = (
            [(index, np.asarray(state["image_emb"])[:count], np.asarray(state["text_emb"])[:count])]
            if count
            else []
        )


def global_rows(local_index: np.ndarray) -> np.ndarray:
    """This process's dataset indices → the global batch's, in global row order (process p holds
    block p of every global batch)."""
    if jax.process_count() == 1:
        return np.asarray(local_index)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local_index))).reshape(-1)


def host_copy(x: jax.Array) -> np.ndarray:
    """A replicated global array (the step's embeddings output) as numpy, on any process."""
    return np.asarray(x.addressable_data(0))
