"""Sequence classification (fine-tuning): cross-entropy on one label per sequence.

The objective protocol is that of ``jaxformers.objectives.causal_lm``. The model is a
``BertForSequenceClassification``; batches hold ``input_ids``, ``segment_ids``, ``input_mask`` [B, T]
and ``label`` [B].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class Classification:
    name = "classification"

    @staticmethod
    def normalizers(batch):
        return {"examples": jnp.asarray(batch["label"].size, jnp.float32)}

    @staticmethod
    def loss(params, apply_fn, batch, rng, deterministic, norms):
        out = apply_fn({"params": params}, batch["input_ids"], token_type_ids=batch["segment_ids"],
                       attention_mask=batch["input_mask"], deterministic=deterministic, rngs={"dropout": rng})
        logits = out.logits.astype(jnp.float32)
        labels = batch["label"]
        nll = jnp.sum(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0])
        correct = jnp.sum((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        sums = {"loss": nll, "correct": correct, "examples": jnp.float32(labels.size)}
        return nll / norms["examples"], sums

    @staticmethod
    def finalize(s):
        return {"loss": s["loss"] / s["examples"], "accuracy": s["correct"] / s["examples"]}
