"""Feature extraction: fixed vectors from a model's hidden states, one per text or per token.

``extract`` runs the model once with ``output_hidden_states=True`` (DESIGN.md §3) and pools the
layers asked for: ``layers`` indexes transformers' ``hidden_states`` tuple (0 is the embedding
output, -1 the last layer's output), ``concat_last=4`` concatenates the last four layers' outputs
along the width, as the BERT paper's feature-based NER table (its best row, 96.1 dev F1).
Pooling: "cls" (the first token, BERT only), "mean" (the average over real tokens, the attention
mask as weights: sentence-transformers' mean pooling) or "none" (every token, [B, T, D']).

BERT, GPT-2 and T5's encoder (``model.encode``) are supported; ``encode_texts`` pads texts into
the model's inputs and is what ``jaxformers embed`` (``embed_texts``) uses.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers import models

POOLINGS = ("cls", "mean", "none")


def _layer_indices(layers: int | Sequence[int], concat_last: int | None) -> tuple[int, ...]:
    if concat_last is not None:
        if concat_last < 1:
            raise ValueError(f"concat_last must be at least 1, got {concat_last}")
        return tuple(range(-concat_last, 0))
    return (layers,) if isinstance(layers, int) else tuple(layers)


def check_options(model: Any, layers, pooling: str, concat_last: int | None) -> tuple[int, ...]:
    """The layer indices ``extract`` will read, or a clear error for options that cannot apply to
    ``model`` (before anything is compiled)."""
    family = models.of_model(model)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    if pooling == "cls" and family.name != "bert":
        raise ValueError(
            f"pooling 'cls' takes the [CLS] token of a BERT model; a {family.name} model has none "
            "(its first token sees only itself under causal attention): use pooling 'mean'"
        )
    idx = _layer_indices(layers, concat_last)
    n = _num_layers(model.config) + 1  # the embedding output, then every layer's
    bad = [i for i in idx if not -n <= i < n]
    if not idx or bad:
        raise ValueError(
            f"layers {list(idx)}: the model has {n} hidden states (0 = embeddings, "
            f"{n - 1} or -1 = the last layer); choose indices in [-{n}, {n})"
        )
    return idx


def _num_layers(config: Any) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, name):
            return int(getattr(config, name))
    raise ValueError(f"{type(config).__name__} names no layer count")


@functools.partial(jax.jit, static_argnames=("model", "layers", "pooling"))
def _extract(model, params, input_ids, attention_mask, layers, pooling):
    family = models.of_model(model)
    if family.decoder == "seq2seq":  # T5: the encoder's layers
        out = model.apply(
            {"params": params},
            input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            method=model.encode,
        )
    else:
        out = model.apply(
            {"params": params}, input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
    h = jnp.concatenate([out.hidden_states[i] for i in layers], axis=-1).astype(jnp.float32)
    if pooling == "cls":
        return h[:, 0]
    if pooling == "none":
        return h
    w = attention_mask.astype(jnp.float32)[:, :, None]
    # A row of padding only (a padded batch's filler) gives zeros, not 0/0.
    return (h * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def extract(
    model: Any,
    params: Any,
    input_ids: Any,  # [B, T] int
    attention_mask: Any = None,  # [B, T] 1 = token, 0 = padding; None = all tokens
    layers: int | Sequence[int] = -1,
    pooling: str = "cls",
    concat_last: int | None = None,
) -> jax.Array:  # [B, D * n_layers] float32; pooling "none": [B, T, D * n_layers]
    """Features of a batch, jitted (one compilation per model, shape, layers and pooling).

    Args:
      model: a jaxformers BERT (any head: its encoder's layers), GPT-2 or T5 module.
      params: its params (without the ``{"params": ...}`` wrapper).
      input_ids: token ids, padded on the right.
      attention_mask: 1 for real tokens; mean pooling averages over these only.
      layers: an index or indices into ``hidden_states`` (0 = embedding output, -1 = last layer),
        concatenated along the width in the order given.
      pooling: "cls", "mean" or "none".
      concat_last: instead of ``layers``, the last ``concat_last`` layers (4: the BERT paper's
        feature-based NER features).
    """
    idx = check_options(model, layers, pooling, concat_last)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    return _extract(model, params, input_ids, jnp.asarray(attention_mask, jnp.int32), idx, pooling)


def encode_texts(
    tok: Any, model: Any, texts: Sequence[str], max_length: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Texts -> (input_ids [n, T], attention_mask [n, T], number of texts truncated), padded on the
    right to the longest. BERT gets ``[CLS] text [SEP]``, T5 ``text </s>``, GPT-2 the bare text;
    a text longer than ``max_length`` (default: the model's positions) keeps its first tokens and
    its special tokens, as transformers' ``truncation=True``."""
    family = models.of_model(model)
    limit = family.max_positions(model.config)
    max_length = limit if max_length is None else max_length
    # T5's relative positions take any length: its n_positions is only the default.
    if max_length < 1 or (max_length > limit and family.decoder != "seq2seq"):
        raise ValueError(f"max_length {max_length} is outside [1, {limit}] (the model's positions)")
    if family.name == "bert":
        head, tail, pad = [tok.cls_id], [tok.sep_id], tok.pad_id
    elif family.decoder == "seq2seq":
        head, tail, pad = [], [tok.eos_id], tok.pad_id
    else:
        head, tail, pad = [], [], 0  # masked out: any id in the vocabulary does
    room = max_length - len(head) - len(tail)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a token")
    rows, truncated = [], 0
    for text in texts:
        ids = tok.encode(text)
        truncated += len(ids) > room
        rows.append(head + ids[:room] + tail)
    T = max(len(r) for r in rows)
    input_ids = np.full((len(rows), T), pad, np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return input_ids, mask, truncated


def embed_texts(
    model: Any,
    params: Any,
    tok: Any,
    texts: Sequence[str],
    pooling: str = "mean",
    layers: int | Sequence[int] = -1,
    concat_last: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
) -> np.ndarray:  # [len(texts), D'] float32
    """One vector per text, in order: every batch padded to ``batch_size`` rows of the longest
    text's length (one compilation), the padding rows dropped. Truncated texts are counted on
    stderr."""
    if not texts:
        raise ValueError("no texts to embed")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_options(model, layers, pooling, concat_last)
    if pooling == "none":
        raise ValueError("embed_texts gives one vector per text: pooling 'cls' or 'mean'")
    input_ids, mask, truncated = encode_texts(tok, model, texts, max_length)
    if truncated:
        print(
            f"jaxformers: {truncated} of {len(texts)} texts were longer than "
            f"{input_ids.shape[1]} tokens and were truncated",
            file=sys.stderr,
        )
    n = len(texts)
    fill = -n % batch_size
    input_ids = np.concatenate([input_ids, np.zeros((fill, input_ids.shape[1]), np.int32)])
    mask = np.concatenate([mask, np.zeros((fill, mask.shape[1]), np.int32)])
    out = [
        np.asarray(
            extract(
                model,
                params,
                input_ids[s : s + batch_size],
                mask[s : s + batch_size],
                layers,
                pooling,
                concat_last,
            )
        )
        for s in range(0, n + fill, batch_size)
    ]
    return np.concatenate(out)[:n].astype(np.float32)
