"""Tests for T5 span corruption, lengths helper and seq2seq packing (numpy only)."""

import numpy as np
import pytest
from helpers import FUZZ
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxformers.objectives import span_corruption as sc

VOCAB = 1031  # odd size on purpose; content ids must stay below VOCAB - 100
EOS = 1


def runs(mask):
    """[(value, run_length), ...] of a boolean mask."""
    out = []
    for value in mask.tolist():
        if out and out[-1][0] == value:
            out[-1][1] += 1
        else:
            out.append([value, 1])
    return [tuple(r) for r in out]


def expected_counts(length, density=0.15, mean=3.0):
    """Reference count formula, written out independently of the module."""
    noise = int(np.round(np.float32(length) * np.float32(density)))
    noise = min(max(noise, 1), length - 1)
    spans = max(int(np.round(np.float32(noise) / np.float32(mean))), 1)
    return noise, min(spans, length - noise)


def reconstruct(inputs, targets, vocab_size, num_sentinels=sc.MIN_VOCAB_SIZE):
    """Put each target span back in place of its sentinel in the inputs."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans, current = {}, None
    for tok in targets[:-1].tolist():
        if tok >= vocab_size - num_sentinels:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)
    out = []
    for tok in inputs[:-1].tolist():
        out.extend(spans.pop(tok) if tok in spans else [tok])
    assert not spans, "every target span must have a sentinel in the inputs"
    return out


def tokens_for(length, seed=0):
    return np.random.default_rng(seed).integers(2, VOCAB - 100, size=length)


@pytest.mark.parametrize(
    "length,noise,spans",
    [
        (2, 1, 1),
        (3, 1, 1),
        (10, 2, 1),
        (30, 4, 1),  # 4.5 rounds half-to-even down to 4
        (50, 8, 3),  # 7.5 -> 8; 8 / 3 -> 3
        (70, 10, 3),  # 10.5 -> 10
        (190, 29, 10),  # float32: 190 * 0.15f rounds to 28.5000... -> 29 (float64 gives 28)
        (141, 21, 7),
        (568, 85, 28),
    ],
)
def test_counts_follow_t5_float32_rounding(length, noise, spans):
    assert expected_counts(length) == (noise, spans)
    for seed in range(3):
        mask = sc.noise_mask(length, seed=seed)
        assert mask.shape == (length,) and mask.dtype == bool
        assert mask.sum() == noise
        assert sum(1 for v, _ in runs(mask) if v) == spans


@pytest.mark.parametrize("length", [2, 3, 5, 17, 33, 101, 257])
def test_mask_alternates_starting_with_nonnoise(length):
    for seed in range(5):
        r = runs(sc.noise_mask(length, seed=seed))
        assert [v for v, _ in r] == [False, True] * (len(r) // 2)
        assert all(n >= 1 for _, n in r)


def test_single_span_sits_at_the_end_like_t5():
    # With one span each segmentation is trivial, so T5 (random_roll=False)
    # always corrupts the tail; we reproduce that rather than "fix" it.
    masks = {tuple(sc.noise_mask(13, seed=s)) for s in range(20)}
    assert masks == {(False,) * 11 + (True,) * 2}


def test_short_lengths_use_t5_length_two_quirk():
    assert sc.noise_mask(1).tolist() == [False]
    assert sc.noise_mask(0).shape == (0,)


def test_deterministic_per_seed_and_varies_across_seeds():
    a = sc.span_corrupt(tokens_for(97), VOCAB, seed=5)
    b = sc.span_corrupt(tokens_for(97), VOCAB, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in ("inputs", "targets"))
    masks = {tuple(sc.noise_mask(97, seed=s)) for s in range(10)}
    assert len(masks) == 10


def test_span_corrupt_layout_sentinels_and_eos():
    tokens = tokens_for(119, seed=1)
    ex = sc.span_corrupt(tokens, VOCAB, seed=7)
    inputs, targets = ex["inputs"], ex["targets"]
    assert inputs.dtype == np.int32 and targets.dtype == np.int32
    noise, spans = expected_counts(119)
    assert len(inputs) == 119 - noise + spans + 1
    assert len(targets) == noise + spans + 1
    # EOS only at the end of each sequence.
    assert inputs[-1] == EOS and targets[-1] == EOS
    assert EOS not in inputs[:-1] and EOS not in targets[:-1]
    sentinels = list(range(VOCAB - 1, VOCAB - 1 - spans, -1))
    assert [t for t in inputs if t >= VOCAB - 100] == sentinels
    assert [t for t in targets if t >= VOCAB - 100] == sentinels
    assert targets[0] == VOCAB - 1  # targets open with <extra_id_0>
    # Inputs are the tokens with noise spans swapped for sentinels.
    mask = sc.noise_mask(119, seed=7)
    assert [t for t in inputs[:-1] if t < VOCAB - 100] == tokens[~mask].tolist()
    assert [t for t in targets[:-1] if t < VOCAB - 100] == tokens[mask].tolist()
    assert reconstruct(inputs, targets, VOCAB) == tokens.tolist()


@pytest.mark.parametrize("length", [2, 3])
def test_tiny_sequences(length):
    tokens = np.arange(10, 10 + length)
    ex = sc.span_corrupt(tokens, VOCAB, seed=0)
    assert ex["inputs"].tolist() == tokens[:-1].tolist() + [VOCAB - 1, EOS]
    assert ex["targets"].tolist() == [VOCAB - 1, tokens[-1], EOS]


@pytest.mark.parametrize("inputs_length,raw,targets", [(512, 568, 114), (128, 141, 29)])
def test_random_spans_helper_matches_t5(inputs_length, raw, targets):
    assert sc.random_spans_helper(inputs_length) == (raw, targets)
    ex = sc.span_corrupt(tokens_for(raw), VOCAB, seed=3)
    assert (len(ex["inputs"]), len(ex["targets"])) == (inputs_length, targets)


def test_random_spans_helper_density_half_keeps_targets_within_inputs():
    raw, targets = sc.random_spans_helper(512, noise_density=0.5)
    assert targets <= 512 and raw > 512


def make_examples(lengths, seed=0):
    return [
        sc.span_corrupt(tokens_for(n, seed + i), VOCAB, seed=seed + i)
        for i, n in enumerate(lengths)
    ]


def test_packing_invariants():
    examples = make_examples([9, 23, 5, 37, 2, 17, 30, 3])
    p = sc.pack_examples(examples, inputs_length=37, targets_length=13)
    n_rows = p["encoder_input_tokens"].shape[0]
    assert n_rows > 1
    for k, v in p.items():
        assert v.dtype == (np.float32 if k == "decoder_loss_weights" else np.int32), k
        assert v.shape == (n_rows, 37 if k.startswith("encoder") else 13), k
    recovered = []
    for r in range(n_rows):
        for side, tok_key in (
            ("encoder", "encoder_input_tokens"),
            ("decoder", "decoder_target_tokens"),
        ):
            seg, pos = p[f"{side}_segment_ids"][r], p[f"{side}_positions"][r]
            real = seg > 0
            n = real.sum()
            assert real[:n].all() and not real[n:].any()  # padding only at the end
            assert seg[0] == 1 and set(np.diff(seg[:n])) <= {0, 1}
            assert (p[tok_key][r][~real] == 0).all() and (pos[~real] == 0).all()
            for s in np.unique(seg[real]):
                assert pos[seg == s].tolist() == list(range((seg == s).sum()))
        seg = p["decoder_segment_ids"][r]
        tgt, dec_in = p["decoder_target_tokens"][r], p["decoder_input_tokens"][r]
        assert (p["decoder_loss_weights"][r] == (seg > 0)).all()
        for s in np.unique(seg[seg > 0]):
            t = tgt[seg == s]
            assert dec_in[seg == s].tolist() == [0] + t[:-1].tolist()
            inp = p["encoder_input_tokens"][r][p["encoder_segment_ids"][r] == s]
            recovered.append((inp.tolist(), t.tolist()))
    assert recovered == [(e["inputs"].tolist(), e["targets"].tolist()) for e in examples]


def test_pack_rejects_oversized_example():
    with pytest.raises(ValueError, match="does not fit"):
        sc.pack_examples(make_examples([50]), inputs_length=20, targets_length=20)


def test_corrupt_and_pack_is_deterministic_and_lossless():
    docs = [tokens_for(n, seed=n) for n in (300, 1, 0, 141, 57)]
    a = sc.corrupt_and_pack(docs, VOCAB, inputs_length=128, seed=11)
    b = sc.corrupt_and_pack(docs, VOCAB, inputs_length=128, seed=11)
    c = sc.corrupt_and_pack(docs, VOCAB, inputs_length=128, seed=12)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["encoder_input_tokens"], c["encoder_input_tokens"])
    assert a["decoder_target_tokens"].shape[1] == 29
    pieces = []
    for r in range(a["encoder_input_tokens"].shape[0]):
        es, ds = a["encoder_segment_ids"][r], a["decoder_segment_ids"][r]
        for s in np.unique(es[es > 0]):
            pieces.append(
                reconstruct(
                    a["encoder_input_tokens"][r][es == s],
                    a["decoder_target_tokens"][r][ds == s],
                    VOCAB,
                )
            )
    # 300 -> chunks of 141, 141, 18; the 1-token document is dropped.
    expected = [docs[0][:141], docs[0][141:282], docs[0][282:], docs[3], docs[4]]
    assert pieces == [e.tolist() for e in expected]


def test_corrupt_and_pack_covers_helper_float64_rounding_gap():
    # T5's helper rounds in float64 and says 190 raw tokens -> 38 targets for
    # inputs_length=172, but the float32 mask makes 29 noise tokens in 10 spans,
    # i.e. 40 targets (T5 would silently trim them). The default must fit.
    assert sc.random_spans_helper(172) == (190, 38)
    p = sc.corrupt_and_pack([tokens_for(190)], VOCAB, inputs_length=172, seed=0)
    assert p["decoder_target_tokens"].shape == (1, 40)
    assert p["decoder_loss_weights"].sum() == 40 and p["encoder_segment_ids"].all()
    # Tiny rows: the helper does not clip counts, the real corruption does.
    p = sc.corrupt_and_pack([tokens_for(20)], VOCAB, inputs_length=8, seed=0)
    assert p["encoder_input_tokens"].shape[1] == 8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tokens=[5, 6, VOCAB - 1]), "collide"),
        (dict(tokens=[5, -1, 7]), "collide"),
        (dict(vocab_size=100, tokens=[5, 6, 7]), "must be > 100"),
        (dict(tokens=[]), "at least 2"),
        (dict(tokens=[7]), "at least 2"),
        (dict(tokens=[[5, 6], [7, 8]]), "1-D"),
        (dict(tokens=[5.0, 6.0]), "integer"),
        (dict(tokens=[5, 6, EOS]), "without EOS"),
        (dict(noise_density=0.0), "noise_density"),
        (dict(noise_density=1.0), "noise_density"),
        (dict(mean_noise_span_length=0.5), "mean_noise_span_length"),
    ],
)
def test_span_corrupt_errors(kwargs, match):
    args = dict(tokens=[5, 6, 7, 8], vocab_size=VOCAB) | kwargs
    with pytest.raises(ValueError, match=match):
        sc.span_corrupt(**args)


def test_overlap_check_uses_number_of_spans():
    # 60 tokens -> 3 spans, so ids up to VOCAB - 4 are fine and VOCAB - 3 is not.
    tokens = np.full(60, 7)
    tokens[10] = VOCAB - 4
    sc.span_corrupt(tokens, VOCAB)
    tokens[10] = VOCAB - 3
    with pytest.raises(ValueError, match="collide"):
        sc.span_corrupt(tokens, VOCAB)


@settings(max_examples=150, deadline=None, database=None)
@given(
    length=st.integers(2, 600),
    density=st.floats(0.01, 0.95),
    mean=st.floats(1.0, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_invariants_and_reconstruction(length, density, mean, seed):
    mask = sc.noise_mask(length, density, mean, seed=seed)
    noise, spans = expected_counts(length, density, mean)
    r = runs(mask)
    assert mask.sum() == noise
    assert [v for v, _ in r] == [False, True] * spans
    # Dense settings can need > 100 sentinels (up to 300 here), so give the
    # vocabulary room above the content ids (< VOCAB - 100).
    vocab = VOCAB + 300
    tokens = tokens_for(length, seed)
    ex = sc.span_corrupt(tokens, vocab, density, mean, seed=seed)
    assert len(ex["inputs"]) == length - noise + spans + 1
    assert len(ex["targets"]) == noise + spans + 1
    assert reconstruct(ex["inputs"], ex["targets"], vocab, num_sentinels=spans) == tokens.tolist()


# ---- fuzzing: any arguments give a valid result or a ValueError ---------------------


@FUZZ
@given(
    length=st.integers(0, 300),
    density=st.floats(0.01, 0.99),
    span=st.floats(1.0, 10.0),
    seed=st.integers(0, 2**31),
)
def test_fuzz_noise_mask(length, density, span, seed):
    m = sc.noise_mask(length, density, span, seed)
    assert m.dtype == bool and m.shape == (length,)
    if length >= 2:
        assert not m[0] and m[-1] and 1 <= m.sum() <= length - 1


@FUZZ
@given(
    toks=st.lists(st.integers(2, 350), min_size=0, max_size=300),
    density=st.floats(-0.5, 1.5),
    span=st.floats(0.0, 10.0),
    seed=st.integers(0, 2**31),
)
def test_fuzz_span_corrupt(toks, density, span, seed):
    V = 512
    try:
        out = sc.span_corrupt(toks, V, density, span, seed)
    except ValueError:
        assert len(toks) < 2 or not 0 < density < 1 or span < 1
        return
    inp, tgt = out["inputs"], out["targets"]
    assert inp[-1] == 1 and tgt[-1] == 1 and inp.dtype == np.int32
    n_noise = int(np.sum(inp[:-1] > 350))  # sentinels count down from V - 1
    sent_in = [t for t in inp[:-1] if t > 350]
    sent_tg = [t for t in tgt[:-1] if t > 350]
    assert sent_in == sent_tg == list(range(V - 1, V - 1 - n_noise, -1))
    # Putting each span back into its sentinel restores the tokens.
    spans, cur = {}, None
    for t in tgt[:-1]:
        if t > 350:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(int(t))
    rebuilt = [x for t in inp[:-1] for x in (spans[t] if t > 350 else [int(t)])]
    assert rebuilt == list(toks)
    assert len(inp) + len(tgt) == len(toks) + 2 * n_noise + 2
