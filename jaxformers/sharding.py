"""Device mesh, the one logical-axis rules table, and host-local -> global arrays.

Model code names logical axes only; ``LOGICAL_RULES`` below is the single place that maps them to
the mesh axes ``("data", "fsdp", "tensor")``:

- data:   pure data parallelism (parameters replicated).
- fsdp:   data parallelism with parameters and optimizer state sharded on their "embed" dim
          (ZeRO-3 style; XLA all-gathers them per layer).
- tensor: Megatron-style tensor parallelism over heads, MLP width and vocabulary.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("norm", None),
    ("layers", None),
    ("relpos_buckets", None),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills one -1 entry with the devices left over; checks the product."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {shape}: entries must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"mesh shape {shape} does not divide the {num_devices} devices: the fixed axes "
                f"multiply to {known}; choose sizes whose product divides {num_devices}"
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh shape {shape} needs {math.prod(shape)} devices but {num_devices} are available; "
            f"set mesh.shape so the product is {num_devices} (use -1 for the rest)"
        )
    return shape


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over all devices (all hosts) with axes ``("data", "fsdp", "tensor")``.

    Built as ``jax.sharding.Mesh`` (Auto axis types): ``jax.make_mesh`` now defaults to Explicit
    axes, under which the logical constraints of the model code would have to be rewritten.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    try:
        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # e.g. an odd subset of devices: a plain reshape is fine for CPU and tests
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """A tree of logical PartitionSpecs -> a tree of NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


class ReplicationWarning(UserWarning):
    """A large array is replicated over a mesh axis its rules meant to split it over."""


# Arrays of at least this many elements (4 MiB in float32) are large: replicating one of their
# dims costs real memory (GPT-2 124M's token embedding has 38.6M). Smaller ones (biases, norms,
# the tests' tiny odd-sized models) are replicated without a word.
LARGE_ARRAY_ELEMENTS = 1 << 20


def fit_to_shapes(shardings: Any, abstract: Any) -> Any:
    """Drops the mesh axes of any dimension they do not divide (that dimension is replicated).

    GPT-2's vocabulary of 50257 or a head count of 5 cannot split over a tensor axis of 2; rather
    than failing inside the jitted init, such a dimension stays whole on every device. For a large
    array (``LARGE_ARRAY_ELEMENTS``) that costs memory on every device, so it warns
    (``ReplicationWarning``) naming the array and the fix: ``vocab_pad_multiple`` in the model
    config for a vocabulary, else sizes that divide the mesh axis.
    """
    replicated_dims = []

    def fit(path, sh, x):
        if not isinstance(sh, NamedSharding):
            return sh
        spec = list(sh.spec) + [None] * (len(x.shape) - len(sh.spec))
        for i, axes in enumerate(spec):
            if axes is None:
                continue
            size = math.prod(sh.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if x.shape[i] % size:
                spec[i] = None
                if math.prod(x.shape) >= LARGE_ARRAY_ELEMENTS:
                    replicated_dims.append(
                        f"{jax.tree_util.keystr(path)} {tuple(x.shape)}: dim {i} ({x.shape[i]}) "
                        f"over {axes} ({size})"
                    )
        return NamedSharding(sh.mesh, P(*spec))

    out = jax.tree_util.tree_map_with_path(fit, shardings, abstract)
    if replicated_dims:
        warnings.warn(
            "these large arrays are replicated where the sharding rules split them, since the "
            f"mesh axis does not divide the dimension: {'; '.join(replicated_dims)}. For the "
            "vocabulary set the model config's vocab_pad_multiple (e.g. 128, what "
            "jaxformers.perf.default_vocab_pad_multiple picks on accelerators: the outputs stay "
            "over vocab_size); otherwise choose sizes (heads, MLP width) the mesh axis divides",
            ReplicationWarning,
            stacklevel=2,
        )
    return out


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _path_keys(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def like_params(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for optimizer state: a leaf whose path ends with a parameter's path and whose
    shape equals that parameter's is sharded like it (Adam's moments); anything else (counts,
    Adafactor's factored row/column statistics) is replicated: small next to the parameters."""
    table = {}
    for (path, p), (_, sh) in zip(
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree_util.tree_flatten_with_path(param_shardings)[0],
    ):
        table[_path_keys(path)] = (tuple(p.shape), sh)

    def pick(path, leaf):
        keys = _path_keys(path)
        for i in range(len(keys)):
            hit = table.get(keys[i:])
            if hit is not None and hit[0] == tuple(np.shape(leaf)):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh, ndim: int, leading: int = 0) -> NamedSharding:
    """Batch dim sharded over (data, fsdp); ``leading`` unsharded dims before it (grad
    accumulation)."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES, *([None] * (ndim - leading - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(global_batch: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = data_parallel_size(mesh)
    if global_batch % n:
        raise ValueError(
            f"{what}={global_batch} does not divide over the {n} data-parallel shards of mesh "
            f"{dict(mesh.shape)}; use a multiple of {n} or change mesh.shape"
        )
    if global_batch % jax.process_count():
        raise ValueError(f"{what}={global_batch} does not divide over {jax.process_count()} hosts")


def host_to_global(local: Any, mesh: Mesh, leading: int = 0) -> Any:
    """This host's slice of a batch (numpy) -> global jax.Arrays sharded over (data, fsdp).

    Each host passes only the rows it read (its ``process_index`` share, see data.pipeline).
    """

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, leading), x)

    return jax.tree.map(put, local)
