"""Evaluation reads every example of a split exactly once (issue 15 item 6): the last batch is
padded with all-zero rows that count nowhere, on a data-parallel mesh too."""

import jax
import numpy as np
import pytest

from jaxformers import train
from jaxformers.config import CheckpointConfig, Experiment, MeshConfig
from jaxformers.models.bert import BertConfig
from jaxformers.tasks.base import example_data
from jaxformers.tasks.classification import Classification

T, LABELS = 9, 3


def examples(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(3, T + 1))
        ids = np.zeros(T, np.int32)
        ids[:k] = rng.integers(5, 53, k)
        out.append(
            {
                "input_ids": ids,
                "input_mask": (np.arange(T) < k).astype(np.int32),
                "segment_ids": np.zeros(T, np.int32),
                "label": np.int32(rng.integers(0, LABELS)),
            }
        )
    return out


def test_seven_examples_batch_four_on_two_data_shards_count_seven(tmp_path):
    exp = Experiment(
        name="eval_once",
        model=BertConfig(
            vocab_size=53,
            hidden_size=10,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=11,
            max_position_embeddings=T,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            architecture="BertForSequenceClassification",
            num_labels=LABELS,
        ),
        task=Classification(),
        mesh=MeshConfig((2, 1, 1)),
        checkpoint=CheckpointConfig(every=1000, keep=1, async_save=False),
        batch_size=4,
        steps=1,
        eval_every=0,
        progress=False,
        peak_tflops=1.0,
    )
    spec = {
        "input_ids": ((T,), np.int32),
        "input_mask": ((T,), np.int32),
        "segment_ids": ((T,), np.int32),
        "label": ((), np.int32),
    }
    val = examples(7, 1)
    data = example_data(exp, None, {"train": examples(8, 0), "validation": val}, spec, (T,), (T, 0))
    tr = train.Trainer(exp, str(tmp_path), data=data, devices=jax.devices()[:2])
    assert tr.num_eval_batches() == 2  # 4 + 3 real rows and one all-zero row
    state = tr.init_state()
    _, eval_fn = tr.compiled_steps()
    got = tr.evaluate(state, eval_fn)

    # The reference: the 7 examples in one unpadded forward pass, scored with numpy.
    batch = {k: np.stack([e[k] for e in val]) for k in spec}
    logits = np.asarray(
        state.apply_fn(
            {"params": state.params},
            batch["input_ids"],
            token_type_ids=batch["segment_ids"],
            attention_mask=batch["input_mask"],
        ).logits,
        np.float64,
    )
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -logp[np.arange(7), batch["label"]]
    correct = int((logits.argmax(-1) == batch["label"]).sum())
    assert got["accuracy"] == pytest.approx(correct / 7, abs=1e-6)
    assert got["loss"] == pytest.approx(nll.mean(), rel=1e-5)
