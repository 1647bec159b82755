"""Model FLOPs utilisation (MFU).

    MFU = model FLOPs per step / (step time x number of devices x peak FLOP/s per device)

Model FLOPs count the matmuls a training step must do, independent of rematerialisation
(PaLM, appendix B): per token, 6 x (matmul parameters, LM head included) for forward plus
backward, plus 12 x layers x sequence length x width for the attention scores and values.
Each model config provides ``flops_per_token(seq_len)``.

Peaks are dense bfloat16 per chip from the vendors' data sheets; on a CPU the f32 or bf16 matmul
peak is measured (a 2048^3 product), since CPUs differ too much for a table.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak TFLOP/s per chip (no structured sparsity).
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
    "NVIDIA A100": 312.0,
    "NVIDIA H100": 989.0,  # SXM; the PCIe card is 756
    "NVIDIA H200": 989.0,
}


@functools.lru_cache(maxsize=8)
def measure_matmul_tflops(dtype=jnp.float32, n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` TFLOP/s of an n^3 matmul on the default device (measured once per
    process)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return 2 * n**3 / _best_seconds(f, (a, a), reps) / 1e12


@functools.lru_cache(maxsize=1)
def measure_read_gbps(nbytes: int = 1 << 28, reps: int = 5) -> float:
    """Best-of-``reps`` GB/s of summing an array of ``nbytes`` float32 (far larger than any cache):
    the memory-read bandwidth that bounds batch-1 decoding, where every weight is read per token."""
    a = jnp.ones((nbytes // 4,), jnp.float32)
    return nbytes / _best_seconds(jax.jit(jnp.sum), (a,), reps) / 1e9


def _best_seconds(f, args, reps: int) -> float:
    """The fastest of ``reps`` timed calls of ``f(*args)``, after one untimed call (compilation)."""
    f(*args).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def peak_tflops(override: float = 0.0, dtype: str = "float32") -> tuple[float, str]:
    """(peak TFLOP/s per device, where the number came from)."""
    if override > 0:
        return override, "given"
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_TFLOPS.items():
        if kind.startswith(name):
            return peak, f"table ({kind}, dense bf16)"
    if jax.devices()[0].platform == "cpu":
        return measure_matmul_tflops(jnp.dtype(dtype)), f"measured ({dtype} 2048^3 matmul)"
    raise ValueError(
        f"no peak FLOP/s known for device kind {kind!r}; "
        "pass it with --set peak_tflops=<TFLOP/s per device>"
    )


def mfu(
    flops_per_step: float, step_seconds: float, peak_tflops_per_device: float, num_devices: int
) -> float:
    return flops_per_step / (step_seconds * num_devices * peak_tflops_per_device * 1e12)
