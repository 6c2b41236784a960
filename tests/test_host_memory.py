import subprocess
import sys
import textwrap

import pytest

from vlp_jax import host_memory

# A 64 MiB block allocated, touched, freed and allocated again in a worker thread (where XLA:CPU
# allocates a step's temporaries); prints the minor page faults of the second round.
_SECOND_ROUND_FAULTS = textwrap.dedent(
    """
    import ctypes, resource, sys, threading
    from vlp_jax import host_memory

    applied = host_memory.reuse_freed_blocks() if sys.argv[1] == "apply" else False
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size, faults = 64 << 20, []

    def rounds():  # plain malloc: numpy would ask for huge pages, XLA does not
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = libc.malloc(size)
            ctypes.memset(block, 1, size)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            libc.free(block)

    thread = threading.Thread(target=rounds)
    thread.start()
    thread.join()
    print(applied, faults[1])
    """
)


def _second_round(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _SECOND_ROUND_FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", **env},
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_blocks_are_reused_instead_of_mapped_again():
    applied, faults = _second_round("apply")
    default_applied, default_faults = _second_round("default")
    assert applied == "True" and default_applied == "False"
    # 64 MiB is 16,384 pages: mapped afresh by default, reused from the heap with the settings.
    assert default_faults > 10_000
    assert faults < 1_000
    off, off_faults = _second_round("apply", VLP_JAX_DEFAULT_MALLOC="1")
    assert off == "False" and off_faults > 10_000


def test_only_a_cpu_backend_gets_the_settings(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.cpu_backend_expected()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not host_memory.cpu_backend_expected()
    assert not host_memory.reuse_freed_blocks()
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: name == "libtpu")
    assert not host_memory.cpu_backend_expected()
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: None)
    assert host_memory.cpu_backend_expected()
