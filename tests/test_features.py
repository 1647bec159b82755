"""Feature extraction and ``jaxformers embed`` against transformers' hidden states, pooled by hand
with numpy (an independent reference: no jaxformers code on that side)."""

import numpy as np
import pytest
from helpers import rel_err

from jaxformers import cli, features, hf
from jaxformers.models import bert, gpt2

TOL = 1e-5
# Odd sizes; four layers so that the last four exclude the embedding output.
HF_KW = dict(
    vocab_size=101,
    hidden_size=30,
    num_attention_heads=3,
    num_hidden_layers=4,
    intermediate_size=37,
    max_position_embeddings=23,
    hidden_act="gelu",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, torch, transformers):
    """A random transformers BertForSequenceClassification (features come from its encoder) and
    the same weights loaded into jaxformers."""
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(
        transformers.BertConfig(**HF_KW, num_labels=3)
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    d = str(tmp_path_factory.mktemp("tiny"))
    ref.save_pretrained(d)
    model, params = hf.from_pretrained(d)
    return ref, model, params


def test_extract_matches_transformers(tiny, torch):
    ref, model, params = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(0, HF_KW["vocab_size"], (3, 13)).astype(np.int32)
    mask = (np.arange(13)[None] < np.array([[13], [8], [3]])).astype(np.int32)
    with torch.no_grad():
        r = ref.bert(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            output_hidden_states=True,
        )
    hs = [h.numpy().astype(np.float64) for h in r.hidden_states]  # 5: embeddings + 4 layers
    m = mask[:, :, None].astype(np.float64)

    def mean(h):
        return (h * m).sum(1) / m.sum(1)

    # Three compilations cover every pooling, a layer list, one index and the last four.
    cases = [
        (dict(pooling="cls", concat_last=4), np.concatenate(hs[-4:], -1)[:, 0]),
        (dict(pooling="mean", layers=(0, -2)), mean(np.concatenate([hs[0], hs[-2]], -1))),
        (dict(pooling="none", layers=2), hs[2]),
    ]
    for kw, want in cases:
        got = features.extract(model, params, ids, mask, **kw)
        assert got.dtype == np.float32 and rel_err(got, want) < TOL, kw


def test_bad_options():
    tiny_bert = bert.BertModel(bert.BertConfig(**HF_KW))
    with pytest.raises(ValueError, match="hidden states"):
        features.check_options(tiny_bert, 5, "mean", None)
    with pytest.raises(ValueError, match="unknown pooling"):
        features.check_options(tiny_bert, -1, "max", None)
    assert features.check_options(tiny_bert, -1, "cls", 4) == (-4, -3, -2, -1)
    g = gpt2.GPT2LMHeadModel(
        gpt2.GPT2Config(vocab_size=11, n_positions=7, n_embd=6, n_layer=1, n_head=2)
    )
    with pytest.raises(ValueError, match="pooling 'mean'"):
        features.check_options(g, -1, "cls", None)


def test_embed_cli_minilm(minilm_dir, torch, transformers, tmp_path, capsys):
    """``jaxformers embed`` on all-MiniLM-L6-v2: every line of the file once, in order (5 lines in
    batches of 2: the last batch padded), equal to sentence-transformers' mean pooling; a text
    past --max-length is truncated as transformers' truncation=True, and counted."""
    texts = [
        "A man is playing a guitar.",
        "The stock market fell sharply on Tuesday after the interest rate announcement.",
        "Kids make a castle out of sand by the sea.",
        "How do I reset my password?",
        "Photosynthesis converts light energy into chemical energy in plants.",
    ]
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()

    def reference(max_length):
        enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            h = ref(**enc).last_hidden_state.numpy().astype(np.float64)
        m = enc["attention_mask"].numpy()[:, :, None]
        return (h * m).sum(1) / m.sum(1)

    f, out = tmp_path / "texts.txt", str(tmp_path / "emb.npy")
    f.write_text("\n".join(texts) + "\n")
    argv = ["embed", "--model", minilm_dir, "--out", out, "--batch-size", "2"]
    assert cli.main([*argv, "--file", str(f)]) == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (5, 384)
    assert rel_err(got, reference(None)) < TOL

    assert cli.main([*argv, "--max-length", "9", *(a for t in texts for a in ("--text", t))]) == 0
    assert "3 of 5 texts were longer than 9 tokens and were truncated" in capsys.readouterr().err
    assert rel_err(np.load(out), reference(9)) < TOL

    (tmp_path / "empty.txt").write_text("")
    assert cli.main([*argv, "--file", str(tmp_path / "empty.txt")]) == 2
    assert "is empty" in capsys.readouterr().err
