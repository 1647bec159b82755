#!/usr/bin/env bash
# GPT-2 124M 16 x 1024 bf16 on a GPU with one lever changed at a time (same machine, one call).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}}
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
run() { # name, model overrides (JSON), extra XLA flags
  XLA_FLAGS="${3:-}" JAXFORMERS_BENCH_MODEL="$2" timeout 100 python3 benchmarks/run.py --model gpt2 --what train --size gpu --steps 20 --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin)['results'][0]; print('$1', json.dumps({k: r[k] for k in ('step_seconds_median','tokens_per_second','mfu','compile_seconds','peak_memory_bytes')}))" | tee -a "$out/gpt2-levers.txt"
}
# The baseline is --size gpu's defaults: the vocabulary padded to perf.default_vocab_pad_multiple
# (128 on a GPU: 50257 -> 50304 rows, the loss and outputs still over 50257 tokens).
run baseline '{}'
run vocab_unpadded '{"vocab_pad_multiple": 1}'
run no_scan '{"scan_layers": false}'
run xla_attention '{"attention_impl": "xla"}'
run vocab_unpadded_no_scan '{"vocab_pad_multiple": 1, "scan_layers": false}'
