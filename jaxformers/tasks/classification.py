"""Sequence classification (fine-tuning): cross-entropy on one label per sequence, or with a
one-output model (``num_labels=1``, transformers' rule) regression by squared error.

Data: labelled sentences or sentence pairs from TFDS GLUE or the embedded ``shakespeare_genre``.

- ``tfds:glue/sst2``: the GLUE sentiment task (``sentence``, ``label``; the validation split is the
  public dev set). Preparing it needs TensorFlow and the network; the error says how. The pair
  tasks read their two fields (``sentence1``/``sentence2``: mrpc, stsb, rte, wnli;
  ``question``/``sentence``: qnli; ``question1``/``question2``: qqp; ``premise``/``hypothesis``:
  mnli); ``glue/stsb``'s labels are similarity scores 0-5 for a regression model.
- ``shakespeare_genre``: speeches of the embedded plays labelled comedy (0) or tragedy (1); a small
  real task that runs offline (the speeches' tails per play form the validation split).

Sentences are WordPiece-encoded as ``[CLS] A [SEP]`` or, pairs, ``[CLS] A [SEP] B [SEP]`` with B's
tokens in segment 1 (as BERT), cut (longest first, as transformers' truncation) or padded to
``data.seq_len``, written once as a TFDS array_record dataset and batched like every other
pipeline. The model is a ``BertForSequenceClassification``; batches hold ``input_ids``,
``segment_ids``, ``input_mask`` [B, T] and ``label`` [B] (int32 classes, float32 values for
regression). Regression reports the mean squared error and Pearson's r over the split.
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
    bert_forward,
    check_seq_len,
    class_cross_entropy,
    example_data,
    random_bert_inputs,
    real_rows,
    tokenizer_for,
)

GENRES = {"comedies": 0, "tragedies": 1}
# GLUE's sentence-pair fields (first, second), by task.
PAIR_FIELDS = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
)


def encode_example(tok: Any, text: str, pair: str | None, T: int) -> tuple[list[int], list[int]]:
    """``[CLS] text [SEP]`` or ``[CLS] text [SEP] pair [SEP]`` ids and their segment ids, at most
    ``T`` tokens: the longer part loses its last piece until both fit (transformers'
    longest_first truncation)."""
    a = tok.encode(text)
    b = [] if pair is None else tok.encode(pair)
    room = T - (3 if pair is not None else 2)
    if room < (2 if pair is not None else 1):
        raise ValueError(f"data.seq_len={T} leaves no room for the text; raise it")
    while len(a) + len(b) > room:
        (a if len(a) >= len(b) else b).pop()
    ids = [tok.cls_id, *a, tok.sep_id] + ([*b, tok.sep_id] if pair is not None else [])
    return ids, [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2)


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


def glue_example(record: dict) -> tuple[str, str | None, Any]:
    """A GLUE record -> (text, the pair's second text or None, label)."""
    text = lambda k: sources.record_text({"text": record[k]})  # noqa: E731
    label = record["label"]
    for first, second in PAIR_FIELDS:
        if first in record and second in record:
            return text(first), text(second), label
    if "sentence" in record:
        return text("sentence"), None, label
    raise ValueError(
        f"a record with fields {sorted(record)} is neither a GLUE sentence nor a sentence pair"
    )


def labelled_text(corpus: str, val_fraction: float, data_dir: str | None):
    """(split -> function returning (text, pair or None, label) triples, the train texts when in
    memory)."""
    if corpus == "shakespeare_genre":
        pairs = shakespeare_genre(val_fraction)
        triples = {k: [(t, None, y) for t, y in v] for k, v in pairs.items()}
        return {k: (lambda v=v: iter(v)) for k, v in triples.items()}, [
            t for t, _ in pairs["train"]
        ]
    if corpus.startswith("tfds:"):
        srcs = sources.catalog_source(corpus[len("tfds:") :], data_dir)

        def read(split):
            src = srcs[split]
            return lambda: (glue_example(src[i]) for i in range(len(src)))

        return {"train": read("train"), "validation": read("validation")}, None
    raise ValueError(
        f"classification corpus {corpus!r}: use tfds:glue/TASK (e.g. tfds:glue/sst2, "
        "tfds:glue/stsb) or shakespeare_genre"
    )


@dataclasses.dataclass(frozen=True)
class Classification:
    """One label per sequence (the number of labels is the model's ``num_labels``)."""

    name: ClassVar[str] = "classification"
    input_keys: ClassVar[tuple[str, ...]] = ("input_ids",)

    def build_data(self, exp: Any, workdir: str) -> TaskData:
        check_seq_len(exp)
        d = exp.data
        gens, train_texts = labelled_text(
            d.corpus, d.val_fraction, sources.data_dir_for(d, workdir)
        )
        tok = tokenizer_for(exp, workdir, lambda: iter(train_texts or []))
        T = d.seq_len
        label_dtype = np.float32 if exp.model.is_regression else np.int32

        def encode(split):
            def run():
                for text, pair, label in gens[split]():
                    ids, segments = encode_example(tok, text, pair, T)
                    n = len(ids)
                    yield {
                        "input_ids": np.asarray(ids + [tok.pad_id] * (T - n), np.int32),
                        "input_mask": np.asarray([1] * n + [0] * (T - n), np.int32),
                        "segment_ids": np.asarray(segments + [0] * (T - n), np.int32),
                        "label": label_dtype(label),
                    }

            return run

        spec = {
            "input_ids": ((T,), np.int32),
            "input_mask": ((T,), np.int32),
            "segment_ids": ((T,), np.int32),
            "label": ((), label_dtype),
        }
        name = "cls_" + fingerprint([d.corpus, d.val_fraction, T, tok.vocab])
        name += "_reg" if exp.model.is_regression else ""
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
        out = bert_forward(apply_fn, params, batch, rng, deterministic)
        real = real_rows(batch)
        if jnp.issubdtype(batch["label"].dtype, jnp.floating):  # regression: one output
            sums = regression_sums(out.logits[:, 0], batch["label"], real)
            return sums["loss"] / norms["examples"], sums
        nll, correct = class_cross_entropy(out.logits, batch["label"], real)
        sums = {"loss": nll, "correct": correct, "examples": jnp.sum(real)}
        return nll / norms["examples"], sums

    def finalize(self, s):
        n = s["examples"]
        if "correct" in s:
            return {"loss": s["loss"] / n, "accuracy": s["correct"] / n}
        # Pearson's r from the split's sums (every example once).
        cov = s["py"] / n - (s["p"] / n) * (s["y"] / n)
        var_p = s["pp"] / n - (s["p"] / n) ** 2
        var_y = s["yy"] / n - (s["y"] / n) ** 2
        return {
            "loss": s["loss"] / n,
            "mse": s["loss"] / n,
            "pearson": cov / (var_p * var_y) ** 0.5,
        }

    def random_examples(
        self, rng, model_config, n: int, seq_len: int, num_predictions: int = 0
    ) -> dict:
        T = seq_len
        return {
            **random_bert_inputs(rng, model_config.vocab_size, n, T),
            "label": rng.normal(size=(n,)).astype(np.float32)
            if model_config.is_regression
            else rng.integers(0, model_config.num_labels, (n,), dtype=np.int32),
        }


def regression_sums(pred, label, weights):
    """Weighted sums over the batch's real rows: squared error (the loss), and what Pearson's r
    needs (sums of predictions, labels, their squares and products). [B] each."""
    pred, label = pred.astype(jnp.float32), label.astype(jnp.float32)
    w = weights
    return {
        "loss": jnp.sum(w * (pred - label) ** 2),
        "examples": jnp.sum(w),
        "p": jnp.sum(w * pred),
        "y": jnp.sum(w * label),
        "pp": jnp.sum(w * pred * pred),
        "yy": jnp.sum(w * label * label),
        "py": jnp.sum(w * pred * label),
    }
