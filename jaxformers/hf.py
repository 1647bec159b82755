"""Hugging Face format: a directory with ``config.json`` and ``model.safetensors``.

``resolve`` turns a Hugging Face Hub id (``owner/name`` or ``name``, ``@revision`` optional) into
such a directory, fetched with huggingface_hub into its cache; a path that exists always wins.

``from_pretrained`` picks the family from ``model_type`` (bert | gpt2 | t5) and returns
``(model, params)``; ``save_pretrained`` writes a directory that transformers' ``from_pretrained``
loads unchanged. Weights are read with safetensors only: pickled ``pytorch_model.bin`` files are
refused, since unpickling runs arbitrary code.

Each family's model file provides ``config_from_hf``, ``config_to_hf``, ``model_from_config`` and
``hf_weights(config)``: its checkpoint as data, one ``layers.HFWeight`` (transformers' name, our
params path, layout, load-only aliases) per tensor. ``params_from_hf`` and ``params_to_hf`` below
are the one converter that reads such a table in both directions.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxformers import models
from jaxformers.models import layers

# ---- one tensor: our array <-> transformers' array, by the table's layout ----


def _layout(layout: str) -> tuple[str, int]:
    kind, _, k = layout.partition(" ")
    if kind in ("same", "flat") and not k:
        return kind, 0
    if kind in ("linear", "conv1d") and k.isdigit():
        return kind, int(k)
    raise ValueError(
        f"unknown HF weight layout {layout!r}: 'same', 'flat', 'linear K' or 'conv1d K'"
    )


def _hf_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The shape transformers stores for one of our arrays of ``shape``."""
    kind, k = _layout(layout)
    if kind == "same":
        return tuple(shape)
    if kind == "flat":
        return (math.prod(shape),)
    inputs, outputs = math.prod(shape[:k]), math.prod(shape[k:])
    return (outputs, inputs) if kind == "linear" else (inputs, outputs)


def _to_hf(x: Any, layout: str) -> np.ndarray:
    """Our array -> transformers' (torch Linear [out, in]; Conv1D [in, out]; flat 1-D)."""
    kind, k = _layout(layout)
    x = np.asarray(x)
    if kind == "same":
        return x
    if kind == "flat":
        return x.reshape(-1)
    x = x.reshape(math.prod(x.shape[:k]), -1)
    return x.T if kind == "linear" else x


def _from_hf(
    x: np.ndarray, layout: str, shape: tuple[int, ...], name: str = "tensor"
) -> np.ndarray:
    """transformers' array -> ours of ``shape``; ValueError when its shape does not fit."""
    expected = _hf_shape(shape, layout)
    if tuple(x.shape) != expected:
        raise ValueError(
            f"weight {name!r} has shape {tuple(x.shape)}, but config.json implies {expected}; "
            "the checkpoint does not match its config.json"
        )
    return (x.T if _layout(layout)[0] == "linear" else x).reshape(shape)


# ---- the converter: a family's table (``hf_weights``) read in either direction ----


def _param_shapes(config: Any) -> dict:
    """Our params' shapes for ``config`` (an abstract init: nothing is computed)."""
    fam = models.of_config(config)
    model = fam.build(config)
    variables = jax.eval_shape(model.init, jax.random.key(0), *fam.example_inputs(config))
    return nn.meta.unbox(variables["params"])


def _paths(tree: Any) -> set[tuple[str, ...]]:
    return {tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _vocab_rows(shape: tuple[int, ...], w: layers.HFWeight, rows: int) -> tuple[int, ...]:
    """``shape`` with ``rows`` on the weight's vocabulary axis (if it has one)."""
    if w.vocab_axis is None:
        return tuple(shape)
    return tuple(rows if i == w.vocab_axis else n for i, n in enumerate(shape))


def _pad_vocab(x: np.ndarray, w: layers.HFWeight, shape: tuple[int, ...]) -> np.ndarray:
    """transformers' vocabulary rows -> our ``shape``: the padding rows
    (``vocab_pad_multiple``) are zeros; they never reach an output."""
    if w.vocab_axis is None or x.shape[w.vocab_axis] == shape[w.vocab_axis]:
        return x
    pad = [(0, 0)] * x.ndim
    pad[w.vocab_axis] = (0, shape[w.vocab_axis] - x.shape[w.vocab_axis])
    return np.pad(x, pad)


def params_from_hf(tensors: dict[str, np.ndarray], config: Any) -> dict:
    """transformers' tensors -> our params for ``config`` (its head, ``scan_layers`` layout).

    Every tensor the family's table names must be present (under its name or an alias); other
    tensors (buffers, tied copies) are ignored. Raises ValueError naming a missing or misshapen
    weight.
    """
    fam = models.of_config(config)
    shapes = _param_shapes(config)
    leaves = []
    for w in fam.module.hf_weights(config):
        name = next((n for n in (w.name, *w.aliases) if n in tensors), None)
        if name is None:
            raise ValueError(
                f"weight {w.name!r} is missing; the checkpoint does not match its config.json"
            )
        keys, index = layers.layer_path(w.path, config.scan_layers)
        try:
            shape = functools.reduce(lambda d, k: d[k], keys, shapes).shape
        except (KeyError, TypeError, AttributeError):
            raise RuntimeError(
                f"{fam.name}'s hf_weights names {w.path} ({w.name}), which the model does not have"
            ) from None
        shape = shape if index is None else shape[1:]
        x = _from_hf(tensors[name], w.layout, _vocab_rows(shape, w, config.vocab_size), name)
        leaves.append((w.path, _pad_vocab(x, w, shape)))
    params = layers.params_from_leaves(leaves, config.scan_layers)
    if _paths(params) != _paths(shapes):
        raise RuntimeError(
            f"{fam.name}'s hf_weights does not cover the model's params: "
            f"{sorted(_paths(shapes) ^ _paths(params))}"
        )
    for (path, x), s in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(shapes)
    ):
        if x.shape != s.shape:  # a scanned stack with the wrong number of layers
            raise RuntimeError(
                f"{fam.name}'s hf_weights gives {jax.tree_util.keystr(path)} the shape "
                f"{x.shape}, the model {s.shape}"
            )
    return params


def params_to_hf(params: Any, config: Any) -> dict[str, np.ndarray]:
    """Our params (or any tree of their structure, e.g. gradients) -> {transformers' name: array}.

    Only the names the family's table gives are written: tied weights are left out, as
    transformers saves them. Vocabulary padding (``vocab_pad_multiple``) is dropped: transformers
    gets ``vocab_size`` rows.
    """
    fam = models.of_config(config)
    params = nn.meta.unbox(params)
    out, used = {}, set()
    for w in fam.module.hf_weights(config):
        try:
            x = layers.param_at(params, w.path, config.scan_layers)
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"the params have nothing at {w.path} for {w.name!r}: they are not those of "
                f"the {type(config).__name__} given (another head or layout?)"
            ) from None
        if w.vocab_axis is not None:
            x = np.take(np.asarray(x), np.arange(config.vocab_size), axis=w.vocab_axis)
        out[w.name] = _to_hf(x, w.layout)
        used.add(layers.layer_path(w.path, config.scan_layers)[0])
    if _paths(params) - used:
        raise ValueError(
            f"{fam.name}'s hf_weights names no HF tensor for params "
            f"{sorted(_paths(params) - used)}: "
            "they would not be saved"
        )
    return out


# ---- a directory or a Hugging Face Hub id ----

# The tokenizer files an HF directory may hold (fetched for a Hub id, copied on import and export).
TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "spiece.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# What ``resolve`` fetches from the Hub: the config, safetensors weights (one file or transformers'
# shards with their index) and the tokenizer; never pickled weights (*.bin, *.pt, *.ckpt, *.h5,
# *.msgpack).
HUB_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    *TOKENIZER_FILES,
)
_PICKLED = "pytorch_model.bin, *.pt, *.ckpt, tf_model.h5, flax_model.msgpack"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> str:
    """huggingface_hub's cache: ``HF_HUB_CACHE`` as set now, else its default (~/.cache/...)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def resolve(path_or_id: str) -> str:
    """A local directory for ``path_or_id``: the path itself when it exists, else the snapshot of
    the Hugging Face Hub model ``owner/name`` or ``name`` (``owner/name@revision`` for a branch,
    tag or commit; default main) in huggingface_hub's cache, fetched if missing.

    Only ``HUB_FILES`` are fetched. Offline (``HF_HUB_OFFLINE=1``) only the cache is read.
    Raises FileNotFoundError when ``path_or_id`` is neither an existing path nor a model that
    can be found, ValueError when the model has no safetensors weights.
    """
    if os.path.exists(path_or_id):
        return path_or_id
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    repo_id, at, revision = path_or_id.partition("@")
    try:
        if at and not revision:
            raise HFValidationError("empty revision")
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FileNotFoundError(
            f"{path_or_id} is neither an existing directory nor a Hugging Face Hub id "
            "('owner/name' or 'name', optionally '@revision')"
        ) from None
    cache = hub_cache_dir()
    offline = constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE")
    offline = offline or _env_true("TRANSFORMERS_OFFLINE")
    at_rev = f" at revision {revision!r}" if revision else ""
    try:
        snapshot = snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=cache,
            allow_patterns=list(HUB_FILES),
            local_files_only=offline,
        )
    except RepositoryNotFoundError as e:  # online: no such repo (or private, or gated)
        raise FileNotFoundError(
            f"{path_or_id} is neither an existing directory nor a model on the Hugging Face Hub "
            f"({str(e).splitlines()[0]})"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(
            f"the Hugging Face Hub model {repo_id} has no revision {revision!r}"
        ) from None
    except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and not (fully) cached
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{path_or_id} is not an existing directory, and the Hugging Face Hub model "
            f"{repo_id}{at_rev} is not in the cache {cache} ({why}). Run once with network "
            f"access{' (unset HF_HUB_OFFLINE)' if offline else ''}, or fetch it with `hf "
            f"download {repo_id}"
            f"{f' --revision {revision}' if revision else ''} --include "
            f"{' '.join(shlex.quote(p) for p in HUB_FILES)}` (`huggingface-cli download` before "
            "huggingface_hub 1.0; the cache is HF_HUB_CACHE), or pass a local directory"
        ) from None
    except HfHubHTTPError as e:
        raise RuntimeError(f"cannot fetch {repo_id} from the Hugging Face Hub: {e}") from None
    if not any(
        os.path.isfile(os.path.join(snapshot, n))
        for n in ("model.safetensors", "model.safetensors.index.json")
    ):
        cached = f" (only its cached files in {snapshot} were read, offline)" if offline else ""
        raise ValueError(
            f"the Hugging Face Hub model {repo_id}{at_rev} has no safetensors weights "
            f"(model.safetensors or model.safetensors.index.json){cached}; jaxformers never "
            f"loads pickled weights ({_PICKLED}): convert them once with transformers "
            "(model.save_pretrained(dir, safe_serialization=True)) and pass that directory"
        )
    return snapshot


# ---- safetensors I/O ----


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    files = []
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        files = [os.path.join(path, "model.safetensors")]
    elif os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        with open(os.path.join(path, "model.safetensors.index.json")) as f:
            files = sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
    elif any(os.path.exists(os.path.join(path, n)) for n in ("pytorch_model.bin", "model.pt")):
        raise ValueError(
            f"{path} holds only pickled PyTorch weights, which jaxformers never unpickles; convert "
            "them once with transformers (model.save_pretrained(dir, safe_serialization=True))"
        )
    else:
        raise FileNotFoundError(f"no model.safetensors in {path}")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except Exception as e:  # safetensors raises its own types for truncated/garbled files
            raise ValueError(
                f"cannot read {f}: {e}; the file is damaged, download or export it again"
            ) from e
    return tensors


def from_pretrained(path: str, dtype: str | None = None, **config_overrides: Any):
    """Loads a Hugging Face-format directory or Hub model.

    Args:
      path: directory with config.json and model.safetensors (or a sharded index), or a Hugging
        Face Hub id ``owner/name[@revision]`` (see ``resolve``).
      dtype: compute dtype override ("float32", "bfloat16"); params keep the stored precision
        cast to float32 unless ``param_dtype`` is overridden.
      **config_overrides: fields of the family's config (scan_layers=True, remat="full", ...).

    Returns:
      (model, params): a flax module and its params pytree (numpy/jax arrays).
    """
    path = resolve(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no config.json in {path}: not a Hugging Face model directory")
    with open(cfg_path) as f:
        hf_config = json.load(f)
    if "model_type" not in hf_config:
        raise ValueError(f"{cfg_path} has no model_type; expected one of {sorted(models.FAMILIES)}")
    fam = models.get(hf_config["model_type"]).module
    if dtype is not None:
        config_overrides["dtype"] = dtype
    config = fam.config_from_hf(hf_config, **config_overrides)
    tensors = {
        k: np.asarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
        for k, v in read_safetensors(path).items()
    }
    model = fam.model_from_config(config, hf_config.get("architectures"), tensors)
    try:
        params = params_from_hf(tensors, model.config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    pdtype = jax.numpy.dtype(getattr(config, "param_dtype", "float32"))
    return model, jax.tree.map(lambda x: jax.numpy.asarray(x, pdtype), params)


def save_pretrained(model: Any, params: Any, out_dir: str) -> None:
    """Writes config.json + model.safetensors that transformers loads unchanged."""
    config = model.config
    fam = models.of_config(config).module
    params = jax.tree.map(
        lambda x: np.asarray(jax.device_get(x), np.float32), nn.meta.unbox(params)
    )
    hf_params = params_to_hf(params, config)
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in hf_params.items()}
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(fam.config_to_hf(config), f, indent=2)
