"""Tests run on CPU with 8 fake devices, so meshes like (2, 2, 2) are real shardings."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests compile the same tiny programs: a persistent compilation cache shared by this run's
# workers turns the repeats into cache hits (compiling random-number code is slow on this CPU).
_CACHE = os.environ.setdefault("JAXFORMERS_TEST_COMPILE_CACHE", tempfile.mkdtemp(prefix="jaxformers-xla-cache-"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir shared by the session's tests (the embedded corpus is prepared once)."""
    d = tmp_path_factory.mktemp("tfds")
    os.environ["JAXFORMERS_DATA_DIR"] = str(d)
    return str(d)
