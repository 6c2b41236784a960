"""GRIT grouping speed: `python -m vlp_jax.benchmark.grouping [--sizes 48000,1000000,4000000]`.

Times `vlp_jax.data.grouping.grouped_order` (XLA's matmuls and a compiled chain) against Python
loops of the same chain, and against the floor set by the similarity matmuls alone, on
clustered synthetic embeddings, and checks that they produce batches of the same quality (mean
similarity of each example's hardest in-batch negative). The loops (`--loops`):

- `paper`: GRIT-VLP's own, in numpy (`paper_style_grouped_order`: both softmax matrices, a row
  and a column zeroed in each per hop);
- `lean`: one cosine matrix and a boolean mask, in numpy (`reference_grouped_order`);
- `device`: the lean loop with its arrays on the default device (`device_loop_grouped_order`),
  one jitted hop dispatched from Python per step of the chain: on a GPU this is the paper's
  PyTorch loop, thousands of tiny kernel launches.

`--hop_costs` also times one search space piece by piece (`hop_costs`: the matmul, the chain,
and a row and a column hop in isolation), which shows what bounds the chain on a CPU.

Writes a JSON file (`--out`) and prints a table.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vlp_jax.data import grouping, native_chain
from vlp_jax.host_memory import reuse_freed_blocks


def clustered_embeddings(
    n: int, dim: int, seed: int = 0, clusters: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` centres; a pair's image and text are noisy views of its
    centre. Built in chunks, so 4M × 256 pairs fit in host memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    out = [np.empty((n, dim), np.float32) for _ in range(2)]
    for lo in range(0, n, 65_536):
        hi = min(lo + 65_536, n)
        for x in out:
            noisy = centres[labels[lo:hi]] + rng.normal(size=(hi - lo, dim)).astype(np.float32)
            x[lo:hi] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return out[0], out[1]


def hardest_negative_similarity(
    image_emb: np.ndarray, text_emb: np.ndarray, order: np.ndarray, batch: int, batches: int = 256
) -> float:
    """Mean over the examples of the first `batches` batches of their highest image→text
    similarity to another pair of the same batch."""
    order = order[: batches * batch]
    v = jnp.asarray(image_emb[order].reshape(-1, batch, image_emb.shape[1]))
    t = jnp.asarray(text_emb[order].reshape(-1, batch, text_emb.shape[1]))
    s = jnp.einsum("bid,bjd->bij", v, t)
    s = jnp.where(jnp.eye(batch, dtype=bool)[None], -jnp.inf, s)
    return float(s.max(axis=2).mean())


@functools.partial(jax.jit, static_argnames="image_to_text")
def _hop(
    i2t: jax.Array, used: jax.Array, cur: jax.Array, *, image_to_text: bool
) -> tuple[jax.Array, jax.Array]:
    scores = i2t[cur] if image_to_text else i2t[:, cur]
    nxt = jnp.argmax(jnp.where(used, -jnp.inf, scores)).astype(jnp.int32)
    return nxt, used.at[nxt].set(True)


def device_loop_grouped_order(
    image_emb: np.ndarray, text_emb: np.ndarray, *, search_space: int, seed: int
) -> np.ndarray:
    """`reference_grouped_order` with its matrix, mask and cursor on the default device: per
    step of the chain one jitted hop, dispatched from Python without waiting for the result
    (the fastest form a per-hop loop takes). Same shuffle, starts and chains."""
    n = len(image_emb)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    starts = rng.integers(0, search_space, n // search_space)
    out = []
    for s, start in enumerate(starts):
        idx = shuffled[s * search_space : (s + 1) * search_space]
        i2t = jnp.asarray(image_emb[idx]) @ jnp.asarray(text_emb[idx]).T
        cur = jnp.int32(start)
        used = jnp.zeros(search_space, bool).at[cur].set(True)
        chain = [cur]
        for step in range(search_space - 1):
            cur, used = _hop(i2t, used, cur, image_to_text=step % 2 == 0)
            chain.append(cur)
        out.append(idx[np.asarray(jnp.stack(chain))])
    return np.concatenate(out).astype(np.int64)


LOOPS = {
    "lean": grouping.reference_grouped_order,
    "paper": grouping.paper_style_grouped_order,
    "device": device_loop_grouped_order,
}


def matmul_floor_runner(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    search_space: int,
    chunk_spaces: int = 64,
    *,
    batched: bool = True,
    workers: int = 1,
) -> Callable[[], None]:
    """A compiled call that runs the per-search-space similarity matmuls alone (the work
    grouping cannot avoid), in chunks as `grouped_order` cuts them (host → device copies
    included, as there): one einsum per chunk (`batched`, as the lockstep chain) or one space at
    a time within it (as the lazy chain), the chunks run by `workers` threads."""
    dim = image_emb.shape[1]
    spaces = len(image_emb) // search_space
    width = -(-spaces // -(-spaces // chunk_spaces))

    def space_max(v, t):  # reduce: keep memory small
        return jnp.einsum("md,nd->mn", v, t).max()

    @jax.jit
    def sims(v, t):
        if batched:
            return jnp.einsum("smd,snd->smn", v, t).max(axis=(1, 2))
        return jax.lax.map(lambda vt: space_max(*vt), (v, t))

    def run(lo: int) -> None:
        hi = min(lo + width, spaces)
        take = slice(lo * search_space, hi * search_space)
        v = np.resize(image_emb[take], (width * search_space, dim))
        t = np.resize(text_emb[take], (width * search_space, dim))
        shape = (width, search_space, dim)
        sims(v.reshape(shape), t.reshape(shape)).block_until_ready()

    run(0)  # compile

    def once() -> None:
        lows = range(0, spaces, width)
        if workers == 1:
            for lo in lows:
                run(lo)
            return
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, lows))

    return once


def _hop_loop(read: Any, reduce: Any) -> Any:
    """A jitted chain of M − 1 dependent hops over one [M, M] matrix: each reads the vector
    `read(matrix, cursor)` and reduces it to the next cursor (the hop's data dependence kept)."""

    @jax.jit
    def run(sims: jax.Array) -> jax.Array:
        m = sims.shape[0]

        def hop(k, carry):
            out, cur = carry
            nxt = reduce(read(sims, cur)).astype(jnp.int32) % m
            return out.at[k].set(nxt), (nxt + k) % m

        return jax.lax.fori_loop(0, m - 1, hop, (jnp.zeros(m, jnp.int32), jnp.int32(0)))[0]

    return run


def hop_costs(search_space: int, dim: int, repeats: int = 3) -> dict[str, float]:
    """What one search space costs, piece by piece, with its matrix already in memory: the
    similarity matmul, the whole chain of each strategy (`grouping.CHAINS`, minus the matmul),
    and microseconds per hop for a row read (image → text), a column read (text → image), and a
    row reduced by a plain max instead of an argmax. `chain_budget_ms` is the chain time that
    would put `grouped_order` at 1.3× the matmul floor in one thread (`workers=1`)."""
    v, t = clustered_embeddings(search_space, dim)
    v3, t3 = jnp.asarray(v)[None], jnp.asarray(t)[None]
    sims = jnp.asarray(v @ t.T)
    # Reduced to one number, as the chains return only their order: returning the 14.7 MB matrix
    # would time its allocation too.
    matmul = jax.jit(lambda a, b: jnp.einsum("smd,snd->smn", a, b).max())
    start = jnp.zeros(1, jnp.int32)

    def timed(fn: Any) -> float:
        jax.block_until_ready(fn())  # compile
        return median_seconds(lambda: jax.block_until_ready(fn()), repeats)

    row = functools.partial(jax.lax.dynamic_index_in_dim, axis=0, keepdims=False)
    column = functools.partial(jax.lax.dynamic_index_in_dim, axis=1, keepdims=False)
    hops = search_space - 1
    # The matmul and every whole chain in interleaved rounds, so their differences are fair.
    whole = {"matmul": lambda: matmul(v3, t3)}
    for name, chains in grouping.CHAINS.items():
        if name != "native" or native_chain.available():
            whole[name] = functools.partial(chains, v3, t3, start)
    for fn in whole.values():
        jax.block_until_ready(fn())  # compile
    seconds = interleaved_median_seconds(
        {name: lambda fn=fn: jax.block_until_ready(fn()) for name, fn in whole.items()}, repeats
    )
    out = {"matmul_ms": 1e3 * seconds.pop("matmul")}
    for name, value in seconds.items():
        out[f"{name}_chain_ms"] = 1e3 * value - out["matmul_ms"]
    out["chain_budget_ms"] = 0.3 * out["matmul_ms"]
    for name, read, reduce in (
        ("row_argmax", row, jnp.argmax),
        ("column_argmax", column, jnp.argmax),
        ("row_max", row, lambda x: x.max() * 1e4),
    ):
        loop = _hop_loop(read, reduce)
        out[f"{name}_us_per_hop"] = 1e6 * timed(lambda loop=loop: loop(sims)) / hops
    return out


def median_seconds(fn: Any, repeats: int) -> float:
    """Median wall time of `repeats` calls: this shared 2-core VM varies by up to ±40% per call."""
    return interleaved_median_seconds({"fn": fn}, repeats)["fn"]


def interleaved_seconds(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall time of each of `runs` in each of `repeats` rounds, each round calling every one
    once in turn, so that a machine's drift in speed (minutes long on a shared VM) weighs on all
    of them alike and their ratios stay fair."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_median_seconds(
    runs: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, float]:
    """Median over rounds of `interleaved_seconds`."""
    return {name: float(np.median(t)) for name, t in interleaved_seconds(runs, repeats).items()}


def measure(
    n: int,
    dim: int,
    search_space: int,
    batch: int,
    reference_up_to: int,
    repeats: int = 1,
    loops: tuple[str, ...] = ("lean", "paper"),
    chunk_spaces: int | None = None,
    strategy: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    v, t = clustered_embeddings(n, dim)
    strategy = strategy or grouping.default_strategy()
    chunk_spaces = chunk_spaces or grouping.default_chunk_spaces(search_space, strategy)
    workers = workers or grouping.default_workers()

    def fast_order(seed: int, threads: int = workers) -> np.ndarray:
        return grouping.grouped_order(
            v,
            t,
            search_space=search_space,
            seed=seed,
            group_size=batch,
            chunk_spaces=chunk_spaces,
            strategy=strategy,
            workers=threads,
        )

    # The first call compiles the chain for this chunk shape; time the calls after it.
    start = time.perf_counter()
    fast_order(1)
    first = time.perf_counter() - start
    order = fast_order(0)
    runs = {"jax": lambda: fast_order(0)}
    if workers > 1:  # what the threads bring, in the same rounds
        runs["jax_one_thread"] = lambda: fast_order(0, threads=1)
    # The floor is the fastest way found to run the matmuls alone: a chain that computes them
    # more slowly than it could gets no softer floor. One einsum per chunk (lockstep's way, in
    # its chunks) or one space at a time (the lazy chain's way, 16 spaces per call), in one
    # thread; and one space at a time in this run's chunks and threads.
    floors = {
        "batched": dict(chunk_spaces=grouping.default_chunk_spaces(search_space, "lockstep")),
        "per_space": dict(chunk_spaces=16, batched=False),
        "threaded": dict(chunk_spaces=chunk_spaces, batched=False, workers=workers),
    }
    for form, kwargs in floors.items():
        runs[f"matmul_floor_{form}"] = matmul_floor_runner(v, t, search_space, **kwargs)
    # Rounds of all of them in turn: the ratios compare timings taken side by side.
    rounds = interleaved_seconds(runs, repeats)
    seconds = {name: float(np.median(t)) for name, t in rounds.items()}
    fast = seconds["jax"]
    # Each round's own ratio (to the fastest floor form of that round) shows how far the
    # machine's noise moves the ratio of the medians.
    per_round = [
        jax_time / min(rounds[f"matmul_floor_{form}"][i] for form in floors)
        for i, jax_time in enumerate(rounds["jax"])
    ]
    row: dict[str, Any] = {
        "pairs": n,
        "dim": dim,
        "search_space": search_space,
        "batch": batch,
        "strategy": strategy,
        "chunk_spaces": chunk_spaces,
        "workers": workers,
        "repeats": repeats,
        "jax_first_call_seconds": first,
        **{f"{name}_seconds": value for name, value in seconds.items()},
        "round_seconds": rounds,
        "ratio_to_matmul_floor_per_round": per_round,
        "hardest_negative_sim_grouped": hardest_negative_similarity(v, t, order, batch),
        "hardest_negative_sim_random": hardest_negative_similarity(
            v, t, np.random.default_rng(0).permutation(n), batch
        ),
    }
    for name in loops if n <= reference_up_to else ():
        start = time.perf_counter()
        loop_order = LOOPS[name](v, t, search_space=search_space, seed=0)
        row[f"{name}_loop_seconds"] = time.perf_counter() - start
        row[f"hardest_negative_sim_{name}_loop"] = hardest_negative_similarity(
            v, t, loop_order, batch
        )
        row[f"speedup_vs_{name}_loop"] = row[f"{name}_loop_seconds"] / fast
    row["matmul_floor_seconds"] = min(row[f"matmul_floor_{form}_seconds"] for form in floors)
    row["ratio_to_matmul_floor"] = fast / row["matmul_floor_seconds"]
    return row


def main(argv: list[str]) -> None:
    del argv
    reuse_freed_blocks()  # as the trainer, which regroups in-process, does
    f = flags.FLAGS
    device = jax.devices()[0].device_kind
    loops = tuple(x for x in f.loops.split(",") if x)
    unknown = set(loops) - set(LOOPS)
    if unknown:
        raise app.UsageError(f"--loops: unknown {sorted(unknown)}; choose from {sorted(LOOPS)}")
    rows = []
    for n in (int(x) for x in f.sizes.split(",")):
        n -= n % f.search_space
        row = measure(
            n,
            f.dim,
            f.search_space,
            f.batch,
            f.reference_up_to,
            f.repeats,
            loops=loops,
            chunk_spaces=f.chunk_spaces,
            strategy=f.strategy or None,
            workers=f.workers or None,
        )
        row["device"] = device
        rows.append(row)
        ran = [x for x in loops if f"{x}_loop_seconds" in row]
        per_round = row["ratio_to_matmul_floor_per_round"]
        print(
            f"N={n:>9,} jax ({row['strategy']}, {row['workers']} threads) "
            f"{row['jax_seconds']:7.3f} s"
            + (
                f" (one thread {row['jax_one_thread_seconds']:.3f} s)"
                if "jax_one_thread_seconds" in row
                else ""
            )
            + " | matmul floor "
            f"{row['matmul_floor_seconds']:6.3f} s (×{row['ratio_to_matmul_floor']:.2f}; "
            f"per round median ×{np.median(per_round):.2f}, "
            f"{min(per_round):.2f}–{max(per_round):.2f}) | "
            + "".join(
                f"{x} loop {row[f'{x}_loop_seconds']:7.2f} s "
                f"(jax ×{row[f'speedup_vs_{x}_loop']:.1f} faster) | "
                for x in ran
            )
            + ("" if ran else "loops not run | ")
            + f"hardest-neg sim grouped {row['hardest_negative_sim_grouped']:.3f}, "
            + "".join(f"{x} loop {row[f'hardest_negative_sim_{x}_loop']:.3f}, " for x in ran)
            + f"random {row['hardest_negative_sim_random']:.3f}",
            flush=True,
        )
    if f.hop_costs:
        costs = hop_costs(f.search_space, f.dim, f.repeats)
        costs["device"] = device
        rows.append({"hop_costs": costs})
        chains = ", ".join(
            f"{costs[f'{name}_chain_ms']:.2f} ms {name}"
            for name in grouping.CHAINS
            if f"{name}_chain_ms" in costs
        )
        print(
            f"one search space: matmul {costs['matmul_ms']:.2f} ms, chain {chains} (budget for "
            "1.3× the floor {chain_budget_ms:.2f} ms); µs per hop: row argmax "
            "{row_argmax_us_per_hop:.2f}, column argmax {column_argmax_us_per_hop:.2f}, row max "
            "{row_max_us_per_hop:.2f}".format(**costs),
            flush=True,
        )
    with open(f.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    print(f"written to {f.out}")


if __name__ == "__main__":
    flags.DEFINE_string("sizes", "48000,1000000,4000000", "Comma-separated numbers of pairs.")
    flags.DEFINE_integer("dim", 256, "Embedding dimension.")
    flags.DEFINE_integer("search_space", 1920, "Pairs per search space (GRIT's M).")
    flags.DEFINE_integer("batch", 128, "Group size (batch) for the quality measure.")
    flags.DEFINE_integer("reference_up_to", 1_000_000, "Largest N to run the Python loops on.")
    flags.DEFINE_string(
        "loops", "lean,paper", f"Comma-separated Python loops to compare with: {sorted(LOOPS)}."
    )
    flags.DEFINE_integer(
        "chunk_spaces",
        0,
        "Search spaces per device call of grouped_order (0: grouping.default_chunk_spaces).",
    )
    flags.DEFINE_integer("workers", 0, "Threads of grouped_order (0: grouping.default_workers).")
    flags.DEFINE_string(
        "strategy",
        "",
        "grouped_order's chain: native, lazy or lockstep ('': grouping.default_strategy).",
    )
    flags.DEFINE_integer(
        "repeats", 3, "JAX and floor timings: the median of this many calls (loops run once)."
    )
    flags.DEFINE_bool(
        "hop_costs", False, "Also time one search space piece by piece (matmul, chain, hops)."
    )
    flags.DEFINE_string("out", "benchmark_grouping.json", "Where to write the results.")
    app.run(main)
