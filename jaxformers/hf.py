"""Hugging Face format: a directory with ``config.json`` and ``model.safetensors``.

``from_pretrained`` picks the family from ``model_type`` (bert | gpt2 | t5) and returns
``(model, params)``; ``save_pretrained`` writes a directory that transformers' ``from_pretrained``
loads unchanged. Weights are read with safetensors only: pickled ``pytorch_model.bin`` files are
refused, since unpickling runs arbitrary code.

Each family module provides ``config_from_hf``, ``config_to_hf``, ``params_from_hf``,
``params_to_hf`` and ``model_from_config``; this file holds what they share.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxformers import models

# ---- layer lists <-> the model's layout (a list of "h_0", "h_1" ... or one stacked "h") ----

def put_layers(params: dict, name: str, blocks: list[dict], scan: bool) -> None:
    if scan:
        params[name] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
    else:
        for i, b in enumerate(blocks):
            params[f"{name}_{i}"] = b


def get_layers(params: dict, name: str, n: int, scan: bool) -> list[dict]:
    if scan:
        return [jax.tree.map(lambda x, i=i: x[i], params[name]) for i in range(n)]
    return [params[f"{name}_{i}"] for i in range(n)]


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
            raise ValueError(f"cannot read {f}: {e}; the file is damaged, download or export it again") from e
    return tensors


def from_pretrained(path: str, dtype: str | None = None, **config_overrides: Any):
    """Loads a Hugging Face-format directory.

    Args:
      path: directory with config.json and model.safetensors (or a sharded index).
      dtype: compute dtype override ("float32", "bfloat16"); params keep the stored precision
        cast to float32 unless ``param_dtype`` is overridden.
      **config_overrides: fields of the family's config (scan_layers=True, remat="full", ...).

    Returns:
      (model, params): a flax module and its params pytree (numpy/jax arrays).
    """
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
    tensors = {k: np.asarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
               for k, v in read_safetensors(path).items()}
    model = fam.model_from_config(config, hf_config.get("architectures"), tensors)
    try:
        params = fam.params_from_hf(tensors, config)
    except KeyError as e:
        raise ValueError(f"{path}: weight {e} is missing; the checkpoint does not match its config.json") from None
    pdtype = jax.numpy.dtype(getattr(config, "param_dtype", "float32"))
    return model, jax.tree.map(lambda x: jax.numpy.asarray(x, pdtype), params)


def save_pretrained(model: Any, params: Any, out_dir: str) -> None:
    """Writes config.json + model.safetensors that transformers loads unchanged."""
    config = model.config
    fam = models.of_config(config).module
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), nn.meta.unbox(params))
    hf_params = fam.params_to_hf(params, config)
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in hf_params.items()}
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(fam.config_to_hf(config), f, indent=2)

