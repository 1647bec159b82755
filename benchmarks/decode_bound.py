"""What bounds GPT-2 124M greedy decoding at batch 1 on a CPU: one process times, alternately,
``decoding.generate`` on run.py's GPT-2 decode workload (prompt 32 + 128 new tokens) and a loop
of the same step's weight matrix-vector products alone (12 x (qkv, attention out, MLP in, MLP
out) and the tied LM head, each layer its own buffers, one step per new token), against the read
bandwidth ``perf.measure_read_gbps`` measures (the bound ``run.py --what decode`` prints). Prints
one JSON object.

    python benchmarks/decode_bound.py
"""

import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..")]
from jaxformers import perf  # noqa: E402

perf.apply_xla_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import run as bench  # noqa: E402  (the decode workloads of run.py)

from jaxformers import decoding  # noqa: E402


def matvecs_alone(c, steps: int):
    D, V, L = c.n_embd, c.vocab_size, c.n_layer
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 4 * L + 1))
    shapes = dict(qkv=(D, 3 * D), proj=(D, D), fc=(D, 4 * D), out=(4 * D, D))
    w = {n: [jax.random.normal(next(keys), s) * 0.02 for _ in range(L)] for n, s in shapes.items()}
    w["wte"] = jax.random.normal(next(keys), (V, D)) * 0.02

    @jax.jit
    def run(w, x):
        def step(i, x):
            for layer in range(L):
                a = x @ w["qkv"][layer]
                x = x + a[:, :D] @ w["proj"][layer]
                x = x + jnp.tanh(x @ w["fc"][layer]) @ w["out"][layer]
            token = jnp.argmax((x @ w["wte"].T)[0])
            return x * 0.5 + w["wte"][token][None] * 0.01  # the next step depends on the choice

        return jax.lax.fori_loop(0, steps, step, x)

    x = jnp.full((1, D), 0.01)
    return lambda: run(w, x), sum(a.nbytes for a in jax.tree.leaves(w))


def main():
    model, params, ids, new = bench._decode_setup("gpt2", 1)
    fns = {"generate": lambda: decoding.generate(model, params, ids, max_new_tokens=new)}
    fns["matvecs_alone"], nbytes = matvecs_alone(model.config, new)
    times = {k: [] for k in fns}
    for f in fns.values():
        jax.block_until_ready(f())
    for _ in range(5):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t)
    gbps = perf.measure_read_gbps()
    bound = gbps * 1e9 / nbytes
    ms = {k: statistics.median(v) / new * 1e3 for k, v in times.items()}
    print(
        json.dumps(
            {
                "weights_bytes": nbytes,
                "memory_read_gbps": gbps,
                "bandwidth_bound_steps_per_second": bound,
                "ms_per_step": ms,  # generate's includes its prefill of 31 prompt tokens
                "fraction_of_bound": {k: 1e3 / v / bound for k, v in ms.items()},
                "generate_ms_beyond_matvecs": ms["generate"] - ms["matvecs_alone"],
                "loadavg": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
