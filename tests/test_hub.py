"""Hugging Face Hub ids wherever an HF directory is read (``hf.resolve``), without network.

Each test reads a huggingface_hub cache laid out by hand in tmp_path exactly as huggingface_hub
writes it (it has no offline way to fill its cache): ``models--owner--name/blobs/<sha>`` holding
the files, ``snapshots/<commit>/<file>`` symlinks to them and ``refs/main`` holding the commit.
``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` point every test at that cache only.
"""

import hashlib
import os

import jax
import numpy as np
import pytest
from helpers import play_excerpt
from huggingface_hub.utils import filter_repo_objects

from jaxformers import cli, hf, inference
from jaxformers.data.tokenizers import train_bpe
from jaxformers.models import gpt2

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "owner/tiny-gpt2"


def add_to_cache(cache, repo_id, src_dir, commit=COMMIT, ref="main", names=None):
    """``src_dir``'s files (or only ``names``) as huggingface_hub caches ``repo_id`` at
    ``commit``; returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name in names or sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return str(snapshot)


def random_gpt2(out_dir, seed):
    """A small random GPT-2 with a trained BPE tokenizer, saved as an HF directory."""
    tok = train_bpe([play_excerpt(20_000)], vocab_size=300)
    config = gpt2.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4
    )
    model = gpt2.GPT2LMHeadModel(config)
    # Random weights from numpy by shape: no compiled init (the tests compare weights, any do).
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    hf.save_pretrained(model, params, str(out_dir))
    tok.save(str(out_dir))
    return str(out_dir)


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    """Two small random GPT-2 HF directories (different weights)."""
    return [random_gpt2(tmp_path_factory.mktemp(f"gpt2_{seed}"), seed) for seed in (0, 1)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache, read offline."""
    d = tmp_path / "hub-cache"
    d.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(d))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return d


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_from_pretrained_reads_a_cached_hub_id(cache, gpt2_dirs):
    snapshot = add_to_cache(cache, REPO, gpt2_dirs[0])
    assert hf.resolve(REPO) == snapshot
    model, params = hf.from_pretrained(REPO)
    _, direct = hf.from_pretrained(snapshot)
    _, original = hf.from_pretrained(gpt2_dirs[0])
    assert isinstance(model, gpt2.GPT2LMHeadModel)
    assert_same_params(params, direct)
    assert_same_params(params, original)
    # config overrides pass through as for a directory
    model_s, params_s = hf.from_pretrained(REPO, scan_layers=True)
    assert model_s.config.scan_layers and "h" in params_s


def test_revision_after_an_at_sign(cache, gpt2_dirs):
    other = "fedcba9876543210fedcba9876543210fedcba98"
    add_to_cache(cache, REPO, gpt2_dirs[0])
    add_to_cache(cache, REPO, gpt2_dirs[1], commit=other, ref="v1")
    _, main = hf.from_pretrained(gpt2_dirs[0])
    _, v1 = hf.from_pretrained(gpt2_dirs[1])
    assert_same_params(hf.from_pretrained(f"{REPO}@main")[1], main)
    assert_same_params(hf.from_pretrained(f"{REPO}@{COMMIT}")[1], main)
    assert_same_params(hf.from_pretrained(f"{REPO}@v1")[1], v1)
    assert_same_params(hf.from_pretrained(f"{REPO}@{other}")[1], v1)
    with pytest.raises(FileNotFoundError, match="at revision 'v2' is not in the cache"):
        hf.resolve(f"{REPO}@v2")


def test_inference_load_and_convert_from_hub_id(cache, gpt2_dirs, tmp_path, capsys):
    add_to_cache(cache, REPO, gpt2_dirs[0])
    model, params, tok = inference.load(REPO)
    _, ref_params, ref_tok = inference.load(gpt2_dirs[0])
    assert_same_params(params, ref_params)
    assert tok.encode("to be or not to be") == ref_tok.encode("to be or not to be")

    workdir = tmp_path / "imported"
    assert cli.main(["convert", "--from-hf", REPO, "--workdir", str(workdir)]) == 0
    assert f"imported {REPO}" in capsys.readouterr().out
    assert (workdir / "tokenizer" / "tokenizer.json").is_file()
    _, imported, _ = inference.load(str(workdir))
    assert_same_params(imported, ref_params)
    sample = ["sample", "--workdir", REPO, "--prompt", "to be", "--max-new-tokens", "3"]
    assert cli.main(sample) == 0


def test_real_bert_from_a_cached_hub_id(cache, minilm_dir):
    add_to_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_dir)
    model, params, tok = inference.load("sentence-transformers/all-MiniLM-L6-v2")
    ref_model, ref_params, ref_tok = inference.load(minilm_dir)
    assert type(model) is type(ref_model)
    assert_same_params(params, ref_params)
    assert tok.encode("The play begins.") == ref_tok.encode("The play begins.")


def test_uncached_id_offline_names_the_id_and_the_cache(cache, tmp_path, capsys):
    with pytest.raises(FileNotFoundError) as e:
        hf.from_pretrained("nobody/not-cached")
    message = str(e.value)
    assert "nobody/not-cached" in message and str(cache) in message
    assert "HF_HUB_OFFLINE" in message and "hf download nobody/not-cached" in message
    assert cli.main(["convert", "--from-hf", "nobody/not-cached", "--workdir", str(tmp_path)]) == 2
    assert "nobody/not-cached" in capsys.readouterr().err
    assert cli.main(["fill-mask", "--model", "nobody/bert", "--text", "a [MASK]"]) == 2
    assert str(cache) in capsys.readouterr().err


def test_repo_with_only_pickled_weights_is_refused(cache, gpt2_dirs, tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_bytes(open(os.path.join(gpt2_dirs[0], "config.json"), "rb").read())
    (src / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    add_to_cache(cache, "owner/pickled", str(src))
    for load in (hf.from_pretrained, inference.load):
        with pytest.raises(ValueError, match="owner/pickled has no safetensors weights") as e:
            load("owner/pickled")
        assert "never loads pickled weights" in str(e.value)


def test_an_existing_local_path_wins_over_a_hub_id(cache, gpt2_dirs, tmp_path, monkeypatch):
    add_to_cache(cache, REPO, gpt2_dirs[0])
    local = tmp_path / "cwd" / "owner" / "tiny-gpt2"
    local.mkdir(parents=True)
    for name in os.listdir(gpt2_dirs[1]):
        os.symlink(os.path.join(gpt2_dirs[1], name), local / name)
    monkeypatch.chdir(tmp_path / "cwd")
    assert hf.resolve(REPO) == REPO
    _, params = hf.from_pretrained(REPO)
    assert_same_params(params, hf.from_pretrained(gpt2_dirs[1])[1])


@pytest.mark.parametrize("bad", ["a/b/c", "runs/--x", "-bad", "owner/name@", "x..y", ""])
def test_neither_a_path_nor_a_hub_id(cache, bad):
    for load in (hf.from_pretrained, inference.load):
        with pytest.raises(FileNotFoundError, match="neither an existing directory nor a Hugging"):
            load(bad)


def test_only_config_safetensors_and_tokenizer_files_are_fetched():
    """``HUB_FILES`` on openai-community/gpt2's file list (and a sharded checkpoint's)."""
    fetched = [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "spiece.model",
        "special_tokens_map.json",
    ]
    left = [
        ".gitattributes",
        "64-8bits.tflite",
        "README.md",
        "flax_model.msgpack",
        "generation_config.json",
        "onnx/decoder_model.onnx",
        "onnx/config.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "rust_model.ot",
        "tf_model.h5",
        "model.ckpt",
        "weights.pt",
    ]
    assert set(filter_repo_objects(left + fetched, allow_patterns=list(hf.HUB_FILES))) == set(
        fetched
    )
