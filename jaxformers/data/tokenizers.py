"""Byte-level BPE tokenizers for GPT-2: the real GPT-2 vocabulary from files, or one trained here.

Backed by Hugging Face ``tokenizers`` (Rust, fast, offline). The GPT-2 files are either
``vocab.json`` + ``merges.txt`` or a ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxformers import storage
from jaxformers.data.sentencepiece_vocab import SentencePieceVocab, train_sentencepiece
from jaxformers.data.wordpiece import WordPieceTokenizer, train_wordpiece

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
    def load(cls, path: str) -> BPETokenizer:
        """From a tokenizer.json, a vocab.json + merges.txt pair, or a directory with either."""
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "tokenizer.json")):
                path = os.path.join(path, "tokenizer.json")
            elif os.path.isfile(os.path.join(path, "vocab.json")):
                path = os.path.join(path, "vocab.json")
            else:
                raise FileNotFoundError(
                    f"{path} holds neither tokenizer.json nor vocab.json + merges.txt"
                )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        if path.endswith("vocab.json"):
            merges = os.path.join(os.path.dirname(path), "merges.txt")
            if not os.path.isfile(merges):
                raise FileNotFoundError(
                    f"{merges} is missing: GPT-2's BPE needs vocab.json and merges.txt"
                )
            tok = Tokenizer(models.BPE.from_file(path, merges))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            # As GPT-2's own tokenizer: "<|endoftext|>" in text is the one EOS token, not 7 pieces.
            tok.add_special_tokens([EOS_TOKEN])
            return cls(tok)
        return cls(Tokenizer.from_file(path))


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Trains a byte-level BPE tokenizer (GPT-2 style) on ``texts``; about a second for 5 MB."""
    if vocab_size < 257 + 1:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for byte-level BPE: it needs 256 bytes + "
            f"{EOS_TOKEN}"
        )
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


# ---------------------------------------------------------------------------------------------
# The three kinds of tokenizer a model family uses (``jaxformers.models.Family.tokenizer``).

KINDS = ("bpe", "wordpiece", "sentencepiece")
# What each kind keeps in a tokenizer directory (the first file marks a saved tokenizer).
_FILES = {"bpe": "tokenizer.json", "wordpiece": "vocab.txt", "sentencepiece": "spiece.model"}
SENTINELS = 100  # T5's <extra_id_*> on top of a SentencePiece vocabulary


def load_tokenizer(kind: str, directory: str, lowercase: bool | None = None):
    """The tokenizer of ``kind`` saved in ``directory`` (a workdir's tokenizer/ or an HF dir).

    BPE reads tokenizer.json or vocab.json + merges.txt; WordPiece reads vocab.txt and, when
    ``lowercase`` is None, ``do_lower_case`` from tokenizer_config.json (default True);
    SentencePiece reads spiece.model (T5's 100 sentinels on top).
    """
    if kind == "bpe":
        return BPETokenizer.load(directory)
    if kind == "wordpiece":
        if lowercase is None:
            cfg = os.path.join(directory, "tokenizer_config.json")
            lowercase = True
            if os.path.isfile(cfg):
                with open(cfg) as f:
                    lowercase = json.load(f).get("do_lower_case", True)
        path = os.path.join(directory, "vocab.txt") if os.path.isdir(directory) else directory
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no vocab.txt in {directory}: BERT needs its WordPiece vocabulary"
            )
        return WordPieceTokenizer.from_vocab_file(path, lowercase=lowercase)
    if kind == "sentencepiece":
        path = os.path.join(directory, "spiece.model") if os.path.isdir(directory) else directory
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no spiece.model in {directory}: T5 needs its SentencePiece model"
            )
        return SentencePieceVocab(path)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {KINDS}")


def load_or_train(
    kind: str,
    setting: str,
    tok_dir: str,
    texts: Callable[[], Iterable[str]],
    vocab_size: int,
    lowercase: bool = True,
):
    """The run's tokenizer, kept in ``tok_dir`` so that a resumed run uses the very same one.

    Args:
      kind: the model family's tokenizer kind (``KINDS``).
      setting: ``data.tokenizer``: "train" (or the kind's own name) trains one on ``texts()``;
        anything else is a path to an existing tokenizer of that kind (file or directory).
      tok_dir: where the tokenizer is saved (and found again on resume).
      texts: returns the training texts (called only when training).
      vocab_size: the size to train (SentencePiece: including the 100 sentinels).
      lowercase: WordPiece only: an uncased vocabulary.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {KINDS}")
    if storage.is_url(setting):  # a tokenizer on cloud storage: the libraries read local files
        setting = storage.download(setting)
    if os.path.isfile(os.path.join(tok_dir, _FILES[kind])):  # resuming: the very same vocabulary
        return load_tokenizer(kind, tok_dir, lowercase)
    os.makedirs(tok_dir, exist_ok=True)
    if setting in ("train", kind):
        if kind == "bpe":
            tok = train_bpe(texts(), vocab_size)
        elif kind == "wordpiece":
            tok = train_wordpiece(texts(), vocab_size=vocab_size, lowercase=lowercase)
        else:
            return train_sentencepiece(
                texts(), os.path.join(tok_dir, "spiece"), vocab_size=vocab_size - SENTINELS
            )
    elif setting in KINDS:
        raise ValueError(
            f"data.tokenizer={setting!r}, but this model uses a {kind} tokenizer: "
            f"set data.tokenizer=train (or {kind}) or a path to a {kind} tokenizer"
        )
    elif not os.path.exists(setting):
        raise FileNotFoundError(
            f"tokenizer {setting} does not exist; give a path to a {kind} tokenizer "
            f"(a directory or its {_FILES[kind]}) or data.tokenizer=train to train one"
        )
    elif kind == "sentencepiece":  # the model file is the tokenizer: keep a copy
        src = os.path.join(setting, _FILES[kind]) if os.path.isdir(setting) else setting
        with open(src, "rb") as f, open(os.path.join(tok_dir, _FILES[kind]), "wb") as g:
            g.write(f.read())
        return load_tokenizer(kind, tok_dir)
    else:
        tok = load_tokenizer(kind, setting, lowercase if kind == "wordpiece" else None)
    if kind == "bpe":
        tok.save(tok_dir)
    else:
        tok.save_vocab(tok_dir)
        # Loading reads the casing from here (default: uncased): a cased vocabulary (data.
        # lowercase=False) would otherwise be lowercased by `jaxformers answer`, embed, export.
        with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"do_lower_case": tok.lowercase}, f)
    return tok
