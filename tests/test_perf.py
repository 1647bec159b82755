"""MFU arithmetic and the CPU yardsticks the benchmarks divide by."""

import pytest

from jaxformers import perf
from jaxformers.models.gpt2 import GPT2Config


def test_mfu_is_model_flops_over_peak_by_hand():
    # 1e12 FLOPs in 2 s on 4 chips of 1 TFLOP/s each: 1e12 / (2 * 4 * 1e12) = 12.5%.
    assert perf.mfu(1e12, 2.0, 1.0, 4) == pytest.approx(0.125)


def test_gpt2_flops_per_token_by_hand():
    # 6 x matmul params (the tied LM head counted once as a matmul, position embeddings not) +
    # 12 x layers x T x D for attention scores and values.
    c = GPT2Config.preset("124m")
    T, D, L, V = 256, c.n_embd, c.n_layer, c.vocab_size
    matmul_params = L * (D * 3 * D + D * D + 2 * D * 4 * D) + V * D
    assert c.flops_per_token(T) == pytest.approx(6 * matmul_params + 12 * L * T * D, rel=1e-12)


def test_peaks_override_table_and_cpu_measurement():
    assert perf.peak_tflops(123.0) == (123.0, "given")
    peak, src = perf.peak_tflops(0.0, "float32")  # the test devices are CPUs: measured
    assert peak > 0.001 and src.startswith("measured (float32")
    assert perf.measure_read_gbps(1 << 22, reps=2) > 0.1
