"""Let XLA:CPU reuse each step's buffers instead of mapping fresh pages (glibc malloc settings).

XLA:CPU allocates an executable's temporaries as one block per call: 337 MiB for the demo's
train step. glibc serves a block that large with a fresh `mmap` (from a worker thread's arena it
does so whatever `M_MMAP_MAX` says) and unmaps it when freed, so every step first-touches new
pages. On the 2-core CPU this was measured at about 88,000 page faults per demo step: 13.3M
minor faults and 35 s of system time in a 150-step run of 106 s (`/usr/bin/time -v`).

`reuse_freed_blocks()` asks glibc for one arena, no `mmap` for allocations and no trimming, so a
freed block stays in the heap and the next step reuses it. The same run then takes 0.6M minor
faults and 6.6 s of system time, and trains at 167 instead of 152 pairs/s with the same losses.

The one arena has costs. Grain's decoding threads share it: 1,094 instead of 1,462 pairs/s,
still 5× the CPU step. Compilation slows as well: a cold-cache `tests/test_train.py` took 365 and
439 s against 318 s. So it pays for a run that compiles once and trains, and the tests keep the
defaults. It is applied only when JAX will run on the CPU (no accelerator plugin installed, or
`JAX_PLATFORMS=cpu`); on accelerator hosts the data loader's threads keep their own arenas.
`VLP_JAX_DEFAULT_MALLOC=1` turns it off.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1


def cpu_backend_expected() -> bool:
    """Whether JAX will pick the CPU: asked for, or no GPU/TPU plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(m) for m in ("jax_plugins", "libtpu"))


def reuse_freed_blocks() -> bool:
    """Sets glibc's malloc to one arena, no `mmap` and no trimming, on a CPU-only JAX host.

    Call it before JAX starts its thread pools (before the first computation): threads that
    already hold an arena keep it. Returns whether the settings were applied.
    """
    if os.environ.get("VLP_JAX_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    if not cpu_backend_expected():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, say)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _NEVER_TRIM),
        )
    )
