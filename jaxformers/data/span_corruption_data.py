"""T5 pretraining data: corpus -> SentencePiece -> span corruption -> packed rows -> TFDS -> batches.

Each document is SentencePiece-encoded, cut into chunks of the raw length that
``random_spans_helper`` gives for ``data.seq_len`` encoder tokens (568 for 512), span-corrupted and
packed into fixed rows with segment ids (``span_corruption.corrupt_and_pack``). The rows are
written once as a TFDS array_record dataset and read back with random access.
"""

from __future__ import annotations

import os

import numpy as np

from jaxformers.data import sources
from jaxformers.data.pipeline import ExampleBatches, fingerprint
from jaxformers.data.sentencepiece_vocab import SentencePieceVocab, train_sentencepiece
from jaxformers.objectives import span_corruption

KEYS_2D = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_target_tokens",
           "decoder_input_tokens", "decoder_segment_ids", "decoder_positions", "decoder_loss_weights")


def load_or_train_spm(d, srcs, workdir: str, vocab_size: int) -> SentencePieceVocab:
    tok_dir = os.path.join(workdir, "tokenizer")
    path = os.path.join(tok_dir, "spiece.model")
    if os.path.isfile(path):  # resuming: the very same vocabulary
        return SentencePieceVocab(path)
    os.makedirs(tok_dir, exist_ok=True)
    if d.tokenizer in ("sentencepiece", "bpe"):
        train = srcs["train"]
        size = (d.vocab_size or vocab_size) - 100  # the 100 sentinels sit on top
        vocab = train_sentencepiece((sources.record_text(train[i]) for i in range(len(train))),
                                    os.path.join(tok_dir, "spiece"), vocab_size=size)
    else:
        src = os.path.join(d.tokenizer, "spiece.model") if os.path.isdir(d.tokenizer) else d.tokenizer
        if not os.path.isfile(src):
            raise FileNotFoundError(f"SentencePiece model {src} does not exist; give a spiece.model or 'sentencepiece' to train one")
        with open(src, "rb") as f, open(path, "wb") as g:
            g.write(f.read())
        vocab = SentencePieceVocab(path)
    return vocab


class SpanData:
    """Train/eval batches of packed span-corruption rows (the interface Trainer expects)."""

    def __init__(self, exp, workdir: str, vocab_size: int):
        import jax

        d = exp.data
        srcs = sources.text_sources(d.corpus, d.val_fraction, d.data_dir or None)
        self.tokenizer = tok = load_or_train_spm(d, srcs, workdir, vocab_size)
        if tok.vocab_size > vocab_size:
            raise ValueError(f"the SentencePiece vocabulary with its 100 sentinels has {tok.vocab_size} ids but the "
                             f"model's vocab_size is {vocab_size}; raise model.vocab_size or lower data.vocab_size")
        L = self.seq_len = d.seq_len
        _, helper_targets = span_corruption.random_spans_helper(L, d.noise_density, d.mean_noise_span_length)
        self.targets_length = Lt = d.targets_length or helper_targets
        self.tokens_per_example = L + Lt
        spec = {k: ((Lt if k.startswith("decoder") else L,), np.float32 if k == "decoder_loss_weights" else np.int32)
                for k in KEYS_2D}
        with open(os.path.join(workdir, "tokenizer", "spiece.model"), "rb") as f:
            sp_bytes = f.read()
        name = "t5_" + fingerprint([d.corpus, d.val_fraction, L, Lt, d.noise_density, d.mean_noise_span_length,
                                    d.seed, sp_bytes.hex()[:20000], len(srcs["train"]), len(srcs["validation"])])

        def gen(split, seed):
            def run():
                src = srcs[split]
                docs = [tok.encode(sources.record_text(src[i])) for i in range(len(src))]
                rows = span_corruption.corrupt_and_pack(
                    docs, tok.vocab_size, inputs_length=L, targets_length=Lt, seed=seed,
                    noise_density=d.noise_density, mean_noise_span_length=d.mean_noise_span_length,
                    eos_id=tok.eos_id, pad_id=tok.pad_id)
                for r in range(len(rows["encoder_input_tokens"])):
                    yield {k: rows[k][r] for k in KEYS_2D}
            return run

        built = sources.prepare_examples(name, {"train": gen("train", d.seed), "validation": gen("validation", d.seed + 1)},
                                         spec, d.data_dir or None)
        pi, pc = jax.process_index(), jax.process_count()
        accum = exp.optim.grad_accum
        self.train = ExampleBatches(built["train"], exp.batch_size, d.seed, accum, pi, pc)
        self.val = ExampleBatches(built["validation"], exp.batch_size // accum, None, 1, pi, pc)
        self.num_train_tokens = len(built["train"]) * L
        self.num_val_tokens = len(built["validation"]) * L

    def dummy_inputs(self):
        return (np.zeros((1, self.seq_len), np.int32), np.zeros((1, self.targets_length), np.int32))

    def train_spec(self):
        return {k: 2 for k in KEYS_2D}

    def flops_per_example(self, model_config) -> float:
        return model_config.flops_per_example(self.seq_len, self.targets_length)

    def train_batch(self, step: int):
        return self.train.batch(step)

    def eval_batch(self, i: int):
        return self.val.batch(i)
