"""Compile seconds of the GPT-2 train step against depth: 124M / 355M / 774M / 1.5B (12 / 24 /
36 / 48 layers), with the blocks under ``nn.scan`` (``scan_layers=True``) and unrolled.

    python benchmarks/compile_depth.py --json [--size cpu|gpu] [--presets 124m 355m ...]
        [--repeats 3] [--timeout 900] [--budget 3600] [--lock /tmp/heavy.lock]
        [--what train|decode]

``--what decode`` compiles ``decoding.generate``'s loop instead (run.py's GPT-2 decode workload:
batch 1, a 32-token prompt, 128 greedy tokens), lowered from abstract params. A scanned model
decodes unrolled (``decoding._unrolled``), so both modes' decode loops hold every layer; the
scanned mode also reports the seconds to lower and compile the program that unstacks its params.

The step is the one benchmarks/run.py times (its model, task, AdamW and ``train_step``, jitted with
the state donated), lowered from abstract inputs: the state from ``create_train_state(...)
.abstract`` (``jax.eval_shape``) and ``jax.ShapeDtypeStruct``s for the batch, so no parameter
exists and a 1.5B step compiles anywhere. Reported per point, median over ``--repeats``:
``lower_seconds`` (tracing the step and lowering it to StableHLO) and ``compile_seconds``
(``lowered.compile()``: XLA alone), with XLA's memory analysis of the compiled step (the bytes of
its arguments, outputs and temporaries: what the step would need on the device).

Each repeat runs in a fresh process, so neither jax's tracing caches nor a compilation cache
carry over between repeats. A repeat that outlives ``--timeout`` is killed and its point recorded
as skipped with the reason; deeper presets of the same mode are then skipped too (they only take
longer), and so is whatever would start after ``--budget`` seconds. ``--lock`` takes an flock on
that file around each repeat (a shared machine); the load average is recorded before and after
each point and for the whole run.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("124m", "355m", "774m", "1558m")


def one_decode_point(preset: str, scan: bool, size: str) -> dict:
    """Lowers and compiles one ``generate`` loop in this process; returns its figures."""
    import flax.linen as nn
    import jax
    import numpy as np

    jax.config.update("jax_enable_compilation_cache", False)
    sys.path.insert(0, HERE)
    import run as bench

    from jaxformers import decoding, models

    d = bench.DECODE["gpt2"]
    model, _, _ = bench.build("gpt2", size, dict(bench.WORKLOADS[("gpt2", size)], preset=preset),
                              scan_layers=scan)  # fmt: skip
    family = models.of_config(model.config)
    params = nn.meta.unbox(
        jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), *family.example_inputs(model.config))
        )
    )["params"]
    ids = np.random.default_rng(0).integers(*d["ids"], (1, d["prompt"]))
    # A scanned model's params are unstacked by a program of their own before the loop.
    flat, unstack = decoding._unrolled(model)
    unstack_s = None
    if unstack is not None:
        t = time.perf_counter()
        unstack.lower(params).compile()
        unstack_s = time.perf_counter() - t
        model, params = flat, jax.eval_shape(unstack, params)
    # generate() passes the params only to its compiled loop: lowered here from their shapes.
    compiled_loop, lowered = decoding._compiled, {}

    class Lowered(Exception):
        pass

    def lower_only(model, spec):
        loop = compiled_loop(model, spec)

        def lower(*args):
            t = time.perf_counter()
            lowered["lowered"] = loop.lower(*args)
            lowered["lower_seconds"] = time.perf_counter() - t
            raise Lowered

        return lower

    decoding._compiled = lower_only
    try:
        decoding.generate(model, params, ids, max_new_tokens=d["new"])
    except Lowered:
        pass
    finally:
        decoding._compiled = compiled_loop
    t = time.perf_counter()
    compiled = lowered["lowered"].compile()
    compile_s = time.perf_counter() - t
    return {
        "lower_seconds": lowered["lower_seconds"],
        "compile_seconds": compile_s,
        "unstack_lower_and_compile_seconds": unstack_s,
        "params": sum(x.size for x in jax.tree.leaves(params)),
        "n_layer": model.config.n_layer,
        "batch": 1,
        "prompt": d["prompt"],
        "new_tokens": d["new"],
        "dtype": model.config.dtype,
        "device": jax.devices()[0].device_kind,
        "compiled_memory_bytes": bench.memory_analysis_bytes(compiled),
    }


def one_point(preset: str, scan: bool, size: str, batch: int | None, seq: int | None, dtype):
    """Lowers and compiles one train step in this process; returns its figures."""
    import jax
    import optax

    jax.config.update("jax_enable_compilation_cache", False)  # a compile, not a cache read
    sys.path.insert(0, HERE)
    import run as bench

    from jaxformers import sharding
    from jaxformers.train import create_train_state, decay_mask, train_step

    w = dict(bench.WORKLOADS[("gpt2", size)], preset=preset)
    if batch:
        w["batch"] = batch
    if seq:
        w["lengths"] = (seq,)
    if dtype:
        w["dtype"] = dtype
    model, task, data = bench.build("gpt2", size, w, scan_layers=scan)
    tx = optax.adamw(1e-4, weight_decay=0.01, mask=decay_mask)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    abstract = create_train_state(model, data.dummy_inputs(), tx, mesh, task, lambda s: 1e-4)
    abstract = abstract.abstract
    batch_ = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jax.dtypes.canonicalize_dtype(x.dtype)),
        data.train_batch(0),
    )
    rng = jax.eval_shape(lambda: jax.random.PRNGKey(1))
    t = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=0).lower(abstract, batch_, rng)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    return {
        "lower_seconds": lower_s,
        "compile_seconds": compile_s,
        "params": sum(x.size for x in jax.tree.leaves(abstract.params)),
        "n_layer": model.config.n_layer,
        "batch": w["batch"],
        "seq": w["lengths"][0],
        "dtype": w["dtype"],
        "device": jax.devices()[0].device_kind,
        "compiled_memory_bytes": bench.memory_analysis_bytes(compiled),
    }


class _Lock:
    """An exclusive flock on ``path`` (flock(1)'s lock: shared with ``flock PATH cmd``)."""

    def __init__(self, path: str | None):
        self.path = path

    def __enter__(self):
        if self.path:
            self.f = open(self.path, "a")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.path:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


def measure(a) -> dict:
    start, load_start = time.time(), os.getloadavg()
    points = []
    for scan in (True, False):
        too_slow = None  # the preset that exceeded the timeout in this mode
        for preset in a.presets:
            point = {"preset": preset, "scan_layers": scan}
            points.append(point)
            if too_slow:
                point["skipped"] = f"{too_slow} already exceeded the {a.timeout:.0f} s timeout"
                continue
            runs, loads = [], [os.getloadavg()]
            for _ in range(a.repeats):
                if time.time() - start > a.budget:
                    point["skipped" if not runs else "note"] = (
                        f"the run's {a.budget:.0f} s budget was spent after {len(runs)} of "
                        f"{a.repeats} repeats"
                    )
                    break
                cmd = [sys.executable, __file__, "--point", preset, "--scan", str(int(scan))]
                cmd += ["--size", a.size, "--what", a.what] + _shape_args(a)
                with _Lock(a.lock):
                    loads.append(os.getloadavg())
                    try:
                        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                    except subprocess.TimeoutExpired:
                        point["skipped" if not runs else "note"] = (
                            f"a repeat took over the {a.timeout:.0f} s timeout"
                        )
                        too_slow = preset
                        break
                    loads.append(os.getloadavg())
                if p.returncode != 0:
                    point["skipped"] = f"failed: {p.stderr.strip().splitlines()[-1:]}"
                    break
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
                print(f"{preset} scan={scan}: {runs[-1]}", file=sys.stderr, flush=True)
            if runs:
                point.update({k: v for k, v in runs[0].items() if not k.endswith("seconds")})
                for k in [k for k, v in runs[0].items() if k.endswith("seconds") and v is not None]:
                    point[k] = statistics.median(r[k] for r in runs)
                    point[k + "_all"] = [r[k] for r in runs]
                point["repeats"] = len(runs)
            point["loadavg_1min_during"] = [round(x[0], 2) for x in loads]
    from importlib.metadata import version

    return {
        "workload": (
            "gpt2 train_step compile against depth (abstract inputs, nothing allocated)"
            if a.what == "train"
            else "gpt2 decoding.generate loop compile against depth (batch 1, prompt 32, 128 "
            "greedy tokens; abstract params, nothing allocated)"
        ),
        "jax": version("jax"),
        "size": a.size,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "timeout_seconds": a.timeout,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "wall_seconds": time.time() - start,
        "results": points,
    }


def _shape_args(a) -> list[str]:
    out = []
    for name in ("batch", "seq", "dtype"):
        if getattr(a, name):
            out += [f"--{name}", str(getattr(a, name))]
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", choices=["cpu", "gpu", "tiny"], default=None, help="default: gpu on a GPU"
    )
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per repeat")
    p.add_argument("--budget", type=float, default=3600.0, help="seconds for the whole run")
    p.add_argument("--batch", type=int, default=None, help="default: the size's GPT-2 workload")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--lock", default=None, help="flock this file around each repeat")
    p.add_argument("--what", choices=["train", "decode"], default="train")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--point", choices=PRESETS, help=argparse.SUPPRESS)  # one repeat (child)
    p.add_argument("--scan", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    sys.path.insert(0, os.path.join(HERE, ".."))
    from jaxformers import perf

    # The accelerator's XLA flags, as run.py and the CLI set them, before any jax backend starts;
    # the repeats' processes inherit them.
    perf.apply_xla_flags()
    if a.size is None:
        a.size = "gpu" if perf.gpu_kind_before_backend() else "cpu"
    if a.point:
        if a.what == "decode":
            print(json.dumps(one_decode_point(a.point, bool(a.scan), a.size)))
        else:
            print(json.dumps(one_point(a.point, bool(a.scan), a.size, a.batch, a.seq, a.dtype)))
        return
    print(json.dumps(measure(a), indent=None if a.json else 2))


if __name__ == "__main__":
    main()
