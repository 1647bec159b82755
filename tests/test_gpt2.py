"""GPT-2: parity with transformers' PyTorch GPT2LMHeadModel in both directions, remat, bf16,
presets, logical axis names and input/checkpoint errors.

Small odd sizes (vocab 97, width 60, 5 heads, 37 positions, 3 layers) so that a transposed or
mis-reshaped weight cannot hide behind a square shape. The tests that need PyTorch or
transformers request conftest's ``torch``/``transformers`` fixtures (directly or through
``hf_dir``), so only they skip where those are missing.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_layers_close, rel_err

from jaxformers import hf
from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

V, P, D, L, N = 97, 37, 60, 3, 5


def hf_config(**kw):
    import transformers

    base = dict(
        vocab_size=V,
        n_positions=P,
        n_embd=D,
        n_layer=L,
        n_head=N,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=V - 1,
        eos_token_id=V - 1,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    base.update(kw)
    return transformers.GPT2Config(**base)


def hf_model(seed=0, **kw):
    """A random transformers GPT-2 whose every tensor (LayerNorms and biases too) is non-trivial."""
    import torch
    import transformers

    torch.manual_seed(seed)
    m = transformers.GPT2LMHeadModel(hf_config(**kw)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return m


def torch_logits(m, ids, attention_mask=None, position_ids=None):
    import torch

    with torch.no_grad():
        out = m(
            input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long),
            attention_mask=None
            if attention_mask is None
            else torch.as_tensor(np.asarray(attention_mask)),
            position_ids=None if position_ids is None else torch.tensor(np.asarray(position_ids)),
        )
    return out.logits.numpy()


def our_config(**kw):
    base = dict(
        vocab_size=V,
        n_positions=P,
        n_embd=D,
        n_layer=L,
        n_head=N,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=V - 1,
        eos_token_id=V - 1,
    )
    base.update(kw)
    return GPT2Config(**base)


def apply_jit(model):
    """model.apply under jit (eager flax dispatches op by op: slow)."""
    return jax.jit(lambda p, ids, **kw: model.apply({"params": p}, ids, **kw))


def random_ids(shape, seed=1):
    return np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int32)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, torch, transformers):
    d = tmp_path_factory.mktemp("hf_gpt2")
    m = hf_model()
    m.save_pretrained(str(d))
    return str(d), m


# ------------------------------------------------------------------------------- HF -> ours


@pytest.mark.parametrize("scan", [False, True])
def test_from_pretrained_logits_match_transformers(hf_dir, scan):
    path, m = hf_dir
    model, params = hf.from_pretrained(path, scan_layers=scan) if scan else hf.from_pretrained(path)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.scan_layers is scan
    assert (
        model.config.vocab_size,
        model.config.n_embd,
        model.config.n_head,
        model.config.n_layer,
        model.config.n_positions,
    ) == (V, D, N, L, P)
    if scan:
        assert "h" in params and params["h"]["mlp"]["wi"]["kernel"].shape == (L, D, 4 * D)
    else:
        assert [f"h_{i}" for i in range(L)] == sorted(k for k in params if k.startswith("h_"))
    ids = random_ids((3, 29))
    ours = apply_jit(model)(params, jnp.asarray(ids))
    assert ours.shape == (3, 29, V) and ours.dtype == jnp.float32
    ref = torch_logits(m, ids)
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("scan", [False, True])
def test_all_layer_outputs_match_transformers(hf_dir, scan):
    """hidden_states (the last after ln_f, as transformers) and attention probabilities, with a
    padding mask; flags off, the logits array as before."""
    import torch

    path, m = hf_dir
    model, params = hf.from_pretrained(path, scan_layers=scan)
    ids = random_ids((3, 13), seed=5)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    flags = dict(output_hidden_states=True, output_attentions=True)
    out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m, **flags))(
        params, jnp.asarray(ids), jnp.asarray(mask)
    )
    with torch.no_grad():
        r = m(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            **flags,
        )
    assert_layers_close(out.hidden_states, r.hidden_states, L + 1)
    assert_layers_close(out.attentions, r.attentions, L)
    assert out.attentions[0].shape == (3, N, 13, 13)
    assert rel_err(out.logits, r.logits.numpy()) < 1e-5
    plain = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert isinstance(plain, jax.Array) and rel_err(plain, r.logits.numpy()) < 1e-5


@pytest.mark.slow
def test_from_pretrained_full_length_and_padding_mask(hf_dir):
    """Every one of n_positions positions, and left padding with explicit position ids."""
    path, m = hf_dir
    model, params = hf.from_pretrained(path)
    fwd = apply_jit(model)
    ids = random_ids((2, P), seed=3)
    assert rel_err(fwd(params, jnp.asarray(ids)), torch_logits(m, ids)) < 1e-5

    ids = random_ids((3, 23), seed=4)
    mask = np.ones_like(ids)
    mask[0, :7] = 0
    mask[1, :1] = 0
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = np.asarray(
        fwd(
            params,
            jnp.asarray(ids),
            attention_mask=jnp.asarray(mask),
            position_ids=jnp.asarray(pos),
        )
    )
    ref = torch_logits(m, ids, mask, pos)
    keep = mask.astype(bool)
    assert rel_err(ours[keep], ref[keep]) < 1e-5
    # The mask matters: without it row 0 differs.
    unmasked = np.asarray(fwd(params, jnp.asarray(ids), position_ids=jnp.asarray(pos)))
    assert rel_err(unmasked[0][keep[0]], ref[0][keep[0]]) > 1e-3


# ------------------------------------------------------------------------------- ours -> HF


@pytest.fixture(scope="module")
def our_saved(tmp_path_factory):
    """jaxformers-initialised params (perturbed so LayerNorms and biases are non-trivial), saved.

    Initialised scanned: the layer's initialisers are compiled once instead of once per layer.
    """
    cfg = our_config(initializer_range=0.2, scan_layers=True)
    model = GPT2LMHeadModel(cfg)

    @jax.jit
    def init(rng):
        params = nn.meta.unbox(model.init(rng, jnp.zeros((1, 5), jnp.int32))["params"])
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
        return jax.tree.unflatten(treedef, leaves)

    params = init(jax.random.PRNGKey(0))
    d = str(tmp_path_factory.mktemp("ours_gpt2"))
    hf.save_pretrained(model, params, d)
    return model, params, d


@pytest.mark.slow  # the our_saved fixture compiles model.init (~12 s on 2 cores)
def test_save_pretrained_loads_in_transformers(our_saved, torch, transformers):
    model, params, d = our_saved
    assert os.path.isfile(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f)["model_type"] == "gpt2"
    m = transformers.GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager").eval()
    assert m.config.vocab_size == V and m.config.n_embd == D and m.config.n_layer == L
    ids = random_ids((2, 31), seed=5)
    ours = apply_jit(model)(params, jnp.asarray(ids))
    assert rel_err(ours, torch_logits(m, ids)) < 1e-5


@pytest.mark.slow  # the our_saved fixture compiles model.init (~12 s on 2 cores)
def test_save_pretrained_with_padding_mask(our_saved, torch, transformers):
    model, params, d = our_saved
    m = transformers.GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager").eval()
    ids = random_ids((3, 19), seed=6)
    mask = np.ones_like(ids)
    mask[0, :5] = 0  # left padding
    mask[1, 12:] = 0  # right padding
    mask[2, [3, 8]] = 0  # holes
    ours = np.asarray(apply_jit(model)(params, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    ref = torch_logits(m, ids, mask, np.broadcast_to(np.arange(19), ids.shape))
    keep = mask.astype(bool)
    assert rel_err(ours[keep], ref[keep]) < 1e-5


@pytest.mark.slow  # the our_saved fixture compiles model.init (~12 s on 2 cores)
def test_round_trip_unscanned_save_equals_scanned(our_saved, tmp_path):
    """Saving from per-layer params writes the same tensors as saving from scanned params."""
    model, params, d = our_saved
    assert model.config.scan_layers and params["h"]["attn"]["qkv"]["kernel"].shape == (
        L,
        D,
        3,
        N,
        D // N,
    )
    model_u, params_u = hf.from_pretrained(d)
    assert not model_u.config.scan_layers
    hf.save_pretrained(model_u, params_u, str(tmp_path))
    from safetensors.numpy import load_file

    a, b = (
        load_file(os.path.join(d, "model.safetensors")),
        load_file(str(tmp_path / "model.safetensors")),
    )
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------- remat, bf16


def _loss_and_grads(model, params, ids):
    def loss(p):
        logits = model.apply({"params": p}, ids)
        return jnp.mean(
            jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
        )

    return jax.jit(lambda p: (model.apply({"params": p}, ids), jax.grad(loss)(p)))(params)


@pytest.mark.slow
@pytest.mark.parametrize("scan", [True])  # scanned: how remat is used on big models
def test_remat_full_same_logits_and_grads(hf_dir, scan):
    path, _ = hf_dir
    ids = jnp.asarray(random_ids((2, 17), seed=7))
    m0, p0 = hf.from_pretrained(path, scan_layers=scan)
    m1, p1 = hf.from_pretrained(path, scan_layers=scan, remat="full")
    assert m1.config.remat == "full"
    l0, g0 = _loss_and_grads(m0, p0, ids)
    l1, g1 = _loss_and_grads(m1, p1, ids)
    assert rel_err(l1, l0) < 1e-5
    flat0, flat1 = jax.tree_util.tree_leaves_with_path(g0), jax.tree_util.tree_leaves_with_path(g1)
    assert [k for k, _ in flat0] == [k for k, _ in flat1]
    for (k, a), (_, b) in zip(flat0, flat1):
        assert np.max(np.abs(np.asarray(a))) > 0, k
        assert rel_err(b, a) < 1e-5, jax.tree_util.keystr(k)


def test_bfloat16_compute_close_to_float32(hf_dir):
    path, m = hf_dir
    ids = random_ids((2, 23), seed=8)
    m32, p32 = hf.from_pretrained(path)
    m16, p16 = hf.from_pretrained(path, dtype="bfloat16")
    assert m16.config.dtype == "bfloat16"
    assert jax.tree.leaves(p16)[0].dtype == jnp.float32  # storage stays float32
    l32 = apply_jit(m32)(p32, jnp.asarray(ids))
    l16 = apply_jit(m16)(p16, jnp.asarray(ids))
    assert l16.dtype == jnp.bfloat16
    err = rel_err(l16, l32)
    # bf16 has an 8-bit mantissa: a few percent through 3 layers, and not zero (it really ran in
    # bf16).
    assert 1e-4 < err < 5e-2
    # Same argmax on almost every position.
    agree = np.mean(np.argmax(np.asarray(l16, np.float32), -1) == np.argmax(np.asarray(l32), -1))
    assert agree > 0.9


# ------------------------------------------------------------------------------- presets, axes


def _abstract_params(cfg, T=8):
    model = GPT2LMHeadModel(cfg)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32)))[
        "params"
    ]


def test_preset_124m_param_count_equals_transformers(torch, transformers):
    cfg = GPT2Config.preset("124m")
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.vocab_size, cfg.n_positions) == (
        768,
        12,
        12,
        50257,
        1024,
    )
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(_abstract_params(cfg))))
    with torch.device("meta"):
        ref = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    n_ref = sum(p.numel() for p in ref.parameters())  # tied lm_head counted once
    assert n_ref == 124_439_808
    assert n == n_ref


@pytest.mark.parametrize(
    "name,n_layer,n_embd,n_head",
    [("355m", 24, 1024, 16), ("774m", 36, 1280, 20), ("1558m", 48, 1600, 25)],
)
def test_larger_presets_param_count_equals_transformers(
    torch, transformers, name, n_layer, n_embd, n_head
):
    cfg = GPT2Config.preset(name, scan_layers=True)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (n_layer, n_embd, n_head)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(_abstract_params(cfg))))
    with torch.device("meta"):
        ref = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
        )
    assert n == sum(p.numel() for p in ref.parameters())


def test_logical_axis_names():
    specs = nn.get_partition_spec(_abstract_params(our_config()))
    assert tuple(specs["wte"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["wpe"]["embedding"]) == (None, "embed")
    b = specs["h_0"]
    assert tuple(b["mlp"]["wi"]["kernel"]) == ("embed", "mlp")
    assert tuple(b["mlp"]["wi"]["bias"]) == ("mlp",)
    assert tuple(b["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
    assert tuple(b["attn"]["qkv"]["kernel"]) == ("embed", "qkv", "heads", "kv")
    assert tuple(b["attn"]["out"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(b["ln_1"]["scale"]) == ("norm",)
    assert tuple(specs["ln_f"]["bias"]) == ("norm",)

    abstract_s = _abstract_params(our_config(scan_layers=True))
    specs_s = nn.get_partition_spec(abstract_s)
    h = specs_s["h"]
    assert tuple(h["mlp"]["wi"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(h["attn"]["qkv"]["kernel"]) == ("layers", "embed", "qkv", "heads", "kv")
    assert tuple(h["ln_2"]["scale"]) == ("layers", "norm")
    assert nn.meta.unbox(abstract_s)["h"]["mlp"]["wi"]["kernel"].shape == (L, D, 4 * D)
    # Every leaf carries names, one per dim.
    for leaf in jax.tree.leaves(abstract_s, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned)
        assert len(leaf.names) == leaf.value.ndim


# ------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small_model(hf_dir):
    return hf.from_pretrained(hf_dir[0])


def test_token_id_out_of_vocab(small_model):
    model, params = small_model
    ids = np.zeros((1, 5), np.int32)
    ids[0, 3] = V
    with pytest.raises(ValueError, match="vocab_size"):
        model.apply({"params": params}, ids)
    with pytest.raises(ValueError, match="vocab_size"):
        model.apply({"params": params}, np.full((1, 2), -1, np.int32))
    # In range is fine.
    model.apply({"params": params}, np.full((1, 2), V - 1, np.int32))


def test_sequence_longer_than_n_positions(small_model):
    model, params = small_model
    fwd = apply_jit(model)
    assert fwd(params, np.zeros((1, P), np.int32)).shape == (1, P, V)
    with pytest.raises(ValueError, match="n_positions"):
        fwd(params, np.zeros((1, P + 1), np.int32))
    with pytest.raises(ValueError, match="n_positions"):  # eager too
        model.apply({"params": params}, np.zeros((1, P + 1), np.int32))


def test_config_errors():
    with pytest.raises(ValueError, match="124m"):  # lists the valid presets
        GPT2Config.preset("125m")
    with pytest.raises(ValueError, match="n_head"):
        GPT2Config(n_embd=60, n_head=7)


def test_pickled_only_directory_is_refused(tmp_path, torch, transformers):
    m = hf_model()
    with open(tmp_path / "config.json", "w") as f:
        json.dump(m.config.to_dict(), f)
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="unpickl"):
        hf.from_pretrained(str(tmp_path))


def test_truncated_safetensors_is_a_clear_error(hf_dir, tmp_path):
    path, _ = hf_dir
    with open(os.path.join(path, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    data = open(os.path.join(path, "model.safetensors"), "rb").read()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors") as e:
        hf.from_pretrained(str(tmp_path))
    assert "damaged" in str(e.value)
    # Garbage header too.
    (tmp_path / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"
    )
    with pytest.raises(ValueError, match="damaged"):
        hf.from_pretrained(str(tmp_path))


# ------------------------------------------------------------------- vocabulary padding

VP = 517  # an odd vocabulary, padded to 640 rows with vocab_pad_multiple=128


@pytest.fixture(scope="module")
def padded(tmp_path_factory, torch, transformers):
    """(transformers model of vocabulary 517, its directory, our model loaded with 640 rows, params
    whose 123 padding rows are a trap: large, so any padded logit that counted would win)."""
    m = hf_model(vocab_size=VP, bos_token_id=VP - 1, eos_token_id=VP - 1)
    d = str(tmp_path_factory.mktemp("hf_gpt2_517"))
    m.save_pretrained(d)
    model, params = hf.from_pretrained(d, vocab_pad_multiple=128)
    wte = np.asarray(params["wte"]["embedding"])
    assert wte.shape == (640, D) and model.config.padded_vocab_size == 640
    assert not wte[VP:].any()  # import pads with zeros
    trap = np.random.default_rng(3).normal(0.0, 50.0, (640 - VP, D)).astype(np.float32)
    params = {**params, "wte": {"embedding": jnp.asarray(np.concatenate([wte[:VP], trap]))}}
    return m, d, model, params


def test_padded_vocab_logits_and_greedy_equal_transformers(padded, torch):
    from jaxformers import decoding

    m, _, model, params = padded
    ids = np.random.default_rng(4).integers(0, VP, (3, 11)).astype(np.int32)
    ours = apply_jit(model)(params, jnp.asarray(ids))
    assert ours.shape == (3, 11, VP)  # the real vocabulary: padding never leaves the model
    assert rel_err(ours, torch_logits(m, ids)) < 1e-5
    gen = np.asarray(decoding.generate(model, params, ids, max_new_tokens=12))
    with torch.no_grad():
        ref = m.generate(
            torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
            do_sample=False,
            max_new_tokens=12,
            pad_token_id=0,
        )
    np.testing.assert_array_equal(gen, ref.numpy())
    assert len(set(gen[:, 11:].ravel().tolist())) >= 5  # not a degenerate repetition


@pytest.mark.slow  # 20 s on 2 cores; logits, greedy and export stay fast
def test_padded_vocab_never_counts_in_loss_sampling_or_beams(padded):
    """The padded model and the same weights without padding give the same loss, the same
    samples from the same key and the same beams: the trap rows never count."""
    from jaxformers import decoding, tasks

    _, d, model, params = padded
    plain, plain_params = hf.from_pretrained(d)
    assert plain_params["wte"]["embedding"].shape == (VP, D)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, VP, (4, 13)).astype(np.int32)
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
    task = tasks.CausalLM()
    norms = task.normalizers(batch)

    def loss(mdl, p):
        return jax.jit(
            lambda p: task.loss(p, mdl.apply, batch, jax.random.PRNGKey(0), True, norms)
        )(p)[0]

    got, want = float(loss(model, params)), float(loss(plain, plain_params))
    assert abs(got - want) <= 1e-5 * want and 3.0 < want < 20.0
    ids = jnp.asarray(tokens[:2, :5])
    for kw in (
        dict(method="sample", rng=jax.random.PRNGKey(7), temperature=1.5),
        dict(method="sample", rng=jax.random.PRNGKey(8), top_k=50, top_p=0.9),
        dict(method="beam", num_beams=3),
    ):
        a = np.asarray(decoding.generate(model, params, ids, max_new_tokens=8, **kw))
        b = np.asarray(decoding.generate(plain, plain_params, ids, max_new_tokens=8, **kw))
        np.testing.assert_array_equal(a, b, err_msg=str(kw))
        assert a.max() < VP


def test_padded_vocab_export_writes_real_rows_and_ids_past_vocab_raise(padded, tmp_path):
    import transformers

    m, _, model, params = padded
    hf.save_pretrained(model, params, str(tmp_path))
    with open(os.path.join(str(tmp_path), "config.json")) as f:
        assert json.load(f)["vocab_size"] == VP
    back = transformers.GPT2LMHeadModel.from_pretrained(
        str(tmp_path), attn_implementation="eager"
    ).eval()
    sd, ref = back.state_dict(), m.state_dict()
    assert tuple(sd["transformer.wte.weight"].shape) == (VP, D)
    np.testing.assert_array_equal(
        sd["transformer.wte.weight"].numpy(), ref["transformer.wte.weight"].numpy()
    )
    ids = np.random.default_rng(6).integers(0, VP, (2, 9)).astype(np.int32)
    assert rel_err(apply_jit(model)(params, jnp.asarray(ids)), torch_logits(back, ids)) < 1e-5
    # 517 is a row of the padded embedding, but not a token: the clear error still comes.
    bad = ids.copy()
    bad[1, 4] = VP
    with pytest.raises(ValueError, match=f"outside \\[0, {VP}\\).*vocab_size"):
        model.apply({"params": params}, bad)


def test_padded_vocab_flops_count_the_padded_head():
    a, b = our_config(), our_config(vocab_pad_multiple=64)
    assert b.padded_vocab_size == 128 and a.padded_vocab_size == V
    assert b.flops_per_example(10) - a.flops_per_example(10) == 6.0 * D * (128 - V) * 10
    with pytest.raises(ValueError, match="vocab_pad_multiple"):
        our_config(vocab_pad_multiple=0)
