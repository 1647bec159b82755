"""MFU arithmetic, the CPU yardsticks the benchmarks divide by, and the NSP baselines'
arithmetic."""

import os
import subprocess
import sys
import warnings

import pytest

from jaxformers import perf
from jaxformers.models.gpt2 import GPT2Config


def test_mfu_is_model_flops_over_peak_by_hand():
    # 1e12 FLOPs in 2 s on 4 chips of 1 TFLOP/s each: 1e12 / (2 * 4 * 1e12) = 12.5%.
    assert perf.mfu(1e12, 2.0, 1.0, 4) == pytest.approx(0.125)


def test_gpt2_flops_per_example_by_hand():
    # 6 x matmul params (the tied LM head counted once as a matmul, position embeddings not) +
    # 12 x layers x T x D for attention scores and values.
    c = GPT2Config.preset("124m")
    T, D, L, V = 256, c.n_embd, c.n_layer, c.vocab_size
    matmul_params = L * (D * 3 * D + D * D + 2 * D * 4 * D) + V * D
    assert c.flops_per_example(T) == pytest.approx(
        T * (6 * matmul_params + 12 * L * T * D), rel=1e-12
    )


def test_peaks_override_table_and_cpu_measurement():
    assert perf.peak_tflops(123.0) == (123.0, "given")
    peak, src = perf.peak_tflops(0.0, "float32")  # the test devices are CPUs: measured
    assert peak > 0.001 and src.startswith("measured (float32")
    assert perf.measure_read_gbps(1 << 22, reps=2) > 0.1


def test_nsp_baseline_features_by_hand():
    import importlib.util
    import os

    import numpy as np

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "nsp_baselines.py")
    spec = importlib.util.spec_from_file_location("nsp_baselines", path)
    nb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nb)
    # [CLS] 5 6 [SEP] 6 7 5 [SEP] [PAD] and [CLS] 5 [SEP] 8 [SEP] [PAD] [PAD] [PAD] [PAD]
    batch = {
        "input_ids": np.array([[[2, 5, 6, 3, 6, 7, 5, 3, 0], [2, 5, 3, 8, 3, 0, 0, 0, 0]]]),
        "segment_ids": np.array([[[0, 0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0]]]),
        "input_mask": np.array([[[1] * 8 + [0], [1] * 5 + [0] * 4]]),
        "next_sentence_labels": np.array([[0, 1]]),
    }
    s = nb.segments([batch])
    assert s["input_ids"].shape == (2, 9) and list(s["next_sentence_labels"]) == [0, 1]
    x, shared = nb.features(s, 10, np.array([5, 6, 7, 8]))
    V = 10
    assert x.shape == (2, 3 * V + 1)
    assert sorted(np.flatnonzero(x[0, :V])) == [2, 3, 5, 6] and sorted(
        np.flatnonzero(x[0, V : 2 * V])
    ) == [3, 5, 6, 7]
    assert sorted(np.flatnonzero(x[0, 2 * V : 3 * V])) == [3, 5, 6]  # [SEP], 5 and 6 in both
    assert list(shared) == [2, 0]  # 5 and 6 are shared words; row 2 shares only [SEP]
    assert x[0, -1] == pytest.approx(4 / 8) and x[1, -1] == pytest.approx(3 / 5)
    # Separable toy data: the logistic fit gets it right.
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(200, 3)).astype(np.float32)
    ys = (xs[:, 0] - xs[:, 2] > 0).astype(np.int32)
    assert np.mean(nb.fit_logistic(xs, ys, l2=0.0)(xs) == (ys == 1)) > 0.97


def test_mfu_above_one_is_invalid_and_an_unknown_peak_is_unknown():
    """The guard against impossible figures: MFU > 1 means the peak was wrong (a CPU peak
    measured on a busy machine gave 103% once), so it is printed as invalid, never as a figure."""
    from jaxformers import perf

    assert perf.describe_mfu(0.373) == "37.3%"
    assert perf.describe_mfu(1.03).startswith("invalid (103% > 100%")
    assert not perf.mfu_is_valid(1.03) and perf.mfu_is_valid(1.0) and perf.mfu_is_valid(0.0)
    assert perf.describe_mfu(perf.mfu(1e12, 1.0, 0.0, 1)) == "unknown"  # no peak known


class _Device:
    def __init__(self, kind, platform="gpu"):
        self.device_kind, self.platform = kind, platform


@pytest.mark.parametrize(
    "kind,peak",
    [("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA L4", 121.0)],
)
def test_peak_table_longer_names_first(monkeypatch, kind, peak):
    from jaxformers import perf

    monkeypatch.setattr(perf.jax, "devices", lambda: [_Device(kind)])
    assert perf.peak_tflops()[0] == peak


def test_unknown_device_warns_and_reports_mfu_unknown(monkeypatch):
    from jaxformers import perf

    monkeypatch.setattr(perf.jax, "devices", lambda: [_Device("NVIDIA GeForce RTX 4090")])
    with pytest.warns(UserWarning, match="RTX 4090.*--set peak_tflops"):
        peak, src = perf.peak_tflops()
    assert peak == 0.0 and src.startswith("unknown")
    assert perf.describe_mfu(perf.mfu(1e12, 1.0, peak, 1)) == "unknown"


_LHS = "--xla_gpu_enable_latency_hiding_scheduler"


@pytest.mark.parametrize(
    "kind",
    ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-40GB", "Tesla V100-SXM2-16GB"],
)
def test_xla_flags_chosen_for_nvidia_gpus(kind):
    assert f"{_LHS}=true" in perf.accelerator_xla_flags(kind)


@pytest.mark.parametrize("kind", ["cpu", "TPU v5 lite", "TPU v4", ""])
def test_cpus_and_tpus_get_only_the_host_flags(kind):
    assert perf.accelerator_xla_flags(kind) == list(perf.CPU_XLA_FLAGS)
    assert not any("gpu" in f for f in perf.CPU_XLA_FLAGS)


def test_user_xla_flags_are_kept_and_win():
    user = f"--xla_force_host_platform_device_count=8 {_LHS}=false"
    merged = perf.merge_xla_flags(user, [f"{_LHS}=true", "--xla_gpu_triton_gemm_any=true"])
    # The user's flags first and unchanged (their false beats our true), ours appended.
    assert merged == f"{user} --xla_gpu_triton_gemm_any=true"
    assert perf.merge_xla_flags("", ["--a=1"]) == "--a=1"


def test_apply_xla_flags_in_a_fresh_process_keeps_the_users_and_jax_accepts_them():
    """Before jax starts: the H100's flags go after the user's XLA_FLAGS, and this jaxlib knows
    every one of them (an unknown flag in XLA_FLAGS aborts the process)."""
    code = (
        "from jaxformers import perf; import os, jax, jax.numpy as jnp;"
        "added = perf.apply_xla_flags('NVIDIA H100 80GB HBM3');"
        "print(float(jax.jit(lambda x: x + 1)(jnp.ones(())))); print(added); "
        "print(os.environ['XLA_FLAGS'])"
    )
    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_fast_math=false", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    env.pop(perf.XLA_FLAGS_ENV, None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    value, added, flags = out.stdout.strip().splitlines()[-3:]
    assert value == "2.0" and f"{_LHS}=true" in added and perf.CPU_XLA_FLAGS[0] in added
    assert flags.startswith("--xla_cpu_enable_fast_math=false ") and f"{_LHS}=true" in flags
    env[perf.XLA_FLAGS_ENV] = "0"  # the levers' "without": nothing added
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-2:] == [
        "[]",
        "--xla_cpu_enable_fast_math=false",
    ]


def test_apply_xla_flags_after_the_backends_started_warns_and_sets_nothing(monkeypatch):
    import jax.numpy as jnp

    jnp.ones(()).block_until_ready()  # the backends have started
    flags = " ".join(["--xla_force_host_platform_device_count=8", *perf.CPU_XLA_FLAGS])
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.delenv("JAXFORMERS_XLA_FLAGS", raising=False)
    with pytest.warns(UserWarning, match="backends have started"):
        assert perf.apply_xla_flags("NVIDIA H100 80GB HBM3") == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert perf.apply_xla_flags("cpu") == []  # nothing to add: no warning either
    assert os.environ["XLA_FLAGS"] == flags


def test_no_gpu_looked_for_when_jax_platforms_excludes_it(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(perf.subprocess, "run", lambda *a, **k: pytest.fail("nvidia-smi ran"))
    assert perf.gpu_kind_before_backend() is None


def test_gpu_scripts_parse():
    here = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    for name in ("gpu.sh", "gpu_levers.sh"):
        r = subprocess.run(["bash", "-n", os.path.join(here, name)], capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)
