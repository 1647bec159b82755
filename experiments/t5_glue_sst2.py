"""Fine-tuning a converted T5.1.1 checkpoint on GLUE SST-2 as text to text (TFDS ``glue/sst2``).

Launch (an HF-format T5.1.1 directory: config.json, model.safetensors, spiece.model; e.g.
google/t5-v1_1-base saved by transformers, or ``jaxformers convert``):
    jaxformers train experiments/t5_glue_sst2.py --workdir /tmp/t5_sst2 \
        --set init_from=/path/to/t5-v1_1-base
    ... --variant tiny        (two-step smoke test on the embedded plays, used by the tests)

Examples: ``"sst2 sentence: <sentence>"`` -> ``"negative"`` / ``"positive"`` (the T5 paper's
prefix); the metric is exact match of the greedy generation with the label word, i.e. accuracy,
over all 872 dev sentences. The vocabulary is the checkpoint's own spiece.model.

Recipe (Raffel et al. 2020, section 3.1.4 fine-tuning): Adafactor, constant learning rate 1e-3,
batch 128 packed rows, dropout 0.1, 2^18 steps with an evaluation every 5,000 (the paper reports
the best). Lengths here: 128 input tokens (SST-2 sentences are short), 8 target tokens. Preparing
glue/sst2 needs TensorFlow and the network (``pip install 'jaxformers[tf]'``, then
``tfds build glue/sst2 --file_format=array_record``); without it the run stops with an error that
says so. Sized for TPU v4-8 / an 80 GB GPU at base size.

The paper's figures (Table 14, T5 v1.0 pretrained on a multi-task mixture then fine-tuned, SST-2
test accuracy): Small 91.8, Base 95.2, Large 96.3, 3B 97.4, 11B 97.5. T5.1.1 was pretrained on C4
only, so these are the reference, not a promise. No figure is claimed: not run on this project's
2-core CPU.
"""

from jaxformers.tasks.text_to_text import t5_finetune_experiment, who_speaks_smoke_test

VARIANTS = {
    "default": "SST-2 from a converted T5.1.1-base checkpoint (TFDS glue/sst2, needs init_from)",
    "tiny": "two-step smoke test on the embedded plays' who-speaks task (the tests run it)",
}


def get_config(variant: str = "default"):
    exp = t5_finetune_experiment("t5_glue_sst2", "glue/sst2", seq_len=128, targets_length=8)
    if variant == "tiny":
        exp = who_speaks_smoke_test(exp)
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
