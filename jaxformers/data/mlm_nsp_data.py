"""BERT pretraining data: corpus -> WordPiece -> MLM+NSP instances -> TFDS -> sharded batches.

Documents come from the same TFDS text sources as GPT-2 (one example per document); each is split
into sentences (``mlm_nsp.sentence_split``) and WordPiece-tokenized. ``create_instances`` builds
instances exactly as google-research/bert does; they are written once as a TFDS array_record
dataset named by a fingerprint of everything they depend on, and read back with random access.
With ``data.dynamic_masking`` each example is re-masked from a seed derived from its global index,
so every epoch sees fresh masks and the order stays a pure function of the step.
"""

from __future__ import annotations

import os

import numpy as np

from jaxformers.data import sources
from jaxformers.data.pipeline import ExampleBatches, fingerprint
from jaxformers.data.wordpiece import WordPieceTokenizer, train_wordpiece
from jaxformers.objectives import mlm_nsp


def load_or_train_wordpiece(d, srcs, workdir: str, vocab_size: int) -> WordPieceTokenizer:
    tok_dir = os.path.join(workdir, "tokenizer")
    if os.path.isfile(os.path.join(tok_dir, "vocab.txt")):  # resuming: the very same vocabulary
        return WordPieceTokenizer.from_vocab_file(os.path.join(tok_dir, "vocab.txt"), lowercase=d.lowercase)
    if d.tokenizer in ("wordpiece", "bpe"):
        train = srcs["train"]
        tok = train_wordpiece((sources.record_text(train[i]) for i in range(len(train))),
                              vocab_size=d.vocab_size or vocab_size, lowercase=d.lowercase)
    else:
        path = os.path.join(d.tokenizer, "vocab.txt") if os.path.isdir(d.tokenizer) else d.tokenizer
        if not os.path.isfile(path):
            raise FileNotFoundError(f"WordPiece vocabulary {path} does not exist; give a vocab.txt or 'wordpiece' to train one")
        tok = WordPieceTokenizer.from_vocab_file(path, lowercase=d.lowercase)
    tok.save_vocab(tok_dir)
    return tok


def documents(source, tok: WordPieceTokenizer) -> list[list[list[str]]]:
    docs = []
    for i in range(len(source)):
        sents = mlm_nsp.sentence_split(sources.record_text(source[i]))
        docs.append([t for t in (tok.tokenize(s) for s in sents) if t])
    return docs


class MLMData:
    """Train/eval batches of BERT instances (the interface Trainer expects of its data)."""

    def __init__(self, exp, workdir: str, vocab_size: int, max_positions: int):
        import jax

        d = exp.data
        if d.seq_len > max_positions:
            raise ValueError(f"data.seq_len={d.seq_len} exceeds max_position_embeddings={max_positions}; lower data.seq_len")
        srcs = sources.text_sources(d.corpus, d.val_fraction, d.data_dir or None)
        self.tokenizer = tok = load_or_train_wordpiece(d, srcs, workdir, vocab_size)
        if tok.vocab_size > vocab_size:
            raise ValueError(f"the WordPiece vocabulary has {tok.vocab_size} tokens but the model's vocab_size is "
                             f"{vocab_size}; raise model.vocab_size or lower data.vocab_size")
        self.seq_len = d.seq_len
        self.tokens_per_example = d.seq_len
        self.max_predictions = d.max_predictions_per_seq
        P, L = d.max_predictions_per_seq, d.seq_len
        spec = {"input_ids": ((L,), np.int32), "input_mask": ((L,), np.int32), "segment_ids": ((L,), np.int32),
                "masked_lm_positions": ((P,), np.int32), "masked_lm_ids": ((P,), np.int32),
                "masked_lm_weights": ((P,), np.float32), "next_sentence_labels": ((), np.int32)}
        args = dict(max_seq_length=L, max_predictions_per_seq=P, masked_lm_prob=d.masked_lm_prob,
                    short_seq_prob=d.short_seq_prob, do_whole_word_mask=d.whole_word_mask)
        name = "bert_" + fingerprint([d.corpus, d.val_fraction, args, d.dupe_factor, d.seed, tok.vocab,
                                      len(srcs["train"]), len(srcs["validation"])])

        def gen(split, dupe, seed):
            def run():
                docs = documents(srcs[split], tok)
                yield from mlm_nsp.create_instances(docs, tok.vocab, dupe_factor=dupe, seed=seed, **args)
            return run

        built = sources.prepare_examples(
            name, {"train": gen("train", 1 if d.dynamic_masking else d.dupe_factor, d.seed),
                   "validation": gen("validation", 1, d.seed + 1)}, spec, d.data_dir or None)
        transform = None
        if d.dynamic_masking:
            vocab = mlm_nsp.MaskingVocab.from_tokens(tok.vocab)

            def transform(ex, index):
                rng = np.random.default_rng([d.seed, index])
                out = mlm_nsp.dynamic_mask(dict(ex), vocab, rng, max_predictions_per_seq=P,
                                           masked_lm_prob=d.masked_lm_prob, do_whole_word_mask=d.whole_word_mask)
                return {**ex, **out}

        pi, pc = jax.process_index(), jax.process_count()
        accum = exp.optim.grad_accum
        self.train = ExampleBatches(built["train"], exp.batch_size, d.seed, accum, pi, pc, transform)
        self.val = ExampleBatches(built["validation"], exp.batch_size // accum, None, 1, pi, pc)
        self.num_train_tokens = len(built["train"]) * L
        self.num_val_tokens = len(built["validation"]) * L

    def dummy_inputs(self):
        return (np.zeros((1, self.seq_len), np.int32),)

    def train_spec(self):
        return {"input_ids": 2, "input_mask": 2, "segment_ids": 2, "masked_lm_positions": 2,
                "masked_lm_ids": 2, "masked_lm_weights": 2, "next_sentence_labels": 1}

    def flops_per_example(self, model_config) -> float:
        return model_config.flops_per_token(self.seq_len, self.max_predictions) * self.seq_len

    def train_batch(self, step: int):
        return self.train.batch(step)

    def eval_batch(self, i: int):
        return self.val.batch(i)
