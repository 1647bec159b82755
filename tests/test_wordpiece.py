"""WordPiece tokenizer: parity with transformers' BERT tokenizers, and training."""

import os
import random

import pytest
from helpers import FUZZ, play_excerpt
from hypothesis import given
from hypothesis import strategies as st

from jaxformers.data.wordpiece import WordPieceTokenizer, train_wordpiece, word_starts

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo, Wörld! Crème brûlée at the café, naïve façade.",
    "Don't stop-believing: it's 3.14159 (approximately), or $1,000,000?!",
    "unaffable antidisestablishmentarianism xyzzyqq floccinaucinihilipilification",
    "In 2023, GPT-4 scored 86.4% on MMLU; BERT-base has 110M parameters.",
    "東京は日本の首都です。 北京 and 서울 are capitals too.",
    "Emoji 😀🚀 and symbols ™ © ® § ¶ † ‡ • … are odd.",
    "  Tabs\tand\nnewlines\r\nand   multiple    spaces  ",
    "Email me at someone@example.com or visit https://example.org/a?b=c&d=e#f",
    "ΑΒΓ αβγ Привет мир — em-dash – en-dash « quotes » “curly” ‘single’",
    "[MASK] tokens and [CLS] [SEP] [UNK] [PAD] stay whole; [mask] does not.",
    "Zero\u200bwidth\u00a0nbsp\ufeffbom and control\x07chars and ÅNGSTRÖM Ǆ ﬁ ligature",
    "",
]


@pytest.fixture(scope="module")
def vocab_path(minilm_dir):
    """bert-base-uncased's vocab.txt."""
    return os.path.join(minilm_dir, "vocab.txt")


@pytest.fixture(scope="module")
def tok(vocab_path):
    return WordPieceTokenizer.from_vocab_file(vocab_path)


def _reference_tokenizers(transformers, vocab_path, lowercase):
    refs = [transformers.BertTokenizerFast(vocab_path, do_lower_case=lowercase)]
    # transformers 5 also ships the pure-Python BERT tokenizer, an independent check
    # (BertTokenizerFast itself runs on the same Rust `tokenizers` backend as ours).
    # (transformers 4 calls it BertTokenizer, there distinct from the fast class).
    slow = getattr(transformers, "BertTokenizerLegacy", None)
    if slow is None and transformers.BertTokenizer is not transformers.BertTokenizerFast:
        slow = transformers.BertTokenizer
    if slow is not None:
        refs.append(slow(vocab_path, do_lower_case=lowercase))
    return refs


@pytest.mark.parametrize("lowercase", [True, False])
def test_matches_transformers(vocab_path, transformers, lowercase):
    ours = WordPieceTokenizer.from_vocab_file(vocab_path, lowercase=lowercase)
    refs = _reference_tokenizers(transformers, vocab_path, lowercase)
    for text in SENTENCES:
        pieces = ours.tokenize(text)
        for ref in refs:
            assert pieces == ref.tokenize(text), (type(ref).__name__, text)
            assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
            assert ours.encode(text, add_special_tokens=True) == ref.encode(text)
        assert ours.encode(text) == ours.convert_tokens_to_ids(pieces)
        ids = ours.encode(text, add_special_tokens=True)
        for skip in (False, True):
            assert ours.decode(ids, skip) == refs[0].decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False
            )
    pair = ("First segment here.", "And the second, Ünïcödé one.")
    for ref in refs:
        assert ours.encode(*pair, add_special_tokens=True) == ref.encode(*pair)


def test_known_tokenization(tok):
    assert tok.tokenize("Unaffable Héllo!") == ["una", "##ffa", "##ble", "hello", "!"]
    assert tok.tokenize("😀") == ["[UNK]"]
    assert tok.tokenize("a" * 101) == ["[UNK]"]  # BERT's max_input_chars_per_word=100
    assert (tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, tok.unk_id) == (101, 102, 103, 0, 100)
    assert len(tok) == tok.vocab_size == len(tok.vocab) == 30522 and tok.vocab[101] == "[CLS]"


def test_word_boundaries(tok):
    text = "Unaffable writers rewrite, quickly."
    pieces = tok.tokenize(text)
    starts = word_starts(pieces)
    assert starts == tok.word_starts(pieces) == [not p.startswith("##") for p in pieces]
    wids = tok.word_ids(text)
    assert len(wids) == len(pieces)
    # A new word id begins exactly where a piece lacks the "##" prefix.
    assert starts == [i == 0 or w != wids[i - 1] for i, w in enumerate(wids)]
    assert word_starts(["[CLS]", "un", "##aff", "[SEP]"]) == [True, True, False, True]


def test_ids_and_decode(tok):
    ids = tok.encode("The café's naïve owner, unaffable.")
    assert tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(ids)) == ids
    # Decoding is lossy (case, accents, spacing around punctuation), like BERT's.
    assert tok.decode(ids) == "the cafe ' s naive owner, unaffable."
    with_special = tok.encode("hello world", add_special_tokens=True)
    assert tok.decode(with_special) == "[CLS] hello world [SEP]"
    assert tok.decode(with_special, skip_special_tokens=True) == "hello world"
    assert tok.convert_tokens_to_ids(["hello", "NotAToken"]) == [7592, tok.unk_id]
    assert tok.encode_batch(["hello", "world"]) == [tok.encode("hello"), tok.encode("world")]


def test_missing_special_tokens(tok):
    for missing in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"):
        with pytest.raises(ValueError, match=missing.replace("[", r"\[").replace("]", r"\]")):
            WordPieceTokenizer([t for t in tok.vocab if t != missing])


def _synthetic_corpus(n, seed=0):
    r = random.Random(seed)
    syll = ["ka", "lo", "mi", "ra", "tu", "zen", "pho", "qui", "str", "ble", "ing", "ed", "ness"]
    words = ["".join(r.choice(syll) for _ in range(r.randint(1, 4))) for _ in range(400)]
    lines = []
    for _ in range(n):
        line = " ".join(r.choice(words) for _ in range(r.randint(4, 12)))
        lines.append(line.capitalize() + r.choice([".", "!", "?", ","]))
    return lines


def test_train_wordpiece_round_trip(tmp_path):
    texts = _synthetic_corpus(3000)
    trained = train_wordpiece(texts, vocab_size=400, save_dir=tmp_path)
    assert trained.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 200 <= len(trained.vocab) <= 400
    assert any(t.startswith("##") for t in trained.vocab)
    with open(tmp_path / "vocab.txt", encoding="utf-8") as f:
        assert [line.rstrip("\n") for line in f] == trained.vocab
    reloaded = WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    for text in texts[:200]:
        pieces = trained.tokenize(text)
        assert "[UNK]" not in pieces
        assert reloaded.tokenize(text) == pieces
        assert trained.decode(trained.encode(text)) == text.lower()
    # Subwords actually split words: fewer pieces than characters, more than words.
    text = " ".join(texts[:50])
    n_pieces = len(trained.tokenize(text))
    assert len(text.split()) < n_pieces < len(text.replace(" ", ""))


def test_train_wordpiece_cased():
    texts = _synthetic_corpus(500, seed=1)
    trained = train_wordpiece(texts, vocab_size=300, lowercase=False)
    assert not trained.lowercase
    assert any(c.isupper() for t in trained.vocab for c in t)
    text = texts[0]
    assert trained.decode(trained.encode(text)) == text


# ---- fuzzing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_wordpiece():
    """A WordPiece tokenizer trained on the lines of 20,000 characters of a play."""
    return train_wordpiece(play_excerpt(20_000).splitlines(), 300)


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzz_encode_decode(fuzz_wordpiece, text):
    ids = fuzz_wordpiece.encode(text)
    assert all(0 <= i < fuzz_wordpiece.vocab_size for i in ids)
    fuzz_wordpiece.decode(ids)
