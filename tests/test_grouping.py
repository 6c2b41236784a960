"""GRIT grouping: a permutation, harder batches than random, deterministic, equal to the loop."""

import os
import shutil

import numpy as np
import pytest

from vlp_jax.data import grouping, native_chain

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


def _clustered(n: int, dim: int = 16, clusters: int = 8, seed: int = 0):
    """Pairs drawn around a few centres, with image and text noisy views of one point."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return (
        norm(points + 0.1 * rng.normal(size=(n, dim))),
        norm(points + 0.1 * rng.normal(size=(n, dim))),
    )


def _hardest_negative_similarity(v, t, order, batch):
    sims = []
    for b in order.reshape(-1, batch):
        s = v[b] @ t[b].T
        np.fill_diagonal(s, -np.inf)
        sims.append(s.max(axis=1).mean())
    return float(np.mean(sims))


def test_grouped_order_is_a_deterministic_permutation():
    v, t = _clustered(256)
    order = grouping.grouped_order(v, t, search_space=64, seed=3, group_size=16)
    assert sorted(order.tolist()) == list(range(256))
    again = grouping.grouped_order(v, t, search_space=64, seed=3, group_size=16)
    np.testing.assert_array_equal(order, again)
    other = grouping.grouped_order(v, t, search_space=64, seed=4, group_size=16)
    assert not np.array_equal(order, other)


@pytest.mark.parametrize("strategy", ["native", "lazy", "lockstep"])
# One call; several padded chunks on one thread; one space per call on three threads.
@pytest.mark.parametrize("chunk_spaces,workers", [(64, 1), (3, 1), (1, 3)])
# In blocks of 32 (lazy, native): one; one and a ragged one (native) or padded (lazy); three.
@pytest.mark.parametrize("search_space", [32, 33, 80])
def test_grouped_order_equals_the_plain_loop(strategy, chunk_spaces, workers, search_space):
    v, t = _clustered(7 * search_space, seed=1)
    kwargs = dict(search_space=search_space, seed=5, chunk_spaces=chunk_spaces, workers=workers)
    fast = grouping.grouped_order(v, t, strategy=strategy, **kwargs)
    slow = grouping.reference_grouped_order(v, t, search_space=search_space, seed=5)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("strategy", ["native", "lazy"])
def test_block_chains_break_ties_like_a_full_argmax(strategy):
    # Each pair four times: equal similarities within a block and across blocks (bitwise equal
    # in JAX's matmul; numpy's rounds the copies differently, so the numpy loop can't judge).
    # The block chains must take the lowest unused index, as the lockstep chain's argmax does.
    v, t = _clustered(40, seed=2)
    v, t = np.tile(v, (4, 1)), np.tile(t, (4, 1))  # 160 pairs: blocks of 32 hold copies
    kwargs = dict(search_space=160, seed=1)
    blocks = grouping.grouped_order(v, t, strategy=strategy, **kwargs)
    lockstep = grouping.grouped_order(v, t, strategy="lockstep", **kwargs)
    np.testing.assert_array_equal(blocks, lockstep)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the CPU default is then `lazy`")
def test_default_strategy_chunks_and_workers_on_cpu():
    assert grouping.default_strategy() == "native"  # the tests run on CPU
    assert grouping.default_workers() == len(os.sched_getaffinity(0))
    assert grouping.default_chunk_spaces(1920) == grouping.LAZY_CHUNK_SPACES
    assert grouping.default_chunk_spaces(1920, "lazy") == grouping.LAZY_CHUNK_SPACES
    # The lockstep chain on CPU keeps its chunk's similarity matrices in a 32 MB cache: two
    # 14.7 MB matrices for GRIT's M = 1,920; small spaces share one call.
    assert grouping.default_chunk_spaces(1920, "lockstep") == 2
    assert grouping.default_chunk_spaces(4096, "lockstep") == 1
    assert grouping.default_chunk_spaces(64, "lockstep") == grouping.CPU_CACHE_BYTES // (
        4 * 64 * 64
    )


def test_without_the_kernel_cpu_falls_back_to_lazy(monkeypatch):
    monkeypatch.setattr(native_chain, "available", lambda: False)
    assert grouping.default_strategy() == "lazy"
    v, t = _clustered(64)
    with pytest.raises(ValueError, match="strategy='native' needs .* a C\\+\\+ compiler"):
        grouping.grouped_order(v, t, search_space=64, seed=0, strategy="native")


def test_unknown_strategy_is_refused():
    v, t = _clustered(64)
    with pytest.raises(ValueError, match="strategy='fast'"):
        grouping.grouped_order(v, t, search_space=64, seed=0, strategy="fast")


def test_device_loop_makes_the_same_chains():
    from vlp_jax.benchmark.grouping import device_loop_grouped_order

    v, t = _clustered(2 * 33, seed=6)
    device = device_loop_grouped_order(v, t, search_space=33, seed=1)
    plain = grouping.reference_grouped_order(v, t, search_space=33, seed=1)
    np.testing.assert_array_equal(device, plain)


@pytest.mark.parametrize("search_space", [32, 33])  # M even ends with a lone image → text hop
def test_paper_style_loop_makes_the_same_chains(search_space):
    v, t = _clustered(3 * search_space, seed=4)
    paper = grouping.paper_style_grouped_order(v, t, search_space=search_space, seed=2)
    plain = grouping.reference_grouped_order(v, t, search_space=search_space, seed=2)
    np.testing.assert_array_equal(paper, plain)


def test_grouped_batches_have_harder_negatives_than_random():
    v, t = _clustered(512, clusters=64, seed=2)
    order = grouping.grouped_order(v, t, search_space=128, seed=0, group_size=32)
    random = np.random.default_rng(0).permutation(512)
    grouped = _hardest_negative_similarity(v, t, order, 32)
    baseline = _hardest_negative_similarity(v, t, random, 32)
    assert grouped > baseline + 0.1, (grouped, baseline)


# `native` gathers and checks rows in C++; `lazy` with np.take and a sum.
HOST_PATHS = ["lazy"] + (["native"] if HAS_COMPILER else [])


@pytest.mark.parametrize("strategy", HOST_PATHS)
def test_grouped_order_refuses_non_finite_embeddings(strategy):
    v, t = _clustered(64)
    v[17, 3] = np.nan
    with pytest.raises(ValueError, match=r"image_emb has 1 rows with NaN or inf \(first: row 17\)"):
        grouping.grouped_order(v, t, search_space=32, seed=0, strategy=strategy)


@pytest.mark.parametrize("strategy", HOST_PATHS)
def test_grouped_order_refuses_non_finite_embeddings_in_any_chunk_and_thread(strategy):
    v, t = _clustered(128)
    t[100, 0] = np.inf
    with pytest.raises(ValueError, match=r"text_emb has 1 rows with NaN or inf \(first: row 100\)"):
        grouping.grouped_order(
            v, t, search_space=32, seed=0, chunk_spaces=1, workers=2, strategy=strategy
        )


@pytest.mark.parametrize("strategy", HOST_PATHS)
def test_grouped_order_accepts_finite_embeddings_whose_sum_overflows(strategy):
    # A check by a sum must not take an overflow for NaN or inf.
    v, t = _clustered(64)
    v[:, 0] = 3e38  # finite, but any two rows sum to inf
    order = grouping.grouped_order(v, t, search_space=32, seed=0, chunk_spaces=1, strategy=strategy)
    np.testing.assert_array_equal(np.sort(order), np.arange(64))


def test_grouped_order_names_bad_sizes():
    v, t = _clustered(100)
    with pytest.raises(ValueError, match="not a multiple of search_space=64"):
        grouping.grouped_order(v, t, search_space=64, seed=0)
    with pytest.raises(ValueError, match="group_size=24"):
        grouping.grouped_order(v[:64], t[:64], search_space=64, seed=0, group_size=24)
    with pytest.raises(ValueError, match="chunk_spaces=0"):
        grouping.grouped_order(v[:64], t[:64], search_space=64, seed=0, chunk_spaces=0)
    with pytest.raises(ValueError, match="workers=0"):
        grouping.grouped_order(v[:64], t[:64], search_space=64, seed=0, workers=0)
