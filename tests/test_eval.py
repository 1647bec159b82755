"""``jaxformers eval``: sliding-window perplexity (the DESIGN §3 contract), LAMBADA accuracy and the
bad-input errors, against transformers' PyTorch GPT-2 on a small model saved as an HF directory."""

import json
import math
import os

import numpy as np
import pytest
from helpers import play_excerpt

from jaxformers import cli
from jaxformers.data.tokenizers import train_bpe

P = 64  # the model's positions


def _gpt2_dir(root, torch, transformers, train_steps):
    """(HF dir, torch model, tokenizer): a small GPT-2 saved with its BPE tokenizer, trained for
    ``train_steps`` Adam steps on the play (150: greedy predictions are words, some right, some
    wrong)."""
    d = str(root)
    tok = train_bpe([play_excerpt(20_000)], 300)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=P, n_embd=48, n_layer=2, n_head=4,
        bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, attn_implementation="eager",
    )  # fmt: skip
    m = transformers.GPT2LMHeadModel(cfg)
    data = torch.tensor(tok.encode(play_excerpt(20_000)))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        starts = torch.randint(0, len(data) - P, (16,), generator=gen)
        batch = torch.stack([data[s : s + P] for s in starts])
        loss = m(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    m.save_pretrained(d, safe_serialization=True)
    tok.save(d)
    return d, m, tok


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, torch, transformers):
    """Untrained: the NLL comparisons need only the same weights on both sides."""
    return _gpt2_dir(tmp_path_factory.mktemp("eval_gpt2"), torch, transformers, 0)


@pytest.fixture(scope="module")
def trained_gpt2_dir(tmp_path_factory, torch, transformers):
    return _gpt2_dir(tmp_path_factory.mktemp("eval_gpt2_trained"), torch, transformers, 150)


def guide_nll(torch, m, ids, context, stride):
    """transformers' perplexity guide, on the (input, next token) pairs: window inputs
    ids[begin:end] predict ids[begin + 1:end + 1]; fed as ids[begin:end + 1] with labels -100 on
    the context-only positions (HF shifts the labels itself). Returns (nll_sum, tokens)."""
    m_pairs = len(ids) - 1
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, m_pairs, stride):
        end = min(begin + context, m_pairs)
        trg_len = end - prev_end
        x = torch.tensor([ids[begin : end + 1]])
        labels = x.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = m(input_ids=x, labels=labels).loss  # mean over the trg_len shifted labels
        total += float(loss) * trg_len
        count += trg_len
        prev_end = end
        if end == m_pairs:
            break
    return total, count


def run_json(capsys, *args):
    assert cli.main(["eval", *args, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


@pytest.mark.parametrize(
    "context,stride",
    [
        pytest.param(16, 16, marks=pytest.mark.slow),
        (16, 5),
        pytest.param(P - 1, 20, marks=pytest.mark.slow),
    ],
)
def test_sliding_window_nll_equals_transformers(gpt2_dir, torch, tmp_path, capsys, context, stride):
    d, m, tok = gpt2_dir
    text = play_excerpt(1500)
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    ids = tok.encode(text)
    out = run_json(capsys, "--model", d, "--text", str(path), "--context", str(context),
                   "--stride", str(stride))  # fmt: skip
    ref, ref_tokens = guide_nll(torch, m, ids, context, stride)
    assert ref_tokens == len(ids) - 1
    assert out["tokens"] == len(ids) - 1
    assert out["bytes"] == os.path.getsize(path) == len(text.encode("utf-8"))
    assert out["nll_sum"] == pytest.approx(ref, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(ref / ref_tokens), rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(ref / math.log(2) / out["bytes"], rel=1e-5)


def test_defaults_are_the_model_positions_and_disjoint_windows(gpt2_dir, tmp_path, capsys):
    d, _, tok = gpt2_dir
    path = tmp_path / "t.txt"
    path.write_text(play_excerpt(700), encoding="utf-8")
    default = run_json(capsys, "--model", d, "--text", str(path))
    explicit = run_json(capsys, "--model", d, "--text", str(path), "--context", str(P),
                        "--stride", str(P), "--batch-size", "3")  # fmt: skip
    assert default["tokens"] == len(tok.encode(play_excerpt(700))) - 1
    assert default["nll_sum"] == pytest.approx(explicit["nll_sum"], rel=1e-6)
    assert cli.main(["eval", "--model", d, "--text", str(path)]) == 0
    line = capsys.readouterr().out
    assert "perplexity" in line and "bits per byte" in line


def lambada_passages():
    """Short lines of the play, and a few whose last word is what the briefly trained model guesses
    (" in" is two tokens in its 300-token vocabulary, " re" three), or starts like it."""
    lines = [s.strip() for s in play_excerpt(6000).splitlines() if 4 <= len(s.split()) <= 12]
    return lines[:12] + [
        "What say you to in",
        "Stir up the Athenian youth to in",
        "I pray you, tell me of re",
        "I pray you, tell me of rest",
        "And so I say to you re",
    ]


@pytest.mark.slow  # trains the model it checks (~20 s); the fast loop keeps the NLL contract test
def test_lambada_equals_greedy_generation_in_transformers(
    trained_gpt2_dir, torch, tmp_path, capsys
):
    d, m, tok = trained_gpt2_dir
    passages = lambada_passages()
    path = tmp_path / "lambada.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in passages), encoding="utf-8")
    hits, multi_token = [], 0
    for p in passages:
        cut = p.rfind(" ")
        c, t = tok.encode(p[:cut]), tok.encode(p[cut:])
        multi_token += len(t) > 1
        assert len(c) + len(t) <= P
        g = m.generate(
            torch.tensor([c]), max_new_tokens=len(t), do_sample=False, pad_token_id=tok.eos_id
        )
        hits.append(g[0, len(c) :].tolist() == t)
    assert 0 < sum(hits) < len(hits) and multi_token  # the check is not vacuous
    out = run_json(capsys, "--model", d, "--lambada", str(path))
    assert out["examples"] == len(passages)
    assert out["lambada_accuracy"] == pytest.approx(np.mean(hits))
    assert out["lambada_perplexity"] > 1
    # the same passages as plain text, one per line
    plain = tmp_path / "lambada.txt"
    plain.write_text("\n".join(passages) + "\n", encoding="utf-8")
    assert run_json(capsys, "--model", d, "--lambada", str(plain)) == out


def error_of(capsys, *args):
    assert cli.main(["eval", *args]) == 2
    return capsys.readouterr().err


def test_bad_input_exits_2_with_the_problem_and_the_fix(gpt2_dir, tmp_path, capsys):
    d, _, _ = gpt2_dir
    text = tmp_path / "t.txt"
    text.write_text(play_excerpt(300), encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("a", encoding="utf-8")
    err = error_of(capsys, "--model", d, "--text", str(short))
    assert "1 token" in err and "at least 2" in err
    err = error_of(capsys, "--model", d, "--text", str(text), "--context", str(P + 1))
    assert f"--context {P + 1}" in err and f"{P} positions" in err
    for stride in ("0", "17"):
        err = error_of(capsys, "--model", d, "--text", str(text), "--context", "16",
                       "--stride", stride)  # fmt: skip
        assert f"--stride {stride}" in err and "between 1 and the context (16)" in err
    err = error_of(capsys, "--model", d, "--text", str(tmp_path / "missing.txt"))
    assert "missing.txt does not exist" in err
    err = error_of(capsys, "--model", str(tmp_path / "nomodel"), "--text", str(text))
    assert "nomodel is neither" in err
    err = error_of(capsys, "--model", d)
    assert "give exactly one of --text" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "to be or not"}\n{"passage": "x y"}\n', encoding="utf-8")
    err = error_of(capsys, "--model", d, "--lambada", str(bad))
    assert "line 2" in err and "no field 'text'" in err and "--field" in err


@pytest.mark.slow  # the other bad-input cases stay in the fast loop
def test_a_model_that_is_not_causal_is_refused(tmp_path, capsys):
    import jax

    from jaxformers import hf
    from jaxformers.models.bert import BertConfig, BertForPreTraining

    c = BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    model = BertForPreTraining(c)
    params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    hf.save_pretrained(model, params, str(tmp_path / "bert"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(97 + i) for i in range(25)]
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    text = tmp_path / "t.txt"
    text.write_text("a b c d e f", encoding="utf-8")
    err = error_of(capsys, "--model", str(tmp_path / "bert"), "--text", str(text))
    assert "bert model" in err and "causal language model (GPT-2)" in err


def test_tfds_that_is_not_prepared_says_how_to_prepare_it(gpt2_dir, tmp_path, capsys):
    d, _, _ = gpt2_dir
    err = error_of(capsys, "--model", d, "--tfds", "jaxformers_no_such_dataset:test",
                   "--data-dir", str(tmp_path))  # fmt: skip
    assert "jaxformers_no_such_dataset" in err and "tfds build" in err


@pytest.mark.slow
def test_training_eval_bits_per_byte_equals_jaxformers_eval_of_the_validation_split(
    tmp_path, corpus, capsys
):
    """The main job's eval (whole validation split, issue 16 item 5) and ``jaxformers eval --tfds``
    on the same workdir and split are one computation: disjoint windows of the training length
    over the documents joined by EOS, every token after the first scored once."""
    import dataclasses

    from test_train import tiny_experiment

    from jaxformers import train
    from jaxformers.data import sources

    exp = tiny_experiment()
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, corpus=corpus),
                              eval_batches=0, progress=False)  # fmt: skip
    wd = str(tmp_path / "run")
    train.Trainer(exp, wd).run()
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        last = [json.loads(r) for r in f if '"eval"' in r][-1]
    assert "bits_per_byte" in last  # reported only when the whole split was scored
    tfds_dir = sources.data_dir_for(exp.data, wd)  # the tests' shared $JAXFORMERS_DATA_DIR
    spec = sources.local_corpus_dataset(corpus, exp.data.val_fraction) + ":validation"
    capsys.readouterr()
    out = run_json(capsys, "--model", wd, "--tfds", spec, "--data-dir", tfds_dir,
                   "--context", str(exp.data.seq_len))  # fmt: skip
    assert out["nll_sum"] / out["tokens"] == pytest.approx(last["loss"], rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(last["bits_per_byte"], rel=1e-5)
