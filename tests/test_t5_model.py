"""T5 against transformers' T5ForConditionalGeneration (random init, float32, odd sizes).

The tests that need PyTorch or transformers request conftest's ``torch``/``transformers`` fixtures
(directly or through ``hf_dirs``), so only they skip where those are missing."""

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_layers_close, rel_err

from jaxformers import hf
from jaxformers.models import layers, t5
from jaxformers.models.t5 import T5Config, T5ForConditionalGeneration

# Prime-ish sizes catch transposes; inner width N * H = 60 = d_model only by accident of 5 * 12.
ODD = dict(
    vocab_size=103,
    d_model=60,
    d_kv=12,
    num_heads=5,
    d_ff=70,
    num_layers=3,
    num_decoder_layers=2,
    relative_attention_num_buckets=9,
    relative_attention_max_distance=20,
)
VARIANTS = {
    "v1.0": dict(feed_forward_proj="relu"),  # tied head, scaled output
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),  # own head, no scaling
}
B, T_ENC, T_DEC = 3, 11, 8


def make_inputs(vocab=103):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, vocab, (B, T_ENC)).astype(np.int32)
    dec = rng.integers(2, vocab, (B, T_DEC)).astype(np.int32)
    dec[:, 0] = 0  # decoder_start_token_id
    mask = np.ones((B, T_ENC), np.int32)
    mask[1, 7:] = 0  # right padding
    mask[2, :3] = 0  # left padding (relative positions allow it)
    dmask = np.ones((B, T_DEC), np.int32)
    dmask[1, 6:] = 0
    return ids, mask, dec, dmask


@functools.partial(jax.jit, static_argnums=0)
def forward(model, params, ids, dec, mask, dmask):
    """Jitted with the model static: equal configs share one compilation across tests."""
    return model.apply({"params": params}, ids, dec, mask, dmask)


@functools.partial(jax.jit, static_argnums=0)
def encode_decode(model, params, ids, dec, mask, dmask):
    v = {"params": params}
    enc = model.apply(v, ids, mask, method=model.encode)
    return enc, model.apply(v, dec, enc, mask, dmask, method=model.decode)


def torch_logits(model, ids, mask, dec, dmask=None):
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(dec, dtype=torch.long),
            decoder_attention_mask=None if dmask is None else torch.tensor(dmask),
        )
    return out.logits.numpy()


def make_hf_model(variant, seed=0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.T5Config(**ODD, **VARIANTS[variant], dropout_rate=0.1)
    model = transformers.T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # init is all ones: make the norm scales matter
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
        if (
            variant == "v1.1"
        ):  # transformers 5 always ties on init; v1.1 checkpoints hold their own head
            model.lm_head.weight = torch.nn.Parameter(
                torch.randn(ODD["vocab_size"], ODD["d_model"])
            )
    return model.eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, torch, transformers):
    """{variant: (directory written by transformers, the transformers model)}."""
    out = {}
    for variant in VARIANTS:
        d = str(tmp_path_factory.mktemp(variant))
        model = make_hf_model(variant)
        model.save_pretrained(d)
        out[variant] = (
            d,
            transformers.T5ForConditionalGeneration.from_pretrained(d, attn_implementation="eager"),
        )
    return out


def test_relative_position_bucket_matches_transformers(torch, transformers):
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    rp = np.arange(-600, 601)
    for num_buckets, max_distance in ((32, 128), (9, 20), (16, 64), (33, 100)):
        for bidirectional in (True, False):
            ref = bucket(torch.tensor(rp), bidirectional, num_buckets, max_distance).numpy()
            got = np.asarray(
                t5.relative_position_bucket(
                    jnp.asarray(rp), bidirectional, num_buckets, max_distance
                )
            )
            np.testing.assert_array_equal(
                got, ref, err_msg=f"{num_buckets=} {max_distance=} {bidirectional=}"
            )


def test_rms_norm_matches_t5_layer_norm(torch, transformers):
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    rng = np.random.default_rng(1)
    for eps, scale in ((1e-6, 1.0), (1e-1, 0.05), (1e-6, 1e-4)):  # eps dominating, and negligible
        x = (scale * rng.standard_normal((2, 5, 60))).astype(np.float32)
        w = (1 + 0.3 * rng.standard_normal(60)).astype(np.float32)
        ref_mod = T5LayerNorm(60, eps=eps)
        with torch.no_grad():
            ref_mod.weight.copy_(torch.tensor(w))
            ref = ref_mod(torch.tensor(x)).numpy()
        norm = layers.layer_norm(eps, jnp.float32, jnp.float32, "n", rms=True)
        got = norm.apply({"params": {"scale": w}}, jnp.asarray(x))
        assert rel_err(got, ref) < 1e-6, (eps, scale, rel_err(got, ref))


@pytest.mark.parametrize(
    "variant,scan",
    [  # the fast loop: each variant and each layout once
        pytest.param("v1.0", False, id="v1.0-loop"),
        pytest.param("v1.0", True, id="v1.0-scan", marks=pytest.mark.slow),
        pytest.param("v1.1", False, id="v1.1-loop", marks=pytest.mark.slow),
        pytest.param("v1.1", True, id="v1.1-scan"),
    ],
)
def test_parity_from_transformers(hf_dirs, variant, scan):
    d, ref_model = hf_dirs[variant]
    model, params = hf.from_pretrained(d, scan_layers=scan)
    c = model.config
    assert c.tie_word_embeddings == (variant == "v1.0") and c.scale_decoder_outputs == (
        variant == "v1.0"
    )
    assert ("lm_head" in params) == (variant == "v1.1")
    ids, mask, dec, dmask = make_inputs()
    ref = torch_logits(ref_model, ids, mask, dec, dmask)
    got = forward(model, params, ids, dec, mask, dmask)
    assert got.shape == (B, T_DEC, ODD["vocab_size"])
    assert rel_err(got, ref) < 1e-5, rel_err(got, ref)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_pretrained_loads_in_transformers(hf_dirs, transformers, variant, tmp_path):
    d, ref_model = hf_dirs[variant]
    model, params = hf.from_pretrained(d, scan_layers=True)
    hf.save_pretrained(model, params, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    assert written["scale_decoder_outputs"] == (variant == "v1.0")
    assert written["tie_word_embeddings"] == (
        variant == "v1.0"
    )  # what 4.x needs for tying and scaling
    back = transformers.T5ForConditionalGeneration.from_pretrained(
        str(tmp_path), attn_implementation="eager"
    )
    assert back.config.scale_decoder_outputs == (variant == "v1.0")
    tied = back.lm_head.weight.data_ptr() == back.shared.weight.data_ptr()
    assert tied == (variant == "v1.0")
    for name, p in ref_model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name].numpy(), p.numpy(), err_msg=name)
    ids, mask, dec, dmask = make_inputs()
    ref = torch_logits(ref_model, ids, mask, dec, dmask)
    assert rel_err(torch_logits(back, ids, mask, dec, dmask), ref) < 1e-6
    # and back into jaxformers, loop layout this time
    model2, params2 = hf.from_pretrained(str(tmp_path))
    assert model2.config == dataclasses.replace(model.config, scan_layers=False)
    assert rel_err(forward(model2, params2, ids, dec, mask, dmask), ref) < 1e-5


@pytest.mark.parametrize("variant,scan", [("v1.0", False), ("v1.1", True)])
def test_all_layer_outputs_match_transformers(hf_dirs, variant, scan):
    """Encoder and decoder hidden states (the last after the final norm, as transformers), encoder
    self-, decoder self- and cross-attention probabilities, with padding on both sides."""
    import torch

    d, ref_model = hf_dirs[variant]
    model, params = hf.from_pretrained(d, scan_layers=scan)
    ids, mask, dec, dmask = make_inputs()
    flags = dict(output_hidden_states=True, output_attentions=True)
    out = jax.jit(lambda p: model.apply({"params": p}, ids, dec, mask, dmask, **flags))(params)
    with torch.no_grad():
        r = ref_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(dec, dtype=torch.long),
            decoder_attention_mask=torch.tensor(dmask),
            **flags,
        )
    L_enc, L_dec = ODD["num_layers"], ODD["num_decoder_layers"]
    assert_layers_close(out.encoder_hidden_states, r.encoder_hidden_states, L_enc + 1)
    assert_layers_close(out.encoder_attentions, r.encoder_attentions, L_enc)
    assert_layers_close(out.decoder_hidden_states, r.decoder_hidden_states, L_dec + 1)
    assert_layers_close(out.decoder_attentions, r.decoder_attentions, L_dec)
    assert_layers_close(out.cross_attentions, r.cross_attentions, L_dec)
    assert out.cross_attentions[0].shape == (B, ODD["num_heads"], T_DEC, T_ENC)
    assert rel_err(out.encoder_last_hidden_state, r.encoder_last_hidden_state) < 1e-5
    assert rel_err(out.logits, r.logits.numpy()) < 1e-5


@pytest.mark.parametrize("variant", [pytest.param("v1.0", marks=pytest.mark.slow), "v1.1"])
def test_encode_then_decode_equals_full_call(hf_dirs, variant):
    model, params = hf.from_pretrained(hf_dirs[variant][0])
    ids, mask, dec, dmask = make_inputs()
    full = forward(model, params, ids, dec, mask, dmask)
    enc, logits = encode_decode(model, params, ids, dec, mask, dmask)
    assert enc.shape == (B, T_ENC, ODD["d_model"])
    np.testing.assert_allclose(
        np.asarray(logits), np.asarray(full), rtol=0, atol=1e-6 * np.abs(full).max()
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def cached_decoding(model, max_len, prefix, explicit_positions, params, ids, mask, dec):
    """Encodes, builds the cache, feeds ``dec[:, :prefix]`` in one call and then one token per
    call (a lax.scan over steps); returns the logits of every decoder position [B, T, V].
    ``explicit_positions`` passes decoder_positions [B, T] instead of reading the cache index."""
    v = {"params": params}
    enc = model.apply(v, ids, mask, method=model.encode)
    cache = t5.init_decode_cache(model, params, enc, max_len, mask)

    def step(cache, tok, pos):
        logits, out = model.apply(
            {"params": params, "cache": cache},
            tok,
            enc,
            mask,
            decode=True,
            decoder_positions=jnp.broadcast_to(pos, tok.shape) if explicit_positions else None,
            method=model.decode,
            mutable=["cache"],
        )
        return out["cache"], logits

    first = []
    if prefix:
        cache, logits = step(cache, dec[:, :prefix], jnp.arange(prefix))
        first = [logits]
    cache, rest = jax.lax.scan(
        lambda c, x: step(c, x[0][:, None], x[1][None]),
        cache,
        (dec[:, prefix:].T, jnp.arange(prefix, dec.shape[1])),
    )
    return jnp.concatenate(first + [jnp.moveaxis(rest[:, :, 0], 0, 1)], axis=1)


@pytest.mark.parametrize(
    "variant,scan,remat,prefix,explicit",
    [
        pytest.param("v1.0", False, "none", 0, False, marks=pytest.mark.slow),
        ("v1.1", True, "none", 0, False),
        # a 5-token prefix in one call, then steps; positions given
        pytest.param("v1.1", False, "none", 5, True, marks=pytest.mark.slow),
        pytest.param("v1.0", True, "full", 3, False, marks=pytest.mark.slow),
    ],
)
def test_kv_cache_decoding_matches_full_decoder(hf_dirs, variant, scan, remat, prefix, explicit):
    d, ref_model = hf_dirs[variant]
    model, params = hf.from_pretrained(d, scan_layers=scan, remat=remat)
    ids, mask, dec, _ = make_inputs()
    full = forward(
        model, params, ids, dec, mask, np.ones_like(dec)
    )  # all ones: shares parity's compile
    assert (
        rel_err(full, torch_logits(ref_model, ids, mask, dec)) < 1e-5
    )  # transformers with no decoder mask
    # A cache longer than what is fed: the empty slots must stay invisible.
    got = cached_decoding(model, T_DEC + 4, prefix, explicit, params, ids, mask, dec)
    assert got.shape == full.shape
    err = (
        np.abs(np.asarray(got) - np.asarray(full)).max(axis=(0, 2)) / np.abs(np.asarray(full)).max()
    )
    assert (err < 1e-5).all(), err  # at every step


def _write_dir(path, config: dict, tensors: dict):
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        os.path.join(path, "model.safetensors"),
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("style", ["4.x", "5.x"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hand_written_configs_load_with_the_right_head(
    hf_dirs, transformers, variant, style, tmp_path
):
    d, ref_model = hf_dirs[variant]
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(d, "model.safetensors"))
    v11 = variant == "v1.1"
    assert ("lm_head.weight" in tensors) == v11
    cfg = {
        "model_type": "t5",
        "architectures": ["T5ForConditionalGeneration"],
        "d_model": 60,
        "d_kv": 12,
        "d_ff": 70,
        "num_layers": 3,
        "num_decoder_layers": 2,
        "num_heads": 5,
        "vocab_size": 103,
        "relative_attention_num_buckets": 9,
        "relative_attention_max_distance": 20,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu" if v11 else "relu",
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }
    if style == "4.x":  # v1.1 Hub configs: tie_word_embeddings false; v1.0 ones leave it out
        if v11:
            cfg["tie_word_embeddings"] = False
    else:  # transformers 5 writes tie true always and states the scaling
        cfg.update(tie_word_embeddings=True, scale_decoder_outputs=not v11)
    _write_dir(str(tmp_path), cfg, tensors)
    model, params = hf.from_pretrained(str(tmp_path))
    assert model.config.tie_word_embeddings == (not v11)
    assert model.config.scale_decoder_outputs == (not v11)
    ids, mask, dec, dmask = make_inputs()
    ref = torch_logits(ref_model, ids, mask, dec, dmask)
    assert rel_err(forward(model, params, ids, dec, mask, dmask), ref) < 1e-5
    # transformers reads the same directory to the same function
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(
        str(tmp_path), attn_implementation="eager"
    )
    assert rel_err(torch_logits(theirs, ids, mask, dec, dmask), ref) < 1e-6


def test_config_from_hf_reading_rules(transformers):
    base = {"model_type": "t5", "feed_forward_proj": "gated-gelu"}
    c = t5.config_from_hf({**base, "tie_word_embeddings": False})
    assert (c.tie_word_embeddings, c.scale_decoder_outputs, c.dense_act_fn, c.is_gated_act) == (
        False,
        False,
        "gelu_new",
        True,
    )
    c = t5.config_from_hf({**base, "tie_word_embeddings": True, "scale_decoder_outputs": False})
    assert (c.tie_word_embeddings, c.scale_decoder_outputs) == (True, False)
    c = t5.config_from_hf({"model_type": "t5", "num_layers": 4, "eos_token_id": [1]})
    assert (
        c.tie_word_embeddings,
        c.scale_decoder_outputs,
        c.num_decoder_layers,
        c.eos_token_id,
    ) == (True, True, 4, 1)
    # model_from_config: the weights decide the tie
    assert not t5.model_from_config(c, tensors={"lm_head.weight": None}).config.tie_word_embeddings
    assert t5.model_from_config(
        dataclasses.replace(c, tie_word_embeddings=False), tensors={}
    ).config.tie_word_embeddings
    assert t5.parse_feed_forward_proj("gated-silu") == ("silu", True)
    assert t5.parse_feed_forward_proj("gelu") == ("gelu", False)
    # what transformers itself derives from the same strings
    for proj in ("relu", "gated-gelu", "gated-silu", "gelu", "gated-relu"):
        ref = transformers.T5Config(feed_forward_proj=proj)
        assert t5.parse_feed_forward_proj(proj) == (ref.dense_act_fn, ref.is_gated_act)


def _n_params(config):
    model = T5ForConditionalGeneration(config)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 3), jnp.int32)
        )
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name,expected", [("t5-small", 60_506_624), ("t5.1.1-small", 76_961_152)])
def test_preset_param_counts(torch, transformers, name, expected):
    c = T5Config.preset(name)
    assert _n_params(c) == expected
    fields = {
        f: getattr(c, f)
        for f in (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_heads",
            "feed_forward_proj",
        )
    }
    with torch.device("meta"):
        ref = transformers.T5ForConditionalGeneration(transformers.T5Config(**fields))
        if not c.tie_word_embeddings:  # as transformers loads a v1.1 checkpoint: its own head
            ref.lm_head.weight = torch.nn.Parameter(torch.empty(c.vocab_size, c.d_model))
    assert sum(p.numel() for p in ref.parameters()) == expected


def test_presets_sizes():
    for name, (d, f, n, h) in {
        "t5.1.1-base": (768, 2048, 12, 12),
        "t5.1.1-large": (1024, 2816, 24, 16),
        "t5-base": (768, 3072, 12, 12),
        "t5-large": (1024, 4096, 24, 16),
    }.items():
        c = T5Config.preset(name)
        assert (
            c.d_model,
            c.d_ff,
            c.num_layers,
            c.num_decoder_layers,
            c.num_heads,
            c.vocab_size,
        ) == (d, f, n, n, h, 32128)
        assert c.tie_word_embeddings == c.scale_decoder_outputs == name.startswith("t5-")


def test_flops_matmul_term_counts_the_kernels():
    """With one input and one target token, the 6 N part covers every matmul parameter once
    (encoder, decoder, cross k/v, head) and the attention part is 12 L (I + 2 I)."""
    for variant in VARIANTS:
        c = T5Config(**ODD, **VARIANTS[variant])
        model = T5ForConditionalGeneration(c)
        shapes = jax.eval_shape(
            lambda model=model: model.init(
                jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32)
            )
        )["params"]
        flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
        kernels = sum(int(np.prod(x.shape)) for p, x in flat if "kernel" in jax.tree_util.keystr(p))
        head = (
            0 if "lm_head" in shapes else c.vocab_size * c.d_model
        )  # tied: the embedding is the head
        inner = c.num_heads * c.d_kv
        attention = 12 * inner * (c.num_layers + 2 * c.num_decoder_layers)
        assert c.flops_per_example(1, 1) == 6 * (kernels + head) + attention


def test_logical_axes_and_sharded_forward():
    from jaxformers import sharding

    rule_names = {name for name, _ in sharding.LOGICAL_RULES}
    for scan in (False, True):
        c = T5Config.preset("tiny", scan_layers=scan)
        model = T5ForConditionalGeneration(c)
        ids = jnp.ones((8, 6), jnp.int32)
        abstract = jax.eval_shape(
            lambda model=model, ids=ids: model.init(jax.random.PRNGKey(0), ids, ids[:, :4])
        )
        specs = jax.tree.leaves(
            nn.get_partition_spec(abstract["params"]),
            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
        )
        assert all(a in rule_names for spec in specs for a in spec if a is not None)
        table = abstract["params"]["encoder"]["relative_attention_bias"]["embedding"]
        assert table.names == ("relpos_buckets", "heads")
        if scan:
            assert abstract["params"]["decoder"]["block"]["self_attn"]["query"]["kernel"].names == (
                "layers",
                "embed",
                "heads",
                "kv",
            )
    mesh = sharding.make_mesh((2, 2, 2))
    shardings = sharding.logical_to_sharding(nn.get_partition_spec(abstract), mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        variables = jax.jit(
            lambda: model.init(jax.random.PRNGKey(0), ids, ids[:, :4]), out_shardings=shardings
        )()
        logits = jax.jit(model.apply)(variables, ids, ids[:, :4])
    ref = jax.jit(model.apply)(jax.device_get(variables), ids, ids[:, :4])
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), rtol=1e-5, atol=1e-5)


def random_params(model, ids, dec, seed=0):
    """Params of the right shapes from numpy (no compiled init needed)."""
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, dec)["params"])
    return jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def test_dropout_is_active_only_when_not_deterministic():
    c = T5Config.preset("tiny", dropout_rate=0.3, num_layers=1)
    model = T5ForConditionalGeneration(c)
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    params = random_params(model, ids, ids[:, :4])
    run = jax.jit(
        lambda rng, det: model.apply(
            {"params": params}, ids, deterministic=det, rngs={"dropout": rng}, method=model.encode
        ),
        static_argnums=1,
    )
    det = run(jax.random.PRNGKey(1), True)
    np.testing.assert_array_equal(det, run(jax.random.PRNGKey(2), True))
    a, b = run(jax.random.PRNGKey(1), False), run(jax.random.PRNGKey(2), False)
    assert np.abs(np.asarray(a - det)).max() > 0 and np.abs(np.asarray(a - b)).max() > 0


def test_errors():
    c = T5Config.preset("tiny", n_positions=16)
    model = T5ForConditionalGeneration(c)
    ids = jnp.ones((2, 6), jnp.int32)
    v = {"params": jax.tree.map(np.zeros_like, random_params(model, ids, ids[:, :4]))}
    with pytest.raises(ValueError, match="decoder_input_ids has length 17.*n_positions=16"):
        model.apply(v, ids, jnp.ones((2, 17), jnp.int32))
    with pytest.raises(ValueError, match="input_ids has length 20.*n_positions=16"):
        model.apply(v, jnp.ones((2, 20), jnp.int32), ids)
    with pytest.raises(ValueError, match="decoder_input_ids holds token id 512 outside"):
        model.apply(v, ids, ids.at[0, 1].set(512))
    with pytest.raises(ValueError, match="input_ids holds token id 600"):
        model.apply(v, ids.at[1, 1].set(600), ids)
    with pytest.raises(ValueError, match="must be \\[batch, length\\]"):
        model.apply(v, ids[0], ids)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.apply(v, ids, ids, attention_mask=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="decoder_attention_mask has shape"):
        model.apply(v, ids, ids, decoder_attention_mask=jnp.ones((2, 5), jnp.int32))
    enc = jnp.zeros((2, 6, c.d_model))
    with pytest.raises(ValueError, match="encoder_outputs must be"):
        model.apply(v, ids, enc[..., :5], method=model.decode)
    with pytest.raises(ValueError, match="batch"):
        model.apply(v, ids[:1], enc, method=model.decode)
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="relu-gated")
    with pytest.raises(ValueError, match="unknown activation"):
        T5Config(feed_forward_proj="gated-nonsense")
    with pytest.raises(ValueError, match="unknown T5 preset"):
        T5Config.preset("t5-huge")
    with pytest.raises(ValueError, match="remat"):
        T5Config(remat="sometimes")
    with pytest.raises(ValueError, match="attention_impl"):
        T5Config(attention_impl="flash")
    with pytest.raises(ValueError, match="not supported"):
        t5.model_from_config(c, ["T5EncoderModel"])
    with pytest.raises(ValueError, match="encoder-only"):
        t5.config_from_hf({"model_type": "t5", "is_encoder_decoder": False})
    with pytest.raises(ValueError, match="dense_act_fn"):
        t5.config_from_hf({"model_type": "t5", "feed_forward_proj": "relu", "dense_act_fn": "gelu"})


def test_checkpoint_missing_a_weight_is_an_error(tmp_path, torch, transformers):
    """A checkpoint missing a weight its config.json promises."""
    model_hf = make_hf_model("v1.0")
    model_hf.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    cfg["num_layers"] = 4
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="missing"):
        hf.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("v11", [pytest.param(False, marks=pytest.mark.slow), True])
def test_packed_examples_equal_each_alone(v11):
    """Two examples packed in one row (segment ids 1, 2, then padding 0) give, position for
    position, the logits each gives alone: the segment mask keeps them apart in encoder self-,
    decoder self- and cross-attention, and relative positions need no per-example offsets."""
    c = t5.T5Config.preset(
        "tiny",
        vocab_size=101,
        d_model=24,
        d_kv=5,
        d_ff=37,
        num_heads=3,
        num_layers=2,
        feed_forward_proj="gated-gelu" if v11 else "relu",
        tie_word_embeddings=not v11,
        scale_decoder_outputs=not v11,
        dropout_rate=0.0,
    )
    model = t5.T5ForConditionalGeneration(c)
    rng = np.random.default_rng(3)
    enc = [rng.integers(2, 101, n).astype(np.int32) for n in (5, 7)]
    dec = [rng.integers(2, 101, n).astype(np.int32) for n in (4, 3)]
    # Params from numpy (no compiled init: the property holds for any weights).
    params = random_params(model, enc[0][None], dec[0][None])
    pad_e, pad_d = 3, 2

    def packed(parts, pad):
        ids = np.concatenate(parts + [np.zeros(pad, np.int32)])
        seg = np.concatenate(
            [np.full(len(p), i + 1, np.int32) for i, p in enumerate(parts)]
            + [np.zeros(pad, np.int32)]
        )
        return ids[None], seg[None]

    # Jitted: one compilation per shape instead of op-by-op dispatch.
    apply = jax.jit(
        lambda e, d, es=None, ds=None: model.apply(
            {"params": params}, e, d, encoder_segment_ids=es, decoder_segment_ids=ds
        )
    )
    (e_ids, e_seg), (d_ids, d_seg) = packed(enc, pad_e), packed(dec, pad_d)
    together = np.asarray(apply(e_ids, d_ids, e_seg, d_seg))[0]
    start = 0
    for e, d in zip(enc, dec):
        alone = np.asarray(apply(e[None], d[None]))[0]
        got = together[start : start + len(d)]
        err = np.max(np.abs(got - alone))
        assert err <= 1e-5 * np.max(np.abs(alone)), err
        start += len(d)
    # The mask is what keeps them apart: without segment ids the second example sees the first.
    mixed = np.asarray(apply(e_ids, d_ids))[0]
    alone_b = np.asarray(apply(enc[1][None], dec[1][None]))[0]
    assert np.max(np.abs(mixed[4:7] - alone_b)) > 1e-3


def test_untied_head_initialised_by_fan_in_as_t5x():
    """T5.1.1 (untied head) from scratch: the head kernel [D, V] has std ~ d_model**-0.5
    (variance scaling by fan-in, as t5x's logits_dense), so the initial loss on random tokens sits
    near ln(V), not at transformers' std-1.0 init (a loss of ~28 in t5_shakespeare)."""

    c = T5Config.preset(
        "t5.1.1-small",
        vocab_size=1009,
        d_model=96,
        d_kv=16,
        num_heads=3,
        d_ff=127,
        num_layers=1,
        num_decoder_layers=1,
        dropout_rate=0.0,
    )
    assert not c.tie_word_embeddings
    model = T5ForConditionalGeneration(c)
    rng = np.random.default_rng(0)
    x = rng.integers(2, c.vocab_size, (4, 23))
    y = rng.integers(2, c.vocab_size, (4, 11))
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x, y)["params"])
    kernel = np.asarray(params["lm_head"]["kernel"])
    assert kernel.shape == (96, 1009)
    assert abs(kernel.std() * 96**0.5 - 1.0) < 0.05
    logits = np.asarray(jax.jit(model.apply)({"params": params}, x, y), np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = logz - np.take_along_axis(logits, y[..., None], -1)[..., 0]
    assert abs(nll.mean() - np.log(c.vocab_size)) < 1.0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_attention_with_relative_bias_matches_the_einsums(variant):
    """``attention_impl="auto"`` routes every T5 attention through ``jax.nn.dot_product_attention``
    (cuDNN on a GPU, XLA's implementation here) with the relative-position bias as its ``bias``,
    the padding masks as its ``mask`` and ``is_causal`` in the decoder: the same logits and the
    same gradients, the bias tables' included, as the einsum path."""
    ids, mask, dec, dmask = make_inputs()
    models = {
        impl: T5ForConditionalGeneration(
            T5Config(**ODD, **VARIANTS[variant], dropout_rate=0.0, attention_impl=impl)
        )
        for impl in ("xla", "auto")
    }
    params = jax.tree.map(lambda x: 0.2 * x, random_params(models["xla"], ids, dec))
    w = np.random.default_rng(1).standard_normal((B, T_DEC, ODD["vocab_size"]), np.float32)

    def loss(model, p):  # a fixed random projection of the logits: every logit matters
        return jnp.sum(w * model.apply({"params": p}, ids, dec, mask, dmask))

    out = {
        impl: jax.jit(jax.value_and_grad(functools.partial(loss, m)))(params)
        for impl, m in models.items()
    }
    (lx, gx), (la, ga) = out["xla"], out["auto"]
    assert float(la) == pytest.approx(float(lx), rel=1e-5)
    for path, a in jax.tree_util.tree_leaves_with_path(ga):
        x = functools.reduce(lambda t, k: t[k.key], path, gx)
        assert rel_err(np.asarray(a), np.asarray(x)) < 1e-4, jax.tree_util.keystr(path)
    bias_grads = [k for k, _ in jax.tree_util.tree_leaves_with_path(ga) if "relative" in str(k)]
    assert len(bias_grads) == 2  # encoder's and decoder's tables: the bias gradient flows


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_vocabulary_equals_transformers(hf_dirs, variant):
    """vocab_pad_multiple=64 (103 -> 128 rows of the shared embedding and, in v1.1, the own head):
    logits over the real 103 tokens equal transformers', and greedy decoding the unpadded load's;
    the padding rows hold large trap values that would win any argmax they took part in."""
    from jaxformers import decoding

    d, m = hf_dirs[variant]
    model, params = hf.from_pretrained(d, vocab_pad_multiple=64)
    plain, plain_params = hf.from_pretrained(d)
    params = jax.tree.map(np.array, params)  # writable copies
    params["shared"]["embedding"][103:] = 40.0
    if variant == "v1.1":
        assert params["lm_head"]["kernel"].shape == (60, 128)
        params["lm_head"]["kernel"][:, 103:] = 40.0
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 103, (B, T_ENC)).astype(np.int32)
    dec = rng.integers(0, 103, (B, T_DEC)).astype(np.int32)
    mask = np.ones_like(ids)
    ours = model.apply({"params": params}, ids, dec, attention_mask=mask)
    assert ours.shape == (B, T_DEC, 103)
    assert rel_err(ours, torch_logits(m, ids, mask, dec)) < 1e-5
    got = decoding.generate(model, params, ids, max_new_tokens=6, attention_mask=mask)
    want = decoding.generate(plain, plain_params, ids, max_new_tokens=6, attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
