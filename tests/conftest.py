"""Test setup: 8 CPU devices for sharding tests, strict rank promotion."""
import os
import tempfile

# Must happen before jax initializes its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Test models are tiny: compile time, not run time, is most of the suite, and LLVM's optimization
# passes are most of XLA:CPU's compile time. Level 0 keeps XLA's own (HLO) optimizations.
# Subprocesses that set their own XLA_FLAGS (notebook kernels, the 2-process test) add these too.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE_XLA_FLAGS
).strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Many tests build the same tiny models in fresh closures: a persistent compilation
# cache (per test session) lets identical programs compile once.
_cache_dir = tempfile.mkdtemp(prefix="r1jax-jax-cache-")
jax.config.update("jax_compilation_cache_dir", _cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
