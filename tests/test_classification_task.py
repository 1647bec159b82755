"""The classification task's sentence pairs and regression, without a model (no compile): pair
encoding and truncation as BERT and transformers do it, GLUE's pair fields, and the squared-error
loss with Pearson's r over a split against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxformers.data.wordpiece import WordPieceTokenizer
from jaxformers.tasks.classification import Classification, encode_example, glue_example

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e", "f"]


def test_pair_encoding_and_longest_first_truncation():
    tok = WordPieceTokenizer(VOCAB)
    ids, seg = encode_example(tok, "a b c", "d e", 16)
    assert ids == [2, 5, 6, 7, 3, 8, 9, 3] and seg == [0, 0, 0, 0, 0, 1, 1, 1]
    # 5 + 2 pieces into 9 - 3 = 6 slots: the longer text loses its last pieces first.
    ids, seg = encode_example(tok, "a b c d e", "f a", 9)
    assert ids == [2, 5, 6, 7, 8, 3, 10, 5, 3] and seg == [0] * 6 + [1] * 3
    ids, seg = encode_example(tok, "a b c d e", None, 4)
    assert ids == [2, 5, 6, 3] and seg == [0] * 4
    with pytest.raises(ValueError, match="seq_len=4"):
        encode_example(tok, "a", "b", 4)


def test_glue_records():
    assert glue_example({"sentence1": b"x", "sentence2": b"y", "label": 3.5}) == ("x", "y", 3.5)
    assert glue_example({"premise": "p", "hypothesis": "h", "label": 2}) == ("p", "h", 2)
    assert glue_example({"sentence": b"s", "label": 1, "idx": 0}) == ("s", None, 1)
    with pytest.raises(ValueError, match="neither a GLUE sentence"):
        glue_example({"text": "t", "label": 0})


def test_regression_loss_and_pearson():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=7).astype(np.float32)
    label = (pred + rng.normal(size=7)).astype(np.float32)
    real = np.array([1, 1, 1, 1, 1, 0, 0])  # the last two rows pad the batch
    batch = {
        "input_ids": jnp.ones((7, 3), jnp.int32),
        "segment_ids": jnp.zeros((7, 3), jnp.int32),
        "input_mask": jnp.asarray(np.repeat(real[:, None], 3, 1)),
        "label": jnp.asarray(label),
    }

    class Out:
        logits = jnp.asarray(pred[:, None])

    task = Classification()
    norms = task.normalizers(batch)
    loss, sums = task.loss(None, lambda *a, **k: Out, batch, None, True, norms)
    p, y = pred[:5].astype(np.float64), label[:5].astype(np.float64)
    assert float(loss) == pytest.approx(np.mean((p - y) ** 2), rel=1e-5)
    metrics = task.finalize(sums)
    assert float(metrics["mse"]) == pytest.approx(np.mean((p - y) ** 2), rel=1e-5)
    assert float(metrics["pearson"]) == pytest.approx(np.corrcoef(p, y)[0, 1], rel=1e-4)
