"""The C++ chain kernel: built once per machine and CPU, refuses bad input, falls back cleanly.

Its chains are checked against the plain loop in test_grouping.py (strategy `native`).
"""

import ctypes
import logging
import os
import platform
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.data import native_chain

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler"
)


def test_kernel_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VLP_JAX_CACHE_DIR", str(tmp_path))
    first = native_chain.build()
    assert first.parent == tmp_path and first.exists()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left
    stamp = first.stat().st_mtime_ns

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(native_chain.subprocess, "run", no_compile)
    monkeypatch.setattr(native_chain, "library_path", lambda compiler=None, extra_flags=(): first)
    assert native_chain.build() == first and first.stat().st_mtime_ns == stamp


def test_cache_name_changes_with_the_cpu(monkeypatch):
    # -march=native code must not be loaded on a CPU that lacks its instructions.
    here = native_chain.library_path()
    monkeypatch.setattr(native_chain, "_cpu_fingerprint", lambda: "model name : other")
    assert native_chain.library_path() != here


def test_missing_or_failing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("VLP_JAX_CACHE_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-c\\+\\+'"):
        native_chain.build("no-such-c++")
    with pytest.raises(RuntimeError, match="false .* failed"):
        native_chain.build("false")
    assert list(tmp_path.iterdir()) == []  # the failed build left nothing behind


def test_unavailable_kernel_logs_why(monkeypatch, caplog):
    def no_compiler(compiler=None):
        raise RuntimeError("no C++ compiler 'c++' on PATH")

    monkeypatch.setattr(native_chain, "build", no_compiler)
    with caplog.at_level(logging.WARNING, logger=native_chain.__name__):
        assert native_chain._build_and_register.__wrapped__() is None
    assert "pure-JAX chain: no C++ compiler 'c++'" in caplog.text


def test_kernel_refuses_a_start_outside_the_space():
    assert native_chain.available()
    sims = jnp.zeros((2, 8, 8), jnp.float32)
    chains = jax.jit(native_chain.chains)
    np.testing.assert_array_equal(chains(sims, jnp.array([0, 7], jnp.int32))[:, 0], [0, 7])
    with pytest.raises(Exception, match=r"outside \[0, M\)"):
        chains(sims, jnp.array([0, 8], jnp.int32)).block_until_ready()


def test_kernel_keeps_a_permutation_on_non_finite_similarities():
    assert native_chain.available()
    sims = np.full((2, 40, 40), np.nan, np.float32)
    sims[1, :, ::2] = -np.inf
    chains = np.asarray(jax.jit(native_chain.chains)(sims, jnp.array([3, 0], jnp.int32)))
    for chain in chains:
        assert sorted(chain.tolist()) == list(range(40))


def _plain_chain(sims: np.ndarray, start: int) -> list[int]:
    """The chain by full masked argmaxes over one matrix (ties to the lowest index)."""
    used = np.zeros(len(sims), bool)
    chain = [start]
    used[start] = True
    for n in range(1, len(sims)):
        scores = sims[chain[-1]] if n % 2 else sims[:, chain[-1]]
        chain.append(int(np.argmax(np.where(used, -np.inf, scores))))
        used[chain[-1]] = True
    return chain


@pytest.fixture(scope="module")
def portable_chains():
    """The kernel built without AVX-512 (its portable code path), under its own FFI name."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the default build already is the portable one here")
    library = ctypes.CDLL(str(native_chain.build(extra_flags=("-mno-avx512f",))))
    name = "vlp_jax_grit_chain_portable"
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(library.VlpJaxGritChain), platform="cpu")

    def chains(sims, start):
        out = jax.ShapeDtypeStruct((sims.shape[0], sims.shape[1]), jnp.int32)
        return jax.ffi.ffi_call(name, out)(sims, start)

    return jax.jit(chains)


# 16 whole blocks; 17 and a ragged one (vector code handles 16 blocks at a time).
@pytest.mark.parametrize("m", [512, 552])
def test_kernel_equals_full_argmaxes_with_ties_in_both_code_paths(m, portable_chains):
    assert native_chain.available()
    rng = np.random.default_rng(m)
    # Similarities on a grid of 1/4: many exact ties within and across blocks.
    sims = np.round(rng.normal(size=(2, m, m)) * 4).astype(np.float32) / 4
    start = np.array([0, m - 1], np.int32)
    expected = [_plain_chain(s, int(c)) for s, c in zip(sims, start)]
    for chains in (jax.jit(native_chain.chains), portable_chains):
        np.testing.assert_array_equal(chains(sims, start), expected)


@pytest.mark.parametrize("dim", [256, 20])  # whole vectors of 16 and a tail
def test_gather_rows_equals_take_and_flags_any_non_finite_value(dim):
    assert native_chain.available()
    x = np.random.default_rng(0).normal(size=(300, dim)).astype(np.float32)
    x[7, 0] = 3e38  # finite values whose sum overflows
    index = np.random.default_rng(1).permutation(300)[:97]
    rows, finite = native_chain.gather_rows(x, index)
    np.testing.assert_array_equal(rows, x[index])
    assert finite
    for bad in (np.nan, np.inf, -np.inf):
        for column in (0, dim - 1):
            y = x.copy()
            y[index[50], column] = bad
            assert not native_chain.gather_rows(y, index)[1], (bad, column)
            assert native_chain.gather_rows(y, np.delete(index, 50))[1]  # the row not taken


def test_gather_rows_refuses_bad_indices_and_layouts():
    assert native_chain.available()
    x = np.zeros((10, 16), np.float32)
    with pytest.raises(IndexError, match=r"outside \[0, 10\)"):
        native_chain.gather_rows(x, np.array([0, 10]))
    with pytest.raises(IndexError, match=r"outside \[0, 10\)"):
        native_chain.gather_rows(x, np.array([-1]))
    with pytest.raises(ValueError, match="C-contiguous"):
        native_chain.gather_rows(np.zeros((16, 10), np.float32).T, np.array([0]))
