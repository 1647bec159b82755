"""T5.1.1-small span-corruption pretraining on C4 (English) as the T5 paper / t5x do it; a TPU VM.

Launch (data.tokenizer: T5's SentencePiece model, 32,000 + 100 sentinels):
    jaxformers train experiments/t5_small_c4.py --workdir gs://bucket/t5_small_c4 \
        --set data.tokenizer=/path/to/t5_spiece.model

Recipe (Raffel et al. 2020; t5x's t5_1_1 small pretraining gin): TFDS ``c4/en`` prepared beforehand
(``pip install 'jaxformers[tf]'`` and ``tfds build c4/en --file_format=array_record``; about 800 GB
of downloads and Beam), span corruption with 15% noise and mean span 3, 512 encoder tokens (568 raw
tokens per chunk) and 114 target tokens, packed; batch 128 sequences; Adafactor, lr 1e-2 constant
for 10,000 steps then inverse square root; no dropout in pretraining (T5.1.1); z-loss 1e-4; 524,288
steps (2^19, the paper's pretraining length). Sized for TPU v4-8 / v5e-8 (bf16 compute).
No figure is claimed: not run on this project's 2-core CPU. The tiny variant runs the same path on
the embedded corpus.
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
from jaxformers.models.t5 import T5Config
from jaxformers.tasks import SpanCorruption

# The variants (--variant NAME; --list-variants), the default first.
VARIANTS = {
    "default": "T5-small span corruption on C4 (TFDS), sized for accelerators",
    "tiny": "two-step smoke test on the embedded corpus (the tests run it)",
}


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="t5_small_c4",
        task=SpanCorruption(
            noise_density=0.15, mean_noise_span_length=3.0, targets_length=114, z_loss=1e-4
        ),
        model=T5Config.preset(
            "t5.1.1-small",
            dropout_rate=0.0,
            dtype="bfloat16",
            param_dtype="float32",
            scan_layers=True,
            remat="save_dots",
            # The accelerators' padding, fixed here rather than read off the machine: the
            # params' shapes must not change when a run resumes on another platform.
            vocab_pad_multiple=perf.VOCAB_PAD_MULTIPLE["gpu"],
        ),
        data=DataConfig(corpus="tfds:c4/en", tokenizer="t5_spiece.model", seq_len=512),
        optim=OptimConfig(
            name="adafactor",
            lr=1e-2,
            warmup_steps=10_000,
            schedule="rsqrt",
            weight_decay=0.0,
            clip_norm=0.0,
        ),
        mesh=MeshConfig(shape=(-1, 1, 1)),
        checkpoint=CheckpointConfig(every=5000, keep=3),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=128,
        steps=524_288,
        eval_every=5000,
        eval_batches=20,
        log_every=100,
    )
    if variant == "tiny":
        exp = exp.smoke_test(
            model=T5Config.preset(
                "tiny",
                vocab_size=512,
                d_model=32,
                d_kv=8,
                d_ff=48,
                num_heads=2,
                num_layers=1,
                num_decoder_layers=1,
                dropout_rate=0.0,
                n_positions=64,
                scan_layers=True,
                feed_forward_proj="gated-gelu",
                tie_word_embeddings=False,
                scale_decoder_outputs=False,
            ),
            data=dataclasses.replace(
                exp.data,
                corpus="shakespeare",
                tokenizer="sentencepiece",
                vocab_size=512,
                seq_len=32,
            ),
            task=dataclasses.replace(exp.task, targets_length=0),
            optim=dataclasses.replace(exp.optim, warmup_steps=1),
        )
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
