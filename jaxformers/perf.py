"""Model FLOPs utilisation (MFU).

    MFU = model FLOPs per step / (step time x number of devices x peak FLOP/s per device)

Model FLOPs count the matmuls a training step must do, independent of rematerialisation
(PaLM, appendix B): per token, 6 x (matmul parameters, LM head included) for forward plus
backward, plus 12 x layers x sequence length x width for the attention scores and values.
Each model config provides ``flops_per_token(seq_len)``.

Peaks are dense bfloat16 per chip from the vendors' data sheets; on a CPU the f32 or bf16 matmul
peak is measured (a 2048^3 product), since CPUs differ too much for a table. A measured peak is the
best of measurements taken before and after the workload (``best_measured``): one taken while the
machine was busy is too low and made an MFU of 103% once. An MFU above 1 is therefore never a
figure: ``describe_mfu`` prints it as invalid, and an unknown device reports MFU as unknown
(``peak_tflops`` returns 0) instead of stopping the run.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import time
import warnings

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
    # Longer names first: "NVIDIA H100 PCIe" must not match the SXM entry.
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H100": 989.0,  # SXM
    "NVIDIA H200": 989.0,
    "NVIDIA L40S": 362.0,
    "NVIDIA L4": 121.0,
    "NVIDIA A10": 125.0,
    "Tesla V100": 125.0,  # fp16 tensor cores (no bf16 on V100)
}


@functools.lru_cache(maxsize=8)
def measure_matmul_tflops(dtype=jnp.float32, n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` TFLOP/s of an n^3 matmul on the default device (measured once per
    process; ``best_measured`` measures again)."""
    return _matmul_tflops(jnp.dtype(dtype), n, reps)


def _matmul_tflops(dtype, n: int, reps: int) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return 2 * n**3 / _best_seconds(f, (a, a), reps) / 1e12


def best_measured(peak: float, dtype: str = "float32") -> float:
    """The larger of ``peak`` (measured before the workload) and a fresh measurement after it."""
    return max(peak, _matmul_tflops(jnp.dtype(dtype), 2048, 5))


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


# Vocabulary padding (``ModelConfig.vocab_pad_multiple``) per platform, the one place it is chosen.
# On GPUs and TPUs 128 rows fill the matmul tiles of the LM head (cuBLAS/MXU) and split over any
# tensor axis up to 128. Measured on an H100 (benchmarks/results/gpt2-levers-h100.txt, GPT-2 124M
# 16 x 1024 bf16, vocabulary 50304 against 50257): 305k against 268k tokens/s with scan, 429k
# against 359k without. On a CPU nothing was measured to gain, and 1 keeps existing shapes.
VOCAB_PAD_MULTIPLE = {"gpu": 128, "tpu": 128, "cpu": 1}


def default_vocab_pad_multiple(platform: str | None = None) -> int:
    """The ``vocab_pad_multiple`` that suits ``platform`` ("gpu", "tpu", "cpu"; None: JAX's
    default backend, which initialises it). Used by ``benchmarks/run.py --size gpu``; the
    experiments sized for accelerators take ``VOCAB_PAD_MULTIPLE["gpu"]`` as a constant (reading
    the backend in ``get_config`` would start it before ``jax.distributed.initialize``, and a
    checkpoint's shapes would depend on the machine its config was read on)."""
    if platform is None:
        platform = jax.default_backend()
    return VOCAB_PAD_MULTIPLE.get(platform, 128)


MEASURED = "measured"


def peak_tflops(override: float = 0.0, dtype: str = "float32") -> tuple[float, str]:
    """(peak TFLOP/s per device, where the number came from); (0.0, "unknown ...") with a warning
    for a device kind the table lacks: MFU is then unknown, the run goes on."""
    if override > 0:
        return override, "given"
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_TFLOPS.items():
        if kind.startswith(name):
            return peak, f"table ({kind}, dense bf16)"
    if jax.devices()[0].platform == "cpu":
        return measure_matmul_tflops(jnp.dtype(dtype)), f"{MEASURED} ({dtype} 2048^3 matmul)"
    warnings.warn(
        f"no peak FLOP/s known for device kind {kind!r}: MFU is reported as unknown; "
        "give it with --set peak_tflops=<dense TFLOP/s per device>",
        stacklevel=2,
    )
    return 0.0, f"unknown ({kind})"


def mfu(
    flops_per_step: float, step_seconds: float, peak_tflops_per_device: float, num_devices: int
) -> float:
    """The MFU, or NaN when the peak is unknown (0)."""
    if peak_tflops_per_device <= 0:
        return float("nan")
    return flops_per_step / (step_seconds * num_devices * peak_tflops_per_device * 1e12)


def mfu_is_valid(value: float) -> bool:
    """An MFU is a figure only in (0, 1]: above 1 the peak was wrong (e.g. measured on a busy
    machine), NaN means the peak is unknown."""
    return math.isfinite(value) and 0.0 <= value <= 1.0


def describe_mfu(value: float) -> str:
    """``"37.3%"``, ``"unknown"`` (no peak) or ``"invalid (103%: the peak is too low)"``."""
    if math.isnan(value):
        return "unknown"
    if not mfu_is_valid(value):
        return f"invalid ({value:.0%} > 100%: the peak is too low)"
    return f"{value:.1%}"


# ------------------------------------------------------------------------- XLA flags per device

# NVIDIA GPUs: the latency-hiding scheduler orders the program so that collectives and async
# copies overlap compute (NVIDIA's JAX images set it by default; XLA's default is off). The
# highest-priority async stream lets those collectives run beside compute kernels instead of
# queuing behind them. Both matter most across devices; benchmarks/gpu_levers.sh measures a
# single GPU with and without them (the ``no_xla_flags`` lever) and candidates not yet chosen.
_NVIDIA_GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
)
# Every machine, for what runs on its CPU (these flags touch nothing compiled for an
# accelerator): copy insertion with the region-based live-range analysis proves that a KV cache
# updated inside the decode loop can be written in place. Without it XLA copies the caches
# inside the loop (GPT-2 124M, batch 1: 60 cache-sized copies per token; ``layers.cached_attention``
# says why).
CPU_XLA_FLAGS = ("--xla_cpu_copy_insertion_use_region_analysis=true",)
# Set to 0 (or "none") to start without the flags above (what a lever measures against).
XLA_FLAGS_ENV = "JAXFORMERS_XLA_FLAGS"


def accelerator_xla_flags(device_kind: str) -> list[str]:
    """The XLA flags chosen for ``device_kind`` (jax's ``device_kind``, which for CUDA devices is
    also nvidia-smi's name): the one place that chooses them. Every kind gets ``CPU_XLA_FLAGS``;
    NVIDIA GPUs also get the GPU flags above (TPU compiler flags travel in ``LIBTPU_INIT_ARGS``,
    not chosen here)."""
    kind = device_kind.strip()
    if kind.startswith(("NVIDIA", "Tesla", "Quadro")):
        return [*CPU_XLA_FLAGS, *_NVIDIA_GPU_FLAGS]
    return list(CPU_XLA_FLAGS)


def merge_xla_flags(current: str, flags: list[str]) -> str:
    """``current`` (XLA_FLAGS as the user set it) with ``flags`` appended, except those whose
    name the user already set: the user's value wins, and nothing of theirs is dropped."""
    return " ".join([current.strip(), *_flags_not_in(current, flags)]).strip()


def _flags_not_in(current: str, flags: list[str]) -> list[str]:
    names = {f.split("=", 1)[0] for f in current.split()}
    return [f for f in flags if f.split("=", 1)[0] not in names]


def gpu_kind_before_backend() -> str | None:
    """The first visible NVIDIA GPU's name from nvidia-smi, without starting jax's backends
    (XLA reads XLA_FLAGS once, when the first backend starts); None without a CUDA GPU or when
    JAX_PLATFORMS leaves GPUs out."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return None
    cmd = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.isdigit():
        cmd += ["-i", first]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


def apply_xla_flags(device_kind: str | None = None) -> list[str]:
    """Adds ``accelerator_xla_flags`` for this machine's accelerator (``device_kind``, or found
    before jax starts) to the XLA_FLAGS environment variable, after the user's own; returns the
    flags added. Call before anything touches a device: the CLI and ``launch.initialize`` do,
    and so do the benchmarks. JAXFORMERS_XLA_FLAGS=0 turns it off."""
    if os.environ.get(XLA_FLAGS_ENV, "1").strip().lower() in ("0", "none", "false", "off"):
        return []
    from jax._src import xla_bridge  # no public query whether the backends have started

    kind = device_kind if device_kind is not None else (gpu_kind_before_backend() or "cpu")
    current = os.environ.get("XLA_FLAGS", "")
    added = _flags_not_in(current, accelerator_xla_flags(kind))
    if not added:
        return []
    if xla_bridge.backends_are_initialized():
        warnings.warn(
            f"jax's backends have started: XLA flags {added} would be ignored, so they are not "
            "set; call perf.apply_xla_flags() before the first jax computation",
            stacklevel=2,
        )
        return []
    os.environ["XLA_FLAGS"] = merge_xla_flags(current, added)
    return added
