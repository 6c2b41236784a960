"""Test set-up: 8 virtual CPU devices (before JAX touches a device) and parsed absl flags."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile far more than they run: LLVM's optimisation passes are most of a compilation
# (the tiny ALBEF step: 25.0 s at the default level, 15.8 s at 0) and buy nothing here.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()

# Tests compile the same tiny steps many times (and in subprocesses): share compilations.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Tests compile far more than they step: keep glibc's default arenas, here and in the trainer
# subprocesses (vlp_jax.host_memory; test_train.py from a cold compilation cache took 318 s
# with the defaults against 365 and 439 s with one arena).
os.environ.setdefault("VLP_JAX_DEFAULT_MALLOC", "1")

import jax  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# Grain reads absl flags; outside absl.app they must be parsed once.
if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1], known_only=True)
