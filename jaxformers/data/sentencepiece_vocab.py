"""SentencePiece vocabulary with T5's conventions, and an offline trainer.

T5 ids: pad=0, eos=1, unk=2, no bos. On top of the SentencePiece pieces the
vocabulary gets ``extra_ids`` sentinel ids (<extra_id_0> .. <extra_id_{n-1}>),
numbered from the top: ``<extra_id_N> = vocab_size - 1 - N``. That is what the
span-corruption objective emits (see ``jaxformers.objectives.span_corruption``).
The public T5 ``spiece.model`` has 32000 pieces, so ``vocab_size`` is 32100.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class SentencePieceVocab:
    """T5-style SentencePiece vocabulary with sentinel ids at the top.

    Like seqio, the sentinels are added to the model itself as user-defined
    pieces ``"\u2581<extra_id_N>"`` (highest N first), so SentencePiece encodes
    ``<extra_id_N>`` markup and decodes sentinels with the right spacing. As in
    seqio, markup is only recognised at a word start (``"and <extra_id_0>ly"``
    works, ``"jel<extra_id_0>"`` does not).

    Args:
        model_path_or_proto: path to a ``spiece.model`` file, or its serialized
            bytes.
        extra_ids: number of sentinel ids appended after the SentencePiece
            pieces (T5 uses 100).

    Raises:
        ValueError: the model is unreadable (SentencePiece also refuses a model
            with no content pieces), does not use pad=0 / eos=1 or already
            contains sentinel pieces; or ``extra_ids < 0``.
    """

    def __init__(self, model_path_or_proto: str | os.PathLike | bytes, extra_ids: int = 100):
        if isinstance(model_path_or_proto, (bytes, bytearray, memoryview)):
            proto = bytes(model_path_or_proto)
        else:
            path = Path(model_path_or_proto)
            if not path.is_file():
                raise ValueError(f"SentencePiece model file not found: {path}")
            proto = path.read_bytes()
        self._load(proto, extra_ids)

    def _load(self, proto: bytes, extra_ids: int) -> None:
        if extra_ids < 0:
            raise ValueError(f"extra_ids must be >= 0, got {extra_ids}.")
        try:
            model = sp_pb2.ModelProto.FromString(proto)
        except DecodeError as e:
            raise ValueError(f"not a valid SentencePiece model: {e}") from e
        base = spm.SentencePieceProcessor()
        try:
            base.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"not a valid SentencePiece model: {e}") from e
        if base.pad_id() != PAD_ID or base.eos_id() != EOS_ID:
            raise ValueError(
                f"T5 vocabularies need pad=0 and eos=1, this model has pad={base.pad_id()} "
                f"eos={base.eos_id()}; retrain with pad_id=0 eos_id=1 unk_id=2 bos_id=-1 "
                "(train_sentencepiece does this)."
            )
        if extra_ids and any("<extra_id_" in p.piece for p in model.pieces):
            raise ValueError(
                "the model already contains <extra_id_N> pieces; load it with extra_ids=0 "
                "or use the original spiece.model."
            )
        for n in reversed(range(extra_ids)):
            model.pieces.add(
                piece=f"\u2581<extra_id_{n}>",
                score=0.0,
                type=sp_pb2.ModelProto.SentencePiece.USER_DEFINED,
            )
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(model.SerializeToString())
        self._proto = proto
        self._sp = sp
        self._base_size = base.get_piece_size()
        self._extra_ids = extra_ids

    # Pickle via the serialized proto so the vocab can go to worker processes.
    def __getstate__(self) -> dict:
        return {"proto": self._proto, "extra_ids": self._extra_ids}

    def __setstate__(self, state: dict) -> None:
        self._load(state["proto"], state["extra_ids"])

    @property
    def sp_model(self) -> spm.SentencePieceProcessor:
        """The underlying processor, sentinel pieces included."""
        return self._sp

    @property
    def base_vocab_size(self) -> int:
        """Number of pieces in the original model, i.e. ids below the sentinels."""
        return self._base_size

    @property
    def extra_ids(self) -> int:
        return self._extra_ids

    @property
    def vocab_size(self) -> int:
        """Pieces plus sentinels; the embedding table needs at least this many rows."""
        return self._base_size + self._extra_ids

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def sentinel_id(self, n: int) -> int:
        """Id of ``<extra_id_n>``: ``vocab_size - 1 - n``."""
        if not 0 <= n < self._extra_ids:
            raise ValueError(f"sentinel index must be in [0, {self._extra_ids}), got {n}.")
        return self.vocab_size - 1 - n

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without EOS; ``<extra_id_N>`` at a word start -> sentinel."""
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Stops at the first EOS, skips pad, renders sentinels as
        ``<extra_id_N>``.

        Raises:
            ValueError: an id is outside ``[0, vocab_size)``.
        """
        kept = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == EOS_ID:
                break
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"id {token_id} is outside the vocabulary [0, {self.vocab_size}).")
            if token_id != PAD_ID:
                kept.append(token_id)
        return self._sp.decode(kept)


def _iter_lines(texts: Iterable[str]) -> Iterable[str]:
    # SentencePiece treats each yielded string as one sentence and skips very
    # long ones, so split documents into lines.
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line


def train_sentencepiece(
    texts_or_path: str | os.PathLike | Sequence[str],
    model_prefix: str | os.PathLike,
    vocab_size: int = 8000,
    *,
    extra_ids: int = 100,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 1_000_000,
    num_threads: int | None = None,
    **trainer_kwargs,
) -> SentencePieceVocab:
    """Train a SentencePiece model with T5's id layout (pad=0, eos=1, unk=2, no bos).

    Runs fully offline in-process and writes ``{model_prefix}.model`` and
    ``{model_prefix}.vocab``.

    Args:
        texts_or_path: a text file (one sentence per line) or an iterable of
            strings (split on newlines). A single ``str`` is a path.
        model_prefix: output path prefix; parent directories are created.
        vocab_size: number of SentencePiece pieces, excluding ``extra_ids``.
        extra_ids: sentinels added by the returned ``SentencePieceVocab``.
        model_type: "unigram" (T5) or any other SentencePiece model type.
        character_coverage: fraction of characters covered by pieces.
        input_sentence_size: sentences sampled for training (bounds time).
        num_threads: trainer threads; default ``min(16, os.cpu_count())``.
        **trainer_kwargs: passed on to ``SentencePieceTrainer.train``.

    Returns:
        The trained vocabulary.
    """
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    options = dict(
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=num_threads or min(16, os.cpu_count() or 1),
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=1,
    )
    options.update(trainer_kwargs)
    if isinstance(texts_or_path, (str, os.PathLike)):
        if not Path(texts_or_path).is_file():
            raise ValueError(
                f"training file not found: {texts_or_path} (pass a list of strings to train "
                "on texts directly)."
            )
        options["input"] = str(texts_or_path)
    else:
        lines = list(_iter_lines(texts_or_path))
        if not lines:
            raise ValueError("no non-empty text to train SentencePiece on.")
        options["sentence_iterator"] = iter(lines)
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as e:
        hint = ""
        if "too high" in str(e):
            hint = (
                " The corpus is too small for it: lower vocab_size or pass hard_vocab_limit=False."
            )
        raise ValueError(f"SentencePiece training failed: {e}{hint}") from e
    return SentencePieceVocab(f"{prefix}.model", extra_ids=extra_ids)
