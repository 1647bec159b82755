"""The HF tables (each model file's ``hf_weights``) read both ways by ``jaxformers.hf``'s converter.

For every family, head and layer layout: params -> HF -> params is the identity, the HF names and
shapes are exactly what a randomly initialised transformers model of the same config saves (its
``state_dict()`` less the tied copies), and HF -> params -> HF gives back transformers' own tensors.
A table entry wrong in one direction only, a name misspelt, or a layout that transposes on one side
fails here. Odd sizes: a transposed or mis-reshaped kernel cannot hide behind a square shape.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxformers import hf, models
from jaxformers.models import bert, gpt2, layers, t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BERT = {
    "vocab_size": 101,
    "hidden_size": 60,
    "num_attention_heads": 5,
    "num_hidden_layers": 3,
    "intermediate_size": 70,
    "max_position_embeddings": 41,
    "type_vocab_size": 3,
}
T5 = {
    "vocab_size": 103,
    "d_model": 60,
    "d_kv": 12,
    "num_heads": 5,
    "d_ff": 70,
    "num_layers": 3,
    "num_decoder_layers": 2,
    "relative_attention_num_buckets": 9,
    "relative_attention_max_distance": 20,
}
CONFIGS = {
    "gpt2": lambda scan: gpt2.GPT2Config(
        vocab_size=97,
        n_positions=37,
        n_embd=60,
        n_layer=3,
        n_head=5,
        bos_token_id=96,
        eos_token_id=96,
        scan_layers=scan,
    ),
    "BertModel": lambda scan: bert.BertConfig(**BERT, architecture="BertModel", scan_layers=scan),
    "BertForPreTraining": lambda scan: bert.BertConfig(
        **BERT, architecture="BertForPreTraining", scan_layers=scan
    ),
    "BertForSequenceClassification": lambda scan: bert.BertConfig(
        **BERT, architecture="BertForSequenceClassification", num_labels=3, scan_layers=scan
    ),
    "t5-v1.0-tied": lambda scan: t5.T5Config(**T5, feed_forward_proj="relu", scan_layers=scan),
    "t5-v1.1-untied": lambda scan: t5.T5Config(
        **T5,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        scale_decoder_outputs=False,
        scan_layers=scan,
    ),
}


def random_params(config, seed=0):
    """Random params of the model's shapes (abstract init: nothing compiled)."""
    fam = models.of_config(config)
    model = fam.build(config)
    shapes = nn.meta.unbox(
        jax.eval_shape(model.init, jax.random.key(0), *fam.example_inputs(config))["params"]
    )
    rng = np.random.default_rng(seed)
    return model, jax.tree.map(lambda s: rng.normal(0.0, 1.0, s.shape).astype(np.float32), shapes)


def transformers_tensors(config):
    """What a random transformers model of ``config`` (through ``config_to_hf``) saves: its
    state_dict less the tied copies (a name tied to another whose tensor it shares)."""
    fam = models.of_config(config)
    kw = dict(fam.module.config_to_hf(config))
    cls = getattr(transformers, kw["architectures"][0])
    torch.manual_seed(0)
    model = cls(transformers.AutoConfig.for_model(kw.pop("model_type"), **kw))
    if isinstance(config, t5.T5Config) and not config.tie_word_embeddings:
        # transformers 5 ties T5's head on init whatever the config says; v1.1 checkpoints hold
        # their own.
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    sd = model.state_dict()
    tied = model.get_expanded_tied_weights_keys(all_submodels=True)
    return {
        k: v.numpy()
        for k, v in sd.items()
        if not (k in tied and v.data_ptr() == sd[tied[k]].data_ptr())
    }


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_table_both_directions(name, scan):
    model, params = random_params(CONFIGS[name](scan))
    config = model.config
    theirs = transformers_tensors(config)

    ours = hf.params_to_hf(params, config)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    back = hf.params_from_hf(ours, config)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)

    again = hf.params_to_hf(hf.params_from_hf(theirs, config), config)
    assert sorted(again) == sorted(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(again[k], v, err_msg=k)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_table_padded_vocabulary(name):
    """vocab_pad_multiple=64 (97, 101, 103 -> 128 rows): transformers' names and shapes are
    those of the real vocabulary; import puts its rows first and zeros after."""
    import dataclasses

    config = dataclasses.replace(CONFIGS[name](False), vocab_pad_multiple=64)
    assert config.padded_vocab_size == 128
    model, params = random_params(config)
    theirs = transformers_tensors(config)
    ours = hf.params_to_hf(params, config)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    back = hf.params_from_hf(theirs, config)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    again = hf.params_to_hf(back, config)
    for k, v in theirs.items():
        np.testing.assert_array_equal(again[k], v, err_msg=k)
    V = config.vocab_size
    for w in models.of_config(config).module.hf_weights(config):
        if w.vocab_axis is not None:
            x = np.asarray(layers.param_at(back, w.path, False))
            assert x.shape[w.vocab_axis] == 128
            assert not np.take(x, np.arange(V, 128), axis=w.vocab_axis).any(), w.name
