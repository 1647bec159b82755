"""Compiles train steps on 8 CPU devices in a fresh process and prints XLA's own warnings.

Run by tests/test_sharding.py as ``python tests/xla_warnings.py CASES_JSON``: the SPMD
partitioner reports an involuntary full rematerialization only as a C++ log line on stderr, at
compile time. A fresh process is the robust way to see it: the tests' own process hides C++
warnings (conftest sets TF_CPP_MIN_LOG_LEVEL=2, read once at start-up) and would skip the
compilation altogether on a hit in the persistent compilation cache. Each case's log is closed by
a marker line, so the test knows which compile a warning came from. The first case is a control
that must warn (a table looked up in its fsdp-split layout, what models/layers.Embed did before
it gathered the table): a test reading this output cannot pass because the warning stopped
being printed or was renamed.

CASES_JSON: a list of [family, config fields, mesh shape].
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # XLA's warnings are what this script is for

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxformers import models, sharding, tasks, train  # noqa: E402

MARKER = "=== end of case"
# Short sequence lengths per family's default task: (T,), (T, P) masked LM, (T, S) span corruption.
LENGTHS = {"gpt2": (16,), "bert": (16, 4), "t5": (16, 8)}


def end(name: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"{MARKER} {name}", file=sys.stderr, flush=True)


def control() -> None:
    mesh = sharding.make_mesh((2, 2, 2))
    table = NamedSharding(mesh, P("tensor", "fsdp"))
    ids = NamedSharding(mesh, P(sharding.BATCH_AXES, None))

    def f(t, i):
        x = jnp.take(t, i, axis=0)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(sharding.BATCH_AXES)))

    jax.jit(f, in_shardings=(table, ids)).lower(
        jax.ShapeDtypeStruct((64, 32), jnp.float32), jax.ShapeDtypeStruct((8, 16), jnp.int32)
    ).compile()


def train_step_case(family_name: str, fields: dict, mesh_shape) -> None:
    """Compiles ``train.train_step`` (one microbatch of 8) as the Trainer jits it."""
    fam = models.get(family_name)
    config = fam.config_class(**fields)
    model = fam.build(config)
    task = tasks.get(fam.default_task)()
    mesh = sharding.make_mesh(tuple(mesh_shape))
    ex = task.random_examples(np.random.default_rng(0), config, 8, *LENGTHS[family_name])
    s = train.create_train_state(model, fam.example_inputs(config), optax.adamw(1e-3), mesh, task)
    batch_sh = {k: sharding.batch_sharding(mesh, v.ndim + 1, leading=1) for k, v in ex.items()}
    batch = {
        k: jax.ShapeDtypeStruct((1, *v.shape), v.dtype, sharding=batch_sh[k]) for k, v in ex.items()
    }
    state = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), s.abstract, s.shardings
    )
    step = jax.jit(
        train.train_step,
        in_shardings=(s.shardings, batch_sh, None),
        out_shardings=(s.shardings, None),
        donate_argnums=0,
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        step.lower(state, batch, jax.random.PRNGKey(0)).compile()


if __name__ == "__main__":
    jax.config.update("jax_enable_compilation_cache", False)
    control()
    end("control")
    for family_name, fields, mesh_shape in json.loads(sys.argv[1]):
        train_step_case(family_name, fields, mesh_shape)
        end(json.dumps([family_name, fields, mesh_shape]))
