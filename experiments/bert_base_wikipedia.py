"""BERT-base pretraining on Wikipedia with the paper's recipe, sized for a TPU VM (v4-8 / v5e-8).

Launch (phase 1, then phase 2 in the same workdir: it resumes at step 900,000):
    jaxformers train experiments/bert_base_wikipedia.py --workdir gs://bucket/bert_base \
        --set data.tokenizer=/path/to/bert-base-uncased     # a folder with vocab.txt
    jaxformers train experiments/bert_base_wikipedia.py --workdir gs://bucket/bert_base \
        --variant phase2 \
        --set data.tokenizer=/path/to/bert-base-uncased

Recipe (Devlin et al. 2019, section A.2): batch 256 sequences, 1,000,000 steps, Adam lr 1e-4 with
beta2 0.999, weight decay 0.01, 10,000 warmup steps then linear decay; sequence length 128 for 90%
of the steps and 512 for the rest (max 20 and 80 predictions); dropout 0.1; GELU. Data:
TFDS ``wikipedia/20230601.en`` prepared beforehand (``pip install 'jaxformers[tf]'`` then
``tfds build wikipedia/20230601.en --file_format=array_record``); instances are built once into the
TFDS data dir with dupe_factor 5 (phase 2: 1, dynamic masking off), as create_pretraining_data.py.
The paper reports MLM/NSP pretraining followed by GLUE; no figure is claimed here: not run on this
project's 2-core CPU. The tiny variant runs the same code path on the embedded corpus.
"""

import dataclasses

from jaxformers import perf
from jaxformers.config import (
    CheckpointConfig,
    DataConfig,
    Experiment,
    MeshConfig,
    OptimConfig,
    SampleConfig,
)
from jaxformers.models.bert import BertConfig
from jaxformers.tasks import MLMNSP

# The variants (--variant NAME; --list-variants), the default first.
VARIANTS = {
    "default": "phase 1: 128-token sequences, 900k steps (BERT paper)",
    "phase2": "phase 2: 512-token sequences for the last 100k steps, from phase 1's params",
    "tiny": "two-step smoke test on the embedded corpus (the tests run it)",
}


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="bert_base_wikipedia",
        task=MLMNSP(
            max_predictions_per_seq=20, masked_lm_prob=0.15, short_seq_prob=0.1, dupe_factor=5
        ),
        model=BertConfig.preset(
            "base",
            dtype="bfloat16",
            param_dtype="float32",
            scan_layers=True,
            remat="save_dots",
            attention_impl="auto",
            # The accelerators' padding, fixed here rather than read off the machine: the
            # params' shapes must not change when a run resumes on another platform.
            vocab_pad_multiple=perf.VOCAB_PAD_MULTIPLE["gpu"],
        ),
        data=DataConfig(
            corpus="tfds:wikipedia/20230601.en", tokenizer="bert-base-uncased", seq_len=128
        ),
        optim=OptimConfig(
            lr=1e-4,
            warmup_steps=10_000,
            schedule="linear",
            end_lr_ratio=0.0,
            weight_decay=0.01,
            b1=0.9,
            b2=0.999,
            eps=1e-6,
            clip_norm=1.0,
            total_steps=1_000_000,
        ),
        mesh=MeshConfig(shape=(-1, 1, 1)),
        checkpoint=CheckpointConfig(every=10_000, keep=3),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=256,
        steps=900_000,
        eval_every=10_000,
        eval_batches=20,
        log_every=100,
    )
    if variant == "phase2":
        exp = dataclasses.replace(
            exp,
            steps=1_000_000,
            data=dataclasses.replace(exp.data, seq_len=512),
            task=dataclasses.replace(exp.task, max_predictions_per_seq=80, dupe_factor=1),
        )
    elif variant == "tiny":
        exp = exp.smoke_test(
            model=BertConfig.preset(
                "tiny",
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                vocab_size=512,
                max_position_embeddings=32,
                scan_layers=True,
                remat="save_dots",
            ),
            data=dataclasses.replace(
                exp.data, corpus="shakespeare", tokenizer="wordpiece", vocab_size=512, seq_len=32
            ),
            task=dataclasses.replace(exp.task, max_predictions_per_seq=5, dupe_factor=1),
            optim=dataclasses.replace(exp.optim, warmup_steps=1, total_steps=0),
        )
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default, phase2 or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
