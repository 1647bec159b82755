"""Fine-tuning's starting point (``init_from``): a pretrained encoder from an HF directory or a
training workdir fills a new head model exactly, the new head stays freshly initialised, and layer
stacks are converted between the scanned and unscanned layouts or refused with both sizes named.

The merge is checked against the source's own files (the safetensors transformers wrote; the
params a workdir exported), not against a second reading by the code under test.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_bert_model import HF_KW, random_hf, random_params

from jaxformers import checkpoint, hf, inference, train
from jaxformers.models import bert


def write_vocab(directory, n=HF_KW["vocab_size"]):
    """A WordPiece vocab.txt of ``n`` tokens: ``inference.load`` reads the tokenizer too."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = special + [f"w{i}" for i in range(n - len(special))]
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(words) + "\n")


def fresh_params(model, seed=0):
    """A real (jitted) init: the head's values are what training would start from."""
    init = jax.jit(lambda r: model.init(r, jnp.zeros((1, 4), jnp.int32))["params"])
    return jax.device_get(nn.meta.unbox(init(jax.random.key(seed))))


def assert_fresh_head(head, fresh, source_arrays, std):
    """The head is the fresh init, unlike any source tensor, drawn as the init draws it."""
    kernel = np.asarray(head["kernel"])
    np.testing.assert_array_equal(kernel, fresh["kernel"])
    assert not np.asarray(head["bias"]).any()  # zeros, as transformers' init
    for x in source_arrays:
        assert np.shape(x) != kernel.shape or not np.array_equal(x, kernel)
    assert abs(kernel.mean()) < 0.2 * std and abs(kernel.std() / std - 1) < 0.15


def test_init_from_hf_dir_into_scanned_token_classifier(tmp_path, torch, transformers):
    """transformers' BertModel (unscanned on load) into a scanned BertForTokenClassification."""
    d = str(tmp_path / "hf")
    random_hf("BertModel", seed=3).save_pretrained(d)
    write_vocab(d)
    config = bert.BertConfig(**HF_KW, num_labels=7, scan_layers=True)
    model = bert.BertForTokenClassification(config)
    fresh = fresh_params(model)
    merged, fresh_paths = train.load_pretrained(d, fresh, model.config)
    assert fresh_paths == ["classifier"]  # BertModel's pooler is not in this head: dropped
    source = hf.read_safetensors(d)
    ours = hf.params_to_hf(merged, model.config)
    encoder = [k for k in ours if k.startswith("bert.")]
    assert len(encoder) == len(ours) - 2
    for k in encoder:  # transformers saved the bare encoder without the "bert." prefix
        np.testing.assert_array_equal(ours[k], source[k.removeprefix("bert.")], err_msg=k)
    assert_fresh_head(
        merged["classifier"],
        fresh["classifier"],
        source.values(),
        0.02,
    )


@pytest.mark.slow  # the HF-directory test is the fast one of this path
def test_init_from_workdir_into_unscanned_sequence_classifier(tmp_path):
    """A scanned BertForPreTraining run's export into an unscanned sentence classifier: the
    encoder and pooler unstacked exactly, the MLM/NSP heads left behind, the classifier fresh."""
    wd = str(tmp_path / "run")
    os.makedirs(os.path.join(wd, "tokenizer"))
    write_vocab(os.path.join(wd, "tokenizer"))
    src_config = bert.BertConfig(**HF_KW, scan_layers=True, architecture="BertForPreTraining")
    src = random_params(bert.BertForPreTraining(src_config), seed=1)
    checkpoint.export_params(src, os.path.join(wd, "params"))
    inference.write_model_json(wd, src_config)

    model = bert.BertForSequenceClassification(bert.BertConfig(**HF_KW, num_labels=3))
    fresh = fresh_params(model, seed=2)
    merged, fresh_paths = train.load_pretrained(wd, fresh, model.config)
    assert fresh_paths == ["classifier"]
    L = HF_KW["num_hidden_layers"]
    for i in range(L):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_array_equal(a, np.asarray(b)[i]),
            merged["bert"][f"layer_{i}"],
            src["bert"]["layer"],
        )
    for k in ("word_embeddings", "position_embeddings", "pooler", "embeddings_ln"):
        jax.tree.map(np.testing.assert_array_equal, merged["bert"][k], src["bert"][k])
    assert_fresh_head(merged["classifier"], fresh["classifier"], jax.tree.leaves(src), 0.02)


def test_merge_pretrained_converts_or_refuses_layer_stacks():
    rng = np.random.default_rng(0)
    layer = lambda: {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=(3,))}  # noqa: E731
    looped = {"emb": rng.normal(size=(7, 5)), **{f"layer_{i}": layer() for i in range(3)}}
    scanned = {
        "emb": looped["emb"],
        "layer": jax.tree.map(lambda *xs: np.stack(xs), *[looped[f"layer_{i}"] for i in range(3)]),
    }
    zeros = lambda t: jax.tree.map(np.zeros_like, t)  # noqa: E731
    # Both ways, exactly, nothing left fresh.
    merged, fresh = train.merge_pretrained(zeros(scanned), looped)
    assert fresh == []
    jax.tree.map(np.testing.assert_array_equal, merged, scanned)
    merged, fresh = train.merge_pretrained(zeros(looped), scanned)
    assert fresh == []
    jax.tree.map(np.testing.assert_array_equal, merged, looped)
    # Another number of layers, in every layout pairing: refused with both counts.
    two_looped = {k: v for k, v in looped.items() if k != "layer_2"}
    two_scanned = {"emb": scanned["emb"], "layer": jax.tree.map(lambda x: x[:2], scanned["layer"])}
    for target, source in (
        (scanned, two_looped),
        (looped, two_scanned),
        (looped, two_looped),
        (two_looped, looped),
    ):
        with pytest.raises(ValueError, match=r"layer has [23] layers, the model wants [23]"):
            train.merge_pretrained(zeros(target), source)
    with pytest.raises(ValueError, match=r"layer/. has shape \(2(, 5)?, 3\), the model wants \(3"):
        train.merge_pretrained(zeros(scanned), two_scanned)
    # Another width: both shapes named.
    wide = {**looped, "emb": rng.normal(size=(7, 6))}
    with pytest.raises(ValueError, match=r"emb has shape \(7, 6\), the model wants \(7, 5\)"):
        train.merge_pretrained(zeros(looped), wide)


@pytest.mark.parametrize("layout", ["workdir", "hf_dir"])
def test_warm_start_keeps_the_pretrained_vocabulary(tmp_path, layout):
    """With init_from, data.tokenizer "train" (or the kind's name) reads the pretrained model's
    vocabulary: a new one trained on the fine-tuning text would not match its embeddings."""
    import dataclasses

    from jaxformers.config import load_experiment
    from jaxformers.tasks.base import tokenizer_for

    src = tmp_path / "pretrained"
    tok_dir = src / "tokenizer" if layout == "workdir" else src
    tok_dir.mkdir(parents=True)
    write_vocab(str(tok_dir), 41)
    exp = load_experiment(os.path.join(os.path.dirname(__file__), "..", "experiments",
                                       "bert_sst2.py"), "tiny", [])  # fmt: skip
    for setting in ("train", "wordpiece"):
        e = dataclasses.replace(
            exp,
            init_from=str(src),
            data=dataclasses.replace(exp.data, tokenizer=setting),
        )

        def texts():
            raise AssertionError("a new vocabulary was trained")

        tok = tokenizer_for(e, str(tmp_path / f"run-{setting}"), texts)
        assert tok.vocab_size == 41 and tok.vocab[5] == "w0"


def test_merge_fits_vocabulary_padding_only_on_vocabulary_params():
    """init_from between vocab_pad_multiple settings (an unpadded HF checkpoint into a padded
    model and back): the real rows are kept, the padding is zeros; any other shape mismatch is
    still refused."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(97, 6)).astype(np.float32)
    target = {
        "wte": {"embedding": np.ones((128, 6), np.float32)},
        "wpe": {"embedding": np.ones((9, 6), np.float32)},
    }
    source = {"wte": {"embedding": real}, "wpe": {"embedding": np.ones((9, 6), np.float32)}}
    vocab = (97, {"wte/embedding": 0})
    merged, fresh = train.merge_pretrained(target, source, vocab=vocab)
    assert fresh == []
    np.testing.assert_array_equal(merged["wte"]["embedding"][:97], real)
    assert not merged["wte"]["embedding"][97:].any()
    back, _ = train.merge_pretrained(source, merged, vocab=vocab)  # padded -> unpadded
    np.testing.assert_array_equal(back["wte"]["embedding"], real)
    source["wpe"]["embedding"] = np.ones((10, 6), np.float32)
    with pytest.raises(ValueError, match="wpe/embedding has shape"):
        train.merge_pretrained(target, source, vocab=vocab)
