"""WordPiece tokenization compatible with BERT, backed by HF `tokenizers`.

`WordPieceTokenizer` reproduces BERT's ``FullTokenizer`` (and transformers'
``BertTokenizer``): clean text, space out CJK characters, optionally lowercase
and strip accents, split on whitespace and punctuation, then greedy
longest-match WordPiece with "##" continuation pieces. `train_wordpiece`
learns a new vocabulary offline from an iterator of texts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

REQUIRED_TOKENS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")
CONTINUATION_PREFIX = "##"


def word_starts(tokens: Sequence[str]) -> list[bool]:
    """True where a token begins a word, i.e. does not carry the "##" prefix.

    Args:
        tokens: [T] WordPiece tokens.

    Returns:
        [T] booleans; special tokens such as [CLS] count as word starts.
    """
    return [not t.startswith(CONTINUATION_PREFIX) for t in tokens]


class WordPieceTokenizer:
    """BERT WordPiece tokenizer over a fixed vocabulary.

    Args:
        vocab: tokens, index = id; must contain [CLS], [SEP], [MASK], [PAD], [UNK].
        lowercase: lowercase input (True for "uncased" vocabularies).
        strip_accents: remove accents; None follows `lowercase`, as BERT does.
        max_input_chars_per_word: longer words become [UNK] (BERT uses 100).

    Raises:
        ValueError: if a required special token is missing.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        max_input_chars_per_word: int = 100,
    ):
        self.vocab: list[str] = list(vocab)
        token_to_id: dict[str, int] = {}
        for i, tok in enumerate(self.vocab):
            token_to_id.setdefault(tok, i)  # duplicate lines: first id wins
        missing = [t for t in REQUIRED_TOKENS if t not in token_to_id]
        if missing:
            raise ValueError(
                f"vocab lacks the special token(s) {', '.join(missing)}; a BERT "
                f"WordPiece vocab needs all of {', '.join(REQUIRED_TOKENS)}"
            )
        self._token_to_id = token_to_id
        self.lowercase = lowercase
        tok = Tokenizer(
            models.WordPiece(
                token_to_id,
                unk_token="[UNK]",
                continuing_subword_prefix=CONTINUATION_PREFIX,
                max_input_chars_per_word=max_input_chars_per_word,
            )
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
        # Registered as special so a literal "[MASK]" in text stays one token,
        # as with BERT's tokenizers, instead of being split on punctuation.
        tok.add_special_tokens(list(REQUIRED_TOKENS))
        cls_, sep = ("[CLS]", self.cls_id), ("[SEP]", self.sep_id)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[cls_, sep]
        )
        self._tok = tok

    @classmethod
    def from_vocab_file(
        cls, path: str | os.PathLike, lowercase: bool = True, strip_accents: bool | None = None
    ) -> WordPieceTokenizer:
        """Loads a BERT ``vocab.txt`` (one token per line, line number = id)."""
        with open(path, encoding="utf-8") as f:
            vocab = [line.rstrip("\r\n") for line in f]
        return cls(vocab, lowercase=lowercase, strip_accents=strip_accents)

    # ---- special ids -------------------------------------------------------
    @property
    def cls_id(self) -> int:
        return self._token_to_id["[CLS]"]

    @property
    def sep_id(self) -> int:
        return self._token_to_id["[SEP]"]

    @property
    def mask_id(self) -> int:
        return self._token_to_id["[MASK]"]

    @property
    def pad_id(self) -> int:
        return self._token_to_id["[PAD]"]

    @property
    def unk_id(self) -> int:
        return self._token_to_id["[UNK]"]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    # ---- text -> pieces ----------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece tokens (no [CLS]/[SEP])."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(
        self, text: str, pair: str | None = None, add_special_tokens: bool = False
    ) -> list[int]:
        """Text -> ids. By default just the pieces, so that
        ``encode(t) == convert_tokens_to_ids(tokenize(t))``; with
        ``add_special_tokens`` it gives ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``."""
        return self._tok.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]:
        """Batched `encode` (parallel in the Rust backend)."""
        return [
            e.ids
            for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        ]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of ``encode(text)`` and each piece's [start, end) character span in ``text``
        (the original string, before lowercasing and accent stripping): question answering
        maps predicted pieces back to the context's characters with them."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def word_ids(self, text: str) -> list[int | None]:
        """Index of the pre-tokenized word (whitespace/punctuation split) of each
        piece of `tokenize(text)`. Same boundaries as `word_starts(tokenize(text))`,
        except that a word that maps to a single [UNK] is also one word."""
        return self._tok.encode(text, add_special_tokens=False).word_ids

    word_starts = staticmethod(word_starts)

    # ---- ids <-> tokens ----------------------------------------------------
    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Tokens -> ids; tokens not in the vocab map to [UNK]."""
        unk = self.unk_id
        return [self._token_to_id.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens (IndexError for an id outside the vocab)."""
        return [self.vocab[int(i)] for i in ids]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text: joins "##" pieces and tidies spaces before punctuation.
        Lowercasing/accent stripping are not undone."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save_vocab(self, save_dir: str | os.PathLike) -> str:
        """Writes ``vocab.txt`` into `save_dir` and returns its path."""
        os.makedirs(save_dir, exist_ok=True)
        path = os.path.join(save_dir, "vocab.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in self.vocab)
        return path


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int = 30522,
    lowercase: bool = True,
    save_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    special_tokens: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
) -> WordPieceTokenizer:
    """Learns a WordPiece vocabulary with HF `tokenizers` (fast, offline).

    Uses the same normalization and pre-tokenization as `WordPieceTokenizer`, so
    the trained vocab tokenizes consistently. Special tokens get the first ids
    ([PAD] = 0 with the default order, as in BERT's vocab).

    Args:
        texts: iterable of documents or lines.
        vocab_size: target size (the result can be smaller on a tiny corpus).
        lowercase: uncased (True) or cased vocabulary.
        save_dir: if given, ``vocab.txt`` is written there.
        min_frequency: minimum pair count for a merge.
        limit_alphabet: most distinct initial characters kept.
        special_tokens: must include [CLS], [SEP], [MASK], [PAD], [UNK].

    Returns:
        A `WordPieceTokenizer` over the learned vocabulary.
    """
    missing = [t for t in REQUIRED_TOKENS if t not in special_tokens]
    if missing:
        raise ValueError(f"special_tokens lacks {', '.join(missing)}")
    tok = Tokenizer(
        models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX)
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=list(special_tokens),
        limit_alphabet=limit_alphabet,
        continuing_subword_prefix=CONTINUATION_PREFIX,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    by_id = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise RuntimeError("trained vocabulary ids are not contiguous")
    result = WordPieceTokenizer([t for t, _ in by_id], lowercase=lowercase)
    if save_dir is not None:
        result.save_vocab(save_dir)
    return result
