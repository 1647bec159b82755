"""T5 span-corruption pretraining on the embedded Shakespeare corpus, on a CPU in minutes.

Launch:
    jaxformers train experiments/t5_shakespeare.py --workdir /tmp/t5_shakespeare
    ... --variant tiny        (two-step smoke test used by the tests)

Data as the T5 paper / seqio define it: a SentencePiece unigram vocabulary trained on the corpus
with 100 sentinels on top, 15% noise in spans of mean length 3, 128 encoder tokens (141 raw tokens
per chunk) and 29 target tokens, packed rows. T5.1.1-style model (gated GELU, untied head),
Adafactor with T5's constant-then-inverse-square-root schedule. Sized for: 2 CPU cores, minutes.
Measured (2026-11-30, this project's 2-core CPU, idle: 5.9 min wall, 335 s training at 4,791
tokens/s): 3,886,656 params, 1,375,872 train tokens. Held-out denoising loss (first 8 validation
batches) at steps 100/200/300: 4.82 / 4.57 / 4.46 nats per target token, target-token accuracy
28.4% / 28.6% / 28.4%; the first train step starts at 8.1, near ln(vocab). (Before 2026-11-30 the
untied head was initialised as transformers does, std 1.0: the run started at a loss near 28 and
measured 7.14 / 5.47 / 5.04 at the same steps; it is now initialised by fan-in as t5x does.)
"""

import dataclasses

from jaxformers.config import CheckpointConfig, DataConfig, Experiment, OptimConfig, SampleConfig
from jaxformers.models.t5 import T5Config
from jaxformers.tasks import SpanCorruption

# The variants (--variant NAME; --list-variants), the default first.
VARIANTS = {
    "default": "T5.1.1-style span corruption on the embedded corpus, sized for 2 CPU cores",
    "tiny": "two-step smoke test (the tests run it)",
}


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="t5_shakespeare",
        task=SpanCorruption(noise_density=0.15, mean_noise_span_length=3.0, z_loss=1e-4),
        model=T5Config.preset(
            "t5.1.1-small",
            vocab_size=2048,
            d_model=192,
            d_kv=32,
            d_ff=512,
            num_heads=6,
            num_layers=3,
            num_decoder_layers=3,
            dropout_rate=0.0,
            n_positions=128,
        ),
        data=DataConfig(
            corpus="shakespeare", tokenizer="sentencepiece", vocab_size=2048, seq_len=128
        ),
        optim=OptimConfig(
            name="adafactor",
            lr=1e-2,
            warmup_steps=100,
            schedule="rsqrt",
            weight_decay=0.0,
            clip_norm=1.0,
        ),
        checkpoint=CheckpointConfig(every=500, keep=2),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=32,
        steps=300,
        eval_every=100,
        eval_batches=8,
        log_every=10,
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
            ),
            data=dataclasses.replace(exp.data, vocab_size=512, seq_len=32),
        )
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
