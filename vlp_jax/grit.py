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

Scope `global` (the default): every process holds the embeddings of the whole global batch, so
all compute the same order, and each process reads its block of every grouped global batch. No
process is locked to one shard of the data (unlike the public code), and examples the first epoch
dropped (the remainder of N / batch) are placed in random batches rather than lost.

Scope `process`, for runs whose N × 2d floats do not fit every host or whose chain is too long for
one accelerator: each process keeps only the rows it trained on (N / P) and chains them in its own
search spaces into groups of one local batch (B / P), as the paper's per-GPU sampler does. The
groups' dataset indices (not embeddings) are then gathered, and every global batch is P groups
dealt at random, so each epoch a process reads groups that other processes built: still no
process is locked to a shard. Negatives within a group are hard; those across groups are random.
An example belongs to the process that last trained on it, which every process can tell from
the shared order (`owner`), so with `refresh_every_steps` each process keeps the latest
embedding of the examples it owns and groups exactly those: every example in one process's
groups at most, with no extra communication.

The sampler's whole state (epoch, order, pairs collected so far; per process in the process
scope) is saved with each checkpoint, so a resumed run replays the same batches.

Warm start: `config.grit.save_embeddings` writes each epoch's collected pairs (indices and
embeddings) to the workdir as it ends (`save_embeddings`), and `config.grit.warm_start` groups a
new run's epoch 0 by such files instead of a random order (`load_embeddings`, `warm_start`).
"""

from __future__ import annotations

import glob
import os
import zipfile
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlp_jax.data.grouping import grouped_order

# What the train step returns for the sampler (besides its scalar metrics).
OUTPUTS = ("out/image_emb", "out/text_emb")
SCOPES = ("global", "process")
# State entries that differ between processes in the `process` scope.
PER_PROCESS = ("collected", "index", "image_emb", "text_emb")
EMBEDDING_KEYS = ("index", "image_emb", "text_emb")


class GritSampler:
    """The epoch orders of GRIT-VLP and the embeddings that make the next one."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        search_space: int,
        seed: int,
        refresh_every_steps: int = 0,
        scope: str = "global",
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if scope == "global" and search_space % batch_size:
            raise ValueError(
                f"config.grit.search_space={search_space} must be a multiple of the global "
                f"batch_size={batch_size}, so search spaces split into whole batches"
            )
        if num_examples < batch_size:
            raise ValueError(f"{num_examples} training examples do not fill one batch")
        if refresh_every_steps < 0:
            raise ValueError(f"config.grit.refresh_every_steps={refresh_every_steps} must be >= 0")
        if scope not in SCOPES:
            raise ValueError(f"config.grit.scope={scope!r} is not one of {list(SCOPES)}")
        self.process_count = jax.process_count() if process_count is None else process_count
        self.process_index = jax.process_index() if process_index is None else process_index
        if scope == "process":
            local_batch = batch_size // self.process_count
            if search_space % local_batch:
                raise ValueError(
                    f"with config.grit.scope='process', config.grit.search_space={search_space} "
                    f"is per process and must be a multiple of the local batch {local_batch}"
                )
        self.scope = scope
        self.num_examples = num_examples
        self.refresh_every_steps = refresh_every_steps
        self.batch_size = batch_size
        self.search_space = search_space
        self.seed = seed
        self.epoch = 0
        self.order = np.random.default_rng([seed, 0]).permutation(num_examples)
        # Process scope: the process that last trained on each example (-1: none yet).
        self.owner = np.full(num_examples, -1, np.int32)
        self._collected: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # Set as a global-scope regrouping builds an order: the mean hardest in-batch negative
        # cosine of its batches and of random batches, by the same embeddings (the trainer logs
        # and clears it).
        self.batch_hardness: dict[str, float] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Steps between regroupings: an epoch, or `refresh_every_steps`."""
        return self.refresh_every_steps or self.num_examples // self.batch_size

    @property
    def group_size(self) -> int:
        """Pairs per grouped chain run: the global batch, or one process's part of it."""
        if self.scope == "process":
            return self.batch_size // self.process_count
        return self.batch_size

    def collect(self, index: np.ndarray, image_emb: np.ndarray, text_emb: np.ndarray) -> None:
        """One batch's dataset indices [n] and L2-normalised embeddings [n, d]: the global batch
        (n = B) in the global scope, this process's rows (n = B / P) in the process scope."""
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

    def _check_real_processes(self) -> None:
        """`process_index`/`process_count` overrides simulate processes in tests; what gathers
        across processes needs the real ones."""
        if (self.process_index, self.process_count) != (jax.process_index(), jax.process_count()):
            raise RuntimeError(
                f"this sampler stands for process {self.process_index} of {self.process_count}, "
                f"but runs as {jax.process_index()} of {jax.process_count()}"
            )

    def next_order(self) -> np.ndarray:
        """The grouped order for the next epoch, from this epoch's collected embeddings."""
        if self.scope == "process":
            self._check_real_processes()
            return self.order_from_groups(concat_over_processes(self.own_groups(), ragged=True))
        rng = np.random.default_rng([self.seed, self.epoch + 1])
        index, v, t = self.collected()
        order = self._with_the_rest(self._chain(index, v, t, rng), rng)
        if len(index) >= self.batch_size:
            self.batch_hardness = {
                "hardest_negative_sim_grouped": order_hardness(order, index, v, t, self.batch_size),
                "hardest_negative_sim_random": order_hardness(
                    rng.permutation(index), index, v, t, self.batch_size
                ),
            }
        return order

    def take_ownership(self) -> None:
        """Process scope, as an epoch or refresh period ends (idempotent): each example the
        period trained on now belongs to the process whose block of the global batch held it."""
        steps, n = self.steps_per_epoch, self.group_size
        consumed = self.order[: steps * self.batch_size].reshape(steps, -1, n)
        self.owner[consumed] = np.arange(consumed.shape[1], dtype=np.int32)[None, :, None]

    def own_groups(self) -> np.ndarray:
        """Process scope: this process's collected rows of the examples it owns, chained in its
        own search spaces, so consecutive runs of B / P are groups. Rows it does not own are
        dropped: a bad image's substitute (the next pair in source order) can belong to another
        process's block, and with refresh periods another process may have trained on an
        example since; only its owner groups it."""
        own_rng = np.random.default_rng([self.seed, self.epoch + 1, 1 + self.process_index])
        self.take_ownership()
        index, v, t = self.collected()
        keep = self.owner[index] == self.process_index
        index, v, t = index[keep], v[keep], t[keep]
        self._collected = [(index, v, t)] if len(index) else []
        return self._chain(index, v, t, own_rng)

    def order_from_groups(self, groups: np.ndarray) -> np.ndarray:
        """Process scope: every process's `own_groups`, in process order → the next order (the
        same on every process), with the groups dealt at random, P to each global batch. Groups
        start at multiples of B / P, so each lands whole in one process's block."""
        rng = np.random.default_rng([self.seed, self.epoch + 1])
        groups = np.asarray(groups, np.int64).reshape(-1, self.group_size)
        return self._with_the_rest(groups[rng.permutation(len(groups))].reshape(-1), rng)

    def _with_the_rest(self, grouped: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Grouped global batches plus random ones of the pairs left out (a search space's
        remainder, examples never seen), the batches shuffled."""
        rest = np.setdiff1d(np.arange(self.num_examples), grouped)
        order = np.concatenate([grouped, rng.permutation(rest)])
        full = len(order) - len(order) % self.batch_size
        batches = order[:full].reshape(-1, self.batch_size)
        return np.concatenate([batches[rng.permutation(len(batches))].reshape(-1), order[full:]])

    def _chain(
        self, index: np.ndarray, v: np.ndarray, t: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Dataset indices in chain order: shuffled, cut into whole search spaces, each chained."""
        spaces = len(index) // self.search_space
        if not spaces:
            if len(index):
                logging.warning(
                    "GRIT: %d collected pairs do not fill one search space of %d; the next "
                    "epoch is not grouped (lower config.grit.search_space)",
                    len(index),
                    self.search_space,
                )
            return np.zeros(0, np.int64)
        pick = rng.permutation(len(index))[: spaces * self.search_space]
        chain = grouped_order(
            v[pick], t[pick], search_space=self.search_space, seed=int(rng.integers(2**31))
        )
        return index[pick][chain]

    def warm_start(self, index: np.ndarray, image_emb: np.ndarray, text_emb: np.ndarray) -> None:
        """Epoch 0 grouped by saved embeddings (an earlier run's, or another model's) instead of a
        random order; examples without one fill random batches. In the process scope process p
        groups the examples with index % P == p, so each is grouped once."""
        if self.epoch:
            raise ValueError("a warm start groups epoch 0; this sampler is already past it")
        rng = np.random.default_rng([self.seed, 0, 1])
        index = np.asarray(index, np.int64)
        if self.scope == "process":
            self._check_real_processes()
            keep = index % self.process_count == self.process_index
            own_rng = np.random.default_rng([self.seed, 0, 1 + self.process_index])
            groups = self._chain(index[keep], image_emb[keep], text_emb[keep], own_rng)
            groups = np.asarray(concat_over_processes(groups, ragged=True), np.int64)
            groups = groups.reshape(-1, self.group_size)
            self.order = self._with_the_rest(groups[rng.permutation(len(groups))].reshape(-1), rng)
        else:
            self.order = self._with_the_rest(self._chain(index, image_emb, text_emb, rng), rng)

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
        (`collected` says how many rows are real). In the process scope the collected entries
        are [P, ...] arrays sharded by process, so each process writes only its own rows."""
        index, v, t = self.collected()
        count = len(index)
        # Rows (at least one: the placeholder) and width every process pads to: in the process
        # scope the counts can differ (a bad image's substitute can repeat an example).
        rows, dim = max(count, 1), v.shape[1] if count else 1
        if self.scope == "process":
            self._check_real_processes()
            sizes = concat_over_processes(np.asarray([rows, dim])).reshape(-1, 2)
            rows, dim = (int(x) for x in sizes.max(axis=0))
        if not count:
            v = t = np.zeros((0, dim), np.float32)
        pad = ((0, rows - count), (0, dim - v.shape[1]))
        index = np.concatenate([index, np.full(rows - count, -1, np.int64)])
        v, t = np.pad(v, pad), np.pad(t, pad)
        own = {
            "collected": np.int64(count),
            "index": index,
            "image_emb": v.astype(np.float32),
            "text_emb": t.astype(np.float32),
        }
        if self.scope == "process":
            own = {k: stack_processes(np.asarray(x)) for k, x in own.items()}
            own["owner"] = self.owner  # the same on every process
        return {"epoch": np.int64(self.epoch), "order": self.order, **own}

    def restore_target(self, metadata: Any) -> dict[str, Any]:
        """What to restore a saved state into, from its metadata (shapes and dtypes): numpy, or
        process-sharded arrays for the collected rows of the process scope."""
        # Checkpoints older than the `collected` entry are global-scope ones.
        collected = metadata.get("collected")
        saved_scope = "process" if collected is not None and len(collected.shape) else "global"
        if saved_scope != self.scope:
            raise ValueError(
                f"the checkpoint's GRIT sampler was saved with config.grit.scope={saved_scope!r}; "
                f"resume it with that scope, not {self.scope!r}"
            )
        target = {}
        for key, meta in metadata.items():
            if self.scope == "process" and key in PER_PROCESS:
                if meta.shape[0] != self.process_count:
                    raise ValueError(
                        f"the checkpoint's GRIT sampler holds the rows of {meta.shape[0]} "
                        f"processes (config.grit.scope='process'); resume it with that many "
                        f"processes, not {self.process_count}"
                    )
                target[key] = jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=_by_process())
            else:
                target[key] = np.zeros(meta.shape, meta.dtype)
        return target

    def load_state(self, state: dict[str, Any]) -> None:
        if self.scope == "process":
            state = {k: own_rows(x) if k in PER_PROCESS else x for k, x in state.items()}
        self.epoch = int(state["epoch"])
        self.order = np.asarray(state["order"], np.int64)
        # Process-scope checkpoints from before `owner` are per-epoch ones, whose regrouping
        # needs only the owners of the epoch's own order (set when it ends).
        self.owner = np.asarray(state.get("owner", np.full(self.num_examples, -1)), np.int32)
        count = int(state.get("collected", len(state["index"])))
        index = np.asarray(state["index"], np.int64)[:count]
        self._collected = (
            [(index, np.asarray(state["image_emb"])[:count], np.asarray(state["text_emb"])[:count])]
            if count
            else []
        )


def order_hardness(
    order: np.ndarray,
    index: np.ndarray,
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    batch_size: int,
    max_batches: int = 256,
) -> float:
    """How hard `order`'s batches are, by these embeddings: over its whole batches whose pairs
    all have a row (`index`), at most `max_batches` of them evenly spaced, the mean over images
    of the cosine to their most similar text of another pair in the batch. Unlike the training
    metric, this compares orders by the same embeddings, free of what each model learned."""
    row_of = np.full(max(int(order.max()), int(index.max())) + 1, -1, np.int64)
    row_of[index] = np.arange(len(index))
    full = len(order) - len(order) % batch_size
    rows = row_of[order[:full]].reshape(-1, batch_size)
    rows = rows[(rows >= 0).all(axis=1)]
    if not len(rows):
        return float("nan")
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), max_batches)).astype(np.int64)]
    v = np.asarray(image_emb, np.float32)[rows]
    t = np.asarray(text_emb, np.float32)[rows]
    sims = np.einsum("bid,bjd->bij", v, t)
    sims[:, np.arange(batch_size), np.arange(batch_size)] = -np.inf
    return float(sims.max(axis=2).mean())


def save_embeddings(
    path: str, index: np.ndarray, image_emb: np.ndarray, text_emb: np.ndarray
) -> None:
    """Writes pairs' dataset indices [n] and L2-normalised embeddings [n, d] to the .npz `path`,
    for `config.grit.warm_start`. Written to a temporary file and renamed, so a crash never
    leaves half a file."""
    tmp = f"{path}.tmp.npz"
    np.savez(
        tmp,
        index=np.asarray(index, np.int64),
        image_emb=np.asarray(image_emb, np.float32),
        text_emb=np.asarray(text_emb, np.float32),
    )
    os.replace(tmp, path)


def load_embeddings(pattern: str, num_examples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs in the .npz files matching `pattern` (a path or a glob, e.g. the per-process
    files of a process-scope run), concatenated: (index [n], image_emb [n, d], text_emb [n, d]).
    Errors name the file and the key at fault."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"config.grit.warm_start={pattern!r}: no such file")
    parts = []
    for path in paths:
        try:
            data = np.load(path)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"{path} is not a readable .npz file: {error}") from error
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is not an .npz file (np.load gave a {type(data).__name__})")
        with data:
            missing = [k for k in EMBEDDING_KEYS if k not in data.files]
            if missing:
                raise ValueError(
                    f"{path} has no {missing} (it holds {data.files}); write warm starts with "
                    "vlp_jax.grit.save_embeddings"
                )
            index, v, t = (np.asarray(data[k]) for k in EMBEDDING_KEYS)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(
                f"{path}: 'index' must be 1-D integers, not {index.dtype}{index.shape}"
            )
        if v.ndim != 2 or v.shape != t.shape or len(v) != len(index):
            raise ValueError(
                f"{path}: 'image_emb' {v.shape} and 'text_emb' {t.shape} must both be "
                f"[{len(index)}, d], one row per entry of 'index'"
            )
        bad = np.flatnonzero((index < 0) | (index >= num_examples))
        if len(bad):
            raise ValueError(
                f"{path}: 'index'[{bad[0]}] = {index[bad[0]]} is outside the {num_examples} "
                f"training examples ({len(bad)} such entries); was it written for other data?"
            )
        parts.append((index.astype(np.int64), v.astype(np.float32), t.astype(np.float32)))
    if len({p[1].shape[1] for p in parts}) > 1:
        raise ValueError(f"config.grit.warm_start={pattern!r}: files of different widths {paths}")
    index, v, t = (np.concatenate(x) for x in zip(*parts))
    # A process-scope run's files can share an example (a bad image's substitute, or a refresh
    # period's re-reads); the first row, in file order, is kept.
    _, first = np.unique(index, return_index=True)
    if len(first) < len(index):
        logging.warning(
            "config.grit.warm_start=%r: %d rows repeat an example of an earlier row in %s; "
            "the first of each is kept",
            pattern,
            len(index) - len(first),
            paths,
        )
        keep = np.sort(first)
        index, v, t = index[keep], v[keep], t[keep]
    return index, v, t


def embeddings_path(workdir: str, sampler: GritSampler) -> str:
    """Where `config.grit.save_embeddings` writes: one file, or one per process in the process
    scope (a warm start reads them all with the glob `grit_embeddings*.npz`)."""
    name = "grit_embeddings.npz"
    if sampler.scope == "process":
        name = f"grit_embeddings.process{sampler.process_index}.npz"
    return os.path.join(workdir, name)


def _by_process() -> NamedSharding:
    """Axis 0 split over processes: process p's devices hold row p (replicated among them)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = Mesh(np.array(devices).reshape(jax.process_count(), -1), ("process", "local"))
    return NamedSharding(mesh, PartitionSpec("process"))


def stack_processes(own: np.ndarray) -> jax.Array:
    """Each process's `own` (equal shapes) → one [P, ...] array; row p lives on process p."""
    return jax.make_array_from_process_local_data(_by_process(), own[None])


def own_rows(x: Any) -> np.ndarray:
    """This process's row of a `stack_processes` array (as restored), as numpy."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))[0]
    return np.asarray(x)[jax.process_index()]


def check_process_blocks(batch_sharding: jax.sharding.Sharding, batch_size: int) -> None:
    """The sampler reads process p's rows as block p of each global batch (B / P rows). Refuse
    a mesh where they are not, e.g. one whose device order interleaves hosts."""
    n, p = batch_size // jax.process_count(), jax.process_index()
    rows: set[int] = set()
    for index in batch_sharding.addressable_devices_indices_map((batch_size,)).values():
        rows.update(range(*index[0].indices(batch_size)))
    if rows != set(range(p * n, (p + 1) * n)):
        raise ValueError(
            f"config.grit.enabled needs process {p}'s rows of the global batch to be block "
            f"[{p * n}, {(p + 1) * n}); this mesh gives it {len(rows)} rows from {min(rows)} to "
            f"{max(rows)}. Order config.mesh's devices by process."
        )


def concat_over_processes(own: np.ndarray, *, ragged: bool = False) -> np.ndarray:
    """Every process's 1-D `own` concatenated in process order; with one process `own` itself.
    Dataset indices of a global batch (process p holds block p), or chained groups (`ragged`:
    lengths may differ, at the cost of one more gather)."""
    own = np.asarray(own)
    if jax.process_count() == 1:
        return own
    if not ragged:
        return np.asarray(multihost_utils.process_allgather(own)).reshape(-1)
    lengths = np.asarray(multihost_utils.process_allgather(np.int64(len(own)))).reshape(-1)
    padded = np.zeros(max(int(lengths.max()), 1), own.dtype)
    padded[: len(own)] = own
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return np.concatenate([row[:n] for row, n in zip(rows, lengths)])


def host_rows(x: jax.Array, sampler: GritSampler) -> np.ndarray:
    """The step's replicated embeddings output as numpy: the global batch, or in the process
    scope only this process's block of it (the rows of its own examples)."""
    rows = np.asarray(x.addressable_data(0))
    if sampler.scope == "global":
        return rows
    n = sampler.group_size
    return rows[sampler.process_index * n : (sampler.process_index + 1) * n]
