"""The command line: every experiment's tiny variant trains, resumes, samples and plots."""

import glob
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from helpers import ROOT, play_excerpt

from jaxformers import cli, config, train

EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))
GPT2 = os.path.join(ROOT, "experiments", "gpt2_shakespeare.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if r["split"] == "train"]


# Tiny runs that read their own corpus: the main job (the embedded corpus end to end through the
# CLI), the classifier and the text-to-text runs (their labelled corpora are no plain text). The
# others read conftest's 40 KB
# ``corpus``: preparing their examples from the whole embedded corpus took most of their minute
# (span corruption of 5 MB, a SentencePiece or WordPiece vocabulary), which the file's two tiny
# steps do not depend on; test_data, the notebooks and the reliability tests prepare the rest.
OWN_CORPUS = {
    "gpt2_shakespeare.py",
    "bert_sst2.py",
    "bert_shakespeare_ner.py",
    "bert_conll2003.py",
    "bert_squad.py",
    "t5_glue_sst2.py",
    "t5_squad.py",
    "t5_who_speaks.py",
}


def tiny_argv(path, wd, corpus):
    argv = ["train", path, "--workdir", wd, "--variant", "tiny"]
    if os.path.basename(path) not in OWN_CORPUS:
        argv += ["--set", f"data.corpus={corpus}"]
    return argv


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, corpus):
    """experiment path -> (workdir, exit code, stdout) of its tiny run, trained once per module."""
    runs = {}

    def get(path, capsys):
        if path not in runs:
            wd = str(tmp_path_factory.mktemp(os.path.basename(path)[:-3]))
            capsys.readouterr()
            rc = cli.main(tiny_argv(path, wd, corpus))
            out, err = capsys.readouterr()
            runs[path] = (wd, rc, out, err)
        return runs[path]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[os.path.basename(p) for p in EXPERIMENTS])
def test_experiment_tiny_trains_and_resumes(path, trained, capsys, corpus):
    exp = config.load_experiment(path, "tiny")
    wd, rc, out, err = trained(path, capsys)
    assert rc == 0, err[-3000:]
    assert f"done: step {exp.steps}" in out
    with open(os.path.join(wd, "loss.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert [r["step"] for r in train_records(wd)] == list(range(1, exp.steps + 1))
    assert os.path.isdir(os.path.join(wd, "params")) and os.path.isfile(
        os.path.join(wd, "model.json")
    )
    if exp.objective == "causal_lm" and exp.sample.max_new_tokens > 0:
        for prompt in exp.sample.prompts:
            header = f"--- sample ({prompt!r}) ---\n"
            assert header in out
            assert out.split(header, 1)[1].startswith(prompt)

    # The same command again resumes from the last checkpoint and trains no further step.
    rc2 = cli.main(tiny_argv(path, wd, corpus))
    out2, err2 = capsys.readouterr()
    assert rc2 == 0, err2[-3000:]
    assert f"resuming from step {exp.steps}" in out2
    assert [r["step"] for r in train_records(wd)] == list(range(1, exp.steps + 1))


@pytest.mark.slow
def test_sample_and_plot(trained, capsys, tmp_path):
    wd, rc, _, err = trained(GPT2, capsys)
    assert rc == 0, err[-3000:]
    argv = [
        "sample",
        "--workdir",
        wd,
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "6",
        "--method",
        "greedy",
    ]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) > len("ROMEO:")

    # Independently: the exported params, the saved tokenizer and decoding.generate.
    from jaxformers import checkpoint, decoding
    from jaxformers.data.tokenizers import BPETokenizer
    from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

    meta = json.load(open(os.path.join(wd, "model.json")))
    model = GPT2LMHeadModel(GPT2Config(**meta["config"]))
    params = checkpoint.load_params(os.path.join(wd, "params"))
    tok = BPETokenizer.load(os.path.join(wd, "tokenizer"))
    ids = np.asarray([tok.encode("ROMEO:")])
    out = decoding.generate(model, params, ids, max_new_tokens=6)
    assert text == tok.decode(np.asarray(out[0]).tolist()) + "\n"

    assert (
        cli.main(
            [
                "sample",
                "--workdir",
                wd,
                "--prompt",
                "ROMEO:",
                "--max-new-tokens",
                "6",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("ROMEO:")

    png = str(tmp_path / "curves.png")
    assert cli.main(["plot", "--workdir", wd, "--out", png]) == 0
    assert capsys.readouterr().out.strip() == png
    with open(png, "rb") as f:
        assert f.read(8) == PNG_MAGIC


@pytest.fixture(scope="module")
def random_gpt2_workdir(tmp_path_factory):
    """(workdir, tokenizer) of an untrained GPT-2 export with 33 positions, as a finished run
    writes it (params, model.json, tokenizer/): the sampling tests need no training."""
    from helpers import play_excerpt

    from jaxformers import checkpoint, inference
    from jaxformers.data.tokenizers import train_bpe
    from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

    wd = str(tmp_path_factory.mktemp("random_gpt2"))
    tok = train_bpe([play_excerpt(20_000)], 300)
    tok.save(os.path.join(wd, "tokenizer"))
    c = GPT2Config(
        vocab_size=tok.vocab_size, n_positions=33, n_embd=24, n_layer=1, n_head=2, eos_token_id=0
    )
    # GPT-2's initialisation drawn in numpy by shape (norm scales 1, biases 0, the rest N(0, 0.02)):
    # an op-by-op model.init takes seconds.
    shapes = jax.eval_shape(
        GPT2LMHeadModel(c).init, jax.random.PRNGKey(0), np.zeros((1, 4), np.int32)
    )
    rng = np.random.default_rng(0)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return np.ones(s.shape, s.dtype)
        if "bias" in name:
            return np.zeros(s.shape, s.dtype)
        return (0.02 * rng.standard_normal(s.shape)).astype(s.dtype)

    # plain arrays, as a training run exports them
    params = jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes["params"]))
    checkpoint.export_params(params, os.path.join(wd, "params"))
    inference.write_model_json(wd, c)
    return wd, tok


def test_sample_past_the_context_says_so_or_crops(random_gpt2_workdir, capsys):
    """Without --crop the request is cut to the model's 33 positions, and stderr says by how much;
    with --crop every requested token is generated (decoding.generate(crop=True)'s tokens)."""
    from jaxformers import decoding, inference

    wd, tok = random_gpt2_workdir
    n = len(tok.encode("ROMEO:"))
    argv = ["sample", "--workdir", wd, "--prompt", "ROMEO:", "--method", "greedy"]
    assert cli.main([*argv, "--max-new-tokens", "300"]) == 0
    out, err = capsys.readouterr()
    assert (
        f"the model has 33 positions; generated {33 - n} of the 300 requested tokens "
        f"(the prompt took {n}); --crop"
    ) in err
    assert cli.main([*argv, "--max-new-tokens", "10"]) == 0  # it fits: no message
    assert capsys.readouterr().err == ""

    assert cli.main([*argv, "--max-new-tokens", "100", "--crop"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    model, params, _ = inference.load(wd)
    ids = decoding.generate(
        model, params, np.asarray([tok.encode("ROMEO:")]), max_new_tokens=100, crop=True
    )
    assert ids.shape == (1, n + 100)
    assert out == tok.decode(np.asarray(ids[0]).tolist()) + "\n"


@pytest.mark.slow
def test_end_of_run_samples_differ_between_prompts(random_gpt2_workdir):
    """The end-of-run samples (cli._train prints inference.sample_prompts): each prompt draws with
    its own seed, so one prompt given twice gets two samples; each has every requested token,
    past the 33 positions."""
    from jaxformers import inference

    wd, tok = random_gpt2_workdir
    a, b = inference.sample_prompts(wd, ("ROMEO:", "ROMEO:"), 40, temperature=1.0, top_k=0)
    assert a.startswith("ROMEO:") and b.startswith("ROMEO:")
    assert a != b
    # Seed i of prompt i: the first sample is sample_text's with seed 0 (and crop).
    assert a == inference.sample_text(wd, "ROMEO:", 40, "sample", 1.0, 0, None, 0, crop=True)
    assert b == inference.sample_text(wd, "ROMEO:", 40, "sample", 1.0, 0, None, 1, crop=True)


def test_unknown_set_key_exits_2(capsys, tmp_path):
    rc = cli.main(
        ["train", GPT2, "--workdir", str(tmp_path), "--variant", "tiny", "--set", "optim.lrr=1e-3"]
    )
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("jaxformers: error: unknown setting")
    assert "lrr" in err and "valid keys" in err and "warmup_steps" in err
    assert not os.path.exists(tmp_path / "checkpoints")


def test_cli_errors_exit_2(capsys, tmp_path):
    assert cli.main(["train", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)]) == 2
    assert "nope.py" in capsys.readouterr().err
    assert cli.main(["train", GPT2, "--workdir", str(tmp_path), "--variant", "huge"]) == 2
    assert "no variant 'huge'" in capsys.readouterr().err
    assert cli.main(["sample", "--workdir", str(tmp_path), "--prompt", "x"]) == 2
    assert "model.json" in capsys.readouterr().err
    assert cli.main(["plot", "--workdir", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    assert cli.main(["train", GPT2]) == 2  # a missing --workdir
    assert "needs --workdir DIR" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "jaxformers", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0
    for cmd in ("train", "sample", "plot"):
        assert cmd in r.stdout


def test_plot_adds_an_accuracy_panel_when_accuracies_are_logged(tmp_path):
    import struct

    from jaxformers import plot

    def png_width(path):
        with open(path, "rb") as f:
            head = f.read(24)
        assert head[:8] == PNG_MAGIC
        return struct.unpack(">I", head[16:20])[0]

    recs = [
        {
            "step": s,
            "split": "train",
            "loss": 7.0 - s / 10,
            "mlm_accuracy": s / 100,
            "nsp_accuracy": 0.5 + s / 200,
        }
        for s in range(1, 11)
    ] + [{"step": 10, "split": "eval", "loss": 6.1, "nsp_accuracy": 0.55}]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert plot.accuracy_keys(recs) == ["mlm_accuracy", "nsp_accuracy"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({k: r[k] for k in ("step", "split", "loss")}) for r in recs) + "\n"
    )
    # 12 x 120 dpi with the accuracy panel, 7 x 120 without.
    assert png_width(plot.plot_workdir(str(tmp_path / "a"))) == 1440
    assert png_width(plot.plot_workdir(str(tmp_path / "b"))) == 840


@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory):
    """A train file and a separate validation file, as a user brings them."""
    play_text = play_excerpt(40_000)
    root = tmp_path_factory.mktemp("own")
    cut = play_text.index("\n", len(play_text) * 4 // 5) + 1
    (root / "train.txt").write_text(play_text[:cut])
    (root / "val.txt").write_text(play_text[cut:])
    return str(root / "train.txt"), str(root / "val.txt")


def test_prepare_own_files_with_a_token_budget(own_corpus, tmp_path, capsys):
    """`prepare` with data.val_corpus and tokens=N: the sizes it prints are the run's (exact
    parameter count, token counts of each file, bytes per token, steps from the budget)."""
    train_file, val_file = own_corpus
    wd = str(tmp_path / "w")
    sets = [f"data.corpus={train_file}", f"data.val_corpus={val_file}", "data.val_fraction=0"]
    argv = ["prepare", GPT2, "--workdir", wd, "--variant", "tiny"]
    rc = cli.main([*argv, *[a for s in [*sets, "tokens=10000"] for a in ("--set", s)]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    exp = config.load_experiment(GPT2, "tiny", [*sets, "tokens=10000"])
    trainer = train.Trainer(exp, wd)
    n_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
    d = trainer.data
    assert f"{n_params:,} parameters" in out
    assert f"{d.num_train_tokens:,} train / {d.num_val_tokens:,} validation tokens" in out
    with open(train_file, "rb") as f:
        train_bytes = len(f.read())
    assert f"{train_bytes / d.num_train_tokens:.3f} bytes (UTF-8) per token" in out
    tokens_per_step = exp.batch_size * exp.data.seq_len
    steps = -(-10000 // tokens_per_step)
    assert trainer.exp.steps == steps and f"steps: {steps:,} of" in out
    assert not os.path.exists(os.path.join(wd, "checkpoints"))  # nothing trained
    # train --dry-run is the same; a length given twice that disagrees is refused by name.
    rc = cli.main(["train", *argv[1:], "--dry-run", "--set", f"data.corpus={train_file}"])
    assert rc == 0 and "steps: 2 of" in capsys.readouterr().out
    rc = cli.main([*argv, "--set", "tokens=10000", "--set", "steps=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "tokens=10,000" in err and "steps=3" in err


def test_variants_listed_and_default_is_the_first(capsys):
    assert cli.main(["train", GPT2, "--list-variants"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("default (default):") and lines[1].startswith("tiny:")
    first = config.load_experiment(GPT2)
    assert first == config.load_experiment(GPT2, "default")
    assert cli.main(["prepare", GPT2, "--workdir", "x", "--variant", "huge"]) == 2
    assert "no variant 'huge'" in capsys.readouterr().err
