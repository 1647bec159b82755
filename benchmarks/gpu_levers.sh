#!/usr/bin/env bash
# One lever changed at a time against the defaults (same machine, one call), one line per run:
#   gpt2-levers.txt: GPT-2 124M 16 x 1024 bf16 training (vocabulary, scan, attention, XLA flags);
#   levers.txt: BERT-base and T5-base attention (cuDNN through jax.nn.dot_product_attention, T5
#   with its relative-position bias, against XLA's einsums) and GPT-2 124M decode at batch 1.
# Defaults are what benchmarks/run.py picks on a GPU (cuDNN attention, scan, the library's XLA
# flags); JAXFORMERS_XLA_FLAGS=0 runs without the library's flags, the third argument adds flags.
# SIZE=tiny runs the same commands at tiny sizes (a smoke test on a CPU: attention is XLA's there).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}}
size=${SIZE:-gpu}
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
run() { # name, model overrides (JSON), extra XLA flags
  XLA_FLAGS="${3:-}" JAXFORMERS_BENCH_MODEL="$2" timeout 100 python3 benchmarks/run.py --model gpt2 --what train --size "$size" --steps 20 --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin)['results'][0]; print('$1', json.dumps({k: r[k] for k in ('step_seconds_median','tokens_per_second','mfu','compile_seconds','peak_memory_bytes')}))" | tee -a "$out/gpt2-levers.txt"
}
# The baseline is --size gpu's defaults: the vocabulary padded to perf.default_vocab_pad_multiple
# (128 on a GPU: 50257 -> 50304 rows, the loss and outputs still over 50257 tokens).
run baseline '{}'
run vocab_unpadded '{"vocab_pad_multiple": 1}'
run no_scan '{"scan_layers": false}'
run xla_attention '{"attention_impl": "xla"}'
run vocab_unpadded_no_scan '{"vocab_pad_multiple": 1, "scan_layers": false}'
# XLA flags: without the library's choice, and candidates not (yet) chosen.
JAXFORMERS_XLA_FLAGS=0 run no_xla_flags '{}'
JAXFORMERS_XLA_FLAGS=0 run no_xla_flags_no_scan '{"scan_layers": false}'
run triton_gemm_any '{}' '--xla_gpu_triton_gemm_any=true'
run while_loop_double_buffering '{}' '--xla_gpu_enable_while_loop_double_buffering=true'

lever() { # name, model, train|decode, model overrides (JSON), extra XLA flags
  XLA_FLAGS="${5:-}" JAXFORMERS_BENCH_MODEL="$4" timeout 150 python3 benchmarks/run.py --model "$2" --what "$3" --size "$size" --steps 20 --decode-batches 1 --json \
    | python3 -c "
import json, sys
keys = ('step_seconds_median', 'tokens_per_second', 'mfu', 'new_tokens_per_second', 'seconds_median', 'compile_seconds', 'peak_memory_bytes')
for r in json.load(sys.stdin)['results']:
    print('$1', json.dumps({k: r[k] for k in keys if k in r}))" | tee -a "$out/levers.txt"
}
lever t5_cudnn_attention_bias t5 train '{}'
lever t5_xla_attention t5 train '{"attention_impl": "xla"}'
lever bert_cudnn_attention bert train '{}'
lever bert_xla_attention bert train '{"attention_impl": "xla"}'
lever gpt2_decode_b1 gpt2 decode '{}'
lever gpt2_decode_b1_bf16 gpt2 decode '{"dtype": "bfloat16"}'
JAXFORMERS_XLA_FLAGS=0 lever gpt2_decode_b1_no_xla_flags gpt2 decode '{}'
# Scanned layers (the experiments' setting; decoding unstacks the params once per call).
lever gpt2_decode_b1_scanned gpt2 decode '{"scan_layers": true}'
# Command buffers (CUDA graphs) around the decode while-loop: batch-1 decoding is launch-bound.
lever gpt2_decode_b1_cmdbuf_while gpt2 decode '{}' '--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL'
