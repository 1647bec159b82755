"""The one decoding engine for GPT-2 and T5: greedy and beam search token-identical to transformers'
generate, the T5 KV cache equal to recomputation, sampling, compile-once, prompt bucketing, sharded
params, argument errors. Models are tiny random transformers models with weights scaled so that
outputs are not degenerate."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformers import decoding, hf, sharding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Vocabulary and heads even, widths divisible by 4: the sharding test splits them over the mesh.
V_GPT2, P_GPT2, V_T5, P_T5 = 98, 40, 102, 40
PAD = 5  # not 0: transformers' beam search fills with EOS when pad_token_id is 0 (see normalize)


# ------------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """transformers' GPT-2 with std-0.5 init (peaked distributions, varied greedy outputs)."""
    torch.manual_seed(0)
    c = transformers.GPT2Config(
        vocab_size=V_GPT2, n_positions=P_GPT2, n_embd=36, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, initializer_range=0.5, attn_implementation="eager",
    )
    m = transformers.GPT2LMHeadModel(c).eval()
    d = str(tmp_path_factory.mktemp("gpt2"))
    m.save_pretrained(d)
    model, params = hf.from_pretrained(d)
    return m, model, params


# v1.0: ReLU, tied and scaled head; v1.1: gated GELU, own head. (initializer_factor, out-projection
# scale, norm-scale spread, seed) chosen so that greedy outputs vary (a random tied head otherwise
# tends to repeat its input token).
T5_VARIANTS = {
    "v1.0": (dict(feed_forward_proj="relu"), 4.0, 1.0, 0.5, 0),
    "v1.1": (dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False), 4.0, 4.0, 0.2, 1),
}


def _hf_t5(variant):
    kw, factor, out_scale, spread, seed = T5_VARIANTS[variant]
    torch.manual_seed(seed)
    c = transformers.T5Config(
        vocab_size=V_T5, d_model=36, d_kv=8, num_heads=4, d_ff=44, num_layers=2, num_decoder_layers=2,
        relative_attention_num_buckets=9, relative_attention_max_distance=20, dropout_rate=0.0, n_positions=P_T5,
        decoder_start_token_id=0, initializer_factor=factor, attn_implementation="eager", **kw,
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
def t5(tmp_path_factory):
    """{variant: (transformers model, our model, params, its HF-format directory)}."""
    out = {}
    for variant in T5_VARIANTS:
        m = _hf_t5(variant)
        d = str(tmp_path_factory.mktemp(variant))
        m.save_pretrained(d)
        model, params = hf.from_pretrained(d)
        assert model.config.n_positions == P_T5 and model.config.tie_word_embeddings == (variant == "v1.0")
        out[variant] = (m, model, params, d)
    return out


def gpt2_prompts():
    """Three left-padded prompts of lengths 7, 4 and 6."""
    ids = np.random.default_rng(0).integers(0, V_GPT2, (3, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def t5_inputs():
    """Three encoder inputs of lengths 9, 6 and 7 (right and left padding)."""
    ids = np.random.default_rng(0).integers(2, V_T5, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :2] = 0
    return ids, mask


def hf_generate(m, ids, mask, **kw):
    with torch.no_grad():
        return m.generate(torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                          do_sample=False, **kw).numpy()


def normalize(gen, max_new_tokens, eos, pad):
    """transformers' generated tokens -> our layout: [B, max_new_tokens], pad after the first EOS.

    transformers stops when every row is done (shorter output) and fills finished beam hypotheses with
    ``pad_token_id or eos_token_id`` (EOS when the pad id is 0)."""
    out = np.full((gen.shape[0], max_new_tokens), pad, np.int64)
    out[:, :gen.shape[1]] = gen
    if eos is not None:
        for row in out:
            hits = np.flatnonzero(row == eos)
            if len(hits):
                row[hits[0] + 1:] = pad
    return out


def assert_varied(gen, at_least=4):
    for row in np.asarray(gen):
        assert len(set(row.tolist())) >= at_least, row


def first_new_token(row, start=2):
    """A token of ``row`` that first appears at index >= start (used as EOS so that it triggers)."""
    return next(int(row[i]) for i in range(start, len(row)) if row[i] not in row[:i])


# ------------------------------------------------------------------------------------------ GPT-2


def test_gpt2_greedy_equals_transformers(gpt2):
    m, model, params = gpt2
    ids, mask = gpt2_prompts()
    ours = np.asarray(decoding.generate(model, params, ids, max_new_tokens=20, attention_mask=mask))
    assert ours.shape == (3, 27)
    np.testing.assert_array_equal(ours[:, :7], ids)
    assert_varied(ours[:, 7:], 4)
    assert len(set(ours[:, 7:].ravel().tolist())) >= 10
    np.testing.assert_array_equal(ours, hf_generate(m, ids, mask, max_new_tokens=20, pad_token_id=0))


@pytest.fixture(scope="module")
def gpt2_eos(gpt2):
    _, model, params = gpt2
    ids, mask = gpt2_prompts()
    free = np.asarray(decoding.generate(model, params, ids, max_new_tokens=20, method="beam", num_beams=4,
                                        attention_mask=mask))  # compiled once for every beam test
    return first_new_token(free[0, 7:])


@pytest.mark.parametrize("use_eos,length_penalty,early_stopping", [
    (False, 1.0, False),
    (True, 1.0, False),
    (True, 0.5, False),  # same compilation as the line above: the penalty is not baked in
    (True, 2.0, True),
    (True, -1.0, "never"),
])
def test_gpt2_beam_search_equals_transformers(gpt2, gpt2_eos, use_eos, length_penalty, early_stopping):
    m, model, params = gpt2
    ids, mask = gpt2_prompts()
    eos = gpt2_eos if use_eos else None
    kw = dict(num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos,
              pad_token_id=PAD)
    ours = np.asarray(decoding.generate(model, params, ids, max_new_tokens=20, method="beam", attention_mask=mask,
                                        **kw))
    assert ours.shape == (3, 27)
    np.testing.assert_array_equal(ours[:, :7], ids)
    ref = hf_generate(m, ids, mask, max_new_tokens=20, **kw)
    np.testing.assert_array_equal(ref[:, :7], ids)
    np.testing.assert_array_equal(ours[:, 7:], normalize(ref[:, 7:], 20, eos, PAD))
    gen = ours[:, 7:]
    if not use_eos:
        assert len(set(gen.ravel().tolist())) >= 8
    else:
        stopped = [r for r in gen if eos in r.tolist()]
        assert stopped, "EOS never chosen: the test would not exercise finished hypotheses"
        for r in stopped:
            assert (r[list(r).index(eos) + 1:] == PAD).all()


# ------------------------------------------------------------------------------------------ T5


@pytest.mark.parametrize("variant", list(T5_VARIANTS))
def test_t5_greedy_equals_transformers_and_cache_equals_recomputation(t5, variant):
    m, model, params, _ = t5[variant]
    ids, mask = t5_inputs()
    M = 16
    tokens, logits = decoding.generate(model, params, ids, max_new_tokens=M, attention_mask=mask, return_logits=True)
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
    out = {}
    for variant, (_, model, params, _) in t5.items():
        ids, mask = t5_inputs()
        free = np.asarray(decoding.generate(model, params, ids, max_new_tokens=16, method="beam", num_beams=4,
                                            attention_mask=mask))
        out[variant] = first_new_token(free[0] if variant == "v1.0" else free[1])
    return out


@pytest.mark.parametrize("variant,use_eos,length_penalty,early_stopping", [
    ("v1.0", False, 1.0, False),
    ("v1.0", True, 2.0, True),
    ("v1.1", True, 1.0, False),
    ("v1.1", True, 0.6, False),  # shares the compilation above
])
def test_t5_beam_search_equals_transformers(t5, t5_eos, variant, use_eos, length_penalty, early_stopping):
    m, model, params, _ = t5[variant]
    ids, mask = t5_inputs()
    eos = t5_eos[variant] if use_eos else None
    kw = dict(num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos,
              pad_token_id=PAD)
    ours = np.asarray(decoding.generate(model, params, ids, max_new_tokens=16, method="beam", attention_mask=mask,
                                        **kw))
    assert ours.shape == (3, 16)
    ref = hf_generate(m, ids, mask, max_new_tokens=16, **kw)
    np.testing.assert_array_equal(ours, normalize(ref[:, 1:], 16, eos, PAD))
    assert len(set(ours.ravel().tolist())) >= 6
    if use_eos:
        assert any(eos in r.tolist() for r in ours), "EOS never chosen"


# ------------------------------------------------------------------------------------------ sampling


def test_t5_top_k_1_equals_greedy_and_sampling_is_reproducible(t5):
    _, model, params, _ = t5["v1.1"]
    ids, mask = t5_inputs()
    greedy = np.asarray(decoding.generate(model, params, ids, max_new_tokens=16, attention_mask=mask,
                                          return_logits=True)[0])
    # Temperature, top-k and top-p values are traced: both calls below share one compilation.
    for seed in (0, 1):
        s = decoding.generate(model, params, ids, max_new_tokens=16, attention_mask=mask, method="sample", top_k=1,
                              top_p=0.9, temperature=0.7, rng=jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(np.asarray(s), greedy)
    kw = dict(max_new_tokens=16, attention_mask=mask, method="sample", temperature=3.0, top_k=60, top_p=0.95)
    a = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(7), **kw))
    b = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(7), **kw))
    c = np.asarray(decoding.generate(model, params, ids, rng=jax.random.PRNGKey(8), **kw))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.3 and (a != greedy).any()


# ------------------------------------------------------------------------------------------ compilation


def test_compiled_once_and_prompt_lengths_bucketed(gpt2, t5):
    """Shapes as the parity tests (B=3; GPT-2 greedy, 20 new tokens; T5 greedy, 16): prompts of up
    to 16 tokens share their compilation (prompt_bucket=16), longer ones share one more."""
    _, g_model, g_params = gpt2
    _, t_model, t_params, _ = t5["v1.1"]
    rng = np.random.default_rng(3)

    def run(model, params, T, **kw):
        ids = rng.integers(2, 90, (3, T)).astype(np.int32)
        return decoding.generate(model, params, ids, **kw)

    for model, params, kw in ((g_model, g_params, dict(max_new_tokens=20)),
                              (t_model, t_params, dict(max_new_tokens=16, return_logits=True))):
        run(model, params, 5, **kw)
        n = decoding.trace_count()
        run(model, params, 5, **kw)  # same shapes, other values: no new trace
        assert decoding.trace_count() == n
        for T in (1, 9, 16):  # the same bucket
            out = run(model, params, T, eos_token_id=7, pad_token_id=3, **kw)  # EOS and pad are not static
            out = out[0] if model is t_model else out
            assert out.shape == ((3, T + 20) if model is g_model else (3, 16))
        assert decoding.trace_count() == n
        run(model, params, 17, **kw)  # the next bucket: one new compilation ...
        assert decoding.trace_count() == n + 1
        run(model, params, 20, **kw)  # ... shared within it (for GPT-2 capped at n_positions - 19 = 21)
        assert decoding.trace_count() == n + 1


# ------------------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize("family,mesh_shape", [("gpt2", (2, 2, 2)), ("t5", (1, 4, 2))])
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
        (ids, mask), M, init_args = t5_inputs(), 16, (jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 3), jnp.int32))
    kw = dict(max_new_tokens=M, method="beam", num_beams=4, attention_mask=mask, pad_token_id=PAD)
    ref = np.asarray(decoding.generate(ref_model, ref_params, ids, **kw))
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_args))["params"]
    mesh = sharding.make_mesh(mesh_shape)
    sharded = jax.device_put(params, sharding.logical_to_sharding(nn.get_partition_spec(abstract), mesh))
    split = [x for x in jax.tree.leaves(sharded) if not x.sharding.is_fully_replicated]
    assert len(split) > len(jax.tree.leaves(sharded)) // 2
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        out = decoding.generate(model, sharded, ids, **kw)
    np.testing.assert_array_equal(np.asarray(out), ref)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("family", ["gpt2", "t5"])
@pytest.mark.parametrize("kwargs,words", [
    (dict(max_new_tokens=P_GPT2), "n_positions"),  # GPT-2: 4 + 40 > 40; T5: 40 is fine, see below
    (dict(method="sample", top_p=0.0), "top_p"),
    (dict(method="sample", top_p=1.5), "top_p"),
    (dict(method="sample", temperature=0.0), "temperature"),
    (dict(method="sample", temperature=-0.5), "temperature"),
    (dict(method="beam", num_beams=0), "num_beams"),
    (dict(method="beam", early_stopping="sometimes"), "early_stopping"),
    (dict(method="beam", return_logits=True), "return_logits"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(method="top_k"), "method"),
])
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
        decoding.generate(model, params, np.full((2, 4), 2), max_new_tokens=3,
                          attention_mask=np.array([[1, 1, 1, 1], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="vocab_size"):
        decoding.generate(model, params, np.array([[1, 200]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="shape"):
        decoding.generate(model, params, np.full((2, 4), 2), max_new_tokens=3, attention_mask=np.ones((2, 5)))
    if family == "gpt2":
        with pytest.raises(ValueError, match="left-padded"):
            decoding.generate(model, params, np.full((1, 4), 2), max_new_tokens=3, attention_mask=[[1, 1, 0, 0]])
    else:
        with pytest.raises(ValueError, match="n_positions"):
            decoding.generate(model, params, np.full((1, P_T5 + 1), 2), max_new_tokens=3)
