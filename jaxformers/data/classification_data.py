"""Labelled sentences for fine-tuning: TFDS ``glue/sst2`` or the embedded ``shakespeare_genre``.

- ``tfds:glue/sst2``: the GLUE sentiment task (``sentence``, ``label``; the validation split is the
  public dev set). Preparing it needs TensorFlow and the network; the error says how.
- ``shakespeare_genre``: speeches of the embedded plays labelled comedy (0) or tragedy (1); a small
  real task that runs offline (the speeches' tails per play form the validation split).

Sentences are WordPiece-encoded as ``[CLS] sentence [SEP]``, cut or padded to ``data.seq_len``,
written once as a TFDS array_record dataset and batched like every other pipeline.
"""

from __future__ import annotations

import os
import re

import numpy as np

from jaxformers.data import sources
from jaxformers.data.mlm_nsp_data import load_or_train_wordpiece
from jaxformers.data.pipeline import ExampleBatches, fingerprint

GENRES = {"comedies": 0, "tragedies": 1}


def shakespeare_genre(val_fraction: float) -> dict[str, list[tuple[str, int]]]:
    """(speech, label) pairs from the comedies and tragedies; the last speeches of a play are validation."""
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
    if corpus == "shakespeare_genre":
        pairs = shakespeare_genre(val_fraction)
        return {k: (lambda v=v: iter(v)) for k, v in pairs.items()}, pairs["train"]
    if corpus.startswith("tfds:"):
        srcs = sources.catalog_source(corpus[len("tfds:"):], data_dir)

        def read(split):
            src = srcs[split]
            return lambda: ((sources.record_text({"text": src[i]["sentence"]}), int(src[i]["label"])) for i in range(len(src)))
        return {"train": read("train"), "validation": read("validation")}, None
    raise ValueError(f"classification corpus {corpus!r}: use tfds:glue/sst2 or shakespeare_genre")


class ClassificationData:
    def __init__(self, exp, workdir: str, vocab_size: int, max_positions: int):
        import jax

        d = exp.data
        if d.seq_len > max_positions:
            raise ValueError(f"data.seq_len={d.seq_len} exceeds max_position_embeddings={max_positions}")
        gens, train_pairs = labelled_text(d.corpus, d.val_fraction, d.data_dir or None)
        texts_src = {"train": [{"text": t} for t, _ in (train_pairs or [])]}
        self.tokenizer = tok = load_or_train_wordpiece(d, texts_src, workdir, vocab_size)
        if tok.vocab_size > vocab_size:
            raise ValueError(f"the vocabulary has {tok.vocab_size} tokens, the model {vocab_size}")
        L = self.seq_len = self.tokens_per_example = d.seq_len

        def encode(split):
            def run():
                for text, label in gens[split]():
                    ids = tok.encode(text, add_special_tokens=True)
                    ids = ids[:L - 1] + [tok.sep_id] if len(ids) > L else ids
                    n = len(ids)
                    yield {"input_ids": np.asarray(ids + [tok.pad_id] * (L - n), np.int32),
                           "input_mask": np.asarray([1] * n + [0] * (L - n), np.int32),
                           "segment_ids": np.zeros(L, np.int32), "label": np.int32(label)}
            return run

        spec = {"input_ids": ((L,), np.int32), "input_mask": ((L,), np.int32),
                "segment_ids": ((L,), np.int32), "label": ((), np.int32)}
        name = "cls_" + fingerprint([d.corpus, d.val_fraction, L, tok.vocab])
        built = sources.prepare_examples(name, {s: encode(s) for s in ("train", "validation")}, spec,
                                         d.data_dir or None)
        pi, pc = jax.process_index(), jax.process_count()
        accum = exp.optim.grad_accum
        self.train = ExampleBatches(built["train"], exp.batch_size, d.seed, accum, pi, pc)
        self.val = ExampleBatches(built["validation"], exp.batch_size // accum, None, 1, pi, pc)
        self.num_train_tokens, self.num_val_tokens = len(built["train"]) * L, len(built["validation"]) * L
        self.num_val_examples = len(built["validation"])

    def dummy_inputs(self):
        return (np.zeros((1, self.seq_len), np.int32),)

    def train_spec(self):
        return {"input_ids": 2, "input_mask": 2, "segment_ids": 2, "label": 1}

    def flops_per_example(self, model_config) -> float:
        return model_config.flops_per_token(self.seq_len, 0) * self.seq_len

    def train_batch(self, step: int):
        return self.train.batch(step)

    def eval_batch(self, i: int):
        return self.val.batch(i)
