"""Fixed training and decoding workloads: tokens/s, MFU, compile time, peak memory, JSON output.

    python benchmarks/run.py --model gpt2 --what train --json [--peer torch] [--size cpu|gpu]
    python benchmarks/run.py --model gpt2 --what decode --json --peer torch

Workloads (the yardstick; random weights, dropout 0, AdamW at a constant lr 1e-4 with weight decay
0.01 on matrices only, no clipping; decodes produce exactly the asked number of tokens):
  cpu: gpt2-train 124M 4 x 256 f32 | bert-train base 8 x 128 (20 masked) f32 |
       t5-train small 8 x 128 -> 32 f32 | gpt2-decode 124M prompt 32 + 128 greedy, batch 1 and 8 |
       t5-decode small 128 -> 64 greedy, batch 1 and 8
  gpu: gpt2-train 124M 16 x 1024 bf16 | bert-train base 64 x 512 bf16 |
       t5-train base 64 x 512 -> 114 bf16
  tiny: the tiny presets at 2 x 32 (a smoke test of the GPU scripts' commands on a CPU)

Timing: median of ``--steps`` (>= 10) steps after two warm-up steps; compile time separately.
The JSON also holds the device's peak memory in use (``peak_memory_bytes``, where the device
reports it), XLA's memory analysis of the compiled train step (``compiled_memory_bytes``) and the
XLA flags of the run (the accelerator's, ``perf.accelerator_xla_flags``, after the user's own).
MFU = model FLOPs per step / (step time x peak), model FLOPs as perf.py defines them; the peak is
the device table's (dense bf16) on accelerators, and on a CPU the f32 (or bf16) 2048^3 matmul peak
measured in the same run. ``--peer torch`` runs transformers' PyTorch model on the same workload in
the same process and reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxformers import decoding, models, perf, sharding, tasks  # noqa: E402
from jaxformers.tasks.base import synthetic_data  # noqa: E402
from jaxformers.train import create_train_state, decay_mask, train_step  # noqa: E402

# Each family's workloads: its preset (dropout off) and the lengths of its default task's
# examples (``flops_per_example`` arguments): (T,) causal LM, (T, P) MLM+NSP, (T, S) span
# corruption.
_NO_DROPOUT = {
    "gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "t5": dict(dropout_rate=0.0),
}
WORKLOADS = {
    ("gpt2", "cpu"): dict(preset="124m", batch=4, lengths=(256,), dtype="float32"),
    ("gpt2", "gpu"): dict(preset="124m", batch=16, lengths=(1024,), dtype="bfloat16"),
    ("bert", "cpu"): dict(preset="base", batch=8, lengths=(128, 20), dtype="float32"),
    ("bert", "gpu"): dict(preset="base", batch=64, lengths=(512, 76), dtype="bfloat16"),
    ("t5", "cpu"): dict(preset="t5-small", batch=8, lengths=(128, 32), dtype="float32"),
    ("t5", "gpu"): dict(preset="t5-base", batch=64, lengths=(512, 114), dtype="bfloat16"),
    # A smoke test of the GPU scripts' commands on a CPU (SIZE=tiny bash benchmarks/gpu.sh).
    ("gpt2", "tiny"): dict(preset="tiny", batch=2, lengths=(32,), dtype="float32"),
    ("bert", "tiny"): dict(preset="tiny", batch=2, lengths=(32, 5), dtype="float32"),
    ("t5", "tiny"): dict(preset="tiny", batch=2, lengths=(32, 8), dtype="float32"),
}
# Decoding: prompt (GPT-2) or encoder input (T5) length, new tokens, and the range of token ids
# drawn.
DECODE = {
    "gpt2": dict(preset="124m", prompt=32, new=128, ids=(0, 50257)),
    "t5": dict(preset="t5-small", prompt=128, new=64, ids=(2, 32000)),
}


def timed(fn, steps: int, warmup: int = 2):
    """(compile+first seconds, median seconds per call over ``steps`` calls)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, statistics.median(times), times


def peak_memory_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
        return int(stats.get("peak_bytes_in_use")) if stats else None
    except Exception:
        return None


def memory_analysis_bytes(compiled) -> dict | None:
    """XLA's memory analysis of a compiled step: bytes of its arguments, outputs (``alias``: those
    that reuse a donated argument's buffer) and temporaries; None where the backend has none."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    fields = ("argument", "output", "alias", "temp", "generated_code")
    return {f: int(getattr(mem, f"{f}_size_in_bytes")) for f in fields}


def model_config(family_name: str, preset: str, **overrides):
    """The family's preset with dropout off and ``overrides`` (plus JAXFORMERS_BENCH_MODEL's, JSON,
    e.g. '{"remat": "full"}', for experiments with the levers)."""
    extra = json.loads(os.environ.get("JAXFORMERS_BENCH_MODEL", "{}"))
    family = models.get(family_name)
    return family.config_class.preset(preset, **{**_NO_DROPOUT[family_name], **overrides, **extra})


def build(family_name: str, size: str, w: dict, **overrides):
    """(model, task, data): the family's default task on one fixed random batch; ``overrides``
    replace the workload's model settings (compile_depth.py: ``scan_layers``)."""
    gpu = jax.devices()[0].platform == "gpu"
    settings = dict(
        attention_impl="cudnn" if gpu else "xla",
        scan_layers=size == "gpu",
        dtype=w["dtype"],
        param_dtype="float32",
        # The cpu size keeps the real vocabulary: its peers (transformers) run the same shapes.
        vocab_pad_multiple=perf.default_vocab_pad_multiple() if size == "gpu" else 1,
    )
    c = model_config(family_name, w["preset"], **{**settings, **overrides})
    family = models.of_config(c)
    task = tasks.get(family.default_task)()
    return family.build(c), task, synthetic_data(task, c, w["batch"], w["lengths"])


def jax_train(model_name: str, size: str, steps: int) -> dict:
    w = WORKLOADS[(model_name, size)]
    model, task, data = build(model_name, size, w)
    flops = data.flops_per_example(model.config) * w["batch"]
    tokens = data.tokens_per_example * w["batch"]
    tx = optax.adamw(1e-4, weight_decay=0.01, mask=decay_mask)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    state = create_train_state(model, data.dummy_inputs(), tx, mesh, task, lambda s: 1e-4).init()
    batch = jax.tree.map(jnp.asarray, data.train_batch(0))
    step = jax.jit(train_step, donate_argnums=0)
    rng = jax.random.PRNGKey(1)
    box = {"s": state}

    def run():
        box["s"], m = step(box["s"], batch, rng)
        return m["loss"]

    peak, src = perf.peak_tflops(0.0, w["dtype"])  # a CPU's is measured before the work ...
    first, med, times = timed(run, steps)
    # The step is compiled by now: lowering it again for its memory analysis hits jax's cache.
    compiled_memory = memory_analysis_bytes(step.lower(box["s"], batch, rng).compile())
    if src.startswith(perf.MEASURED):  # ... and after it: the better is the peak
        peak = perf.best_measured(peak, w["dtype"])
    n_dev = 1
    cpu_peaks = {}
    if jax.devices()[0].platform == "cpu":  # both, as the yardstick for f32 and for bf16 runs
        cpu_peaks = {
            "matmul_peak_tflops": {
                dt: perf.measure_matmul_tflops(jnp.dtype(dt)) for dt in ("float32", "bfloat16")
            }
        }
    return {
        "framework": "jaxformers",
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "workload": f"{model_name}-train",
        "size": size,
        **w,
        "step_seconds_median": med,
        "compile_seconds": first - med,
        "tokens_per_second": tokens / med,
        "flops_per_step": flops,
        "peak_tflops": peak,
        "peak_source": src,
        "mfu": perf.mfu(flops, med, peak, n_dev),
        "mfu_valid": perf.mfu_is_valid(perf.mfu(flops, med, peak, n_dev)),
        "peak_memory_bytes": peak_memory_bytes(),
        "compiled_memory_bytes": compiled_memory,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loss_last": float(run()),
        **cpu_peaks,
    }


def torch_train(model_name: str, size: str, steps: int) -> dict:
    import torch
    import transformers

    w = WORKLOADS[(model_name, size)]
    torch.manual_seed(0)
    B, T = w["batch"], w["lengths"][0]
    ce = torch.nn.functional.cross_entropy
    if model_name == "gpt2":
        cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(cfg)
        ids = torch.randint(0, cfg.vocab_size, (B, T + 1))

        def loss_fn():
            out = model(ids[:, :-1])
            return ce(out.logits.reshape(-1, cfg.vocab_size).float(), ids[:, 1:].reshape(-1))
    elif model_name == "bert":
        cfg = transformers.BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = transformers.BertForPreTraining(cfg)
        P = w["lengths"][1]
        ids = torch.randint(0, cfg.vocab_size, (B, T))
        labels = torch.full((B, T), -100)
        for b in range(B):  # the reference model scores masked positions only through its labels
            labels[b, torch.randperm(T - 2)[:P] + 1] = torch.randint(0, cfg.vocab_size, (P,))
        nsp = torch.randint(0, 2, (B,))

        def loss_fn():
            return model(ids, labels=labels, next_sentence_label=nsp).loss
    else:
        S = w["lengths"][1]
        cfg = transformers.T5Config(
            dropout_rate=0.0,
            d_model=512,
            d_ff=2048,
            num_layers=6,
            num_heads=8,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            decoder_start_token_id=0,
            pad_token_id=0,
        )
        model = transformers.T5ForConditionalGeneration(cfg)
        ids = torch.randint(2, cfg.vocab_size, (B, T))
        tgt = torch.randint(2, cfg.vocab_size, (B, S))

        def loss_fn():
            return model(input_ids=ids, labels=tgt).loss

    model.train()
    decay = [
        p
        for n, p in model.named_parameters()
        if p.ndim >= 2 and "norm" not in n.lower() and "ln" not in n
    ]
    ids_ = {id(p) for p in decay}
    no_decay = [p for p in model.parameters() if id(p) not in ids_]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
    )

    def run():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss

    run()
    run()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    tokens = B * (T + w["lengths"][1]) if model_name == "t5" else B * T
    return {
        "framework": "transformers-pytorch",
        "torch": torch.__version__,
        "workload": f"{model_name}-train",
        "step_seconds_median": med,
        "tokens_per_second": tokens / med,
    }


def _decode_setup(model_name: str, batch: int):
    """(model, params, input ids, new tokens) of the decode workloads (random weights)."""
    d = DECODE[model_name]
    c = model_config(model_name, d["preset"])
    family = models.of_config(c)
    model = family.build(c)
    params = nn.meta.unbox(
        jax.jit(lambda r: model.init(r, *family.example_inputs(c))["params"])(jax.random.PRNGKey(0))
    )
    ids = np.random.default_rng(0).integers(*d["ids"], (batch, d["prompt"]))
    return model, params, ids, d["new"]


def jax_decode(model_name: str, steps: int, batch: int) -> dict:
    model, params, ids, new = _decode_setup(model_name, batch)
    first, med, _ = timed(
        lambda: decoding.generate(model, params, ids, max_new_tokens=new),
        max(3, steps // 3),
        warmup=1,
    )
    out = {
        "framework": "jaxformers",
        "workload": f"{model_name}-decode",
        "batch": batch,
        "prompt": ids.shape[1],
        "new_tokens": new,
        "seconds_median": med,
        "compile_seconds": first - med,
        "new_tokens_per_second": batch * new / med,
        "peak_memory_bytes": peak_memory_bytes(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if jax.devices()[0].platform == "cpu":
        # Roofline of one decode step: every weight the step uses is read once per step (T5: the
        # decoder, its head and the shared embedding; GPT-2: all of it); the steps/s that the
        # measured read bandwidth allows bounds tokens/s at batch 1.
        used = {k: v for k, v in params.items() if k != "encoder"}  # GPT-2 has none
        nbytes = sum(x.nbytes for x in jax.tree.leaves(used))
        gbps = perf.measure_read_gbps()
        out.update(
            weights_read_per_step_bytes=nbytes,
            memory_read_gbps=gbps,
            bandwidth_bound_steps_per_second=gbps * 1e9 / nbytes,
        )
    return out


def torch_decode(model_name: str, steps: int, batch: int) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    if model_name == "gpt2":
        cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model, ids, new = (
            transformers.GPT2LMHeadModel(cfg).eval(),
            torch.randint(0, cfg.vocab_size, (batch, 32)),
            128,
        )
    else:
        cfg = transformers.T5Config(
            dropout_rate=0.0,
            d_model=512,
            d_ff=2048,
            num_layers=6,
            num_heads=8,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            decoder_start_token_id=0,
            pad_token_id=0,
        )
        model, ids, new = (
            transformers.T5ForConditionalGeneration(cfg).eval(),
            torch.randint(2, 32000, (batch, 128)),
            64,
        )
    kw = dict(
        max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, use_cache=True
    )
    with torch.no_grad():
        model.generate(ids, **kw)
        times = []
        for _ in range(max(3, steps // 3)):
            t = time.perf_counter()
            model.generate(ids, **kw)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "framework": "transformers-pytorch",
        "workload": f"{model_name}-decode",
        "batch": batch,
        "seconds_median": med,
        "new_tokens_per_second": batch * new / med,
    }


# transformers 4.57's Flax models (the last HF Flax release) run by the peer script beside this
# repository (``../shared/peers``), in an environment of their own: they need jax <= 0.9 (T5's
# Flax code calls jnp.clip(a_max=), which jax 0.10 removed).
HF_FLAX_SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peers", "hf_flax.py"
)


def _hf_flax(model_name: str, what: str, batches: str = "1,8") -> dict:
    import subprocess

    python = os.environ.get(
        "JAXFORMERS_HF_FLAX_PYTHON",
        os.path.join(os.path.dirname(HF_FLAX_SCRIPT), "..", "..", ".venv-hf-flax", "bin", "python"),
    )
    if not (os.path.exists(python) and os.path.exists(HF_FLAX_SCRIPT)):
        raise SystemExit(
            f"--peer hf-flax needs {HF_FLAX_SCRIPT} and its environment at {python} "
            "(../shared/peers/README.md says how to make it; or set JAXFORMERS_HF_FLAX_PYTHON)"
        )
    cmd = [python, HF_FLAX_SCRIPT, "--model", model_name, "--what", what, "--batches", batches]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode or not lines:
        raise SystemExit(f"the hf-flax peer failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return json.loads(lines[-1])


def hf_flax_train(model_name: str, size: str, steps: int) -> dict:
    if size != "cpu":
        raise SystemExit("--peer hf-flax runs the CPU workloads only")
    r = _hf_flax(model_name, "train")
    return {
        "framework": "transformers-flax",
        "jax": r["versions"]["jax"],
        "transformers": r["versions"]["transformers"],
        "workload": f"{model_name}-train",
        "step_seconds_median": r["median_s_per_step"],
        "tokens_per_second": r["tokens_per_s"],
        "probe": r.get("probe"),
    }


def hf_flax_decode(model_name: str, steps: int, batch: int) -> dict:
    r = _hf_flax(model_name, "decode", str(batch))
    b = r["per_batch"][str(batch)]
    return {
        "framework": "transformers-flax",
        "jax": r["versions"]["jax"],
        "transformers": r["versions"]["transformers"],
        "workload": f"{model_name}-decode",
        "batch": batch,
        "seconds_median": b["median_s"],
        "new_tokens_per_second": b["new_tokens_per_s"],
        "probe": b.get("probe"),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=sorted(models.FAMILIES), required=True)
    # Compile time against depth: benchmarks/compile_depth.py.
    p.add_argument("--what", choices=["train", "decode"], required=True)
    p.add_argument(
        "--size",
        choices=["cpu", "gpu", "tiny"],
        default=None,
        help="default: gpu on a GPU, else cpu (tiny: a smoke test)",
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--peer",
        choices=["torch", "hf-flax"],
        default=None,
        help="torch: transformers' PyTorch model in this process; hf-flax: transformers 4.57's "
        "Flax model through ../shared/peers/hf_flax.py in its own environment "
        "($JAXFORMERS_HF_FLAX_PYTHON, default ../.venv-hf-flax/bin/python), run right after",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--decode-batches", type=int, nargs="+", default=[1, 8], help="decode batch sizes"
    )
    a = p.parse_args()
    # The accelerator's XLA flags (perf.accelerator_xla_flags), as the CLI sets them, before jax
    # starts its backends; JAXFORMERS_XLA_FLAGS=0 measures without them.
    perf.apply_xla_flags()
    load_start = os.getloadavg()
    size = a.size or ("gpu" if jax.devices()[0].platform == "gpu" else "cpu")
    steps = max(a.steps, 10) if a.what == "train" else a.steps
    results = []
    if a.what == "train":
        results.append(jax_train(a.model, size, steps))
        if a.peer:
            peer = (torch_train if a.peer == "torch" else hf_flax_train)(a.model, size, steps)
            ours = results[0]
            peer["ratio_jaxformers_over_peer"] = (
                ours["tokens_per_second"] / peer["tokens_per_second"]
            )
            # The same model FLOPs and peak as ours: the peer's MFU on this machine.
            peer["mfu"] = ours["flops_per_step"] / (
                peer["step_seconds_median"] * ours["peak_tflops"] * 1e12
            )
            results.append(peer)
    else:
        for b in a.decode_batches:
            r = jax_decode(a.model, steps, b)
            results.append(r)
            if a.peer:
                peer = (torch_decode if a.peer == "torch" else hf_flax_decode)(a.model, steps, b)
                peer["ratio_jaxformers_over_peer"] = (
                    r["new_tokens_per_second"] / peer["new_tokens_per_second"]
                )
                results.append(peer)
    # The machine's load (1/5/15-minute averages) before and after: a figure taken while other
    # work ran is no figure.
    out = {
        "model": a.model,
        "what": a.what,
        "size": size,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(out, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
