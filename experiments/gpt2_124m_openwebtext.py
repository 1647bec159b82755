"""GPT-2 small (124M) on OpenWebText with the nanoGPT recipe, for a TPU VM or 8 GPUs.

Launch (one host; on a pod slice run the same command on every host, see README):
    jaxformers train experiments/gpt2_124m_openwebtext.py --workdir gs://bucket/gpt2_124m \
        --set data.tokenizer=/path/to/gpt2     # a folder with GPT-2's vocab.json + merges.txt

Data: TFDS ``openwebtext`` prepared as array_record beforehand
(``pip install 'jaxformers[tf]' && tfds build openwebtext --file_format=array_record``); the first
run tokenizes it once into ``workdir/data`` (about 9B tokens, 18 GB as uint16).

Recipe (nanoGPT ``config/train_gpt2.py``, Karpathy): 480 sequences x 1024 tokens = 491,520 tokens
per step, AdamW lr 6e-4 (beta2 0.95, weight decay 0.1), 2,000 warmup steps, cosine decay to 6e-5
over 600,000 steps (300B tokens), gradient clipping at 1.0, no dropout. nanoGPT reports a
validation loss of about 2.85 on OpenWebText at the end of that run (8x A100 40GB, about 4 days).
Sized for: TPU v4-8 or 8x A100/H100 (bf16 compute, float32 params; 5 microbatches of 96 = 12 per
device on 8 devices). Not run here: the 2-core CPU of this project's CI runs the tiny variant.
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
from jaxformers.models.gpt2 import GPT2Config

# The variants (--variant NAME; --list-variants), the default first.
VARIANTS = {
    "default": "GPT-2 124M on OpenWebText (TFDS), sized for 8 accelerators",
    "tiny": "two-step smoke test on the embedded corpus (the tests run it)",
}


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="gpt2_124m_openwebtext",
        model=GPT2Config.preset(
            "124m",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            dtype="bfloat16",
            param_dtype="float32",
            scan_layers=True,
            remat="save_dots",
            attention_impl="auto",
            # The accelerators' padding, fixed here rather than read off the machine: the
            # params' shapes must not change when a run resumes on another platform.
            vocab_pad_multiple=perf.VOCAB_PAD_MULTIPLE["gpu"],
        ),
        data=DataConfig(corpus="tfds:openwebtext", tokenizer="gpt2", seq_len=1024),
        optim=OptimConfig(
            lr=6e-4,
            warmup_steps=2000,
            schedule="cosine",
            end_lr_ratio=0.1,
            weight_decay=0.1,
            b1=0.9,
            b2=0.95,
            clip_norm=1.0,
            grad_accum=5,
        ),
        mesh=MeshConfig(shape=(-1, 1, 1)),
        checkpoint=CheckpointConfig(every=2000, keep=3),
        sample=SampleConfig(prompts=("The meaning of life is",), max_new_tokens=64),
        batch_size=480,
        steps=600_000,
        eval_every=1000,
        eval_batches=40,
        log_every=10,
    )
    if variant == "tiny":
        # Same code path on the embedded corpus: a trained BPE instead of GPT-2's files.
        exp = exp.smoke_test(
            model=GPT2Config.preset(
                "tiny",
                vocab_size=512,
                n_positions=32,
                scan_layers=True,
                remat="save_dots",
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            ),
            data=DataConfig(corpus="shakespeare", tokenizer="bpe", seq_len=16),
            optim=dataclasses.replace(exp.optim, warmup_steps=1, grad_accum=2),
            sample=SampleConfig(prompts=("ROMEO:",), max_new_tokens=8),
            batch_size=16,
        )
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
