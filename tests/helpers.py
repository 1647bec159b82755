"""Plain helper functions shared by the test modules (fixtures live in conftest.py).

pytest puts tests/ on sys.path (rootdir-relative "prepend" import mode, no __init__.py), in the
main process and in every pytest-xdist worker alike, so test modules import these as
``from helpers import rel_err``.
"""

import functools
import os
import re

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|, in float64; the two must have the same shape."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def assert_layers_close(ours, ref, n: int, tol: float = 1e-5) -> None:
    """Two tuples of per-layer arrays (hidden states, attention probabilities): ``n`` of each,
    every one equal to ``tol`` relative (``rel_err``)."""
    assert ours is not None and len(ours) == len(ref) == n, (
        None if ours is None else len(ours),
        len(ref),
        n,
    )
    for i, (a, b) in enumerate(zip(ours, ref)):
        err = rel_err(a, b.detach().numpy() if hasattr(b, "detach") else b)
        assert err < tol, (i, err)


def assert_close(a, b, rel=1e-5):
    """Two {step: loss} dicts with the same steps and losses equal to ``rel``."""
    assert sorted(a) == sorted(b)
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=rel), (s, a[s], b[s])


def without_key_bias(params):
    """GPT-2 params with the key bias zeroed. Softmax ignores a bias added to every key, so its
    gradient is zero up to rounding, and Adam scales that rounding noise up to lr-sized steps: it
    differs between any two summation orders (sharding, accumulation) and says nothing about
    them."""
    params = jax.tree.map(np.array, params)
    params["h_0"]["attn"]["qkv"]["bias"][1] = 0.0
    return params


@functools.cache
def play_excerpt(n_chars: int) -> str:
    """The first ``n_chars`` characters of the embedded corpus's first play, as plain text."""
    from jaxformers.data import sources

    with open(sources.shakespeare_files()[0], encoding="utf-8") as f:
        return sources.play_markdown_to_text(f.read())[:n_chars]


# Fuzzing: arbitrary inputs must give a valid result or a ValueError, never a crash (hypothesis).
FUZZ = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def loop_copies(hlo_text: str, opcode: str = "copy") -> list[tuple[int, ...]]:
    """Shapes of the ``opcode`` instructions (``copy``, ``dynamic-slice``, ...) that run inside a
    while loop (a ``body=`` computation and everything it calls, fusions included) of an optimised
    HLO module's text (``jax.jit(f).lower(...).compile().as_text()``)."""
    comps, name = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"(?:ENTRY )?%(\S+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            comps[name] = []
        elif line.startswith("}"):
            name = None
        elif name:
            comps[name].append(line)
    called = r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)"
    todo = [
        b
        for lines in comps.values()
        for line in lines
        for b in re.findall(r"body=%([\w.\-]+)", line)
    ]
    seen = set()
    while todo:
        c = todo.pop()
        if c not in seen and c in comps:
            seen.add(c)
            todo += [x for line in comps[c] for x in re.findall(called, line)]
    shapes = []
    for c in seen:
        for line in comps[c]:
            m = re.search(rf"= \w+\[([\d,]*)\]\S* {re.escape(opcode)}\(", line)
            if m:
                shapes.append(tuple(int(d) for d in m.group(1).split(",") if d))
    return shapes
