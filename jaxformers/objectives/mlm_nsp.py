"""BERT pretraining examples: masked language modelling + next sentence prediction.

Pure numpy/Python (no jax) so it can run in data-loading workers. The instance
builder follows google-research/bert ``create_pretraining_data.py`` step by step,
including the order in which it draws from ``random.Random(seed)``, so a corpus
produces the same pairs, truncations and masks as the reference script (token
ids instead of TFRecords).

Typical use::

    docs = [[tok.tokenize(s) for s in doc] for doc in read_documents(lines)]
    instances = create_instances(docs, tok.vocab, max_seq_length=128)
    batch = collate(instances[:32])        # dict of [32, ...] arrays
    # later epochs, RoBERTa-style: fresh masks on the same pairs
    mv, rng = MaskingVocab.from_tokens(tok.vocab), np.random.default_rng(epoch)
    batch = collate([dynamic_mask(inst, mv, rng) for inst in instances[:32]])
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]")


@dataclasses.dataclass(frozen=True)
class MaskingVocab:
    """Vocabulary lookups needed for masking, computed once per vocabulary.

    Pass one of these instead of the raw token list to `dynamic_mask` when
    calling it per example, to avoid re-scanning a 30k-entry vocabulary.
    """

    tokens: tuple[str, ...]
    token_to_id: dict[str, int]
    continuation_ids: frozenset[int]  # ids of "##" pieces (whole-word masking)
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int

    @classmethod
    def from_tokens(cls, vocab: Sequence[str] | MaskingVocab) -> MaskingVocab:
        """Builds the lookups; raises ValueError naming any missing special token."""
        if isinstance(vocab, MaskingVocab):
            return vocab
        tokens = tuple(vocab)
        token_to_id: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            token_to_id.setdefault(tok, i)  # duplicates: first id wins
        missing = [t for t in SPECIAL_TOKENS if t not in token_to_id]
        if missing:
            raise ValueError(
                f"vocab lacks the special token(s) {', '.join(missing)}; BERT pretraining "
                f"needs all of {', '.join(SPECIAL_TOKENS)} (a BERT vocab.txt has them)"
            )
        cont = frozenset(i for i, t in enumerate(tokens) if t.startswith("##"))
        return cls(
            tokens,
            token_to_id,
            cont,
            token_to_id["[CLS]"],
            token_to_id["[SEP]"],
            token_to_id["[MASK]"],
            token_to_id["[PAD]"],
        )


class _NumpyRandom:
    """Adapts a numpy Generator to the three `random.Random` methods used here."""

    def __init__(self, gen: np.random.Generator):
        self._gen = gen

    def random(self) -> float:
        return float(self._gen.random())

    def randint(self, a: int, b: int) -> int:  # inclusive, like random.randint
        return int(self._gen.integers(a, b + 1))

    def shuffle(self, x: list) -> None:
        x[:] = [x[i] for i in self._gen.permutation(len(x))]


def _check_masking_args(max_predictions_per_seq: int, masked_lm_prob: float) -> None:
    if not 0.0 < masked_lm_prob < 1.0:
        raise ValueError(f"masked_lm_prob must be in (0, 1), got {masked_lm_prob}")
    if max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")


def _mask_sequence(
    ids: list[int],
    mv: MaskingVocab,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    do_whole_word_mask: bool,
    rng,
):
    """BERT's create_masked_lm_predictions on ids; returns (masked ids, positions, labels)."""
    # Candidate groups: one position each, or a whole word when do_whole_word_mask.
    # As in the reference, [CLS]/[SEP] are skipped without closing the current
    # group, so a "##" piece right after [SEP] joins the last word of segment A.
    groups: list[list[int]] = []
    for i, t in enumerate(ids):
        if t == mv.cls_id or t == mv.sep_id:
            continue
        if do_whole_word_mask and groups and t in mv.continuation_ids:
            groups[-1].append(i)
        else:
            groups.append([i])
    rng.shuffle(groups)
    # int(round(.)) is Python's banker's rounding, kept for identical counts.
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(ids) * masked_lm_prob))))
    out = list(ids)
    picked: list[int] = []
    # Groups are disjoint, so the reference's "already covered" check never fires
    # and is omitted; it draws no random numbers, so the stream is unchanged.
    for group in groups:
        if len(picked) >= num_to_predict:
            break
        if len(picked) + len(group) > num_to_predict:
            continue  # a whole word that would overshoot the budget is skipped
        for i in group:
            if rng.random() < 0.8:
                out[i] = mv.mask_id
            elif rng.random() < 0.5:
                pass  # keep the original token (but still predict it)
            else:
                # Uniform over the whole vocab, specials included, as the reference.
                out[i] = rng.randint(0, len(mv.tokens) - 1)
            picked.append(i)
    picked.sort()
    return out, picked, [ids[i] for i in picked]


def _pad_predictions(positions, labels, max_predictions_per_seq) -> dict[str, np.ndarray]:
    k, p = len(positions), max_predictions_per_seq
    out = {
        "masked_lm_positions": np.zeros(p, np.int32),
        "masked_lm_ids": np.zeros(p, np.int32),
        "masked_lm_weights": np.zeros(p, np.float32),
    }
    out["masked_lm_positions"][:k] = positions
    out["masked_lm_ids"][:k] = labels
    out["masked_lm_weights"][:k] = 1.0
    return out


def _pack(
    ids,
    segment_ids,
    positions,
    labels,
    is_random_next,
    max_seq_length,
    max_predictions_per_seq,
    pad_id,
) -> dict[str, np.ndarray]:
    n = len(ids)
    input_ids = np.full(max_seq_length, pad_id, np.int32)
    input_ids[:n] = ids
    input_mask = (np.arange(max_seq_length) < n).astype(np.int32)
    seg = np.zeros(max_seq_length, np.int32)
    seg[:n] = segment_ids
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": seg,
        **_pad_predictions(positions, labels, max_predictions_per_seq),
        "next_sentence_labels": np.asarray(int(is_random_next), np.int32),
    }


def _truncate_seq_pair(a: list[int], b: list[int], max_num_tokens: int, rng) -> None:
    # Trim the longer side (B on ties), from the front or back at random so the
    # model does not learn that sequences always end at a sentence boundary.
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _instances_from_document(
    docs,
    doc_index,
    max_seq_length,
    short_seq_prob,
    masked_lm_prob,
    max_predictions_per_seq,
    do_whole_word_mask,
    mv,
    rng,
):
    """The reference create_instances_from_document, on lists of token ids."""
    document = docs[doc_index]
    max_num_tokens = max_seq_length - 3  # room for [CLS] A [SEP] B [SEP]
    # Mostly fill the sequence, but sometimes train on short ones so the model
    # also sees fine-tuning-like lengths.
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    chunk: list[list[int]] = []
    chunk_len = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_len += len(document[i])
        if i == len(document) - 1 or chunk_len >= target_seq_length:
            # Split at sentence boundaries (not at a random token) so that NSP
            # cannot be solved by spotting a sentence cut in half.
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for seg in chunk[:a_end] for t in seg]
            tokens_b: list[int] = []
            # A single-sentence chunk has no true continuation, so it always takes
            # a random B; this lifts the random-next share above 0.5.
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                target_b_length = target_seq_length - len(tokens_a)
                for _ in range(10):  # try to avoid the current document
                    rand_index = rng.randint(0, len(docs) - 1)
                    if rand_index != doc_index:
                        break
                rand_doc = docs[rand_index]
                for j in range(rng.randint(0, len(rand_doc) - 1), len(rand_doc)):
                    tokens_b.extend(rand_doc[j])
                    if len(tokens_b) >= target_b_length:
                        break
                # The chunk's sentences after a_end were not used: revisit them.
                i -= len(chunk) - a_end
            else:
                is_random_next = False
                tokens_b = [t for seg in chunk[a_end:] for t in seg]
            _truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            ids = [mv.cls_id, *tokens_a, mv.sep_id, *tokens_b, mv.sep_id]
            segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            ids, positions, labels = _mask_sequence(
                ids, mv, masked_lm_prob, max_predictions_per_seq, do_whole_word_mask, rng
            )
            instances.append(
                _pack(
                    ids,
                    segment_ids,
                    positions,
                    labels,
                    is_random_next,
                    max_seq_length,
                    max_predictions_per_seq,
                    mv.pad_id,
                )
            )
            chunk, chunk_len = [], 0
        i += 1
    return instances


def _documents_to_ids(documents, mv: MaskingVocab) -> list[list[list[int]]]:
    lookup = mv.token_to_id
    out = []
    for d, doc in enumerate(documents):
        sentences = []
        for s, sentence in enumerate(doc):
            if isinstance(sentence, str):
                raise ValueError(
                    f"document {d}, sentence {s} is a string; sentences must be "
                    "lists of WordPiece tokens (tokenize them first)"
                )
            try:
                ids = [lookup[t] for t in sentence]
            except KeyError as e:
                raise ValueError(
                    f"token {e.args[0]!r} (document {d}, sentence {s}) is not in the vocab; "
                    "tokenize the text with a WordPiece tokenizer built from this same vocab "
                    "(out-of-vocabulary words then become '[UNK]')"
                ) from None
            if ids:  # like the reference, sentences that tokenize to nothing are dropped
                sentences.append(ids)
        if sentences:  # empty documents are skipped
            out.append(sentences)
    return out


def create_instances(
    documents: Sequence[Sequence[Sequence[str]]],
    vocab: Sequence[str],
    max_seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    masked_lm_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    do_whole_word_mask: bool = False,
    seed: int = 12345,
) -> list[dict[str, np.ndarray]]:
    """Builds BERT MLM+NSP training instances like google-research/bert.

    Args:
        documents: list of documents; each a list of sentences; each a list of
            WordPiece token strings ("##" marks a continuation piece). Empty
            documents and empty sentences are skipped.
        vocab: WordPiece vocabulary, index = id; must hold [CLS], [SEP], [MASK], [PAD].
        max_seq_length: T, padded length of every sequence (>= 5).
        max_predictions_per_seq: P, most masked positions per sequence.
        masked_lm_prob: share of tokens (specials counted in the length) to mask, in (0, 1).
        short_seq_prob: chance per document pass of a random shorter target length.
        dupe_factor: passes over the corpus, each with fresh pairs and masks.
        do_whole_word_mask: mask all pieces of a word together.
        seed: seed of the `random.Random` that drives every choice.

    Returns:
        Shuffled list of dicts: ``input_ids``, ``input_mask``, ``segment_ids``
        int32 [T]; ``masked_lm_positions``, ``masked_lm_ids`` int32 [P] and
        ``masked_lm_weights`` float32 [P] (zero-padded); ``next_sentence_labels``
        int32 scalar, 1 when B is a random segment. Padding uses the [PAD] id.

    Raises:
        ValueError: on a bad argument, missing special token or out-of-vocab token.
    """
    if max_seq_length < 5:
        raise ValueError(
            f"max_seq_length must be >= 5 ([CLS] A [SEP] B [SEP]), got {max_seq_length}"
        )
    _check_masking_args(max_predictions_per_seq, masked_lm_prob)
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor must be >= 1, got {dupe_factor}")
    mv = MaskingVocab.from_tokens(vocab)
    docs = _documents_to_ids(documents, mv)
    rng = random.Random(seed)
    rng.shuffle(docs)  # the reference shuffles documents once, before the passes
    instances = []
    for _ in range(dupe_factor):
        for doc_index in range(len(docs)):
            instances.extend(
                _instances_from_document(
                    docs,
                    doc_index,
                    max_seq_length,
                    short_seq_prob,
                    masked_lm_prob,
                    max_predictions_per_seq,
                    do_whole_word_mask,
                    mv,
                    rng,
                )
            )
    rng.shuffle(instances)
    return instances


def document_seed(*key: int) -> int:
    """A 64-bit seed for ``random.Random`` from non-negative ints, e.g. (seed, pass, document):
    distinct keys give independent streams, whatever order the documents are visited in."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0])


def document_instances(
    docs: Sequence[Sequence[Sequence[int]]],
    doc_index: int,
    vocab: Sequence[str] | MaskingVocab,
    max_seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    masked_lm_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    do_whole_word_mask: bool = False,
    seed: int = 12345,
    dupe: int = 0,
) -> list[dict[str, np.ndarray]]:
    """The instances of one document in one pass, as `create_instances` builds them, from a
    ``random.Random`` of its own seeded by ``document_seed(seed, dupe, doc_index)``.

    This is the streaming form of google-research/bert's ``create_instances_from_document``: the
    pairs, truncations and masks follow the same algorithm and draw order, but each document has
    its own random stream instead of one stream through the whole corpus, so any document can be
    built alone, in any order, in any worker. ``create_instances`` (one stream, then a global
    shuffle) is unchanged.

    Args:
        docs: documents as sentences of token ids, random access (``len`` and ``[i]``; may be
            lazy). The random B segment is read from ``docs[j]`` for a random ``j``. Empty
            sentences must already be dropped; an empty document yields no instances and must
            not be drawn as a B (a lazy view can stand another in for it).
        doc_index: the document to build.
        vocab, max_seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob,
            do_whole_word_mask: as `create_instances`.
        seed, dupe: with ``doc_index``, what the document's random stream is seeded by.

    Returns:
        The document's instances in order (dicts as `create_instances` returns).
    """
    if max_seq_length < 5:
        raise ValueError(
            f"max_seq_length must be >= 5 ([CLS] A [SEP] B [SEP]), got {max_seq_length}"
        )
    _check_masking_args(max_predictions_per_seq, masked_lm_prob)
    if not docs[doc_index]:
        return []
    return _instances_from_document(
        docs,
        doc_index,
        max_seq_length,
        short_seq_prob,
        masked_lm_prob,
        max_predictions_per_seq,
        do_whole_word_mask,
        MaskingVocab.from_tokens(vocab),
        random.Random(document_seed(seed, dupe, doc_index)),
    )


def original_input_ids(instance: Mapping[str, np.ndarray]) -> np.ndarray:
    """Undoes the masking of one instance: [T] int32 ids with labels put back."""
    ids = np.array(instance["input_ids"], np.int32, copy=True)
    real = np.asarray(instance["masked_lm_weights"]) > 0
    ids[np.asarray(instance["masked_lm_positions"])[real]] = np.asarray(instance["masked_lm_ids"])[
        real
    ]
    return ids


def dynamic_mask(
    instance_tokens_or_ids,
    vocab: Sequence[str] | MaskingVocab,
    rng,
    *,
    max_predictions_per_seq: int | None = None,
    masked_lm_prob: float = 0.15,
    do_whole_word_mask: bool = False,
) -> dict[str, np.ndarray]:
    """Re-masks one sequence with fresh randomness (RoBERTa-style dynamic masking).

    Same rules as `create_instances` (80% [MASK] / 10% kept / 10% random id,
    [CLS]/[SEP]/padding never masked, optional whole-word groups), but new
    positions every call, so a pipeline can re-mask each epoch.

    Args:
        instance_tokens_or_ids: either an instance dict from `create_instances`
            (its masking is undone first), or an unmasked [T] sequence of ids or
            token strings, e.g. ``[CLS] A [SEP] B [SEP]`` with optional trailing [PAD].
        vocab: token list (index = id) or a prebuilt `MaskingVocab` (faster).
        rng: numpy Generator, int seed, or `random.Random`.
        max_predictions_per_seq: P; defaults to the instance's P, else 20.
        masked_lm_prob: share of the real length to mask, in (0, 1).
        do_whole_word_mask: mask all "##" pieces of a word together.

    Returns:
        For an instance dict: a new instance dict with the same keys and shapes.
        For a sequence: ``input_ids`` int32 [T] and ``masked_lm_positions``,
        ``masked_lm_ids`` int32 [P], ``masked_lm_weights`` float32 [P].
    """
    mv = MaskingVocab.from_tokens(vocab)
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        rng = _NumpyRandom(rng)
    is_instance = isinstance(instance_tokens_or_ids, Mapping)
    if is_instance:
        ids = original_input_ids(instance_tokens_or_ids)
        n = int(np.sum(instance_tokens_or_ids["input_mask"]))
        if max_predictions_per_seq is None:
            max_predictions_per_seq = len(instance_tokens_or_ids["masked_lm_positions"])
    else:
        seq = list(instance_tokens_or_ids)
        if any(isinstance(t, str) for t in seq):
            missing = [t for t in seq if t not in mv.token_to_id]
            if missing:
                raise ValueError(
                    f"token {missing[0]!r} is not in the vocab; tokenize with the "
                    "same vocab (unknown words become '[UNK]')"
                )
            seq = [mv.token_to_id[t] for t in seq]
        ids = np.asarray(seq, np.int32)
        n = len(ids)
        while n > 0 and ids[n - 1] == mv.pad_id:  # trailing padding is not content
            n -= 1
    max_predictions_per_seq = 20 if max_predictions_per_seq is None else max_predictions_per_seq
    _check_masking_args(max_predictions_per_seq, masked_lm_prob)
    masked, positions, labels = _mask_sequence(
        ids[:n].tolist(), mv, masked_lm_prob, max_predictions_per_seq, do_whole_word_mask, rng
    )
    out_ids = ids.copy()
    out_ids[:n] = masked
    result = {"input_ids": out_ids, **_pad_predictions(positions, labels, max_predictions_per_seq)}
    if is_instance:
        return {**{key: np.array(v) for key, v in instance_tokens_or_ids.items()}, **result}
    return result


def collate(instances: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks instances into a batch: each key becomes an [N, ...] array
    (``next_sentence_labels`` becomes [B])."""
    if not instances:
        raise ValueError("collate needs at least one instance")
    return {key: np.stack([np.asarray(inst[key]) for inst in instances]) for key in instances[0]}


def read_documents(lines: Iterable[str]) -> list[list[str]]:
    """Parses the reference input format: one sentence per line, blank line between documents.

    Args:
        lines: text lines (e.g. an open file); surrounding whitespace is stripped.

    Returns:
        Documents as lists of sentence strings; empty documents are dropped.
    """
    docs: list[list[str]] = [[]]
    for line in lines:
        line = line.strip()
        if not line:
            docs.append([])
        else:
            docs[-1].append(line)
    return [d for d in docs if d]


# Words whose trailing period usually does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e al fig no vol cf approx inc ltd co".split()
)
# Candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace.
_BOUNDARY = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*\s+")
_WORD_BEFORE = re.compile(r"(\S+)$")


def sentence_split(text: str) -> list[str]:
    """Splits plain text into sentences with a simple regex heuristic.

    A boundary is ``.``, ``!`` or ``?`` (possibly repeated, possibly followed by
    closing quotes or brackets), then whitespace, then a sentence start: an
    uppercase letter, a digit, or an opening quote/bracket. A period after a
    common abbreviation (Mr., Dr., e.g., ...) or a single capital initial
    (J. Smith) is not a boundary. Newlines count as ordinary whitespace, so
    wrapped paragraphs are fine. It is a heuristic, not a parser: decimals and
    URLs survive, but unusual abbreviations will split.

    Args:
        text: plain text.

    Returns:
        Stripped, non-empty sentences in order.
    """
    return [text[a:b] for a, b in sentence_spans(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``sentence_split`` as character spans: ``text[a:b]`` for each ``(a, b)`` is a sentence.

    Streaming BERT data keeps these (two ints a sentence) for documents it reads random B
    segments from, and tokenizes only the few sentences a segment needs.
    """
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        rest = text[m.end() : m.end() + 2]
        if not rest or not (
            rest[0].isupper()
            or rest[0].isdigit()
            or (rest[0] in "\"'([\u201c\u2018" and rest[1:2].isalnum())
        ):
            continue
        word = _WORD_BEFORE.search(text, start, m.start() + 1)
        if m.group().startswith(".") and word:
            stem = word.group(1).lower().rstrip(".").lstrip("\"'([")
            if stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha()):
                continue
        spans.append(_stripped(text, start, m.end()))
        start = m.end()
    spans.append(_stripped(text, start, len(text)))
    return [(a, b) for a, b in spans if b > a]


def _stripped(text: str, a: int, b: int) -> tuple[int, int]:
    """The span of ``text[a:b].strip()``."""
    piece = text[a:b]
    start = a + len(piece) - len(piece.lstrip())
    return start, max(start, a + len(piece.rstrip()))
