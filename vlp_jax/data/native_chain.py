"""GRIT's greedy chain on CPU as a small C++ XLA FFI kernel (`grit_chain.cc`), built on first use.

Why a kernel: on CPU every op inside a `lax.while_loop` costs a dispatch of 0.1–0.3 µs, and a
hop of the chain needs a dozen, so the pure-JAX `lazy` chain costs about as much as the
similarity matmul it follows. The kernel runs the same chain (same ties, same order) at about a
fifth of the matmul's CPU time in `grouped_order` (2.2–2.7 ms against about 11 ms for a search
space of 1,920 pairs, d = 256, on a 2-core AVX-512 CPU). Its maxima have AVX-512 code and
portable C++ for other CPUs; built here without AVX-512, the portable form is about 1.4× slower.

The same library gathers a search space's scattered rows for `grouping` (`gather_rows`), with
the rows prefetched ahead and the finiteness check done while copying, through ctypes.

The kernel is compiled once per machine with the C++ compiler `$CXX` (default `c++`) against the
XLA FFI headers that jaxlib ships, with `-march=native`, into
`$VLP_JAX_CACHE_DIR` (default `~/.cache/vlp_jax`); the file name hashes the source, the flags, the
compiler, jaxlib and the CPU, so a cache shared between different machines stays correct. Without
a compiler, `available()` is False, says why in the log, and `grouping` falls back to the pure-JAX
`lazy` chain.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = Path(__file__).with_name("grit_chain.cc")
TARGET = "vlp_jax_grit_chain"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")

log = logging.getLogger(__name__)
_register_lock = threading.Lock()


def cache_dir() -> Path:
    """`$VLP_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/vlp_jax`, else `~/.cache/vlp_jax`."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlp_jax"
    return Path(os.environ.get("VLP_JAX_CACHE_DIR", default))


def _cpu_fingerprint() -> str:
    """The CPU model and instruction-set flags (`-march=native` code runs only where they hold)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.platform()
    keep = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in keep}))


def _compiler(compiler: str | None) -> str:
    name = compiler or os.environ.get("CXX", "c++")
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"no C++ compiler {name!r} on PATH (set CXX to choose one)")
    return found


def library_path(compiler: str | None = None, extra_flags: tuple[str, ...] = ()) -> Path:
    """Where the kernel built by `compiler` for this CPU and jaxlib lives in `cache_dir()`."""
    found = _compiler(compiler)
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    flags = " ".join(FLAGS + tuple(extra_flags))
    key = "\0".join([SOURCE.read_text(), flags, version, jaxlib.__version__, _cpu_fingerprint()])
    return cache_dir() / f"grit_chain-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(compiler: str | None = None, extra_flags: tuple[str, ...] = ()) -> Path:
    """The kernel's shared library, compiled into `cache_dir()` unless already there.

    `extra_flags` go after the default ones (tests use `-mno-avx512f` to build the portable
    code path on a CPU that has AVX-512). Raises RuntimeError naming the compiler and its output
    if it is missing or fails.
    """
    out = library_path(compiler, extra_flags)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a private name, then rename: processes building at once never load half a file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [
        _compiler(compiler),
        *FLAGS,
        *extra_flags,
        "-isystem",
        jax.ffi.include_dir(),
        str(SOURCE),
        "-o",
        tmp,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        os.unlink(tmp)
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    os.replace(tmp, out)
    log.info("built the GRIT chain kernel: %s", out)
    return out


def available() -> bool:
    """True once the kernel is built and registered with XLA for CPU (done once per process)."""
    with _register_lock:
        return _build_and_register() is not None


@functools.cache
def _build_and_register() -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as e:
        log.warning("GRIT chain kernel unavailable, grouping uses the pure-JAX chain: %s", e)
        return None
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.VlpJaxGritChain), platform="cpu")
    gather = library.VlpJaxGatherRows  # (src, n, dim, index, count, out) -> 1 finite, 0, -1
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    gather.argtypes = [pointer, size, size, pointer, size, pointer]
    gather.restype = ctypes.c_int
    return library


def gather_rows(x: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, bool]:
    """x[index] (x [n, d] float32, C-contiguous) and whether all of it is finite, in one pass
    with the scattered rows prefetched (GIL released). Call after `available()` returned True."""
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise ValueError(f"x must be a C-contiguous [n, d] float32 array, not {x.dtype} {x.shape}")
    index = np.ascontiguousarray(index, np.int64)
    if index.ndim != 1:
        raise ValueError(f"index must be 1-D, not {index.shape}")
    out = np.empty((len(index), x.shape[1]), np.float32)
    finite = _build_and_register().VlpJaxGatherRows(
        x.ctypes.data, x.shape[0], x.shape[1], index.ctypes.data, len(index), out.ctypes.data
    )
    if finite < 0:
        raise IndexError(f"an index is outside [0, {x.shape[0]})")
    return out, bool(finite)


def chains(sims: jax.Array, start: jax.Array) -> jax.Array:
    """sims [S, M, M] float32 image → text similarities; start [S] int32 → chain [S, M] int32.

    Call inside `jax.jit`, after `available()` returned True.
    """
    spaces, m, _ = sims.shape
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((spaces, m), jnp.int32))
    return call(sims, start)
