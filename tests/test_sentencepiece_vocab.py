"""Tests for the T5-style SentencePiece vocabulary (trains tiny models offline)."""

import pickle

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from jaxformers.data.sentencepiece_vocab import SentencePieceVocab, train_sentencepiece
from jaxformers.objectives import span_corruption

PIECES = 500


def make_texts(n_docs, seed):
    """English-like text: Zipf-distributed made-up words, sentences, punctuation."""
    rng = np.random.default_rng(seed)
    onsets = list("bcdfghjklmnprstvwz") + ["th", "ch", "sh", "st", "tr", "pl"]
    vowels = list("aeiou") + ["ea", "ou", "ai"]
    words = sorted(
        {
            "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.integers(1, 4)))
            + rng.choice(["", "s", "ed", "ing", "n"])
            for _ in range(3000)
        }
    )
    words = ["the", "a", "of", "and", "to", "in", "is", "it"] + words
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()

    def sentence():
        s = " ".join(rng.choice(words, size=rng.integers(4, 14), p=p))
        return s[0].upper() + s[1:] + rng.choice([".", "!", "?", ","])

    return [" ".join(sentence() for _ in range(5)) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("spm") / "t5ish"
    return train_sentencepiece(make_texts(400, seed=0), prefix, vocab_size=PIECES)


def test_t5_id_layout(vocab):
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.base_vocab_size == PIECES and vocab.extra_ids == 100
    assert vocab.vocab_size == PIECES + 100
    sp = vocab.sp_model
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert sp.bos_id() == -1


def test_round_trip_on_seen_and_unseen_text(vocab):
    for text in make_texts(5, seed=0) + make_texts(20, seed=123):
        ids = vocab.encode(text)
        assert ids and all(3 <= i < vocab.base_vocab_size for i in ids)  # no EOS/pad/unk
        assert vocab.decode(ids) == text


def test_sentinel_ids_count_down_from_the_top(vocab):
    assert vocab.sentinel_id(0) == vocab.vocab_size - 1
    assert vocab.sentinel_id(99) == vocab.base_vocab_size
    for n in (-1, 100):
        with pytest.raises(ValueError, match="sentinel index"):
            vocab.sentinel_id(n)
    assert vocab.encode("<extra_id_0>") == [vocab.sentinel_id(0)]
    assert vocab.decode([vocab.sentinel_id(7)]) == "<extra_id_7>"
    text = "The dog <extra_id_0> over the <extra_id_12>."
    ids = vocab.encode(text)
    assert [i for i in ids if i >= vocab.base_vocab_size] == [
        vocab.sentinel_id(0),
        vocab.sentinel_id(12),
    ]
    assert vocab.decode(ids) == text


def test_decode_stops_at_eos_and_skips_pad(vocab):
    text = make_texts(1, seed=9)[0]
    ids = vocab.encode(text)
    assert vocab.decode([0] + ids + [0, 0]) == text
    assert vocab.decode(np.array(ids + [1] + ids, dtype=np.int32)) == text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([vocab.vocab_size])


def test_load_from_bytes_path_and_pickle(vocab, tmp_path):
    proto = pickle.loads(pickle.dumps(vocab))._proto
    path = tmp_path / "copy.model"
    path.write_bytes(proto)
    text = make_texts(1, seed=4)[0]
    for other in (
        SentencePieceVocab(proto),
        SentencePieceVocab(path),
        pickle.loads(pickle.dumps(vocab)),
    ):
        assert other.vocab_size == vocab.vocab_size
        assert other.encode(text) == vocab.encode(text)


def test_span_corruption_output_decodes_with_sentinels(vocab):
    text = " ".join(make_texts(3, seed=5))
    tokens = vocab.encode(text)
    ex = span_corruption.span_corrupt(tokens, vocab.vocab_size, seed=1)
    inputs, targets = vocab.decode(ex["inputs"]), vocab.decode(ex["targets"])
    assert targets.startswith("<extra_id_0>")
    assert "<extra_id_0>" in inputs and "<extra_id_1>" in inputs


def test_rejects_non_t5_special_ids(tmp_path):
    # SentencePiece's own defaults: unk=0, bos=1, eos=2, no pad.
    with pytest.raises(ValueError, match="pad=0 and eos=1"):
        train_sentencepiece(
            make_texts(100, seed=1),
            tmp_path / "m",
            vocab_size=200,
            pad_id=-1,
            unk_id=0,
            bos_id=1,
            eos_id=2,
        )


def test_rejects_bad_models_and_arguments(vocab, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        SentencePieceVocab(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="not a valid"):
        SentencePieceVocab(b"\xff\x00 definitely not a model")
    with pytest.raises(ValueError, match="extra_ids"):
        SentencePieceVocab(vocab._proto, extra_ids=-1)
    # A model saved with its sentinels already inside would get them twice.
    with_sentinels = vocab.sp_model.serialized_model_proto()
    with pytest.raises(ValueError, match="already contains"):
        SentencePieceVocab(with_sentinels)
    assert SentencePieceVocab(with_sentinels, extra_ids=0).vocab_size == vocab.vocab_size
    # Only the pad/eos/unk pieces: SentencePiece refuses it, we say so clearly.
    model = sp_pb2.ModelProto.FromString(vocab._proto)
    del model.pieces[3:]
    with pytest.raises(ValueError, match="not a valid"):
        SentencePieceVocab(model.SerializeToString())


def test_train_errors_and_file_input(tmp_path):
    with pytest.raises(ValueError, match="no non-empty text"):
        train_sentencepiece(["", "  \n"], tmp_path / "a", vocab_size=100)
    with pytest.raises(ValueError, match="training file not found"):
        train_sentencepiece(str(tmp_path / "nope.txt"), tmp_path / "b", vocab_size=100)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_texts(100, seed=2)))
    with pytest.raises(ValueError, match="too small for it"):
        train_sentencepiece(corpus, tmp_path / "c", vocab_size=50_000)
    with pytest.raises(ValueError, match="smaller than required_chars"):
        train_sentencepiece(corpus, tmp_path / "e", vocab_size=5)
    v = train_sentencepiece(corpus, tmp_path / "sub" / "d", vocab_size=200, extra_ids=10)
    assert v.vocab_size == 210 and v.sentinel_id(0) == 209
    assert (tmp_path / "sub" / "d.model").is_file()
