"""BERT pretraining: masked LM + next-sentence prediction, data as google-research/bert builds it.

Data: corpus -> TFDS text source -> per document, while training: sentences
(``objectives.mlm_nsp.sentence_split``) -> WordPiece -> MLM+NSP instances -> batches. The instances
of a document come from google-research/bert's per-document algorithm with a random stream of
the document's own (``mlm_nsp.document_instances``: pass ``epoch % dupe_factor``), its random B
segments read from other documents by index; a grain pipeline builds them, in
``data.worker_count`` worker processes, and mixes them across documents
(``jaxformers.data.streaming``). Nothing is built for the whole corpus before step 1 and memory
does not grow with it. With ``dynamic_masking`` the pairs are those of pass 0 and every epoch
re-masks them. ``mlm_nsp.create_instances`` remains the in-memory form (one random stream through
the corpus, as the original script).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from jaxformers.data import sources, streaming
from jaxformers.objectives import mlm_nsp
from jaxformers.tasks.base import (
    TaskData,
    check_seq_len,
    class_cross_entropy,
    real_rows,
    source_texts,
    stream_data,
    token_cross_entropy,
    tokenizer_for,
)


def documents(source, tok) -> list[list[list[str]]]:
    """Every document of a TFDS text source as sentences of WordPiece tokens."""
    docs = []
    for i in range(len(source)):
        sents = mlm_nsp.sentence_split(sources.record_text(source[i]))
        docs.append([t for t in (tok.tokenize(s) for s in sents) if t])
    return docs


@dataclasses.dataclass(frozen=True)
class MLMNSP:
    """Masked-LM cross-entropy on the gathered masked positions plus NSP cross-entropy.

    As google-research/bert: the vocabulary projection runs only on the ``max_predictions_per_seq``
    gathered positions; the loss is the sum of the two means. The fields are the flags of its
    ``create_pretraining_data.py``; ``dynamic_masking`` draws fresh masks every epoch (RoBERTa)
    instead of ``dupe_factor`` static copies.
    """

    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    whole_word_mask: bool = False
    dynamic_masking: bool = False

    name: ClassVar[str] = "mlm_nsp"
    input_keys: ClassVar[tuple[str, ...]] = ("input_ids",)

    def __post_init__(self):
        if self.max_predictions_per_seq < 1:
            raise ValueError(
                f"task.max_predictions_per_seq={self.max_predictions_per_seq} must be at least 1"
            )
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError(
                f"task.masked_lm_prob={self.masked_lm_prob} must lie in (0, 1); BERT uses 0.15"
            )
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(
                f"task.short_seq_prob={self.short_seq_prob} must lie in [0, 1]; BERT uses 0.1"
            )
        if self.dupe_factor < 1:
            raise ValueError(f"task.dupe_factor={self.dupe_factor} must be at least 1")

    def build_data(self, exp: Any, workdir: str) -> TaskData:
        check_seq_len(exp)
        d = exp.data
        srcs = sources.run_sources(d, workdir)
        tok = tokenizer_for(exp, workdir, source_texts(srcs["train"], d.tokenizer_sample_bytes))
        P, T = self.max_predictions_per_seq, d.seq_len
        spec = {
            "input_ids": ((T,), np.int32),
            "input_mask": ((T,), np.int32),
            "segment_ids": ((T,), np.int32),
            "masked_lm_positions": ((P,), np.int32),
            "masked_lm_ids": ((P,), np.int32),
            "masked_lm_weights": ((P,), np.float32),
            "next_sentence_labels": ((), np.int32),
        }
        args = dict(
            max_seq_length=T,
            max_predictions_per_seq=P,
            masked_lm_prob=self.masked_lm_prob,
            short_seq_prob=self.short_seq_prob,
            do_whole_word_mask=self.whole_word_mask,
        )
        to_sentences = streaming.WordPieceSentences(tok)

        def split(name, seed, dupe_factor, dynamic):
            src = srcs[name]
            docs = streaming.LazyDocuments(src, to_sentences)
            return streaming.BertDocument(docs, tok.vocab, seed, dupe_factor, dynamic, **args)

        train = split("train", d.seed, self.dupe_factor, self.dynamic_masking)
        val = split("validation", d.seed + 1, 1, False)
        return stream_data(
            exp,
            tok,
            {
                "train": (train, len(srcs["train"]), None),
                "validation": (val, len(srcs["validation"]), None),
            },
            spec,
            (T,),
            (T, P),
        )

    def normalizers(self, batch):
        return {
            "mlm": jnp.maximum(jnp.sum(batch["masked_lm_weights"]), 1.0),
            "nsp": jnp.sum(real_rows(batch)),
        }

    def loss(self, params, apply_fn, batch, rng, deterministic, norms):
        out = apply_fn(
            {"params": params},
            batch["input_ids"],
            token_type_ids=batch["segment_ids"],
            attention_mask=batch["input_mask"],
            masked_lm_positions=batch["masked_lm_positions"],
            deterministic=deterministic,
            rngs={"dropout": rng},
        )
        w = batch["masked_lm_weights"].astype(jnp.float32)
        mlm_nll, mlm_correct = token_cross_entropy(out.mlm_logits, batch["masked_lm_ids"], w)
        labels, real = batch["next_sentence_labels"], real_rows(batch)
        nsp_nll, nsp_correct = class_cross_entropy(out.nsp_logits, labels, real)
        sums = {
            "mlm_loss": mlm_nll,
            "mlm_correct": mlm_correct,
            "mlm_weight": jnp.sum(w),
            "nsp_loss": nsp_nll,
            "nsp_correct": nsp_correct,
            "nsp_count": jnp.sum(real),
        }
        return mlm_nll / norms["mlm"] + nsp_nll / norms["nsp"], sums

    def finalize(self, s):
        mlm_w = jnp.maximum(s["mlm_weight"], 1.0)
        mlm, nsp = s["mlm_loss"] / mlm_w, s["nsp_loss"] / s["nsp_count"]
        return {
            "loss": mlm + nsp,
            "mlm_loss": mlm,
            "mlm_accuracy": s["mlm_correct"] / mlm_w,
            "nsp_loss": nsp,
            "nsp_accuracy": s["nsp_correct"] / s["nsp_count"],
        }

    def random_examples(
        self, rng, model_config, n: int, seq_len: int, num_predictions: int
    ) -> dict:
        V, T, P = model_config.vocab_size, seq_len, num_predictions
        pos = np.sort(
            np.stack([rng.choice(np.arange(1, T - 1), P, replace=False) for _ in range(n)]), -1
        )
        return {
            "input_ids": rng.integers(0, V, (n, T), dtype=np.int32),
            "input_mask": np.ones((n, T), np.int32),
            "segment_ids": np.zeros((n, T), np.int32),
            "masked_lm_positions": pos.astype(np.int32),
            "masked_lm_ids": rng.integers(0, V, (n, P), dtype=np.int32),
            "masked_lm_weights": np.ones((n, P), np.float32),
            "next_sentence_labels": rng.integers(0, 2, (n,), dtype=np.int32),
        }
