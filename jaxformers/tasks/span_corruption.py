"""T5 span-corruption denoising, exactly as the T5 paper / seqio define it.

Data: corpus -> TFDS text source -> per document, while training: SentencePiece -> chunks of the
raw length that ``random_spans_helper`` gives for ``data.seq_len`` encoder tokens (568 for 512)
-> span corruption (``objectives.span_corruption.document_examples``, seeded by (seed, epoch,
document, chunk)) -> packed into fixed rows with segment ids by grain's first-fit packing (one
bin: seqio's greedy in-order packing) -> batches (``jaxformers.data.streaming``). The model keeps
packed examples apart with the segment ids; T5's positions are relative, so the rows need no
position features. ``span_corruption.corrupt_and_pack`` remains the in-memory form.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from jaxformers.data import sources, streaming
from jaxformers.objectives import span_corruption
from jaxformers.tasks.base import (
    TaskData,
    log_normalizer,
    source_texts,
    stream_data,
    tokenizer_for,
)

KEYS = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_segment_ids",
    "decoder_loss_weights",
)


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
    """Sequence-to-sequence cross-entropy over the non-padding targets of packed rows.

    Attributes:
      noise_density, mean_noise_span_length: T5's span corruption (15% noise, spans of mean 3).
      targets_length: decoder row length; 0 = what ``random_spans_helper`` gives for
        ``data.seq_len``.
      z_loss: weight of ``log(Z)^2`` per target token (t5x uses 1e-4); keeps logits from drifting.
      label_smoothing: t5x-style; the constant entropy of the smoothed targets is subtracted so a
        perfect model still scores 0.
    """

    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    targets_length: int = 0
    z_loss: float = 0.0
    label_smoothing: float = 0.0

    name: ClassVar[str] = "span_corruption"
    input_keys: ClassVar[tuple[str, ...]] = ("encoder_input_tokens", "decoder_input_tokens")

    def __post_init__(self):
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(
                f"task.noise_density={self.noise_density} must lie in (0, 1); T5 uses 0.15"
            )
        if self.mean_noise_span_length < 1.0:
            raise ValueError(
                f"task.mean_noise_span_length={self.mean_noise_span_length} must be >= 1; T5 uses 3"
            )
        if self.targets_length < 0:
            raise ValueError(
                f"task.targets_length={self.targets_length} must be >= 0 (0: T5's helper decides)"
            )
        if self.z_loss < 0:
            raise ValueError(f"task.z_loss={self.z_loss} must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"task.label_smoothing={self.label_smoothing} must lie in [0, 1)")

    def build_data(self, exp: Any, workdir: str) -> TaskData:
        d = exp.data
        srcs = sources.run_sources(d, workdir)
        tok = tokenizer_for(exp, workdir, source_texts(srcs["train"], d.tokenizer_sample_bytes))
        T = d.seq_len
        _, helper_targets = span_corruption.random_spans_helper(
            T, self.noise_density, self.mean_noise_span_length
        )
        S = self.targets_length or helper_targets
        limit = exp.model.n_positions
        if max(T, S) > limit:
            raise ValueError(
                f"data.seq_len={T} / targets length {S} exceed the model's n_positions={limit}; "
                "lower data.seq_len or raise model.n_positions"
            )
        spec = {
            k: (
                (S if k.startswith("decoder") else T,),
                np.float32 if k == "decoder_loss_weights" else np.int32,
            )
            for k in KEYS
        }
        raw_length, needed = span_corruption.chunk_lengths(
            T, self.noise_density, self.mean_noise_span_length
        )
        if needed > S:
            raise ValueError(
                f"task.targets_length={S} is shorter than the {needed} target tokens a chunk of "
                f"{raw_length} tokens gives (data.seq_len={T}); set task.targets_length={needed} "
                "or 0"
            )
        args = dict(
            noise_density=self.noise_density, mean_noise_span_length=self.mean_noise_span_length
        )

        def pack(ds):
            return streaming.pack_t5(ds, T, S, tok.pad_id)

        def split(name, seed):
            per_doc = streaming.SpanDocument(srcs[name], tok, raw_length, seed, **args)
            return per_doc, len(srcs[name]), pack

        splits = {"train": split("train", d.seed), "validation": split("validation", d.seed + 1)}
        return stream_data(exp, tok, splits, spec, (T, S), (T, S))

    def normalizers(self, batch):
        return {"tokens": jnp.maximum(jnp.sum(batch["decoder_loss_weights"]), 1.0)}

    def loss(self, params, apply_fn, batch, rng, deterministic, norms):
        logits = apply_fn(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            encoder_segment_ids=batch["encoder_segment_ids"],
            decoder_segment_ids=batch["decoder_segment_ids"],
            deterministic=deterministic,
            rngs={"dropout": rng},
        ).astype(jnp.float32)
        targets, w = (
            batch["decoder_target_tokens"],
            batch["decoder_loss_weights"].astype(jnp.float32),
        )
        V = logits.shape[-1]
        logz, target_logit, correct = log_normalizer(logits, targets)
        logp_target = target_logit - logz
        nll = -logp_target
        if self.label_smoothing > 0:
            conf, low = 1.0 - self.label_smoothing, self.label_smoothing / (V - 1)
            mean_logp = jnp.mean(logits, axis=-1) - logz
            smoothed = -(conf - low) * logp_target - low * V * mean_logp
            const = -(conf * jnp.log(conf) + (V - 1) * low * jnp.log(low + 1e-20))
            train_nll = smoothed - const
        else:
            train_nll = nll
        loss_tokens = train_nll + self.z_loss * jnp.square(logz)
        sums = {
            "loss": jnp.sum(nll * w),
            "correct": jnp.sum(correct * w),
            "tokens": jnp.sum(w),
            "z_loss": jnp.sum(jnp.square(logz) * w),
        }
        return jnp.sum(loss_tokens * w) / norms["tokens"], sums

    def finalize(self, s):
        n = jnp.maximum(s["tokens"], 1.0)
        return {"loss": s["loss"] / n, "accuracy": s["correct"] / n, "log_z_sq": s["z_loss"] / n}

    def random_examples(
        self, rng, model_config, n: int, inputs_length: int, targets_length: int
    ) -> dict:
        V, T, S = model_config.vocab_size, inputs_length, targets_length
        tgt = rng.integers(2, V, (n, S), dtype=np.int32)
        start = np.full((n, 1), model_config.decoder_start_token_id, np.int32)
        return {
            "encoder_input_tokens": rng.integers(2, V, (n, T), dtype=np.int32),
            "encoder_segment_ids": np.ones((n, T), np.int32),
            "decoder_input_tokens": np.concatenate([start, tgt[:, :-1]], -1),
            "decoder_target_tokens": tgt,
            "decoder_segment_ids": np.ones((n, S), np.int32),
            "decoder_loss_weights": np.ones((n, S), np.float32),
        }
