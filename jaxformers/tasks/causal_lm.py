"""Causal language modelling (GPT-2): next-token cross-entropy on packed token windows.

Data: the corpus's documents are tokenized once into flat token files (EOS between documents,
``jaxformers.data.pipeline.token_file``), cut into ``seq_len + 1``-token windows and shuffled by
index; batches are ``{"inputs", "targets"}`` int32 ``[A, b, T]``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.data import pipeline, sources
from jaxformers.tasks.base import (
    TaskData,
    check_seq_len,
    source_texts,
    token_cross_entropy,
    tokenizer_for,
)


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """Next-token prediction; no settings of its own (the data's are in ``DataConfig``)."""

    name: ClassVar[str] = "causal_lm"
    input_keys: ClassVar[tuple[str, ...]] = ("inputs",)

    def build_data(self, exp: Any, workdir: str) -> TaskData:
        """Corpus -> tokenizer (trained once, kept in ``workdir/tokenizer``) -> token files ->
        batches."""
        check_seq_len(exp)
        d = exp.data
        srcs = sources.run_sources(d, workdir)
        if srcs.get("validation") is None or len(srcs["validation"]) == 0:
            raise ValueError(f"corpus {d.corpus!r} has no validation text; raise data.val_fraction")
        tok = tokenizer_for(exp, workdir, source_texts(srcs["train"], d.tokenizer_sample_bytes))
        with open(os.path.join(workdir, "tokenizer", "tokenizer.json")) as f:
            fp = pipeline.fingerprint([d.corpus, d.val_fraction, d.val_corpus, f.read()])
        cache = os.path.join(workdir, "data")
        train_tokens, train_bytes = pipeline.tokenize_source(srcs["train"], tok, cache, "train", fp)
        val_tokens, val_bytes = pipeline.tokenize_source(
            srcs["validation"], tok, cache, "validation", fp
        )
        data = lm_data(
            tok, train_tokens, val_tokens, d.seq_len, exp.batch_size, exp.optim.grad_accum, d.seed
        )
        data.num_train_bytes, data.num_val_bytes = train_bytes, val_bytes
        return data

    def normalizers(self, batch):
        return {"tokens": jnp.sum(batch["targets"] >= 0).astype(jnp.float32)}

    def loss(self, params, apply_fn, batch, rng, deterministic, norms):
        logits = apply_fn(
            {"params": params}, batch["inputs"], deterministic=deterministic, rngs={"dropout": rng}
        )
        # Target -1 marks evaluation padding (pipeline.EvalWindows): weight 0.
        weights = (batch["targets"] >= 0).astype(jnp.float32)
        targets = jnp.maximum(batch["targets"], 0)
        nll, correct = token_cross_entropy(logits, targets, weights)
        sums = {"loss": nll, "correct": correct, "tokens": jnp.sum(weights)}
        return nll / norms["tokens"], sums

    def finalize(self, sums):
        return {"loss": sums["loss"] / sums["tokens"], "accuracy": sums["correct"] / sums["tokens"]}

    def random_examples(self, rng, model_config, n: int, seq_len: int) -> dict:
        ids = rng.integers(0, model_config.vocab_size, (n, seq_len + 1), dtype=np.int32)
        return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


def lm_data(
    tokenizer,
    train_tokens,
    val_tokens,
    seq_len: int,
    batch_size: int,
    accum: int,
    seed: int,
    eval_batch_size: int | None = None,
) -> TaskData:
    """Batches of ``seq_len``-token windows over two token streams (train shuffled, eval in
    order)."""
    pi, pc = jax.process_index(), jax.process_count()
    train = pipeline.LMBatches(train_tokens, seq_len, batch_size, seed, accum, pi, pc)
    val = pipeline.LMBatches(
        val_tokens, seq_len, eval_batch_size or batch_size // accum, None, 1, pi, pc, pad=True
    )
    return TaskData(
        tokenizer,
        train,
        val,
        {"inputs": 2, "targets": 2},
        (seq_len,),
        seq_len,
        (seq_len,),
        len(train_tokens),
        len(val_tokens),
    )
