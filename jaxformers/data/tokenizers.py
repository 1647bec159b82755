"""Byte-level BPE tokenizers for GPT-2: the real GPT-2 vocabulary from files, or one trained here.

Backed by Hugging Face ``tokenizers`` (Rust, fast, offline). The GPT-2 files are either
``vocab.json`` + ``merges.txt`` or a ``tokenizer.json``.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

EOS_TOKEN = "<|endoftext|>"


class BPETokenizer:
    """A byte-level BPE tokenizer with GPT-2's conventions (no BOS, ``<|endoftext|>`` as EOS)."""

    def __init__(self, tok):
        self._tok = tok
        eos = tok.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"tokenizer has no {EOS_TOKEN} token; GPT-2 tokenizers must have one")
        self.eos_id = eos

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "tokenizer.json")
        self._tok.save(path)
        return path

    @classmethod
    def load(cls, path: str) -> "BPETokenizer":
        """From a tokenizer.json, a vocab.json + merges.txt pair, or a directory with either."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "tokenizer.json")):
                path = os.path.join(path, "tokenizer.json")
            elif os.path.isfile(os.path.join(path, "vocab.json")):
                path = os.path.join(path, "vocab.json")
            else:
                raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.json + merges.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        if path.endswith("vocab.json"):
            merges = os.path.join(os.path.dirname(path), "merges.txt")
            if not os.path.isfile(merges):
                raise FileNotFoundError(f"{merges} is missing: GPT-2's BPE needs vocab.json and merges.txt")
            tok = Tokenizer(models.BPE.from_file(path, merges))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            # As GPT-2's own tokenizer: "<|endoftext|>" in text is the one EOS token, not 7 pieces.
            tok.add_special_tokens([EOS_TOKEN])
            return cls(tok)
        return cls(Tokenizer.from_file(path))


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Trains a byte-level BPE tokenizer (GPT-2 style) on ``texts``; about a second for 5 MB."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs 256 bytes + {EOS_TOKEN}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)
