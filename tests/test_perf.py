"""MFU arithmetic, the CPU yardsticks the benchmarks divide by, and the NSP baselines'
arithmetic."""

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
