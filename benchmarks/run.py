"""Fixed training and decoding workloads: tokens/s, MFU, compile time, peak memory, JSON output.

    python benchmarks/run.py --model gpt2 --what train --json [--peer torch] [--size cpu|gpu]
    python benchmarks/run.py --model gpt2 --what decode --json --peer torch

Workloads (the yardstick; random weights, dropout 0, AdamW at a constant lr 1e-4 with weight decay
0.01 on matrices only, no clipping; decodes produce exactly the asked number of tokens):
  cpu: gpt2-train 124M 4 x 256 f32 | bert-train base 8 x 128 (20 masked) f32 |
       t5-train small 8 x 128 -> 32 f32 | gpt2-decode 124M prompt 32 + 128 greedy, batch 1 and 8 |
       t5-decode small 128 -> 64 greedy, batch 1 and 8
  gpu: gpt2-train 124M 16 x 1024 bf16 | bert-train base 64 x 512 bf16 | t5-train base 64 x 512 -> 114 bf16

Timing: median of ``--steps`` (>= 10) steps after two warm-up steps; compile time separately.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

WORKLOADS = {
    ("gpt2", "cpu"): dict(batch=4, seq=256, dtype="float32"),
    ("gpt2", "gpu"): dict(batch=16, seq=1024, dtype="bfloat16"),
    ("bert", "cpu"): dict(batch=8, seq=128, predictions=20, dtype="float32"),
    ("bert", "gpu"): dict(batch=64, seq=512, predictions=76, dtype="bfloat16"),
    ("t5", "cpu"): dict(batch=8, seq=128, targets=32, dtype="float32"),
    ("t5", "gpu"): dict(batch=64, seq=512, targets=114, dtype="bfloat16"),
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


def build(model_name: str, size: str, w: dict):
    """(model, batch dict, objective, flops per step, tokens per step)."""
    rng = np.random.default_rng(0)
    B = w["batch"]
    gpu = jax.devices()[0].platform == "gpu"
    impl = "cudnn" if gpu else "xla"
    # Model-config overrides for experiments with the levers (JSON), e.g. '{"remat": "full"}'.
    extra = json.loads(os.environ.get("JAXFORMERS_BENCH_MODEL", "{}"))
    dt = dict(dtype=w["dtype"], param_dtype="float32", **extra)
    if model_name == "gpt2":
        from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel
        from jaxformers.objectives.causal_lm import CausalLM

        c = GPT2Config.preset("124m", **{"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                                         "attention_impl": impl, "scan_layers": size == "gpu", **dt})
        T = w["seq"]
        ids = rng.integers(0, c.vocab_size, (1, B, T + 1), dtype=np.int32)
        batch = {"inputs": ids[..., :-1], "targets": ids[..., 1:]}
        return GPT2LMHeadModel(c), batch, CausalLM(), c.flops_per_token(T) * B * T, B * T
    if model_name == "bert":
        from jaxformers.models.bert import BertConfig, BertForPreTraining
        from jaxformers.objectives.mlm_nsp import MLMNSP

        c = BertConfig.preset("base", **{"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                                         "attention_impl": impl, "scan_layers": size == "gpu", **dt})
        T, P = w["seq"], w["predictions"]
        pos = np.sort(np.stack([rng.choice(np.arange(1, T - 1), P, replace=False) for _ in range(B)]), -1)
        batch = {"input_ids": rng.integers(0, c.vocab_size, (1, B, T), dtype=np.int32),
                 "input_mask": np.ones((1, B, T), np.int32), "segment_ids": np.zeros((1, B, T), np.int32),
                 "masked_lm_positions": pos[None].astype(np.int32),
                 "masked_lm_ids": rng.integers(0, c.vocab_size, (1, B, P), dtype=np.int32),
                 "masked_lm_weights": np.ones((1, B, P), np.float32),
                 "next_sentence_labels": rng.integers(0, 2, (1, B), dtype=np.int32)}
        return BertForPreTraining(c), batch, MLMNSP(), c.flops_per_token(T, P) * B * T, B * T
    if model_name == "t5":
        from jaxformers.models.t5 import T5Config, T5ForConditionalGeneration
        from jaxformers.objectives.span_corruption import SpanCorruption

        c = T5Config.preset("t5-small" if size == "cpu" else "t5-base",
                            **{"dropout_rate": 0.0, "attention_impl": impl, "scan_layers": size == "gpu", **dt})
        T, S = w["seq"], w["targets"]
        tgt = rng.integers(2, c.vocab_size, (1, B, S), dtype=np.int32)
        batch = {"encoder_input_tokens": rng.integers(2, c.vocab_size, (1, B, T), dtype=np.int32),
                 "encoder_segment_ids": np.ones((1, B, T), np.int32),
                 "decoder_input_tokens": np.concatenate([np.zeros((1, B, 1), np.int32), tgt[..., :-1]], -1),
                 "decoder_target_tokens": tgt, "decoder_segment_ids": np.ones((1, B, S), np.int32),
                 "decoder_loss_weights": np.ones((1, B, S), np.float32)}
        return T5ForConditionalGeneration(c), batch, SpanCorruption(), c.flops_per_example(T, S) * B, B * (T + S)
    raise ValueError(f"unknown model {model_name!r}")


def jax_train(model_name: str, size: str, steps: int) -> dict:
    from jaxformers import perf
    from jaxformers.train import TrainState, decay_mask, train_step

    w = WORKLOADS[(model_name, size)]
    model, batch, objective, flops, tokens = build(model_name, size, w)
    tx = optax.adamw(1e-4, weight_decay=0.01, mask=decay_mask)

    def init(r):
        first = batch[next(iter(batch))]
        dummies = [jnp.zeros((1,) + first.shape[2:], jnp.int32)]
        if model_name == "t5":
            dummies.append(jnp.zeros((1,) + batch["decoder_input_tokens"].shape[2:], jnp.int32))
        params = model.init(r, *dummies)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          apply_fn=model.apply, tx=tx, objective=objective, schedule=lambda s: 1e-4)

    import flax.linen as nn

    state = jax.jit(lambda r: nn.meta.unbox(init(r)))(jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, batch)
    step = jax.jit(train_step, donate_argnums=0)
    rng = jax.random.PRNGKey(1)
    box = {"s": state}

    def run():
        box["s"], m = step(box["s"], batch, rng)
        return m["loss"]

    first, med, times = timed(run, steps)
    peak, src = perf.peak_tflops(0.0, w["dtype"])
    n_dev = 1
    cpu_peaks = {}
    if jax.devices()[0].platform == "cpu":  # both, as the yardstick for f32 and for bf16 runs
        cpu_peaks = {"matmul_peak_tflops": {dt: perf.measure_matmul_tflops(jnp.dtype(dt))
                                            for dt in ("float32", "bfloat16")}}
    return {
        "framework": "jaxformers", "jax": jax.__version__, "device": jax.devices()[0].device_kind,
        "workload": f"{model_name}-train", "size": size, **w,
        "step_seconds_median": med, "compile_seconds": first - med,
        "tokens_per_second": tokens / med, "flops_per_step": flops,
        "peak_tflops": peak, "peak_source": src, "mfu": perf.mfu(flops, med, peak, n_dev),
        "peak_memory_bytes": peak_memory_bytes(), "loss_last": float(run()), **cpu_peaks,
    }


def torch_train(model_name: str, size: str, steps: int) -> dict:
    import torch
    import transformers

    w = WORKLOADS[(model_name, size)]
    torch.manual_seed(0)
    B, T = w["batch"], w["seq"]
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
        P = w["predictions"]
        ids = torch.randint(0, cfg.vocab_size, (B, T))
        labels = torch.full((B, T), -100)
        for b in range(B):  # the reference model scores masked positions only through its labels
            labels[b, torch.randperm(T - 2)[:P] + 1] = torch.randint(0, cfg.vocab_size, (P,))
        nsp = torch.randint(0, 2, (B,))

        def loss_fn():
            return model(ids, labels=labels, next_sentence_label=nsp).loss
    else:
        S = w["targets"]
        cfg = transformers.T5Config(dropout_rate=0.0, d_model=512, d_ff=2048, num_layers=6, num_heads=8,
                                    feed_forward_proj="relu", tie_word_embeddings=True,
                                    decoder_start_token_id=0, pad_token_id=0)
        model = transformers.T5ForConditionalGeneration(cfg)
        ids = torch.randint(2, cfg.vocab_size, (B, T))
        tgt = torch.randint(2, cfg.vocab_size, (B, S))

        def loss_fn():
            return model(input_ids=ids, labels=tgt).loss
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower() and "ln" not in n]
    ids_ = {id(p) for p in decay}
    no_decay = [p for p in model.parameters() if id(p) not in ids_]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)

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
    tokens = B * (T + w.get("targets", 0)) if model_name == "t5" else B * T
    return {"framework": "transformers-pytorch", "torch": torch.__version__, "workload": f"{model_name}-train",
            "step_seconds_median": med, "tokens_per_second": tokens / med}


def _decode_setup(model_name: str, batch: int):
    """(model, params, input ids, new tokens) of the decode workloads (random weights)."""
    import flax.linen as nn

    rng = np.random.default_rng(0)
    if model_name == "gpt2":
        from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

        c = GPT2Config.preset("124m", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model, dummies, ids, new = GPT2LMHeadModel(c), (jnp.zeros((1, 8), jnp.int32),), \
            rng.integers(0, c.vocab_size, (batch, 32)), 128
    else:
        from jaxformers.models.t5 import T5Config, T5ForConditionalGeneration

        c = T5Config.preset("t5-small", dropout_rate=0.0)
        model, dummies, ids, new = T5ForConditionalGeneration(c), \
            (jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 4), jnp.int32)), rng.integers(2, 32000, (batch, 128)), 64
    params = nn.meta.unbox(jax.jit(lambda r: model.init(r, *dummies)["params"])(jax.random.PRNGKey(0)))
    return model, params, ids, new


def jax_decode(model_name: str, steps: int, batch: int) -> dict:
    from jaxformers import decoding, perf

    model, params, ids, new = _decode_setup(model_name, batch)
    first, med, _ = timed(lambda: decoding.generate(model, params, ids, max_new_tokens=new), max(3, steps // 3), warmup=1)
    out = {"framework": "jaxformers", "workload": f"{model_name}-decode", "batch": batch, "prompt": ids.shape[1],
           "new_tokens": new, "seconds_median": med, "compile_seconds": first - med,
           "new_tokens_per_second": batch * new / med}
    if jax.devices()[0].platform == "cpu":
        # Roofline of one decode step: every weight the step uses is read once per step (T5: the
        # decoder, its head and the shared embedding; GPT-2: all of it); the steps/s that the
        # measured read bandwidth allows bounds tokens/s at batch 1.
        used = params if model_name == "gpt2" else {k: v for k, v in params.items() if k != "encoder"}
        nbytes = sum(x.nbytes for x in jax.tree.leaves(used))
        gbps = perf.measure_read_gbps()
        out.update(weights_read_per_step_bytes=nbytes, memory_read_gbps=gbps,
                   bandwidth_bound_steps_per_second=gbps * 1e9 / nbytes)
    return out


def torch_decode(model_name: str, steps: int, batch: int) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    if model_name == "gpt2":
        cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model, ids, new = transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, cfg.vocab_size, (batch, 32)), 128
    else:
        cfg = transformers.T5Config(dropout_rate=0.0, d_model=512, d_ff=2048, num_layers=6, num_heads=8,
                                    feed_forward_proj="relu", tie_word_embeddings=True,
                                    decoder_start_token_id=0, pad_token_id=0)
        model, ids, new = transformers.T5ForConditionalGeneration(cfg).eval(), torch.randint(2, 32000, (batch, 128)), 64
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, use_cache=True)
    with torch.no_grad():
        model.generate(ids, **kw)
        times = []
        for _ in range(max(3, steps // 3)):
            t = time.perf_counter()
            model.generate(ids, **kw)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"framework": "transformers-pytorch", "workload": f"{model_name}-decode", "batch": batch,
            "seconds_median": med, "new_tokens_per_second": batch * new / med}


def compile_times() -> dict:
    """Compile seconds of the GPT-2 124M-wide train step at 12 and 48 layers, scanned or unrolled.

    Lowered from abstract shapes (nothing is allocated): with ``scan_layers`` the compile time
    should stay flat in depth, unrolled it grows with it.
    """
    import flax.linen as nn

    from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel
    from jaxformers.objectives.causal_lm import CausalLM
    from jaxformers.train import TrainState, decay_mask, train_step

    out = []
    tx = optax.adamw(1e-4, weight_decay=0.01, mask=decay_mask)
    for layers_ in (12, 48):
        for scan in (True, False):
            c = GPT2Config.preset("124m", n_layer=layers_, scan_layers=scan, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
            model = GPT2LMHeadModel(c)

            def init(r, model=model):
                params = nn.meta.unbox(model.init(r, jnp.zeros((1, 256), jnp.int32))["params"])
                return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                  apply_fn=model.apply, tx=tx, objective=CausalLM(), schedule=lambda s: 1e-4)

            abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
            batch = {k: jax.ShapeDtypeStruct((1, 4, 256), jnp.int32) for k in ("inputs", "targets")}
            t = time.perf_counter()
            jax.jit(train_step, donate_argnums=0).lower(abstract, batch, jax.random.PRNGKey(1)).compile()
            out.append({"layers": layers_, "scan_layers": scan, "compile_seconds": time.perf_counter() - t})
    return {"workload": "gpt2-124m-width train_step compile", "results": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["gpt2", "bert", "t5"], required=True)
    p.add_argument("--what", choices=["train", "decode", "compile"], required=True)
    p.add_argument("--size", choices=["cpu", "gpu"], default=None, help="default: gpu on a GPU, else cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peer", choices=["torch"], default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    size = a.size or ("gpu" if jax.devices()[0].platform == "gpu" else "cpu")
    steps = max(a.steps, 10) if a.what == "train" else a.steps
    results = []
    if a.what == "compile":
        print(json.dumps(compile_times(), indent=None if a.json else 2))
        return
    if a.what == "train":
        results.append(jax_train(a.model, size, steps))
        if a.peer == "torch":
            peer = torch_train(a.model, size, steps)
            ours = results[0]
            peer["ratio_jaxformers_over_peer"] = ours["tokens_per_second"] / peer["tokens_per_second"]
            # The same model FLOPs and peak as ours: the peer's MFU on this machine.
            peer["mfu"] = ours["flops_per_step"] / (peer["step_seconds_median"] * ours["peak_tflops"] * 1e12)
            results.append(peer)
    else:
        for b in (1, 8):
            r = jax_decode(a.model, steps, b)
            results.append(r)
            if a.peer == "torch":
                peer = torch_decode(a.model, steps, b)
                peer["ratio_jaxformers_over_peer"] = r["new_tokens_per_second"] / peer["new_tokens_per_second"]
                results.append(peer)
    out = {"model": a.model, "what": a.what, "size": size, "results": results}
    print(json.dumps(out, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
