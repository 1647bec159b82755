"""Sequence classification (fine-tuning): cross-entropy on one label per sequence.

Data: labelled sentences from TFDS ``glue/sst2`` or the embedded ``shakespeare_genre``.

- ``tfds:glue/sst2``: the GLUE sentiment task (``sentence``, ``label``; the validation split is the
  public dev set). Preparing it needs TensorFlow and the network; the error says how.
- ``shakespeare_genre``: speeches of the embedded plays labelled comedy (0) or tragedy (1); a small
  real task that runs offline (the speeches' tails per play form the validation split).

Sentences are WordPiece-encoded as ``[CLS] sentence [SEP]``, cut or padded to ``data.seq_len``,
written once as a TFDS array_record dataset and batched like every other pipeline. The model is a
``BertForSequenceClassification``; batches hold ``input_ids``, ``segment_ids``, ``input_mask``
[B, T] and ``label`` [B].
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from jaxformers.data import sources
from jaxformers.data.pipeline import fingerprint
from jaxformers.tasks.base import (
    TaskData,
    check_seq_len,
    class_cross_entropy,
    example_data,
    real_rows,
    tokenizer_for,
)

GENRES = {"comedies": 0, "tragedies": 1}


def shakespeare_genre(val_fraction: float) -> dict[str, list[tuple[str, int]]]:
    """(speech, label) pairs from the comedies and tragedies; the last speeches of a play are
    validation."""
    out = {"train": [], "validation": []}
    for path in sources.shakespeare_files():
        genre = os.path.basename(os.path.dirname(path))
        if genre not in GENRES:
            continue
        with open(path, encoding="utf-8") as f:
            text = sources.play_markdown_to_text(f.read())
        speeches = [s.strip() for s in re.split(r"\n\s*\n", text) if len(s.split()) >= 8]
        cut = int(len(speeches) * (1 - val_fraction))
        out["train"] += [(s, GENRES[genre]) for s in speeches[:cut]]
        out["validation"] += [(s, GENRES[genre]) for s in speeches[cut:]]
    return out


def labelled_text(corpus: str, val_fraction: float, data_dir: str | None):
    """(split -> function returning (text, label) pairs, the train pairs when in memory)."""
    if corpus == "shakespeare_genre":
        pairs = shakespeare_genre(val_fraction)
        return {k: (lambda v=v: iter(v)) for k, v in pairs.items()}, pairs["train"]
    if corpus.startswith("tfds:"):
        srcs = sources.catalog_source(corpus[len("tfds:") :], data_dir)

        def read(split):
            src = srcs[split]
            return lambda: (
                (sources.record_text({"text": src[i]["sentence"]}), int(src[i]["label"]))
                for i in range(len(src))
            )

        return {"train": read("train"), "validation": read("validation")}, None
    raise ValueError(f"classification corpus {corpus!r}: use tfds:glue/sst2 or shakespeare_genre")


@dataclasses.dataclass(frozen=True)
class Classification:
    """One label per sequence (the number of labels is the model's ``num_labels``)."""

    name: ClassVar[str] = "classification"
    input_keys: ClassVar[tuple[str, ...]] = ("input_ids",)

    def build_data(self, exp: Any, workdir: str) -> TaskData:
        check_seq_len(exp)
        d = exp.data
        gens, train_pairs = labelled_text(
            d.corpus, d.val_fraction, sources.data_dir_for(d, workdir)
        )
        tok = tokenizer_for(exp, workdir, lambda: (t for t, _ in (train_pairs or [])))
        T = d.seq_len

        def encode(split):
            def run():
                for text, label in gens[split]():
                    ids = tok.encode(text, add_special_tokens=True)
                    ids = ids[: T - 1] + [tok.sep_id] if len(ids) > T else ids
                    n = len(ids)
                    yield {
                        "input_ids": np.asarray(ids + [tok.pad_id] * (T - n), np.int32),
                        "input_mask": np.asarray([1] * n + [0] * (T - n), np.int32),
                        "segment_ids": np.zeros(T, np.int32),
                        "label": np.int32(label),
                    }

            return run

        spec = {
            "input_ids": ((T,), np.int32),
            "input_mask": ((T,), np.int32),
            "segment_ids": ((T,), np.int32),
            "label": ((), np.int32),
        }
        name = "cls_" + fingerprint([d.corpus, d.val_fraction, T, tok.vocab])
        built = sources.prepare_examples(
            name,
            {s: encode(s) for s in ("train", "validation")},
            spec,
            sources.data_dir_for(d, workdir),
        )
        return example_data(exp, tok, built, spec, (T,), (T, 0))

    def normalizers(self, batch):
        return {"examples": jnp.sum(real_rows(batch))}

    def loss(self, params, apply_fn, batch, rng, deterministic, norms):
        out = apply_fn(
            {"params": params},
            batch["input_ids"],
            token_type_ids=batch["segment_ids"],
            attention_mask=batch["input_mask"],
            deterministic=deterministic,
            rngs={"dropout": rng},
        )
        real = real_rows(batch)
        nll, correct = class_cross_entropy(out.logits, batch["label"], real)
        sums = {"loss": nll, "correct": correct, "examples": jnp.sum(real)}
        return nll / norms["examples"], sums

    def finalize(self, s):
        return {"loss": s["loss"] / s["examples"], "accuracy": s["correct"] / s["examples"]}

    def random_examples(
        self, rng, model_config, n: int, seq_len: int, num_predictions: int = 0
    ) -> dict:
        T = seq_len
        return {
            "input_ids": rng.integers(0, model_config.vocab_size, (n, T), dtype=np.int32),
            "input_mask": np.ones((n, T), np.int32),
            "segment_ids": np.zeros((n, T), np.int32),
            "label": rng.integers(0, model_config.num_labels, (n,), dtype=np.int32),
        }
