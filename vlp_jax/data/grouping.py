"""GRIT-VLP's grouped mini-batch order (Byun et al., NeurIPS 2022), vectorised in JAX.

Pairs whose embeddings are close are put in the same batch, so in-batch negatives are hard. The
collected pairs are shuffled and cut into search spaces of M pairs; in each, a greedy chain visits
every pair once, alternating modalities:

    c_0 ~ U[0, M)
    c_{n+1} = argmax_{k unused} ⟨v_{c_n}, t_k⟩   if n is even   (nearest text to the image)
              argmax_{k unused} ⟨t_{c_n}, v_k⟩   if n is odd    (nearest image to the text)

(GRIT's row-softmax with temperature τ > 0 does not change an argmax, so raw cosines are used.)
Consecutive runs of the chain become batches, and the batches are shuffled.

Three exact ways to run the chain (`strategy`; all give the reference loop's chains):
- `lockstep` (accelerators): all search spaces of a call advance together, each hop one masked
  argmax over a [spaces, M] block inside a jitted `lax.fori_loop`, so the chain costs M tiny
  steps for the whole call rather than per search space.
- `lazy` (CPU, pure JAX): one search space at a time, with block maxima. Every row and column of the
  similarity matrix is cut into blocks of `BLOCK`; one vectorised pass stores each block's
  maximum, ignoring which pairs are used. A hop scans the cursor's block maxima, refreshes the
  best block (its maximum over unused pairs, `BLOCK` reads) and stops when the best block is
  fresh: stale maxima only over-estimate, so that block holds the masked argmax (ties go to the
  lowest index, as with a full argmax). A hop reads a few blocks instead of a whole row or
  column (a strided one for text → image hops).
- `native` (CPU, the default there): the same lazy chain as a C++ XLA FFI kernel after XLA's
  matmul (`native_chain`), built on first use; without a C++ compiler, `lazy` is the default.
  Inside a `while_loop` XLA:CPU dispatches every op of a hop separately, so `lazy` costs about
  a matmul per search space; the kernel about a fifth of one.

On CPU, chunks of search spaces go to `workers` threads (one per core): a chain is one core's
serial loop, so while one thread chains, the others' matmuls have the remaining cores.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.data import native_chain


@jax.jit
def _lockstep_chains(image_emb: jax.Array, text_emb: jax.Array, start: jax.Array) -> jax.Array:
    """image_emb, text_emb [S, M, d]; start [S] → chain [S, M] of positions within each space,
    all spaces in lockstep."""
    spaces, m, _ = image_emb.shape
    # One similarity matrix: image → text hops read its rows, text → image hops its columns.
    # (A transposed copy makes the column reads contiguous but costs as much as it saves, and
    # doubles the memory.)
    i2t = jnp.einsum("smd,snd->smn", image_emb, text_emb, preferred_element_type=jnp.float32)
    rows = jnp.arange(spaces)
    order = jnp.zeros((spaces, m), jnp.int32).at[:, 0].set(start)
    # Used pairs as an additive −inf mask: one add per hop instead of a select on a bool mask
    # (measured 15% faster for the whole call on CPU).
    used = jnp.zeros((spaces, m), jnp.float32).at[rows, start].set(-jnp.inf)

    def hop(sims, n, order, used):
        nxt = jnp.argmax(sims + used, axis=1).astype(jnp.int32)
        return order.at[:, n].set(nxt), used.at[rows, nxt].set(-jnp.inf), nxt

    def two_hops(k, carry):
        # Image → nearest unused text, then that text → nearest unused image.
        order, used, cur = carry
        order, used, cur = hop(i2t[rows, cur], 2 * k + 1, order, used)
        return hop(i2t[rows, :, cur], 2 * k + 2, order, used)

    carry = jax.lax.fori_loop(0, (m - 1) // 2, two_hops, (order, used, start), unroll=4)
    if (m - 1) % 2:  # M even: one image → text hop is left
        order, used, cur = carry
        carry = hop(i2t[rows, cur], m - 1, order, used)
    return carry[0]


BLOCK = 32  # pairs per block of the lazy chain: a hop reads one row's 1,920 / 32 = 60 maxima


def _lazy_space_chain(sims: jax.Array, start: jax.Array, m: int) -> jax.Array:
    """One search space's chain from its similarity matrix [Mp, Mp] (M real pairs, padded with
    −inf to a multiple of BLOCK); chain [M] of positions."""
    padded = sims.shape[0]
    blocks = padded // BLOCK
    # [pair, block]: the maximum of image `pair`'s row over each block of texts, and of text
    # `pair`'s column over each block of images (small, so stored pair-major for both).
    row_max = sims.reshape(padded, blocks, BLOCK).max(axis=2)
    column_max = sims.reshape(blocks, BLOCK, padded).max(axis=1).T

    def refresh(image_to_text, cur, used, maxima):
        # The best block by its (possibly stale) maximum, re-read over unused pairs only.
        b = jnp.argmax(maxima).astype(jnp.int32)
        if image_to_text:
            read = jax.lax.dynamic_slice(sims, (cur, b * BLOCK), (1, BLOCK))[0]
        else:
            read = jax.lax.dynamic_slice(sims, (b * BLOCK, cur), (BLOCK, 1))[:, 0]
        read = read + jax.lax.dynamic_slice(used, (b * BLOCK,), (BLOCK,))
        i = jnp.argmax(read).astype(jnp.int32)
        fresh = read[i] == maxima[b]  # then no other block can hold more: the hop ends here
        return jax.lax.dynamic_update_slice(maxima, read[i][None], (b,)), b * BLOCK + i, fresh

    def hop(image_to_text, cur, used):
        maxima = jax.lax.dynamic_index_in_dim(row_max if image_to_text else column_max, cur, 0)
        first = refresh(image_to_text, cur, used, maxima[0])
        _, nxt, _ = jax.lax.while_loop(
            lambda carry: ~carry[2],
            lambda carry: refresh(image_to_text, cur, used, carry[0]),
            first,
        )
        return nxt, used.at[nxt].set(-jnp.inf)

    def two_hops(k, carry):
        order, used, cur = carry
        text, used = hop(True, cur, used)
        image, used = hop(False, text, used)
        order = jax.lax.dynamic_update_slice(order, jnp.stack([text, image]), (2 * k + 1,))
        return order, used, image

    order = jnp.zeros(m, jnp.int32).at[0].set(start)
    used = jnp.where(jnp.arange(padded) < m, 0.0, -jnp.inf).at[start].set(-jnp.inf)
    order, used, cur = jax.lax.fori_loop(0, (m - 1) // 2, two_hops, (order, used, start))
    if (m - 1) % 2:  # M even: one image → text hop is left
        order = order.at[m - 1].set(hop(True, cur, used)[0])
    return order


@jax.jit
def _lazy_chains(image_emb: jax.Array, text_emb: jax.Array, start: jax.Array) -> jax.Array:
    """image_emb, text_emb [S, M, d]; start [S] → chain [S, M]: one search space at a time
    (`lax.map`), so each similarity matrix is built and chained while it sits in cache."""
    m = image_emb.shape[1]
    padded = -(-m // BLOCK) * BLOCK

    def one_space(args):
        v, t, s = args
        sims = jnp.einsum("md,nd->mn", v, t, preferred_element_type=jnp.float32)
        if padded != m:
            sims = jnp.pad(sims, ((0, padded - m), (0, padded - m)), constant_values=-jnp.inf)
        return _lazy_space_chain(sims, s, m)

    return jax.lax.map(one_space, (image_emb, text_emb, start))


@jax.jit
def _native_chains(image_emb: jax.Array, text_emb: jax.Array, start: jax.Array) -> jax.Array:
    """image_emb, text_emb [S, M, d]; start [S] → chain [S, M]: XLA's matmul, then the C++
    kernel (`native_chain`), one space after another."""
    sims = jnp.einsum("smd,snd->smn", image_emb, text_emb, preferred_element_type=jnp.float32)
    return native_chain.chains(sims, start)


CHAINS = {"lockstep": _lockstep_chains, "lazy": _lazy_chains, "native": _native_chains}


def default_strategy() -> str:
    """On CPU `native` (the C++ kernel) when it builds, else `lazy`, where a hop's cost is the
    elements it reads; `lockstep` elsewhere, where it is the kernel launches, whatever the
    width."""
    if jax.default_backend() != "cpu":
        return "lockstep"
    return "native" if native_chain.available() else "lazy"


CPU_CACHE_BYTES = 32 << 20  # about one shared L3; the sizing below was measured on a 32 MB one
LAZY_CHUNK_SPACES = 1  # one search space per call, so the threads share the work evenly


def default_chunk_spaces(search_space: int, strategy: str | None = None) -> int:
    """Search spaces per device call of the chain.

    `lazy` chains one space at a time within a call, so its chunk only sets the work one
    thread takes at a time: `LAZY_CHUNK_SPACES`. `lockstep` on CPU takes as many spaces as keep
    their float32 similarity matrices within `CPU_CACHE_BYTES` (2 for M = 1,920), so its hops
    read from cache; elsewhere 64: on a GPU each hop costs a few kernel launches whatever the
    width, so wide chunks pay.
    """
    if (strategy or default_strategy()) in ("lazy", "native"):
        return LAZY_CHUNK_SPACES
    if jax.default_backend() == "cpu":
        return max(1, CPU_CACHE_BYTES // (4 * search_space * search_space))
    return 64


def default_workers() -> int:
    """Threads that run chunks concurrently: on CPU one per core this process may use (a chain
    keeps one core busy, and a thread waiting on XLA holds no lock, so the matmuls of other
    chunks fill the rest); elsewhere 1, as the device runs one call at a time."""
    if jax.default_backend() != "cpu":
        return 1
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(cores) if cores else os.cpu_count() or 1


def _refuse_non_finite(**arrays: np.ndarray) -> None:
    """Raise naming the first array with NaN or inf rows: the chain's additive −inf mask needs
    finite similarities (NaN + −inf is NaN, and an argmax over NaN could revisit a used pair)."""
    for name, x in arrays.items():
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{name} has {int(bad.sum())} rows with NaN or inf (first: row "
                f"{int(np.argmax(bad))}); grouping needs finite, L2-normalised embeddings"
            )


def grouped_order(
    image_emb: np.ndarray | jax.Array,
    text_emb: np.ndarray | jax.Array,
    *,
    search_space: int,
    seed: int,
    group_size: int | None = None,
    chunk_spaces: int | None = None,
    strategy: str | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """A permutation of range(N) whose consecutive runs of `group_size` are grouped batches.

    image_emb, text_emb [N, d] (L2-normalised; pair k is row k of both). N must be a multiple of
    `search_space` (callers group the largest such prefix and append the rest in random order).
    With `group_size` (a divisor of `search_space`), the batches are shuffled as GRIT does;
    without it the chains are returned in search-space order. `strategy` (`lazy` or `lockstep`,
    default `default_strategy()`), `chunk_spaces` (at most this many search spaces per device
    call, default `default_chunk_spaces`) and `workers` (threads running calls concurrently,
    default `default_workers()`) change the speed, never the order.
    """
    # Host arrays: only one chunk of search spaces at a time goes to the device.
    image_emb = np.asarray(image_emb, np.float32)
    text_emb = np.asarray(text_emb, np.float32)
    n, dim = image_emb.shape
    if text_emb.shape != (n, dim):
        raise ValueError(f"image_emb {image_emb.shape} and text_emb {text_emb.shape} differ")
    if n % search_space:
        raise ValueError(f"{n} pairs are not a multiple of search_space={search_space}")
    if group_size is not None and search_space % group_size:
        raise ValueError(
            f"search_space={search_space} is not a multiple of group_size={group_size}"
        )
    strategy = strategy or default_strategy()
    if strategy not in CHAINS:
        raise ValueError(f"strategy={strategy!r}; choose from {sorted(CHAINS)}")
    if strategy == "native" and not (jax.default_backend() == "cpu" and native_chain.available()):
        raise ValueError(
            "strategy='native' needs the CPU backend and a C++ compiler (see the log for why "
            "the kernel did not build); use 'lazy'"
        )
    if chunk_spaces is None:
        chunk_spaces = default_chunk_spaces(search_space, strategy)
    if chunk_spaces < 1:
        raise ValueError(f"chunk_spaces={chunk_spaces}; it must be at least 1")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers}; it must be at least 1")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    spaces = n // search_space
    starts = rng.integers(0, search_space, spaces)
    # Equal chunks, the last padded by repeating it: one shape, one compilation, and fewer than
    # one padded space per chunk.
    width = -(-spaces // -(-spaces // chunk_spaces))
    chain_fn = CHAINS[strategy]
    # The kernel's library also gathers a space's scattered rows, checking them as it copies:
    # 0.11–0.21 ms per space and modality against np.take's 0.27–0.28 plus a sum's pass (48,000
    # to 4M pairs on CPU); grouped_order went from 1.19–1.30 to 1.15–1.23× the floor at 48,000
    # and 998,400 pairs (interleaved A/B runs).
    native_gather = strategy == "native" and all(
        x.flags.c_contiguous for x in (image_emb, text_emb)
    )

    def chunk_chains(lo: int) -> np.ndarray:
        hi = min(lo + width, spaces)
        take = shuffled[lo * search_space : hi * search_space]
        idx = np.resize(take, width * search_space)
        shape = (width, search_space, dim)
        if native_gather:
            images, images_finite = native_chain.gather_rows(image_emb, idx)
            texts, texts_finite = native_chain.gather_rows(text_emb, idx)
            finite = images_finite and texts_finite
        else:
            images = np.take(image_emb, idx, axis=0)
            texts = np.take(text_emb, idx, axis=0)
            # Checked a chunk at a time in the workers, while it is in cache, by a sum: NaN
            # and ±inf make it non-finite, and it allocates nothing. (48,000 pairs on CPU:
            # `np.isfinite(x).all()` added 6.7% to the matmuls' time, the sum 0.9%.) A finite
            # input whose sum overflows only gets the exact check, which then passes.
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.isfinite(images.sum()) and np.isfinite(texts.sum())
        images, texts = images.reshape(shape), texts.reshape(shape)
        if not finite:
            _refuse_non_finite(image_emb=image_emb, text_emb=text_emb)
        chain = chain_fn(
            images,
            texts,
            np.resize(starts[lo:hi], width).astype(np.int32),
        )
        chain = np.asarray(chain)[: hi - lo]
        offsets = (np.arange(hi - lo) * search_space)[:, None]
        return take[(chain + offsets).reshape(-1)]

    lows = range(0, spaces, width)
    if workers == 1 or len(lows) == 1:
        chains = [chunk_chains(lo) for lo in lows]
    else:
        with ThreadPoolExecutor(min(workers, len(lows))) as pool:
            chains = list(pool.map(chunk_chains, lows))
    order = np.concatenate(chains)
    if group_size is not None:
        batches = order.reshape(-1, group_size)
        order = batches[rng.permutation(len(batches))].reshape(-1)
    return order.astype(np.int64)


def reference_grouped_order(
    image_emb: np.ndarray, text_emb: np.ndarray, *, search_space: int, seed: int
) -> np.ndarray:
    """The same chain as a plain Python loop per search space (as in GRIT-VLP's code); for tests
    and the speed comparison. Returns the chains in search-space order (no batch shuffle)."""
    n = len(image_emb)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    spaces = n // search_space
    starts = rng.integers(0, search_space, spaces)
    out = []
    for s in range(spaces):
        idx = shuffled[s * search_space : (s + 1) * search_space]
        i2t = np.asarray(image_emb[idx], np.float32) @ np.asarray(text_emb[idx], np.float32).T
        used = np.zeros(search_space, bool)
        cur = int(starts[s])
        used[cur] = True
        chain = [cur]
        for step in range(search_space - 1):
            scores = np.where(used, -np.inf, i2t[cur] if step % 2 == 0 else i2t[:, cur])
            cur = int(np.argmax(scores))
            used[cur] = True
            chain.append(cur)
        out.append(idx[np.asarray(chain)])
    return np.concatenate(out).astype(np.int64)


def _zero_pair(matrices: tuple[np.ndarray, ...], k: int) -> None:
    for p in matrices:
        p[k, :] = 0.0
        p[:, k] = 0.0


def paper_style_grouped_order(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    *,
    search_space: int,
    seed: int,
    temperature: float = 0.07,
) -> np.ndarray:
    """The chain as GRIT-VLP's `GRIT_utils.py` computes it, for the speed comparison: per search
    space both row-softmax matrices (zero diagonal), then a Python loop that zeroes the visited
    pair's row and column in both after every hop. Same chains as `reference_grouped_order`
    wherever the softmax does not underflow (its argmax is the cosine's)."""
    n = len(image_emb)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    spaces = n // search_space
    starts = rng.integers(0, search_space, spaces)

    def row_softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        np.fill_diagonal(e, 0.0)
        return e

    out = []
    for s in range(spaces):
        idx = shuffled[s * search_space : (s + 1) * search_space]
        v = np.asarray(image_emb[idx], np.float32)
        t = np.asarray(text_emb[idx], np.float32)
        p_i2t, p_t2i = row_softmax(v @ t.T / temperature), row_softmax(t @ v.T / temperature)
        both = (p_i2t, p_t2i)
        cur = int(starts[s])
        chain = [cur]
        for _ in range((search_space - 1) // 2):
            j = int(np.argmax(p_i2t[cur]))
            _zero_pair(both, cur)
            i = int(np.argmax(p_t2i[j]))
            _zero_pair(both, j)
            chain += [j, i]
            cur = i
        if search_space % 2 == 0:  # the one unused pair left: every other column is zero
            chain.append(int(np.argmax(p_i2t[cur])))
        out.append(idx[np.asarray(chain)])
    return np.concatenate(out).astype(np.int64)
