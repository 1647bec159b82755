"""BERT against transformers (PyTorch): random odd-sized models both ways, and real MiniLM weights.

The tests that need PyTorch or transformers request conftest's ``torch``/``transformers`` fixtures
(directly or through ``hf_dirs``), so only they skip where those are missing."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_layers_close, rel_err

from jaxformers import hf, sharding
from jaxformers.models import bert
from jaxformers.tasks import MLMNSP

# Odd sizes: a transposed or mis-reshaped kernel cannot go unnoticed.
HF_KW = dict(
    vocab_size=101,
    hidden_size=60,
    num_attention_heads=5,
    num_hidden_layers=3,
    intermediate_size=70,
    max_position_embeddings=41,
    type_vocab_size=3,
    hidden_act="gelu",
)
B, T = 3, 11
TOL = 1e-5


def inputs(seed=0, lengths=(11, 7, 4)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, HF_KW["vocab_size"], (B, T)).astype(np.int32)
    tt = rng.integers(0, HF_KW["type_vocab_size"], (B, T)).astype(np.int32)
    mask = (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids, tt, mask


def torch_out(model, ids, tt, mask, **kw):
    import torch

    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            token_type_ids=torch.tensor(tt, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            **kw,
        )


def ours_out(model, params, ids, tt, mask, **kw):
    return model.apply(
        {"params": params},
        jnp.asarray(ids),
        token_type_ids=jnp.asarray(tt),
        attention_mask=jnp.asarray(mask),
        **kw,
    )


def random_hf(cls_name, seed=0, **kw):
    """A transformers model whose every weight (biases and LayerNorms included) is random."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(transformers.BertConfig(**{**HF_KW, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def random_params(model, seed=0):
    """Random params of the model's shapes (abstract init: no compile), LayerNorm scales near 1."""
    shapes = nn.meta.unbox(
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    )
    rng = np.random.default_rng(seed)

    def draw(path, x):
        noise = rng.normal(0.0, 0.1, x.shape).astype(np.float32)
        return noise + 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else noise

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_ours(cls, seed=0, **kw):
    model = cls(bert.BertConfig(**{**HF_KW, **kw}))
    return model, random_params(model, seed)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, torch, transformers):
    """Random transformers models saved in HF format, one per head."""
    out = {}
    for name, (cls_name, kw) in HF_HEADS.items():
        d = str(tmp_path_factory.mktemp(name))
        model = random_hf(cls_name, **kw)
        model.save_pretrained(d)
        out[name] = (d, model)
    return out


# name -> (transformers class, config fields); odd label counts.
HF_HEADS = {
    "BertModel": ("BertModel", {}),
    "BertForPreTraining": ("BertForPreTraining", {}),
    "BertForSequenceClassification": ("BertForSequenceClassification", {"num_labels": 3}),
    "BertForMaskedLM": ("BertForMaskedLM", {}),
    "BertForTokenClassification": ("BertForTokenClassification", {"num_labels": 7}),
    "BertForQuestionAnswering": ("BertForQuestionAnswering", {}),
    "regression": (
        "BertForSequenceClassification",
        {"num_labels": 1, "problem_type": "regression"},
    ),
}


ARCHITECTURES_IN_HF_DIRS = [n for n in HF_HEADS if n in bert.ARCHITECTURES]
assert sorted(ARCHITECTURES_IN_HF_DIRS) == sorted(bert.ARCHITECTURES)


def head_pairs(out, r):
    """(ours, transformers') output pairs of any head."""
    if isinstance(out, bert.BertOutput):
        return [(out.last_hidden_state, r.last_hidden_state), (out.pooler_output, r.pooler_output)]
    if isinstance(out, bert.BertForPreTrainingOutput):
        return [(out.mlm_logits, r.prediction_logits), (out.nsp_logits, r.seq_relationship_logits)]
    if isinstance(out, bert.BertForQuestionAnsweringOutput):
        return [(out.start_logits, r.start_logits), (out.end_logits, r.end_logits)]
    return [(out.logits, r.logits)]


@pytest.mark.parametrize("scan", [False, True])
def test_bert_model_matches_transformers(hf_dirs, scan):
    d, ref = hf_dirs["BertModel"]
    model, params = hf.from_pretrained(d, scan_layers=scan)
    assert type(model) is bert.BertModel and model.config.scan_layers == scan
    ids, tt, mask = inputs()
    out = ours_out(model, params, ids, tt, mask)
    r = torch_out(ref, ids, tt, mask)
    assert rel_err(out.last_hidden_state, r.last_hidden_state) < TOL
    assert rel_err(out.pooler_output, r.pooler_output) < TOL


@pytest.mark.parametrize("scan", [False, True])
def test_pretraining_matches_transformers(hf_dirs, scan):
    d, ref = hf_dirs["BertForPreTraining"]
    model, params = hf.from_pretrained(d, scan_layers=scan, remat="full" if scan else "none")
    assert type(model) is bert.BertForPreTraining
    ids, tt, mask = inputs(1)
    out = ours_out(model, params, ids, tt, mask)
    r = torch_out(ref, ids, tt, mask)
    assert rel_err(out.mlm_logits, r.prediction_logits) < TOL
    assert rel_err(out.nsp_logits, r.seq_relationship_logits) < TOL


def test_sequence_classification_matches_transformers(hf_dirs):
    d, ref = hf_dirs["BertForSequenceClassification"]
    model, params = hf.from_pretrained(d)
    assert type(model) is bert.BertForSequenceClassification and model.config.num_labels == 3
    ids, tt, mask = inputs(2)
    out = ours_out(model, params, ids, tt, mask)
    assert out.logits.shape == (B, 3)
    assert rel_err(out.logits, torch_out(ref, ids, tt, mask).logits) < TOL


@pytest.mark.parametrize(
    "name,scan",
    [
        ("BertForMaskedLM", False),
        ("BertForTokenClassification", True),
        ("BertForQuestionAnswering", False),
        ("regression", True),
    ],
)
def test_heads_from_transformers(hf_dirs, name, scan):
    """transformers-saved checkpoints of every head load as that head with its logits."""
    d, ref = hf_dirs[name]
    cls_name, kw = HF_HEADS[name]
    model, params = hf.from_pretrained(d, scan_layers=scan)
    assert type(model).__name__ == cls_name and model.config.architecture == cls_name
    assert ("pooler" in params["bert"]) == (cls_name == "BertForSequenceClassification")
    if "num_labels" in kw:
        assert model.config.num_labels == kw["num_labels"]
    assert model.config.is_regression == (name == "regression")
    ids, tt, mask = inputs(6)
    out = ours_out(model, params, ids, tt, mask)
    for ours, theirs in head_pairs(out, torch_out(ref, ids, tt, mask)):
        assert rel_err(ours, theirs) < TOL
    shapes = {
        "BertForMaskedLM": (B, T, HF_KW["vocab_size"]),
        "BertForTokenClassification": (B, T, 7),
        "BertForQuestionAnswering": (B, T),
        "regression": (B, 1),
    }
    assert jax.tree.leaves(out)[0].shape == shapes[name]


@pytest.mark.parametrize(
    "name,scan",
    [
        ("BertModel", True),
        ("BertForPreTraining", False),
        ("BertForPreTraining", True),
        ("BertForSequenceClassification", False),
        ("BertForMaskedLM", True),
        ("BertForTokenClassification", False),
        ("BertForQuestionAnswering", True),
        ("regression", False),
    ],
)
def test_save_pretrained_loads_in_transformers(tmp_path, torch, transformers, name, scan):
    cls_name, kw = HF_HEADS[name]
    cls = bert.MODEL_CLASSES[cls_name]
    model, params = random_ours(cls, scan_layers=scan, **kw)
    hf.save_pretrained(model, params, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    assert written["architectures"] == [cls_name]
    assert written["problem_type"] == kw.get("problem_type")
    ref, info = getattr(transformers, cls_name).from_pretrained(
        str(tmp_path), output_loading_info=True
    )
    assert (
        not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ), info
    assert ref.config.num_labels == model.config.num_labels
    ids, tt, mask = inputs(3)
    out = ours_out(model, params, ids, tt, mask)
    for ours, theirs in head_pairs(out, torch_out(ref.eval(), ids, tt, mask)):
        assert rel_err(ours, theirs) < TOL
    # And back: the same params.
    model2, params2 = hf.from_pretrained(str(tmp_path), scan_layers=scan)
    assert type(model2) is cls and model2.config == model.config
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params2, params
    )


ALL_LAYERS = dict(output_hidden_states=True, output_attentions=True)


@pytest.mark.parametrize("scan", [False, True])
def test_all_layer_outputs_match_transformers(hf_dirs, transformers, scan):
    """Every layer's hidden state (embedding output first) and attention probabilities, through a
    head model (its output record carries them), scanned and looped; padded rows included."""
    d = hf_dirs["BertForPreTraining"][0]
    ref = transformers.BertForPreTraining.from_pretrained(d, attn_implementation="eager").eval()
    model, params = hf.from_pretrained(d, scan_layers=scan)
    ids, tt, mask = inputs(5)
    out = ours_out(model, params, ids, tt, mask, **ALL_LAYERS)
    r = torch_out(ref, ids, tt, mask, **ALL_LAYERS)
    L = HF_KW["num_hidden_layers"]
    assert_layers_close(out.hidden_states, r.hidden_states, L + 1)
    assert_layers_close(out.attentions, r.attentions, L)
    assert out.attentions[0].shape == (B, HF_KW["num_attention_heads"], T, T)
    assert rel_err(out.mlm_logits, r.prediction_logits) < TOL
    # One flag gives its own field only; none gives neither (the outputs as before).
    only = ours_out(model, params, ids, tt, mask, output_attentions=True)
    assert only.hidden_states is None and len(only.attentions) == L
    plain = ours_out(model, params, ids, tt, mask)
    assert plain.hidden_states is None and plain.attentions is None
    assert len(jax.tree.leaves(plain)) == 2


def test_gathered_masked_positions_equal_full_logits():
    model, params = random_ours(bert.BertForPreTraining)
    ids, tt, mask = inputs(4)
    pos = np.array([[0, 3, 10, 3], [1, 2, 5, 0], [9, 8, 7, 6]], np.int32)
    full = ours_out(model, params, ids, tt, mask)
    gathered = jax.jit(model.apply)(
        {"params": params},
        jnp.asarray(ids),
        token_type_ids=jnp.asarray(tt),
        attention_mask=jnp.asarray(mask),
        masked_lm_positions=jnp.asarray(pos),
    )
    assert gathered.mlm_logits.shape == (B, 4, HF_KW["vocab_size"])
    np.testing.assert_allclose(
        gathered.mlm_logits,
        np.take_along_axis(np.asarray(full.mlm_logits), pos[:, :, None], 1),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(gathered.nsp_logits, full.nsp_logits, rtol=1e-6, atol=1e-6)


def test_head_from_weights(hf_dirs, tmp_path):
    """Without ``architectures`` (or with the Hub's ambiguous BertForMaskedLM) the weights
    decide."""
    for name in ARCHITECTURES_IN_HF_DIRS:
        d = tmp_path / name
        d.mkdir()
        src = hf_dirs[name][0]
        with open(os.path.join(src, "config.json")) as f:
            cfg = json.load(f)
        if name in ("BertForPreTraining", "BertForMaskedLM"):  # what Google's checkpoints say
            cfg["architectures"] = ["BertForMaskedLM"]
        else:
            del cfg["architectures"]
        (d / "config.json").write_text(json.dumps(cfg))
        os.symlink(os.path.join(src, "model.safetensors"), d / "model.safetensors")
        model, params = hf.from_pretrained(str(d))
        assert type(model) is bert.MODEL_CLASSES[name] and model.config.architecture == name
        assert ("mlm_bias" in params) == (name in ("BertForPreTraining", "BertForMaskedLM"))
    # A pre-training checkpoint read as the bare encoder (the "bert." prefix is dropped).
    model, params = hf.from_pretrained(hf_dirs["BertForPreTraining"][0], architecture="BertModel")
    assert type(model) is bert.BertModel and "pooler" in params


def test_sharded_apply_and_dropout():
    config = bert.BertConfig(
        vocab_size=104,
        hidden_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=128,
        max_position_embeddings=16,
        scan_layers=True,
        remat="save_dots",
    )
    model = bert.BertForPreTraining(config)
    ids = jnp.ones((8, 16), jnp.int32)
    params = random_params(model)
    mesh = sharding.make_mesh((2, 2, 2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        # Abstract-first, as train.py: logical specs -> shardings (a repeated mesh axis would fail
        # here).
        specs = nn.get_partition_spec(
            jax.eval_shape(lambda r: model.init(r, ids)["params"], jax.random.key(0))
        )
        shardings = sharding.logical_to_sharding(specs, mesh)
        sharded_params = jax.device_put(params, shardings)
        sharded = jax.jit(model.apply)({"params": sharded_params}, ids).mlm_logits
    assert shardings["bert"]["word_embeddings"]["embedding"].spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp"
    )
    assert (
        shardings["bert"]["layer"]["attention"]["query"]["kernel"].spec[0] is None
    )  # the stacked "layers" axis
    assert params["bert"]["layer"]["attention"]["query"]["kernel"].shape == (2, 64, 4, 16)
    apply = jax.jit(model.apply, static_argnames="deterministic")
    det = apply({"params": params}, ids)
    np.testing.assert_allclose(sharded, det.mlm_logits, rtol=1e-5, atol=1e-5)
    drop = apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(drop.mlm_logits, det.mlm_logits)


def test_padding_row_initialised_to_zero():
    table = bert._embedding_init(0.02, 3)(jax.random.key(0), (7, 5))
    assert not np.asarray(table[3]).any() and np.asarray(table[2]).any()


def test_minilm_sentence_embeddings(minilm_dir, torch, transformers):
    sentences = [
        "A man is playing a guitar.",
        "A person is playing the guitar.",
        "The stock market fell sharply on Tuesday after the interest rate announcement.",
        "Children are building a sandcastle on the beach.",
        "Kids make a castle out of sand by the sea.",
        "How do I reset my password?",
        "Photosynthesis converts light energy into chemical energy in plants.",
        "The quick brown fox jumps over the lazy dog.",
    ]
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    enc = tok(sentences, padding=True, return_tensors="np")
    ids, tt, mask = (
        enc[k].astype(np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")
    )
    assert mask.min() == 0  # the batch really is padded

    model, params = hf.from_pretrained(minilm_dir)
    assert type(model) is bert.BertModel and model.config.hidden_size == 384
    out = jax.jit(model.apply)(
        {"params": params},
        jnp.asarray(ids),
        token_type_ids=jnp.asarray(tt),
        attention_mask=jnp.asarray(mask),
    )
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    r = torch_out(ref, ids, tt, mask)

    def mean_pool(h):
        h = np.asarray(h, np.float64)
        return (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)

    ours, theirs = mean_pool(out.last_hidden_state), mean_pool(r.last_hidden_state.numpy())
    assert rel_err(ours, theirs) < TOL
    assert rel_err(out.pooler_output, r.pooler_output) < TOL
    e = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    sim = e @ e.T
    assert sim[0, 1] > 0.7 and sim[0, 1] > sim[0, 2] + 0.4
    assert sim[3, 4] > sim[3, 5] and sim[3, 4] > sim[3, 2]


def test_minilm_all_layer_outputs(minilm_dir, torch, transformers):
    """The real all-MiniLM-L6-v2 weights: every layer's hidden states and attentions as
    transformers' (eager attention), a padded batch."""
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    enc = tok(
        ["A man is playing a guitar.", "Photosynthesis converts light into chemical energy."],
        padding=True,
        return_tensors="np",
    )
    ids, tt, mask = (
        enc[k].astype(np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")
    )
    assert mask.min() == 0
    model, params = hf.from_pretrained(minilm_dir, scan_layers=True)
    out = jax.jit(lambda p: ours_out(model, p, ids, tt, mask, **ALL_LAYERS))(params)
    ref = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    r = torch_out(ref, ids, tt, mask, **ALL_LAYERS)
    assert_layers_close(out.hidden_states, r.hidden_states, 7)
    assert_layers_close(out.attentions, r.attentions, 6)
    assert rel_err(out.last_hidden_state, r.last_hidden_state) < TOL


@pytest.mark.parametrize("cls_name", ["BertForPreTraining", "BertModel"])
def test_base_param_count_matches_transformers(torch, transformers, cls_name):
    with torch.device("meta"):
        ref = getattr(transformers, cls_name)(transformers.BertConfig())
    expected = sum(p.numel() for p in ref.parameters())
    model = getattr(bert, cls_name)(bert.BertConfig.preset("base"))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == expected


def test_presets_and_flops():
    c = bert.BertConfig.preset("small")
    sizes = (
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size,
    )
    assert sizes == (4, 512, 8, 2048, 30522)
    assert (
        bert.BertConfig.preset("tiny", hidden_size=256, num_attention_heads=4).intermediate_size
        == 1024
    )
    base = bert.BertConfig.preset("base")
    D, L, V, F, T, P = 768, 12, 30522, 3072, 128, 20
    assert base.flops_per_example(T, P) == pytest.approx(
        T
        * (
            6 * (L * (4 * D * D + 2 * D * F) + (D * D + D * V) * P / T + (D * D + 2 * D) / T)
            + 12 * L * T * D
        )
    )
    assert base.flops_per_example(T) == base.flops_per_example(T, T) > base.flops_per_example(T, P)
    assert bert.BertConfig.preset("large").intermediate_size == 4096


def test_hf_config_round_trip(transformers):
    c = bert.BertConfig(**HF_KW, architecture="BertForSequenceClassification", num_labels=4)
    d = bert.config_to_hf(c)
    assert d["architectures"] == ["BertForSequenceClassification"] and len(d["id2label"]) == 4
    assert transformers.BertConfig(**d).num_labels == 4
    assert bert.config_from_hf(d) == c
    # Built to train from scratch: the pre-training model, and config_to_hf agrees.
    plain = bert.BertConfig(**HF_KW)
    assert type(bert.model_from_config(plain)) is bert.BertForPreTraining
    assert bert.config_to_hf(plain)["architectures"] == ["BertForPreTraining"]
    assert bert.BertModel(bert.BertForPreTraining(plain).config).config.architecture == "BertModel"


def test_errors():
    model, params = random_ours(bert.BertForPreTraining)
    ids, tt, mask = inputs()
    apply = lambda *a, **k: model.apply({"params": params}, *a, **k)  # noqa: E731
    with pytest.raises(ValueError, match=r"outside \[0, 101\)"):
        apply(jnp.full((1, 5), 101, jnp.int32))
    with pytest.raises(ValueError, match="token_type_ids.*type_vocab_size=3"):
        apply(jnp.asarray(ids), token_type_ids=jnp.full((B, T), 3, jnp.int32))
    with pytest.raises(ValueError, match="max_position_embeddings=41"):
        apply(jnp.zeros((1, 42), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        apply(jnp.asarray(ids), attention_mask=jnp.ones((B, T + 1), jnp.int32))
    with pytest.raises(ValueError, match="masked_lm_positions"):
        apply(jnp.asarray(ids), masked_lm_positions=jnp.full((B, 2), T, jnp.int32))
    with pytest.raises(ValueError, match="use BertForPreTraining"):
        bert.BertModel(model.config).apply(
            {"params": params["bert"]},
            jnp.asarray(ids),
            masked_lm_positions=jnp.zeros((B, 2), jnp.int32),
        )
    with pytest.raises(ValueError, match="not divisible"):
        bert.BertConfig(hidden_size=60, num_attention_heads=7)
    with pytest.raises(ValueError, match="unknown activation"):
        bert.BertConfig(hidden_act="gelu_erf")
    with pytest.raises(ValueError, match="unknown BERT preset"):
        bert.BertConfig.preset("huge")
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.config_from_hf({**HF_KW, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="no BERT head"):
        bert.config_from_hf({**HF_KW, "architectures": ["BertForMultipleChoice"]})
    with pytest.raises(ValueError, match="problem_type="):
        bert.BertConfig(problem_type="ordinal")
    with pytest.raises(ValueError, match="needs an MLM head"):
        bert.BertForTokenClassification(model.config).apply(
            {"params": params}, jnp.asarray(ids), masked_lm_positions=jnp.zeros((B, 2), jnp.int32)
        )


@pytest.mark.parametrize("act", sorted(bert.layers.ACTIVATIONS))
def test_every_activation_runs(act):
    model, params = random_ours(bert.BertModel, hidden_act=act, num_hidden_layers=1)
    out = model.apply({"params": params}, jnp.asarray(inputs()[0]))
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()


def test_pretraining_loss_and_gradients_match_transformers(hf_dirs, torch):
    """The training objective (MLM on gathered positions + NSP) against transformers' own
    BertForPreTraining loss (labels=-100 off the masked positions) and every parameter's
    gradient."""
    d, ref = hf_dirs["BertForPreTraining"]
    model, params = hf.from_pretrained(d)
    ids, tt, mask = inputs(5)
    ids = np.where(
        mask == 1, np.maximum(ids, 1), 0
    )  # [PAD] = 0 only where padded, as in real batches
    rng = np.random.default_rng(5)
    pos = np.array([[1, 4, 9], [0, 2, 5], [3, 1, 0]], np.int32)
    weights = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], np.float32)  # one padded prediction slot
    targets = rng.integers(0, HF_KW["vocab_size"], pos.shape).astype(np.int32)
    nsp_labels = np.array([0, 1, 1], np.int32)
    batch = {
        "input_ids": ids,
        "segment_ids": tt,
        "input_mask": mask,
        "masked_lm_positions": pos,
        "masked_lm_ids": targets,
        "masked_lm_weights": weights,
        "next_sentence_labels": nsp_labels,
    }
    batch = jax.tree.map(jnp.asarray, batch)
    task = MLMNSP()

    def loss_fn(p):
        return task.loss(p, model.apply, batch, jax.random.key(0), True, task.normalizers(batch))

    (loss, sums), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params
    )  # one compilation, not ~280

    labels = np.full(ids.shape, -100, np.int64)
    for b, (row, w, t) in enumerate(zip(pos, weights, targets)):
        labels[b, row[w > 0]] = t[w > 0]
    ref.zero_grad()
    out = ref(
        input_ids=torch.tensor(ids, dtype=torch.long),
        token_type_ids=torch.tensor(tt, dtype=torch.long),
        attention_mask=torch.tensor(mask, dtype=torch.long),
        labels=torch.tensor(labels),
        next_sentence_label=torch.tensor(nsp_labels, dtype=torch.long),
    )
    out.loss.backward()
    assert abs(float(loss) - out.loss.item()) / abs(out.loss.item()) < TOL
    assert float(sums["mlm_weight"]) == 8.0 and float(sums["nsp_count"]) == 3.0

    ours = hf.params_to_hf(jax.tree.map(np.asarray, grads), model.config)
    theirs = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.grad is not None}
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    assert len(ours) >= 30
    # The key bias adds q.b to every key of a query alike, so softmax cancels it: its exact gradient
    # is zero and both sides hold only rounding noise.
    for k in [k for k in ours if k.endswith("attention.self.key.bias")]:
        assert np.abs(ours.pop(k)).max() < 1e-6 and np.abs(theirs[k]).max() < 1e-6
    errs = {k: rel_err(ours[k], theirs[k]) for k in ours}
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, (worst, errs[worst])


@pytest.mark.parametrize("name", ["BertForPreTraining", "BertForMaskedLM"])
def test_padded_vocabulary_mlm_logits_equal_transformers(hf_dirs, name):
    """vocab_pad_multiple=64 (101 -> 128 word embeddings and MLM bias, padding rows set to large
    trap values): the MLM logits are over the real 101 tokens and equal transformers'."""
    d, m = hf_dirs[name]
    model, params = hf.from_pretrained(d, vocab_pad_multiple=64)
    params = jax.tree.map(np.array, params)  # writable copies
    params["bert"]["word_embeddings"]["embedding"][101:] = 40.0
    params["mlm_bias"][101:] = 1e4
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 101, (2, 13)).astype(np.int32)
    tt, mask = np.zeros_like(ids), np.ones_like(ids)
    out = ours_out(model, params, ids, tt, mask)
    ref = torch_out(m, ids, tt, mask)
    ours = out.mlm_logits if name == "BertForPreTraining" else out.logits
    theirs = ref.prediction_logits if name == "BertForPreTraining" else ref.logits
    assert ours.shape == (2, 13, 101)
    assert rel_err(ours, theirs.numpy()) < 1e-5
