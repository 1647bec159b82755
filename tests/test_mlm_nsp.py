"""Invariant and statistical tests for BERT MLM+NSP instance creation (numpy only)."""

import math
import os
import random
import re

import numpy as np
import pytest
from helpers import FUZZ
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxformers.objectives import mlm_nsp

SIGMAS = 4.5  # statistical bounds: chance of a false failure ~1e-5 per check


@pytest.fixture(scope="module")
def vocab(minilm_dir):
    """bert-base-uncased's vocabulary."""
    with open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


@pytest.fixture(scope="module")
def mv(vocab):
    return mlm_nsp.MaskingVocab.from_tokens(vocab)


@pytest.fixture(scope="module")
def documents(vocab):
    """A synthetic corpus: 300 documents of 0..20 sentences; ~20% of words get a '##' piece."""
    r = random.Random(7)
    words = [w for w in vocab if w.isascii() and w.isalpha() and len(w) > 1]
    pieces = [w for w in vocab if w.startswith("##") and w[2:].isalpha()]

    def sentence():
        out = []
        for _ in range(r.randint(3, 15)):
            out.append(r.choice(words))
            while r.random() < 0.25:
                out.append(r.choice(pieces))
        return out

    return [[sentence() for _ in range(r.randint(0, 20))] for _ in range(300)]


@pytest.fixture(scope="module")
def instances(documents, vocab):
    return mlm_nsp.create_instances(documents, vocab, dupe_factor=4, seed=1)


@pytest.fixture(scope="module")
def wwm_instances(documents, vocab):
    return mlm_nsp.create_instances(
        documents, vocab, dupe_factor=2, seed=2, do_whole_word_mask=True
    )


def _within(count, n, p, label):
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) <= SIGMAS * sd, f"{label}: {count / n:.4f} vs {p:.4f} (n={n})"


def _word_groups(ids, mv):
    """The reference's whole-word candidate groups ([CLS]/[SEP] skipped, '##' joins)."""
    groups = []
    for i, t in enumerate(ids):
        if t in (mv.cls_id, mv.sep_id):
            continue
        if groups and mv.tokens[t].startswith("##"):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def check_instance(inst, mv, L, P, prob, whole_word, corpus_ids):
    """Structural invariants every instance must satisfy."""
    assert set(inst) == {
        "input_ids",
        "input_mask",
        "segment_ids",
        "masked_lm_positions",
        "masked_lm_ids",
        "masked_lm_weights",
        "next_sentence_labels",
    }
    for key in ("input_ids", "input_mask", "segment_ids"):
        assert inst[key].shape == (L,) and inst[key].dtype == np.int32, key
    for key in ("masked_lm_positions", "masked_lm_ids"):
        assert inst[key].shape == (P,) and inst[key].dtype == np.int32, key
    assert inst["masked_lm_weights"].shape == (P,) and inst["masked_lm_weights"].dtype == np.float32
    assert inst["next_sentence_labels"].shape == () and int(inst["next_sentence_labels"]) in (0, 1)

    n = int(inst["input_mask"].sum())
    assert 5 <= n <= L
    assert (inst["input_mask"] == (np.arange(L) < n)).all()
    assert (inst["input_ids"][n:] == mv.pad_id).all()
    orig = mlm_nsp.original_input_ids(inst)
    assert orig[0] == mv.cls_id
    seps = np.flatnonzero(orig[:n] == mv.sep_id)
    assert len(seps) == 2 and seps[1] == n - 1 and 1 < seps[0] < n - 2  # A, B non-empty
    expected_seg = np.zeros(L, np.int32)
    expected_seg[seps[0] + 1 : n] = 1
    assert (inst["segment_ids"] == expected_seg).all()
    content = np.concatenate([orig[1 : seps[0]], orig[seps[0] + 1 : n - 1]])
    assert set(content.tolist()) <= corpus_ids

    w = inst["masked_lm_weights"]
    k = int(w.sum())
    assert (w == (np.arange(P) < k)).all()
    pos = inst["masked_lm_positions"][:k]
    assert (np.diff(pos) > 0).all()  # sorted and unique
    assert ((pos > 0) & (pos < n - 1) & (pos != seps[0])).all()  # never [CLS]/[SEP]/pad
    assert (inst["masked_lm_positions"][k:] == 0).all() and (inst["masked_lm_ids"][k:] == 0).all()
    unmasked = np.ones(L, bool)
    unmasked[pos] = False
    assert (inst["input_ids"][unmasked] == orig[unmasked]).all()

    num_to_predict = min(P, max(1, int(round(n * prob))))
    if not whole_word:
        assert k == min(num_to_predict, n - 3)
    else:
        # May be 0: when every word is longer than the budget, none fits (the
        # reference would crash there; here the instance just has no targets).
        assert 0 <= k <= num_to_predict
        chosen = set(pos.tolist())
        for g in _word_groups(orig[:n].tolist(), mv):
            hit = [i in chosen for i in g]
            assert all(hit) or not any(hit), "part of a word masked"
            # The reference skips a word that would overshoot the budget, so any
            # word left unmasked could not have fitted.
            if not any(hit):
                assert k + len(g) > num_to_predict
    return orig, n, seps


def _corpus_ids(documents, mv):
    return {mv.token_to_id[t] for doc in documents for s in doc for t in s}


def test_invariants_and_provenance(instances, documents, mv):
    corpus_ids = _corpus_ids(documents, mv)
    streams = [[mv.token_to_id[t] for s in doc for t in s] for doc in documents if doc]
    starts = {}  # token -> [(doc, offset)] to locate segments in their documents
    for d, stream in enumerate(streams):
        for o, t in enumerate(stream):
            starts.setdefault(t, []).append((d, o))

    def locate(seg):
        return [(d, o) for d, o in starts[seg[0]] if streams[d][o : o + len(seg)] == seg]

    assert len(instances) > 1500
    for inst in instances:
        orig, n, seps = check_instance(inst, mv, 128, 20, 0.15, False, corpus_ids)
        a, b = orig[1 : seps[0]].tolist(), orig[seps[0] + 1 : n - 1].tolist()
        where_a, where_b = locate(a), locate(b)
        assert where_a and where_b, "A and B must each be contiguous text of one document"
        if inst["next_sentence_labels"] == 0:  # B follows A in the same document
            assert any(da == db and ob >= oa + len(a) for da, oa in where_a for db, ob in where_b)
        else:
            assert any(da != db for da, _ in where_a for db, _ in where_b)


def test_mask_keep_random_proportions(instances, mv, documents):
    batch = mlm_nsp.collate(instances)
    real = batch["masked_lm_weights"] > 0
    cur = np.take_along_axis(batch["input_ids"], batch["masked_lm_positions"], 1)[real]
    orig = batch["masked_lm_ids"][real]
    n, V = len(orig), len(mv.tokens)
    assert n >= 20_000
    masked, kept = int((cur == mv.mask_id).sum()), int((cur == orig).sum())
    rand = n - masked - kept
    # A random draw can hit [MASK] or the original itself (1/V each).
    _within(masked, n, 0.8 + 0.1 / V, "[MASK]")
    _within(kept, n, 0.1 + 0.1 / V, "kept")
    _within(rand, n, 0.1 * (1 - 2 / V), "random")
    # Random replacements are uniform over the whole vocab, not just the corpus.
    r_ids = cur[(cur != mv.mask_id) & (cur != orig)]
    sd = V / math.sqrt(12 * len(r_ids))
    assert abs(r_ids.mean() - (V - 1) / 2) < SIGMAS * sd
    assert not set(r_ids.tolist()) <= _corpus_ids(documents, mv)
    print(f"\nmask/keep/random = {masked / n:.4f}/{kept / n:.4f}/{rand / n:.4f} over {n}")


def test_random_next_fraction_short_documents(instances):
    frac = float(np.mean([int(i["next_sentence_labels"]) for i in instances]))
    print(f"\nrandom-next fraction = {frac:.4f} over {len(instances)}")
    assert 0.5 <= frac <= 0.65  # above 0.5: single-sentence chunks always take a random B


def test_single_sentence_documents_always_random_next(vocab):
    docs = [[["hello", "world"]] for _ in range(20)]
    out = mlm_nsp.create_instances(docs, vocab, dupe_factor=3)
    assert len(out) == 60  # exactly one instance per document per pass
    assert all(int(i["next_sentence_labels"]) == 1 for i in out)


def test_short_seq_fraction(vocab, mv):
    # Each document repeats its own word as one-token sentences, so an instance's
    # document is known and, with a full target, some instance fills all 32 slots.
    words = [w for w in vocab if w.isascii() and w.isalpha()][:1000]
    docs = [[[w]] * 100 for w in words]
    for prob in (0.1, 0.5):
        out = mlm_nsp.create_instances(docs, vocab, max_seq_length=32, short_seq_prob=prob, seed=3)
        longest = {}
        for inst in out:
            doc = int(mlm_nsp.original_input_ids(inst)[1])
            longest[doc] = max(longest.get(doc, 0), int(inst["input_mask"].sum()))
        assert len(longest) == len(docs)
        short = sum(v < 32 for v in longest.values())
        # A short target is uniform on [2, 29] and looks full only when it is 29.
        _within(short, len(docs), prob * 27 / 28, f"short_seq_prob={prob}")
        assert min(longest.values()) >= 5
    out = mlm_nsp.create_instances(docs[:200], vocab, max_seq_length=32, short_seq_prob=0.0)
    assert np.mean([int(i["input_mask"].sum()) == 32 for i in out]) > 0.6


def test_whole_word_masking(wwm_instances, documents, mv):
    corpus_ids = _corpus_ids(documents, mv)
    multi = 0
    for inst in wwm_instances:
        orig, n, _ = check_instance(inst, mv, 128, 20, 0.15, True, corpus_ids)
        chosen = set(inst["masked_lm_positions"][inst["masked_lm_weights"] > 0].tolist())
        multi += sum(len(g) > 1 and g[0] in chosen for g in _word_groups(orig[:n].tolist(), mv))
    assert multi > 500  # multi-piece words really get masked together


def test_determinism_and_seed(documents, vocab):
    a = mlm_nsp.create_instances(documents[:50], vocab, seed=5)
    b = mlm_nsp.create_instances(documents[:50], vocab, seed=5)
    c = mlm_nsp.create_instances(documents[:50], vocab, seed=6)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    ba, bc = mlm_nsp.collate(a), mlm_nsp.collate(c)
    assert len(a) != len(c) or not np.array_equal(ba["input_ids"], bc["input_ids"])


def test_dupe_factor(documents, vocab):
    one = mlm_nsp.create_instances(documents, vocab, dupe_factor=1)
    three = mlm_nsp.create_instances(documents, vocab, dupe_factor=3)
    assert 2.7 < len(three) / len(one) < 3.3  # each pass re-draws targets and splits


def test_empty_inputs(vocab):
    assert mlm_nsp.create_instances([], vocab) == []
    assert mlm_nsp.create_instances([[], [[]], []], vocab) == []
    out = mlm_nsp.create_instances([[], [["a"], [], ["b", "c"]], []], vocab)
    assert len(out) >= 1


def test_errors(vocab):
    docs = [[["hello", "world"], ["again"]]]
    for tok in mlm_nsp.SPECIAL_TOKENS:
        with pytest.raises(ValueError, match=re.escape(tok)):
            mlm_nsp.create_instances(docs, [t for t in vocab if t != tok])
    with pytest.raises(ValueError, match="max_seq_length"):
        mlm_nsp.create_instances(docs, vocab, max_seq_length=4)
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="masked_lm_prob"):
            mlm_nsp.create_instances(docs, vocab, masked_lm_prob=p)
    with pytest.raises(ValueError, match=r"'Hello'.*same vocab.*\[UNK\]"):
        mlm_nsp.create_instances([[["Hello", "world"]]], vocab)
    with pytest.raises(ValueError, match="lists of WordPiece tokens"):
        mlm_nsp.create_instances([["hello world"]], vocab)
    with pytest.raises(ValueError, match="dupe_factor"):
        mlm_nsp.create_instances(docs, vocab, dupe_factor=0)
    with pytest.raises(ValueError):
        mlm_nsp.collate([])


def test_dynamic_mask_instances(instances, mv, documents):
    corpus_ids = _corpus_ids(documents, mv)
    rng = np.random.default_rng(0)
    new = [mlm_nsp.dynamic_mask(inst, mv, rng) for inst in instances]
    moved = 0
    for old, inst in zip(instances, new):
        check_instance(inst, mv, 128, 20, 0.15, False, corpus_ids)
        assert np.array_equal(mlm_nsp.original_input_ids(old), mlm_nsp.original_input_ids(inst))
        for key in ("segment_ids", "input_mask", "next_sentence_labels"):
            assert np.array_equal(old[key], inst[key])
        moved += not np.array_equal(old["masked_lm_positions"], inst["masked_lm_positions"])
    assert moved > 0.95 * len(new)
    batch = mlm_nsp.collate(new)
    real = batch["masked_lm_weights"] > 0
    cur = np.take_along_axis(batch["input_ids"], batch["masked_lm_positions"], 1)[real]
    orig = batch["masked_lm_ids"][real]
    n = len(orig)
    _within(int((cur == mv.mask_id).sum()), n, 0.8, "[MASK] (dynamic)")
    _within(int((cur == orig).sum()), n, 0.1, "kept (dynamic)")
    # Same seed, same masks.
    again = mlm_nsp.dynamic_mask(instances[0], mv, 42)
    assert all(
        np.array_equal(again[k], mlm_nsp.dynamic_mask(instances[0], mv, 42)[k]) for k in again
    )


def test_dynamic_mask_sequences(vocab, mv):
    toks = ["[CLS]", "una", "##ffa", "##ble", "hello", "[SEP]", "world", "##s", "[SEP]"]
    ids = [vocab.index(t) for t in toks] + [mv.pad_id] * 3
    for x in (toks, ids, np.array(ids)):
        out = mlm_nsp.dynamic_mask(
            x,
            vocab,
            random.Random(1),
            max_predictions_per_seq=4,
            masked_lm_prob=0.4,
            do_whole_word_mask=True,
        )
        assert out["input_ids"].shape == (len(x),) and out["masked_lm_positions"].shape == (4,)
        k = int(out["masked_lm_weights"].sum())
        pos = out["masked_lm_positions"][:k]
        assert 1 <= k <= 4 and set(pos.tolist()) <= {1, 2, 3, 4, 6, 7}
        assert list(out["masked_lm_ids"][:k]) == [ids[p] for p in pos]
        assert {1, 2, 3} <= set(pos.tolist()) or not {1, 2, 3} & set(pos.tolist())
    # Padding is never content: trailing [PAD] stays and is never masked.
    seen = set()
    for s in range(200):
        out = mlm_nsp.dynamic_mask(ids, mv, s, masked_lm_prob=0.9)
        seen |= set(out["masked_lm_positions"][out["masked_lm_weights"] > 0].tolist())
        assert (out["input_ids"][9:] == mv.pad_id).all()
    assert seen == {1, 2, 3, 4, 6, 7}
    with pytest.raises(ValueError, match="'Zebra'"):
        mlm_nsp.dynamic_mask(["[CLS]", "Zebra", "[SEP]"], vocab, 0)


def test_collate(instances):
    batch = mlm_nsp.collate(instances[:7])
    assert batch["input_ids"].shape == (7, 128) and batch["masked_lm_weights"].shape == (7, 20)
    assert batch["next_sentence_labels"].shape == (7,)
    assert batch["masked_lm_weights"].dtype == np.float32 and batch["input_ids"].dtype == np.int32


def test_read_documents():
    lines = ["First sentence.\n", "  Second one.  \n", "\n", "\n", "Doc two.\n", "   \n"]
    assert mlm_nsp.read_documents(lines) == [["First sentence.", "Second one."], ["Doc two."]]
    assert mlm_nsp.read_documents([]) == []


def test_sentence_split():
    text = (
        'Mr. Smith paid $3.50 for it. Was it worth it?  "Yes!" he said.\n'
        "See Fig. 2 for details, e.g. the plot. J. R. R. Tolkien agreed. 42 is the answer."
    )
    assert mlm_nsp.sentence_split(text) == [
        "Mr. Smith paid $3.50 for it.",
        "Was it worth it?",
        '"Yes!" he said.',
        "See Fig. 2 for details, e.g. the plot.",
        "J. R. R. Tolkien agreed.",
        "42 is the answer.",
    ]
    assert mlm_nsp.sentence_split("") == []
    assert mlm_nsp.sentence_split("no terminal punctuation") == ["no terminal punctuation"]


# ---- property test over tiny random corpora -----------------------------------
_TINY_WORDS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["##x", "##y", "##z"]
_TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_TINY_WORDS]
_TINY_MV = mlm_nsp.MaskingVocab.from_tokens(_TINY_VOCAB)

_sentence = st.lists(st.sampled_from(_TINY_WORDS), min_size=0, max_size=6)
_document = st.lists(_sentence, min_size=0, max_size=5)


@settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    docs=st.lists(_document, min_size=1, max_size=6),
    L=st.integers(5, 24),
    P=st.integers(1, 8),
    prob=st.floats(0.05, 0.9),
    short=st.sampled_from([0.0, 0.1, 1.0]),
    whole_word=st.booleans(),
    seed=st.integers(0, 2**31),
    dupe=st.integers(1, 2),
)
def test_property_invariants(docs, L, P, prob, short, whole_word, seed, dupe):
    out = mlm_nsp.create_instances(
        docs,
        _TINY_VOCAB,
        max_seq_length=L,
        max_predictions_per_seq=P,
        masked_lm_prob=prob,
        short_seq_prob=short,
        dupe_factor=dupe,
        do_whole_word_mask=whole_word,
        seed=seed,
    )
    ids = set(range(5, len(_TINY_VOCAB)))
    has_text = any(s for d in docs for s in d)
    assert bool(out) == has_text
    for inst in out:
        check_instance(inst, _TINY_MV, L, P, prob, whole_word, ids)
    for inst in out[:3]:
        again = mlm_nsp.dynamic_mask(
            inst, _TINY_MV, seed, masked_lm_prob=prob, do_whole_word_mask=whole_word
        )
        check_instance(again, _TINY_MV, L, P, prob, whole_word, ids)


# ---- fuzzing: any arguments give valid instances or a ValueError --------------------

FUZZ_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "king",
    "##s",
    "lord",
    "##ly",
    "a",
    "is",
    ".",
    "o",
]


@FUZZ
@given(
    docs=st.lists(
        st.lists(st.lists(st.sampled_from(FUZZ_VOCAB[5:]), max_size=12), max_size=6), max_size=5
    ),
    L=st.integers(3, 40),
    P=st.integers(0, 8),
    prob=st.floats(-0.1, 1.1),
    short=st.floats(0, 1),
    wwm=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fuzz_create_instances(docs, L, P, prob, short, wwm, seed):
    try:
        inst = mlm_nsp.create_instances(
            docs,
            FUZZ_VOCAB,
            max_seq_length=L,
            max_predictions_per_seq=P,
            masked_lm_prob=prob,
            short_seq_prob=short,
            do_whole_word_mask=wwm,
            seed=seed,
        )
    except ValueError:
        assert L < 5 or P < 1 or not 0 < prob < 1
        return
    for x in inst:
        ids, mask = x["input_ids"], x["input_mask"]
        assert ids.shape == (L,) and x["masked_lm_positions"].shape == (P,)
        n = int(mask.sum())
        assert (mask[:n] == 1).all() and (ids[n:] == 0).all()
        assert ((0 <= ids) & (ids < len(FUZZ_VOCAB))).all()
        orig = mlm_nsp.original_input_ids(x)
        assert orig[0] == 2 and int(np.sum(orig[:n] == 3)) == 2 and orig[n - 1] == 3
        k = int(x["masked_lm_weights"].sum())
        pos = x["masked_lm_positions"][:k]
        assert k <= P and (pos < n).all() and len(set(pos.tolist())) == k
        assert not np.isin(orig[pos], [0, 2, 3]).any()  # no special token masked
        assert int(x["next_sentence_labels"]) in (0, 1)
