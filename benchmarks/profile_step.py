"""Where a CPU train step's time goes: run.py's train workload profiled with ``jax.profiler``, its
XLA operations summed by kind (the trace's op names without their numeric suffix: ``ynn_fusion``
are YNNPACK's dot fusions, ``dot`` XLA's own, ``multiply_add_fusion`` and the like elementwise
loops), per step, with XLA's cost analysis of the compiled step (FLOPs and bytes accessed).

    python benchmarks/profile_step.py --model t5 [--steps 3] [--top 20]

Times are thread time summed over the CPU's threads (they exceed the step's wall time when
operations run in parallel). Prints one JSON object. ``--peer-trace DIR`` summarises instead a
perfetto trace another program wrote (``jax.profiler.trace(DIR, create_perfetto_trace=True)``
around ``--steps`` steps), e.g. transformers 4.57's Flax step in ../shared/peers' environment,
so that both are read the same way.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..")]
from jaxformers import perf  # noqa: E402

perf.apply_xla_flags()

# The profiler's own spans and the executor's, not XLA operations.
_NOT_OPS = ("Thunk", "$", "Slinky", "end: ", "PjitFunction", "CommonPjRt")


def summarize(trace_dir: str, steps: int, top: int) -> dict:
    """Thread time per op kind (ms per step) from the newest perfetto trace under ``trace_dir``."""
    path = sorted(glob.glob(f"{trace_dir}/**/*.json.gz", recursive=True))[-1]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ms, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(_NOT_OPS):
            kind = re.sub(r"[.\d]+$", "", e["name"])
            ms[kind] += e["dur"] / 1e3 / steps
            count[kind] += 1
    total = sum(ms.values())
    return {
        "thread_ms_per_step": total,
        "by_kind": [
            {"kind": k, "ms": round(v, 1), "share": round(v / total, 4), "ops": count[k] // steps}
            for k, v in ms.most_common(top)
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=["gpt2", "bert", "t5"], default="t5")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--peer-trace", default=None)
    a = p.parse_args()
    if a.peer_trace:
        print(json.dumps(summarize(a.peer_trace, a.steps, a.top)))
        return

    import jax
    import jax.numpy as jnp
    import optax
    import run as bench

    from jaxformers import sharding
    from jaxformers.train import create_train_state, decay_mask, train_step

    w = bench.WORKLOADS[(a.model, "cpu")]
    model, task, data = bench.build(a.model, "cpu", w)
    tx = optax.adamw(1e-4, weight_decay=0.01, mask=decay_mask)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    state = create_train_state(model, data.dummy_inputs(), tx, mesh, task, lambda s: 1e-4).init()
    batch = jax.tree.map(jnp.asarray, data.train_batch(0))
    rng = jax.random.PRNGKey(1)
    step = jax.jit(train_step, donate_argnums=0)
    cost = step.lower(state, batch, rng).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost

    def run(n):
        nonlocal state
        t = time.perf_counter()
        for _ in range(n):
            state, m = step(state, batch, rng)
            jax.block_until_ready(m)
        return (time.perf_counter() - t) / n

    run(2)  # compiled, warm
    wall = run(a.steps)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            run(a.steps)
        out = summarize(d, a.steps, a.top)
    print(
        json.dumps(
            {
                "workload": f"{a.model}-train",
                **w,
                "jax": jax.__version__,
                "step_seconds_unprofiled": wall,
                "cost_analysis_flops": cost.get("flops"),
                "cost_analysis_bytes_accessed": cost.get("bytes accessed"),
                "model_flops_per_step": data.flops_per_example(model.config) * w["batch"],
                "loadavg_before_trace": load,
                **out,
            }
        )
    )


if __name__ == "__main__":
    main()
