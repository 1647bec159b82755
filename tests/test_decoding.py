"""The one decoding engine for GPT-2 and T5: greedy and beam search token-identical to transformers'
generate, KV caches equal to recomputation, sampling (top-k 1 is greedy, reproducible per seed, the
filtered distribution, transformers' logits warpers), EOS and padding, compile-once, prompt
bucketing, sharded params, argument and prompt errors.

Models are tiny random transformers models with weights scaled so that outputs are not degenerate:
``gpt2`` (even sizes, for the sharding test), ``gpt2_odd`` (odd sizes, peaked), ``gpt2_flat`` (odd
sizes, near-uniform, for sampling) and ``t5`` (v1.0 and v1.1). Every test here needs transformers
and PyTorch, through these fixtures (which request conftest's ``torch`` and ``transformers``).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loop_copies, rel_err

from jaxformers import decoding, hf, sharding

# gpt2: vocabulary and heads even, widths divisible by 4: the sharding test splits them over the
# mesh.
V_GPT2, P_GPT2, V_T5, P_T5 = 98, 40, 102, 40
# gpt2_odd, gpt2_flat: odd sizes (97 tokens, 37 positions, width 60, 5 heads, 3 layers).
V_ODD, P_ODD = 97, 37
PAD = 5  # not 0: transformers' beam search fills with EOS when pad_token_id is 0 (see normalize)


# ------------------------------------------------------------------------------------------ models


def hf_gpt2(vocab, positions, width, layers, heads, init, seed=0):
    """transformers' GPT-2, random with std ``init``, no dropout, no BOS/EOS."""
    import torch
    import transformers

    torch.manual_seed(seed)
    c = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        initializer_range=init,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(c).eval()


def saved_and_loaded(m, tmp_path_factory, name):
    """(transformers model, our model, params) through a saved HF-format directory."""
    d = str(tmp_path_factory.mktemp(name))
    m.save_pretrained(d)
    model, params = hf.from_pretrained(d)
    return m, model, params


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, torch, transformers):
    """Std-0.5 init (peaked distributions, varied greedy outputs), even sizes."""
    return saved_and_loaded(hf_gpt2(V_GPT2, P_GPT2, 36, 2, 4, init=0.5), tmp_path_factory, "gpt2")


@pytest.fixture(scope="module")
def gpt2_odd(tmp_path_factory, torch, transformers):
    """Large init (std 0.5), odd sizes: peaked next-token distributions and greedy outputs that do
    not just repeat one token."""
    return saved_and_loaded(hf_gpt2(V_ODD, P_ODD, 60, 3, 5, init=0.5), tmp_path_factory, "gpt2_odd")


@pytest.fixture(scope="module")
def gpt2_flat(tmp_path_factory, torch, transformers):
    """Standard init (std 0.02), odd sizes: nearly uniform next-token distributions, for
    sampling."""
    return saved_and_loaded(
        hf_gpt2(V_ODD, P_ODD, 60, 3, 5, init=0.02, seed=1), tmp_path_factory, "gpt2_flat"
    )


# v1.0: ReLU, tied and scaled head; v1.1: gated GELU, own head. (initializer_factor, out-projection
# scale, norm-scale spread, seed) chosen so that greedy outputs vary (a random tied head otherwise
# tends to repeat its input token).
T5_VARIANTS = {
    "v1.0": (dict(feed_forward_proj="relu"), 4.0, 1.0, 0.5, 0),
    "v1.1": (dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False), 4.0, 4.0, 0.2, 1),
}


def _hf_t5(variant):
    import torch
    import transformers

    kw, factor, out_scale, spread, seed = T5_VARIANTS[variant]
    torch.manual_seed(seed)
    c = transformers.T5Config(
        vocab_size=V_T5,
        d_model=36,
        d_kv=8,
        num_heads=4,
        d_ff=44,
        num_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=9,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        n_positions=P_T5,
        decoder_start_token_id=0,
        initializer_factor=factor,
        attn_implementation="eager",
        **kw,
    )
    m = transformers.T5ForConditionalGeneration(c)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + spread * torch.randn_like(p))
            if name == "decoder.final_layer_norm.weight":  # breaks the tied head's self-similarity
                p.copy_(torch.randn_like(p))
            if ".o." in name or ".wo." in name:
                p.mul_(out_scale)
        if variant == "v1.1":  # transformers 5 ties on init; v1.1 checkpoints hold their own head
            m.lm_head.weight = torch.nn.Parameter(torch.randn(V_T5, 36))
    return m.eval()


@pytest.fixture(scope="module")
def t5(tmp_path_factory, torch, transformers):
    """{variant: (transformers model, our model, params, its HF-format directory)}."""
    out = {}
    for variant in T5_VARIANTS:
        m = _hf_t5(variant)
        d = str(tmp_path_factory.mktemp(variant))
        m.save_pretrained(d)
        model, params = hf.from_pretrained(d)
        assert model.config.n_positions == P_T5 and model.config.tie_word_embeddings == (
            variant == "v1.0"
        )
        out[variant] = (m, model, params, d)
    return out


# ------------------------------------------------------------------------------------------ inputs


def gpt2_prompts():
    """Three left-padded prompts of lengths 7, 4 and 6 (for ``gpt2``)."""
    ids = np.random.default_rng(0).integers(0, V_GPT2, (3, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def odd_prompts(shape, seed=0):
    """Unpadded prompts for ``gpt2_odd`` and ``gpt2_flat``."""
    return np.random.default_rng(seed).integers(0, V_ODD, shape).astype(np.int32)


def t5_inputs():
    """Three encoder inputs of lengths 9, 6 and 7 (right and left padding)."""
    ids = np.random.default_rng(0).integers(2, V_T5, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :2] = 0
    return ids, mask


def hf_generate(m, ids, mask=None, **kw):
    """transformers' generate without sampling (greedy or beam search); no mask: all ones."""
    import torch

    with torch.no_grad():
        out = m.generate(
            torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(
                np.ones_like(ids) if mask is None else mask, dtype=torch.long
            ),
            do_sample=False,
            **kw,
        )
    return out.numpy()


def normalize(gen, max_new_tokens, eos, pad):
    """transformers' generated tokens -> our layout: [B, max_new_tokens], pad after the first EOS.

    transformers stops when every row is done (shorter output) and fills finished beam hypotheses
    with ``pad_token_id or eos_token_id`` (EOS when the pad id is 0)."""
    out = np.full((gen.shape[0], max_new_tokens), pad, np.int64)
    out[:, : gen.shape[1]] = gen
    if eos is not None:
        for row in out:
            hits = np.flatnonzero(row == eos)
            if len(hits):
                row[hits[0] + 1 :] = pad
    return out


def assert_varied(gen, at_least=4):
    for row in np.asarray(gen):
        assert len(set(row.tolist())) >= at_least, row


def first_new_token(row, start=2):
    """A token of ``row`` that first appears at index >= start (used as EOS so that it triggers)."""
    return next(int(row[i]) for i in range(start, len(row)) if row[i] not in row[:i])


def gpt2_case(request, fixture, T, rows=3, seed=0):
    """(transformers model, our model, params, prompts, attention mask) of a GPT-2 parity case:
    ``gpt2`` with its three left-padded prompts, or ``gpt2_odd`` with unpadded [rows, T] prompts."""
    m, model, params = request.getfixturevalue(fixture)
    if fixture == "gpt2":
        ids, mask = gpt2_prompts()
        assert ids.shape == (rows, T)
    else:
        ids, mask = odd_prompts((rows, T), seed=seed), None
    return m, model, params, ids, mask


# ------------------------------------------------------------------------------------------ GPT-2


@pytest.mark.parametrize(
    "fixture,T,new,varied",
    [
        ("gpt2", 7, 20, 4),  # left-padded prompts of lengths 7, 4 and 6
        pytest.param(
            "gpt2_odd", 7, 20, 5, marks=pytest.mark.slow
        ),  # unpadded; a bucketed prompt (16 + 20 <= 37)
        pytest.param(
            "gpt2_odd", 10, 27, 5, marks=pytest.mark.slow
        ),  # unpadded; exact (no room for a bucket)
    ],
)
def test_gpt2_greedy_equals_transformers(request, fixture, T, new, varied):
    m, model, params, ids, mask = gpt2_case(request, fixture, T)
    ours = np.asarray(
        decoding.generate(
            model, params, ids, max_new_tokens=new, method="greedy", attention_mask=mask
        )
    )
    assert ours.shape == (3, T + new)
    np.testing.assert_array_equal(ours[:, :T], ids)
    assert_varied(ours[:, T:], varied)  # not a degenerate repetition
    assert len(set(ours[:, T:].ravel().tolist())) >= 10
    np.testing.assert_array_equal(
        ours, hf_generate(m, ids, mask, max_new_tokens=new, pad_token_id=0)
    )


@pytest.mark.slow
def test_gpt2_greedy_left_padding_equals_transformers_and_unpadded(gpt2_odd):
    m, model, params = gpt2_odd
    ids = odd_prompts((3, 9), seed=1)
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    ids[mask == 0] = 0
    ours = np.asarray(decoding.generate(model, params, ids, max_new_tokens=15, attention_mask=mask))
    ref = hf_generate(m, ids, mask, max_new_tokens=15, pad_token_id=0)
    np.testing.assert_array_equal(ours, ref)
    # Padding changes nothing: row 0 alone, unpadded, continues the same way.
    alone = np.asarray(decoding.generate(model, params, ids[:1, 4:], max_new_tokens=15))
    np.testing.assert_array_equal(alone[0, 5:], ours[0, 9:])


@pytest.mark.parametrize("padded", [pytest.param(False, marks=pytest.mark.slow), True])
def test_gpt2_kv_cache_logits_equal_full_recomputation(gpt2_odd, padded):
    _, model, params = gpt2_odd
    B, T, new = 2, 6, 12
    S = T + new
    ids = odd_prompts((B, S), seed=2)
    mask = np.ones((B, S), np.int32)
    if padded:
        mask[1, :3] = 0
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)

    full = jax.jit(
        lambda p, x, m, q: model.apply({"params": p}, x, attention_mask=m, position_ids=q)
    )(params, ids, mask, pos)

    cache = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((B, S), jnp.int32), decode=True)
        )["cache"],
    )

    @jax.jit
    def step(cache, x, q):
        logits, v = model.apply(
            {"params": params, "cache": cache},
            x,
            attention_mask=mask,
            position_ids=q,
            decode=True,
            mutable=["cache"],
        )
        return logits, v["cache"]

    logits, cache = step(cache, ids[:, :T], pos[:, :T])  # prefill
    keep = mask[:, :T].astype(bool)
    assert rel_err(np.asarray(logits)[keep], np.asarray(full)[:, :T][keep]) < 1e-5
    for t in range(T, S):
        logits, cache = step(cache, ids[:, t : t + 1], pos[:, t : t + 1])
        assert logits.shape == (B, 1, V_ODD)
        assert rel_err(logits[:, 0], full[:, t]) < 1e-5, t
    indices = [
        int(v)
        for k, v in jax.tree_util.tree_leaves_with_path(cache)
        if "cache_index" in jax.tree_util.keystr(k)
    ]
    assert indices == [S] * 3  # one per layer


@pytest.fixture(scope="module")
def gpt2_eos(gpt2):
    _, model, params = gpt2
    ids, mask = gpt2_prompts()
    free = np.asarray(
        decoding.generate(
            model, params, ids, max_new_tokens=20, method="beam", num_beams=4, attention_mask=mask
        )
    )  # compiled once for every beam test
    return first_new_token(free[0, 7:])


@pytest.mark.parametrize(
    "fixture,B,T,new,num_beams,use_eos,length_penalty,early_stopping",
    [
        ("gpt2", 3, 7, 20, 4, False, 1.0, False),
        ("gpt2", 3, 7, 20, 4, True, 1.0, False),
        (
            "gpt2",
            3,
            7,
            20,
            4,
            True,
            0.5,
            False,
        ),  # same compilation as the line above: the penalty is not baked in
        ("gpt2", 3, 7, 20, 4, True, 2.0, True),
        ("gpt2", 3, 7, 20, 4, True, -1.0, "never"),
        pytest.param(
            "gpt2_odd", 2, 5, 10, 3, False, 1.0, False, marks=pytest.mark.slow
        ),  # unpadded prompts, 3 beams
    ],
)
def test_gpt2_beam_search_equals_transformers(
    request, fixture, B, T, new, num_beams, use_eos, length_penalty, early_stopping
):
    m, model, params, ids, mask = gpt2_case(request, fixture, T, rows=B, seed=7)
    eos = request.getfixturevalue("gpt2_eos") if use_eos else None
    kw = dict(
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos,
        pad_token_id=PAD,
    )
    ours = np.asarray(
        decoding.generate(
            model, params, ids, max_new_tokens=new, method="beam", attention_mask=mask, **kw
        )
    )
    assert ours.shape == (B, T + new)
    np.testing.assert_array_equal(ours[:, :T], ids)
    ref = hf_generate(m, ids, mask, max_new_tokens=new, **kw)
    np.testing.assert_array_equal(ref[:, :T], ids)
    np.testing.assert_array_equal(ours[:, T:], normalize(ref[:, T:], new, eos, PAD))
    gen = ours[:, T:]
    if not use_eos:
        assert ref.shape == ours.shape  # no EOS: transformers generates every token too
        assert len(set(gen.ravel().tolist())) >= 8
        greedy = np.asarray(
            decoding.generate(model, params, ids, max_new_tokens=new, attention_mask=mask)
        )
        assert (ours != greedy).any()  # a case where beam search and greedy part ways
    else:
        stopped = [r for r in gen if eos in r.tolist()]
        assert stopped, "EOS never chosen: the test would not exercise finished hypotheses"
        for r in stopped:
            assert (r[list(r).index(eos) + 1 :] == PAD).all()


def test_gpt2_eos_then_padding(gpt2_odd):
    m, model, params = gpt2_odd
    ids = odd_prompts((3, 7))
    free = np.asarray(decoding.generate(model, params, ids, max_new_tokens=20))
    gen = free[:, 7:]
    # An EOS that row 0 emits a few tokens in (its first occurrence there).
    k = next(i for i in range(2, 20) if gen[0, i] not in gen[0, :i])
    eos, pad = int(gen[0, k]), 5
    ours = np.asarray(
        decoding.generate(model, params, ids, max_new_tokens=20, eos_token_id=eos, pad_token_id=pad)
    )
    assert ours.shape == free.shape
    for r in range(3):
        hits = np.flatnonzero(gen[r] == eos)
        if len(hits) == 0:
            np.testing.assert_array_equal(ours[r], free[r])
        else:
            j = 7 + hits[0]
            np.testing.assert_array_equal(ours[r, : j + 1], free[r, : j + 1])
            assert (ours[r, j + 1 :] == pad).all()
    assert ours[0, 7 + k] == eos and (ours[0, 7 + k + 1 :] == pad).all()
    # transformers: the same, shorter when every row has stopped; pad it out to compare.
    ref = hf_generate(m, ids, max_new_tokens=20, eos_token_id=eos, pad_token_id=pad)
    ref = np.concatenate([ref, np.full((3, free.shape[1] - ref.shape[1]), pad)], axis=1)
    np.testing.assert_array_equal(ours, ref)
    # pad_token_id defaults to the EOS id.
    dflt = np.asarray(
        decoding.generate(model, params, ids[:1], max_new_tokens=20, eos_token_id=eos)
    )
    assert (dflt[0, 7 + k :] == eos).all()


@pytest.mark.slow
def test_gpt2_eos_none_generates_exactly_max_new_tokens(gpt2_odd):
    _, model, params = gpt2_odd
    ids = odd_prompts((2, 3), seed=6)
    out = decoding.generate(model, params, ids, max_new_tokens=9)
    assert out.shape == (2, 12)


# ------------------------------------------------------------------------------------------ T5


@pytest.mark.parametrize("variant", [pytest.param("v1.0", marks=pytest.mark.slow), "v1.1"])
def test_t5_greedy_equals_transformers_and_cache_equals_recomputation(t5, variant):
    m, model, params, _ = t5[variant]
    ids, mask = t5_inputs()
    M = 16
    tokens, logits = decoding.generate(
        model, params, ids, max_new_tokens=M, attention_mask=mask, return_logits=True
    )
    tokens, logits = np.asarray(tokens), np.asarray(logits)
    assert tokens.shape == (3, M) and logits.shape == (3, M, V_T5)
    assert_varied(tokens, 4)
    ref = hf_generate(m, ids, mask, max_new_tokens=M, eos_token_id=None)
    assert ref.shape == (3, M + 1) and (ref[:, 0] == 0).all()  # transformers keeps the start token
    np.testing.assert_array_equal(tokens, ref[:, 1:])
    # Cached decoding (encoder once, cross K/V once, one token per step) equals a full forward pass
    # of the decoder over [start, tokens[:-1]], at every step.
    dec = np.concatenate([np.zeros((3, 1), np.int32), tokens[:, :-1]], axis=1)
    full = np.asarray(jax.jit(model.apply)({"params": params}, ids, dec, mask))
    err = np.abs(logits - full).max(axis=(0, 2)) / np.abs(full).max()
    assert (err < 1e-5).all(), err
    np.testing.assert_array_equal(logits.argmax(-1), tokens)


@pytest.fixture(scope="module")
def t5_eos(t5):
    """variant -> an EOS id that its beam search emits (found on first use: a variant whose beam
    tests are all deselected is not compiled)."""
    out = {}

    def get(variant):
        if variant not in out:
            _, model, params, _ = t5[variant]
            ids, mask = t5_inputs()
            free = np.asarray(
                decoding.generate(
                    model,
                    params,
                    ids,
                    max_new_tokens=16,
                    method="beam",
                    num_beams=4,
                    attention_mask=mask,
                )
            )
            out[variant] = first_new_token(free[0] if variant == "v1.0" else free[1])
        return out[variant]

    return get


@pytest.mark.parametrize(
    "variant,use_eos,length_penalty,early_stopping",
    [
        pytest.param("v1.0", False, 1.0, False, marks=pytest.mark.slow),
        pytest.param("v1.0", True, 2.0, True, marks=pytest.mark.slow),
        ("v1.1", True, 1.0, False),
        ("v1.1", True, 0.6, False),  # shares the compilation above
    ],
)
def test_t5_beam_search_equals_transformers(
    t5, t5_eos, variant, use_eos, length_penalty, early_stopping
):
    m, model, params, _ = t5[variant]
    ids, mask = t5_inputs()
    eos = t5_eos(variant) if use_eos else None
    kw = dict(
        num_beams=4,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos,
        pad_token_id=PAD,
    )
    ours = np.asarray(
        decoding.generate(
            model, params, ids, max_new_tokens=16, method="beam", attention_mask=mask, **kw
        )
    )
    assert ours.shape == (3, 16)
    ref = hf_generate(m, ids, mask, max_new_tokens=16, **kw)
    np.testing.assert_array_equal(ours, normalize(ref[:, 1:], 16, eos, PAD))
    assert len(set(ours.ravel().tolist())) >= 6
    if use_eos:
        assert any(eos in r.tolist() for r in ours), "EOS never chosen"


# ----------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("family", [pytest.param("gpt2", marks=pytest.mark.slow), "t5"])
def test_top_k_1_sampling_equals_greedy(request, family):
    """top_k=1 samples the argmax whatever the seed. Temperature, top-k and top-p values are traced:
    both seeds share one compilation."""
    if family == "gpt2":
        _, model, params = request.getfixturevalue("gpt2_odd")
        ids = odd_prompts((3, 5), seed=3)
        kw = dict(max_new_tokens=12)
        filters = dict(top_k=1, temperature=0.7)
        greedy = decoding.generate(model, params, ids, **kw)
    else:
        _, model, params, _ = request.getfixturevalue("t5")["v1.1"]
        ids, mask = t5_inputs()
        kw = dict(max_new_tokens=16, attention_mask=mask)
        filters = dict(top_k=1, top_p=0.9, temperature=0.7)
        greedy = decoding.generate(model, params, ids, return_logits=True, **kw)[0]
    for seed in (0, 1):
        s = decoding.generate(
            model, params, ids, method="sample", rng=jax.random.PRNGKey(seed), **kw, **filters
        )
        np.testing.assert_array_equal(np.asarray(s), np.asarray(greedy))


@pytest.mark.parametrize("family", [pytest.param("gpt2", marks=pytest.mark.slow), "t5"])
def test_sampling_reproducible_and_seed_dependent(request, family):
    """The same key gives the same tokens, another key other tokens, and sampling is not greedy."""
    if family == "gpt2":
        _, model, params = request.getfixturevalue("gpt2_flat")
        ids, T = odd_prompts((2, 4), seed=4), 4
        kw = dict(max_new_tokens=16)
        filters = dict(temperature=1.0)
        greedy = np.asarray(decoding.generate(model, params, ids, **kw))
        differ = 0.5  # near-uniform over 97 tokens: most positions differ
    else:
        _, model, params, _ = request.getfixturevalue("t5")["v1.1"]
        (ids, mask), T = t5_inputs(), 0  # T5 returns the new tokens only
        kw = dict(max_new_tokens=16, attention_mask=mask)
        filters = dict(temperature=3.0, top_k=60, top_p=0.95)
        greedy = np.asarray(decoding.generate(model, params, ids, return_logits=True, **kw)[0])
        differ = 0.3
    kw.update(method="sample", **filters)
    a = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(7), **kw))
    b = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(7), **kw))
    c = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(8), **kw))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :T], ids[:, :T])
    assert (a[:, T:] != c[:, T:]).mean() > differ
    assert (a != greedy).any()


@pytest.mark.slow
def test_sampling_follows_filtered_distribution(gpt2_odd):
    """One sampled token over many rows: frequencies match softmax(process_logits(logits))."""
    _, model, params = gpt2_odd
    n, temperature, top_k = 4000, 2.0, 12
    prompt = odd_prompts((1, 3), seed=5)
    out = np.asarray(
        decoding.generate(
            model,
            params,
            np.repeat(prompt, n, 0),
            max_new_tokens=1,
            method="sample",
            temperature=temperature,
            top_k=top_k,
            rng=jax.random.PRNGKey(0),
        )
    )
    counts = np.bincount(out[:, -1], minlength=V_ODD)
    logits = np.asarray(model.apply({"params": params}, prompt))[0, -1].astype(np.float64)
    z = logits / temperature
    kth = np.sort(z)[-top_k]
    p = np.where(z >= kth, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    assert counts[p == 0].sum() == 0
    assert (p > 0).sum() == top_k
    sd = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) <= 5 * sd + 1e-9)
    assert (counts > 0).sum() >= 6  # it really sampled


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.0, None, None),
        (0.7, None, None),
        (1.0, 10, None),
        (1.3, None, 0.9),
        (0.5, 20, 0.8),
        (2.0, 5, 0.3),
        (1.0, None, 0.05),
        (1.0, 200, None),
        (0.9, 1, 0.5),
        (1.0, 0, 1.0),
    ],
)
def test_process_logits_equals_transformers_warpers(torch, transformers, temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = (
        np.random.default_rng(int(temperature * 10) + (top_k or 0))
        .normal(0, 3, (4, V_ODD))
        .astype(np.float32)
    )
    scores = torch.tensor(logits)
    dummy = torch.zeros((4, 1), dtype=torch.long)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(dummy, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(dummy, scores)
    if top_p is not None and top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(dummy, scores)
    ref = scores.numpy()
    ours = np.asarray(decoding.process_logits(jnp.asarray(logits), temperature, top_k, top_p))
    removed_ref = np.isneginf(ref)
    removed = ours <= -1e29
    np.testing.assert_array_equal(removed, removed_ref)
    assert (~removed).sum(-1).min() >= 1
    np.testing.assert_allclose(ours[~removed], ref[~removed], rtol=1e-6)
    if top_k and top_k < V_ODD:
        assert ((~removed).sum(-1) <= top_k).all()


# -------------------------------------------------------------------------------------- compilation


@pytest.fixture
def traces():
    """Each trace of the decoding engine's compiled loop (a trace is a compilation), as
    jax.monitoring reports them: no test hook in the library."""
    seen = []

    def listener(event, duration, fun_name=None, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration" and fun_name == "generate_loop":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


def test_compiled_once_and_prompt_lengths_bucketed(gpt2, t5, traces):
    """Shapes as the parity tests (B=3; GPT-2 greedy, 20 new tokens; T5 greedy, 16): prompts of up
    to 16 tokens share their compilation (prompt_bucket=16), longer ones share one more."""
    _, g_model, g_params = gpt2
    _, t_model, t_params, _ = t5["v1.1"]
    rng = np.random.default_rng(3)

    def run(model, params, T, **kw):
        ids = rng.integers(2, 90, (3, T)).astype(np.int32)
        return decoding.generate(model, params, ids, **kw)

    for model, params, kw in (
        (g_model, g_params, dict(max_new_tokens=20)),
        (t_model, t_params, dict(max_new_tokens=16, return_logits=True)),
    ):
        run(model, params, 5, **kw)
        n = len(traces)
        run(model, params, 5, **kw)  # same shapes, other values: no new trace
        assert len(traces) == n
        for T in (1, 9, 16):  # the same bucket
            out = run(
                model, params, T, eos_token_id=7, pad_token_id=3, **kw
            )  # EOS and pad are not static
            out = out[0] if model is t_model else out
            assert out.shape == ((3, T + 20) if model is g_model else (3, 16))
        assert len(traces) == n
        run(model, params, 17, **kw)  # the next bucket: one new compilation ...
        assert len(traces) == n + 1
        run(
            model, params, 20, **kw
        )  # ... shared within it (for GPT-2 capped at n_positions - 19 = 21)
        assert len(traces) == n + 1


def _spy_on_compiled(monkeypatch) -> list:
    """The lowered decode loops of every ``decoding.generate`` call that follows, in order."""
    lowered = []
    compiled = decoding._compiled

    def spy(model, spec):
        fn = compiled(model, spec)

        def run(*args):
            lowered.append(fn.lower(*args))
            return fn(*args)

        return run

    monkeypatch.setattr(decoding, "_compiled", spy)
    return lowered


def test_decode_loop_updates_the_kv_caches_in_place(gpt2, t5, monkeypatch):
    """The compiled decode loop copies no KV cache: each step writes its keys/values into the
    caches in place (``layers.cached_attention`` and ``perf.CPU_XLA_FLAGS``, which conftest sets as
    the CLI does). Before, XLA on CPU copied every layer's whole cache twice per generated token."""
    lowered = _spy_on_compiled(monkeypatch)
    B, M = 2, 20
    ids = np.arange(2, 2 + B * 5, dtype=np.int32).reshape(B, 5)
    for _, model, params, *_ in (gpt2, t5["v1.1"]):
        decoding.generate(model, params, ids, max_new_tokens=M)
        c = model.config
        heads = getattr(c, "n_head", None) or c.num_heads
        head_dim = getattr(c, "d_kv", None) or c.n_embd // heads
        smallest_cache = B * heads * head_dim * M  # one layer's keys at M positions, at least
        copies = loop_copies(lowered[-1].compile().as_text())
        assert not [s for s in copies if np.prod(s) >= smallest_cache], (type(model), copies)


def test_scanned_models_decode_without_slicing_weights_per_token(gpt2, t5, tmp_path, monkeypatch):
    """A model with scanned layers (the experiments' setting) decodes the same tokens as the
    unscanned one, and its compiled loop neither slices a layer's weights or cache out of a stack
    nor copies a cache: ``decoding`` unstacks the params once per call and runs the layers
    unrolled. Under ``nn.scan`` every generated token sliced every weight out of the stacked
    params (a copy on CPU): GPT-2 124M decoded at 27 instead of 49 new tokens/s."""
    lowered = _spy_on_compiled(monkeypatch)
    B, M = 2, 20
    ids = np.arange(2, 2 + B * 5, dtype=np.int32).reshape(B, 5)
    gpt2[0].save_pretrained(tmp_path / "gpt2")
    for flat_model, flat_params, d in (
        (gpt2[1], gpt2[2], tmp_path / "gpt2"),
        (t5["v1.1"][1], t5["v1.1"][2], t5["v1.1"][3]),
    ):
        model, params = hf.from_pretrained(str(d), scan_layers=True)
        assert model.config.scan_layers
        out = decoding.generate(model, params, ids, max_new_tokens=M)
        np.testing.assert_array_equal(
            np.asarray(out),
            np.asarray(decoding.generate(flat_model, flat_params, ids, max_new_tokens=M)),
        )
        # decoding.unrolled: the same conversion, done once by the caller.
        un_model, un_params = decoding.unrolled(model, params)
        assert not un_model.config.scan_layers
        assert jax.tree.structure(un_params) == jax.tree.structure(flat_params)
        jax.tree.map(np.testing.assert_array_equal, un_params, flat_params)
        c = model.config
        width = getattr(c, "n_embd", None) or c.d_model
        heads = getattr(c, "n_head", None) or c.num_heads
        head_dim = getattr(c, "d_kv", None) or c.n_embd // heads
        hlo = lowered[-2].compile().as_text()  # the scanned model's loop
        slices = loop_copies(hlo, "dynamic-slice")
        # A weight matrix has at least width x head_dim entries (a cache slice: B x heads x M x
        # head_dim).
        assert not [s for s in slices if np.prod(s) >= width * head_dim], (type(model), slices)
        copies = loop_copies(hlo)
        assert not [s for s in copies if np.prod(s) >= B * heads * head_dim * M], copies


# ----------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize(
    "family,mesh_shape",
    [
        ("gpt2", (2, 2, 2)),
        pytest.param(
            "t5", (1, 4, 2), marks=pytest.mark.slow
        ),  # T5 sharded: test_t5_model's logical axes test
    ],
)
def test_sharded_equals_unsharded(gpt2, t5, family, mesh_shape):
    """Beam search (the cache is reordered every step) with params sharded over data/fsdp/tensor:
    the same tokens as unsharded (the same call as the parity tests: it shares their compilation).
    The sharded T5 has scanned layers (caches stacked on a leading layer axis)."""
    if family == "gpt2":
        _, model, params = gpt2
        ref_model, ref_params = model, params
        (ids, mask), M, init_args = gpt2_prompts(), 20, (jnp.zeros((1, 4), jnp.int32),)
    else:
        _, ref_model, ref_params, d = t5["v1.1"]
        model, params = hf.from_pretrained(d, scan_layers=True)
        (ids, mask), M, init_args = (
            t5_inputs(),
            16,
            (jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 3), jnp.int32)),
        )
    kw = dict(max_new_tokens=M, method="beam", num_beams=4, attention_mask=mask, pad_token_id=PAD)
    ref = np.asarray(decoding.generate(ref_model, ref_params, ids, **kw))
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_args))["params"]
    mesh = sharding.make_mesh(mesh_shape)
    sharded = jax.device_put(
        params, sharding.logical_to_sharding(nn.get_partition_spec(abstract), mesh)
    )
    split = [x for x in jax.tree.leaves(sharded) if not x.sharding.is_fully_replicated]
    assert len(split) > len(jax.tree.leaves(sharded)) // 2
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        out = decoding.generate(model, sharded, ids, **kw)
    np.testing.assert_array_equal(np.asarray(out), ref)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("family", ["gpt2", "t5"])
@pytest.mark.parametrize(
    "kwargs,words",
    [
        (
            dict(max_new_tokens=P_GPT2),
            "n_positions",
        ),  # GPT-2: 4 + 40 > 40; T5: 40 is fine, see below
        (
            dict(max_new_tokens=P_GPT2 - 4 + 1),
            "n_positions",
        ),  # GPT-2: one more than a 4-token prompt leaves
        (dict(method="sample", top_p=0.0), "top_p"),
        (dict(method="sample", top_p=1.5), "top_p"),
        (dict(method="sample", temperature=0.0), "temperature"),
        (dict(method="sample", temperature=-0.5), "temperature"),
        (dict(method="sample", temperature=-1.0), "temperature"),
        (dict(method="sample", top_k=-1), "top_k"),
        (dict(method="beam", num_beams=0), "num_beams"),
        (dict(method="beam", early_stopping="sometimes"), "early_stopping"),
        (dict(method="beam", return_logits=True), "return_logits"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(method="top_k"), "method"),
        (dict(method="nucleus"), "method"),
    ],
)
def test_bad_arguments(gpt2, t5, family, kwargs, words):
    model, params = gpt2[1:] if family == "gpt2" else t5["v1.0"][1:3]
    if family == "t5" and words == "n_positions":
        kwargs = dict(max_new_tokens=P_T5 + 1)
    kw = dict(max_new_tokens=3)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=words):
        decoding.generate(model, params, np.full((1, 4), 2, np.int32), **kw)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_bad_prompts(gpt2, t5, family):
    model, params = gpt2[1:] if family == "gpt2" else t5["v1.0"][1:3]
    with pytest.raises(ValueError, match="non-empty"):
        decoding.generate(model, params, np.zeros((1, 0), np.int32), max_new_tokens=3)
    with pytest.raises(ValueError, match="empty"):
        decoding.generate(
            model,
            params,
            np.full((2, 4), 2),
            max_new_tokens=3,
            attention_mask=np.array([[1, 1, 1, 1], [0, 0, 0, 0]]),
        )
    with pytest.raises(ValueError, match="vocab_size"):
        decoding.generate(model, params, np.array([[1, 200]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="vocab_size"):  # the first id past the vocabulary
        decoding.generate(model, params, np.array([[1, model.config.vocab_size]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="shape"):
        decoding.generate(
            model, params, np.full((2, 4), 2), max_new_tokens=3, attention_mask=np.ones((2, 5))
        )
    if family == "gpt2":
        with pytest.raises(ValueError, match="left-padded"):
            decoding.generate(
                model, params, np.full((1, 4), 2), max_new_tokens=3, attention_mask=[[1, 1, 0, 0]]
            )
    else:
        with pytest.raises(ValueError, match="n_positions"):
            decoding.generate(model, params, np.full((1, P_T5 + 1), 2), max_new_tokens=3)


# -------------------------------------------------------------------------------- crop=True (GPT-2)


def sliding_window_greedy(logits_fn, ids, max_new_tokens, positions):
    """nanoGPT's sampler, greedy, as plain Python: each token is the argmax of the logits at the
    last of the sequence's last ``positions`` tokens. ``logits_fn``: [B, positions] int ->
    [B, positions, V]; a shorter window is right-padded to that fixed shape (one compilation),
    which a causal model's logits before the padding do not see."""
    seq = np.asarray(ids)
    for _ in range(max_new_tokens):
        window = seq[:, -positions:]
        t = window.shape[1]
        window = np.pad(window, ((0, 0), (0, positions - t)))
        logits = np.asarray(logits_fn(window))[:, t - 1]
        seq = np.concatenate([seq, logits.argmax(-1)[:, None].astype(seq.dtype)], axis=1)
    return seq


@pytest.mark.parametrize("T,new", [(6, 45), (40, 4)])  # the context fills mid-run; a long prompt
def test_crop_greedy_equals_sliding_window_reference(gpt2_odd, T, new):
    """crop=True past n_positions = 37: the same tokens as a plain loop over our model's full
    forward on the last 37 tokens, and as the same loop over transformers' GPT2LMHeadModel."""
    import torch

    m, model, params = gpt2_odd
    ids = odd_prompts((2, T), seed=6)
    ours = np.asarray(
        decoding.generate(model, params, ids, max_new_tokens=new, method="greedy", crop=True)
    )
    assert ours.shape == (2, T + new)
    forward = jax.jit(lambda x: model.apply({"params": params}, x))
    ref = sliding_window_greedy(forward, ids, new, P_ODD)
    np.testing.assert_array_equal(ours, ref)
    with torch.no_grad():
        hf_ref = sliding_window_greedy(
            lambda x: m(torch.as_tensor(x, dtype=torch.long)).logits.numpy(), ids, new, P_ODD
        )
    np.testing.assert_array_equal(ours, hf_ref)
    assert_varied(ours[:, -min(new, 14) :], 3)  # the cropped tokens are not a degenerate repeat


@pytest.mark.slow  # the fast loop keeps the greedy-vs-reference and padding tests
def test_crop_changes_nothing_while_the_sequence_fits(gpt2_odd):
    """While prompt and new tokens fit, crop=True is the cached loop itself; past the context, its
    first tokens are those of the longest uncropped run."""
    _, model, params = gpt2_odd
    ids = odd_prompts((3, 5), seed=7)
    for kw in (dict(method="greedy"), dict(method="sample", top_k=5, rng=jax.random.PRNGKey(2))):
        for new in (12, P_ODD - 5):
            plain = decoding.generate(model, params, ids, max_new_tokens=new, **kw)
            cropped = decoding.generate(model, params, ids, max_new_tokens=new, crop=True, **kw)
            np.testing.assert_array_equal(np.asarray(cropped), np.asarray(plain))
        longer = decoding.generate(model, params, ids, max_new_tokens=P_ODD + 3, crop=True, **kw)
        np.testing.assert_array_equal(np.asarray(longer)[:, :P_ODD], np.asarray(plain))


@pytest.mark.slow  # the fast loop keeps the greedy-vs-reference and padding tests
def test_crop_sampling_reproducible_and_filtered(gpt2_flat, gpt2_odd):
    """Sampling past the context: T + max_new_tokens tokens, the same for the same key, other
    tokens for another; top_k=1 samples the greedy tokens; return_logits covers every new token."""
    _, model, params = gpt2_flat
    ids, new = odd_prompts((2, 4), seed=8), 50
    kw = dict(max_new_tokens=new, method="sample", temperature=1.0, top_p=0.95, crop=True)
    a, la = decoding.generate(
        model, params, ids, rng=jax.random.PRNGKey(7), return_logits=True, **kw
    )
    b = decoding.generate(model, params, ids, rng=jax.random.PRNGKey(7), **kw)
    c = decoding.generate(model, params, ids, rng=jax.random.PRNGKey(8), **kw)
    a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
    assert a.shape == (2, 4 + new) and la.shape == (2, new, V_ODD)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :4], ids)
    assert (a[:, P_ODD:] != c[:, P_ODD:]).mean() > 0.5  # near-uniform: the cropped part differs
    # The recorded logits of a cropped step are the window's forward pass.
    window = jnp.asarray(a[:, 4 + new - 1 - P_ODD : 4 + new - 1])
    last = np.asarray(model.apply({"params": params}, window))[:, -1]
    np.testing.assert_allclose(np.asarray(la[:, -1]), last, rtol=1e-5, atol=1e-5)

    _, model, params = gpt2_odd
    greedy = decoding.generate(model, params, ids, max_new_tokens=new, crop=True)
    top1 = decoding.generate(
        model, params, ids, max_new_tokens=new, method="sample", top_k=1, temperature=0.7,
        rng=jax.random.PRNGKey(3), crop=True,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))


@pytest.mark.slow
def test_crop_left_padding_and_eos(gpt2_odd):
    """A left-padded row crops its own tokens (the same new tokens as alone); a row that hits EOS
    in the cropped part holds padding after it."""
    _, model, params = gpt2_odd
    ids = odd_prompts((2, 6), seed=9)
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    new = 40
    both = np.asarray(
        decoding.generate(model, params, ids, max_new_tokens=new, attention_mask=mask, crop=True)
    )
    for r, prompt in enumerate((ids[:1], ids[1:, 2:])):
        alone = np.asarray(decoding.generate(model, params, prompt, max_new_tokens=new, crop=True))
        np.testing.assert_array_equal(both[r, 6:], alone[0, -new:])
    eos = first_new_token(both[0], start=P_ODD)  # first seen in the cropped part
    out = np.asarray(
        decoding.generate(
            model,
            params,
            ids[:1],
            max_new_tokens=new,
            eos_token_id=eos,
            pad_token_id=PAD,
            crop=True,
        )  # fmt: skip
    )
    stop = list(both[0]).index(eos)
    np.testing.assert_array_equal(out[0, : stop + 1], both[0, : stop + 1])
    assert (out[0, stop + 1 :] == PAD).all() and out.shape == (1, 6 + new)


def test_crop_errors(gpt2, t5):
    """Without crop the length error names crop=True; beam search past the context and T5 with
    crop are errors that say why."""
    _, model, params = gpt2
    ids = np.full((1, 4), 2, np.int32)
    with pytest.raises(ValueError, match="crop=True"):
        decoding.generate(model, params, ids, max_new_tokens=P_GPT2)
    with pytest.raises(ValueError, match="beam search with crop=True"):
        decoding.generate(model, params, ids, max_new_tokens=P_GPT2, method="beam", crop=True)
    _, t_model, t_params, _ = t5["v1.0"]
    with pytest.raises(ValueError, match="crop=True applies to causal LMs"):
        decoding.generate(t_model, t_params, ids, max_new_tokens=3, crop=True)
