"""GPT-2 generation: token-identical to transformers' generate, KV cache equal to recomputation,
sampling filters equal to transformers' logits warpers, EOS/padding rules and argument errors."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxformers import decoding, hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, P = 97, 37


def hf_gpt2(init, seed=0):
    torch.manual_seed(seed)
    c = transformers.GPT2Config(
        vocab_size=V, n_positions=P, n_embd=60, n_layer=3, n_head=5, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, initializer_range=init, attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(c).eval()


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """Large init (std 0.5): peaked next-token distributions and greedy outputs that do not just
    repeat one token."""
    m = hf_gpt2(0.5)
    d = str(tmp_path_factory.mktemp("sharp"))
    m.save_pretrained(d)
    model, params = hf.from_pretrained(d)
    return m, model, params


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """Standard init (std 0.02): nearly uniform next-token distributions, for sampling."""
    m = hf_gpt2(0.02, seed=1)
    d = str(tmp_path_factory.mktemp("flat"))
    m.save_pretrained(d)
    return hf.from_pretrained(d)


def prompts(shape, seed=0):
    return np.random.default_rng(seed).integers(0, V, shape).astype(np.int32)


def hf_generate(m, ids, mask=None, **kw):
    with torch.no_grad():
        out = m.generate(
            torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(np.ones_like(ids) if mask is None else mask, dtype=torch.long),
            do_sample=False, **kw,
        )
    return out.numpy()


@pytest.mark.parametrize("T,new", [(7, 20), (10, 27)])  # bucketed prompt (16 + 20 <= 37), and exact (no room)
def test_greedy_equals_transformers(sharp, T, new):
    m, model, params = sharp
    ids = prompts((3, T))
    ours = np.asarray(decoding.generate(model, params, ids, max_new_tokens=new, method="greedy"))
    ref = hf_generate(m, ids, max_new_tokens=new, pad_token_id=0)
    assert ours.shape == (3, T + new)
    np.testing.assert_array_equal(ours[:, :T], ids)
    for row in ours:
        assert len(set(row[T:].tolist())) >= 5  # not a degenerate repetition
    np.testing.assert_array_equal(ours, ref)


def test_greedy_left_padding_equals_transformers_and_unpadded(sharp):
    m, model, params = sharp
    ids = prompts((3, 9), seed=1)
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


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_logits_equal_full_recomputation(sharp, padded):
    _, model, params = sharp
    B, T, new = 2, 6, 12
    S = T + new
    ids = prompts((B, S), seed=2)
    mask = np.ones((B, S), np.int32)
    if padded:
        mask[1, :3] = 0
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)

    full = jax.jit(lambda p, x, m, q: model.apply({"params": p}, x, attention_mask=m, position_ids=q))(
        params, ids, mask, pos)

    cache = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((B, S), jnp.int32), decode=True))["cache"])

    @jax.jit
    def step(cache, x, q):
        logits, v = model.apply({"params": params, "cache": cache}, x, attention_mask=mask, position_ids=q,
                                decode=True, mutable=["cache"])
        return logits, v["cache"]

    logits, cache = step(cache, ids[:, :T], pos[:, :T])  # prefill
    keep = mask[:, :T].astype(bool)
    assert rel_err(np.asarray(logits)[keep], np.asarray(full)[:, :T][keep]) < 1e-5
    for t in range(T, S):
        logits, cache = step(cache, ids[:, t:t + 1], pos[:, t:t + 1])
        assert logits.shape == (B, 1, V)
        assert rel_err(logits[:, 0], full[:, t]) < 1e-5, t
    indices = [int(v) for k, v in jax.tree_util.tree_leaves_with_path(cache) if "cache_index" in jax.tree_util.keystr(k)]
    assert indices == [S] * 3  # one per layer


def test_top_k_1_sampling_equals_greedy(sharp):
    _, model, params = sharp
    ids = prompts((3, 5), seed=3)
    greedy = decoding.generate(model, params, ids, max_new_tokens=12)
    for seed in (0, 1):
        s = decoding.generate(model, params, ids, max_new_tokens=12, method="sample", top_k=1, temperature=0.7,
                              rng=jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(np.asarray(s), np.asarray(greedy))


def test_sampling_reproducible_and_seed_dependent(flat):
    model, params = flat
    ids = prompts((2, 4), seed=4)
    kw = dict(max_new_tokens=16, method="sample", temperature=1.0)
    a = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(7), **kw))
    b = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(7), **kw))
    c = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(8), **kw))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :4], ids)
    assert (a[:, 4:] != c[:, 4:]).mean() > 0.5  # near-uniform over 97 tokens: most positions differ
    greedy = np.asarray(decoding.generate(model, params, ids, max_new_tokens=16))
    assert (a != greedy).any()


def test_sampling_follows_filtered_distribution(sharp):
    """One sampled token over many rows: frequencies match softmax(process_logits(logits))."""
    _, model, params = sharp
    n, temperature, top_k = 4000, 2.0, 12
    prompt = prompts((1, 3), seed=5)
    out = np.asarray(decoding.generate(model, params, np.repeat(prompt, n, 0), max_new_tokens=1, method="sample",
                                       temperature=temperature, top_k=top_k, rng=jax.random.PRNGKey(0)))
    counts = np.bincount(out[:, -1], minlength=V)
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


def test_eos_then_padding(sharp):
    m, model, params = sharp
    ids = prompts((3, 7))
    free = np.asarray(decoding.generate(model, params, ids, max_new_tokens=20))
    gen = free[:, 7:]
    # An EOS that row 0 emits a few tokens in (its first occurrence there).
    k = next(i for i in range(2, 20) if gen[0, i] not in gen[0, :i])
    eos, pad = int(gen[0, k]), 5
    ours = np.asarray(decoding.generate(model, params, ids, max_new_tokens=20, eos_token_id=eos, pad_token_id=pad))
    assert ours.shape == free.shape
    for r in range(3):
        hits = np.flatnonzero(gen[r] == eos)
        if len(hits) == 0:
            np.testing.assert_array_equal(ours[r], free[r])
        else:
            j = 7 + hits[0]
            np.testing.assert_array_equal(ours[r, :j + 1], free[r, :j + 1])
            assert (ours[r, j + 1:] == pad).all()
    assert ours[0, 7 + k] == eos and (ours[0, 7 + k + 1:] == pad).all()
    # transformers: the same, shorter when every row has stopped; pad it out to compare.
    ref = hf_generate(m, ids, max_new_tokens=20, eos_token_id=eos, pad_token_id=pad)
    ref = np.concatenate([ref, np.full((3, free.shape[1] - ref.shape[1]), pad)], axis=1)
    np.testing.assert_array_equal(ours, ref)
    # pad_token_id defaults to the EOS id.
    dflt = np.asarray(decoding.generate(model, params, ids[:1], max_new_tokens=20, eos_token_id=eos))
    assert (dflt[0, 7 + k:] == eos).all()


def test_eos_none_generates_exactly_max_new_tokens(sharp):
    _, model, params = sharp
    ids = prompts((2, 3), seed=6)
    out = decoding.generate(model, params, ids, max_new_tokens=9)
    assert out.shape == (2, 12)


@pytest.mark.parametrize("kwargs,words", [
    (dict(method="sample", top_p=0.0), "top_p"),
    (dict(method="sample", top_p=1.5), "top_p"),
    (dict(method="sample", temperature=0.0), "temperature"),
    (dict(method="sample", temperature=-1.0), "temperature"),
    (dict(max_new_tokens=P - 4 + 1), "n_positions"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(method="nucleus"), "method"),
    (dict(method="sample", top_k=-1), "top_k"),
])
def test_bad_arguments(sharp, kwargs, words):
    _, model, params = sharp
    kw = dict(max_new_tokens=3)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=words):
        decoding.generate(model, params, prompts((1, 4)), **kw)


def test_bad_prompts(sharp):
    _, model, params = sharp
    with pytest.raises(ValueError, match="non-empty"):
        decoding.generate(model, params, np.zeros((1, 0), np.int32), max_new_tokens=3)
    with pytest.raises(ValueError, match="empty"):
        decoding.generate(model, params, prompts((2, 4)), max_new_tokens=3,
                          attention_mask=np.array([[1, 1, 1, 1], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="vocab_size"):
        decoding.generate(model, params, np.array([[1, V]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="shape"):
        decoding.generate(model, params, prompts((2, 4)), max_new_tokens=3, attention_mask=np.ones((2, 5)))


def test_beam_search_equals_transformers(sharp):
    m, model, params = sharp
    ids = prompts((2, 5), seed=7)
    ours = np.asarray(decoding.generate(model, params, ids, max_new_tokens=10, method="beam", num_beams=3))
    ref = hf_generate(m, ids, max_new_tokens=10, num_beams=3, pad_token_id=0)
    np.testing.assert_array_equal(ours, ref)
    greedy = np.asarray(decoding.generate(model, params, ids, max_new_tokens=10))
    assert (ours != greedy).any()  # a case where beam search and greedy part ways


# ------------------------------------------------------------------------------ logits warpers


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, None, None), (0.7, None, None), (1.0, 10, None), (1.3, None, 0.9), (0.5, 20, 0.8),
    (2.0, 5, 0.3), (1.0, None, 0.05), (1.0, 200, None), (0.9, 1, 0.5), (1.0, 0, 1.0),
])
def test_process_logits_equals_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    logits = np.random.default_rng(int(temperature * 10) + (top_k or 0)).normal(0, 3, (4, V)).astype(np.float32)
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
    if top_k and top_k < V:
        assert ((~removed).sum(-1) <= top_k).all()
