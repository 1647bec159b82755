"""Decoding a model with scanned layers (``scan_layers=True``, every experiment's setting) against
the same weights unscanned, in one process: run.py's decode workloads (random weights), the two
``decoding.generate`` calls alternated, median of ``--rounds``; the tokens must be identical.

``generate`` unstacks a scanned model's params once per call and runs its layers unrolled
(``decoding._unrolled``); the ratio shows what that copy costs. Prints one JSON object.

    python benchmarks/scanned_decode.py --model gpt2 --batch 1
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..")]
from jaxformers import perf  # noqa: E402

perf.apply_xla_flags()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import run as bench  # noqa: E402  (the decode workloads of run.py)

from jaxformers import decoding, models, train  # noqa: E402


def scanned_copy(model, params):
    """The same model with ``scan_layers=True`` and ``params`` stacked to its layout."""
    c = dataclasses.replace(model.config, scan_layers=True)
    scanned = model.clone(config=c)
    inputs = models.of_config(c).example_inputs(c)
    shapes = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(0), *inputs))["params"]
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.meta.unbox(shapes))
    stacked, fresh = train.merge_pretrained(target, jax.device_get(params))
    assert not fresh, fresh
    return scanned, jax.device_put(stacked)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=sorted(bench.DECODE), default="gpt2")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    load_start = os.getloadavg()
    model, params, ids, new = bench._decode_setup(a.model, a.batch)
    runs = {"unscanned": (model, params), "scanned": scanned_copy(model, params)}
    out = {}
    for name, (m, w) in runs.items():  # compile, and check the tokens
        out[name] = np.asarray(decoding.generate(m, w, ids, max_new_tokens=new))
    np.testing.assert_array_equal(out["scanned"], out["unscanned"])
    seconds = {name: [] for name in runs}
    for _ in range(a.rounds):
        for name, (m, w) in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(decoding.generate(m, w, ids, max_new_tokens=new))
            seconds[name].append(time.perf_counter() - t)
    tps = {name: a.batch * new / statistics.median(s) for name, s in seconds.items()}
    print(
        json.dumps(
            {
                "model": a.model,
                "batch": a.batch,
                "prompt": ids.shape[1],
                "new_tokens": new,
                "new_tokens_per_second": tps,
                "ratio_scanned_over_unscanned": tps["scanned"] / tps["unscanned"],
                "seconds": seconds,
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg(),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            }
        )
    )


if __name__ == "__main__":
    main()
