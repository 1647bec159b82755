#!/usr/bin/env bash
# GPU workloads in one call: GPT-2 124M 16 x 1024, BERT-base 64 x 512, T5-base 64 x 512 -> 114,
# bf16 compute with float32 params, MFU against the card's dense bf16 peak, peak memory and compile
# seconds in each JSON; GPT-2 124M decode; compile seconds against depth (GPT-2 124M / 355M / 774M /
# 1.5B, scanned and unrolled, 16 x 1024 bf16); then every lever of benchmarks/gpu_levers.sh.
# The XLA flags are the library's choice for the card (jaxformers/perf.py accelerator_xla_flags),
# after any the caller set in XLA_FLAGS.
# Usage (repository root, on the GPU machine):  bash benchmarks/gpu.sh [OUT_DIR]
#   LEVERS=0 skips the levers, COMPILE_DEPTH=0 the depth sweep; SIZE=tiny runs the same commands at
#   tiny sizes (a smoke test on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}}
size=${SIZE:-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
python3 -c "from jaxformers import perf; k = perf.gpu_kind_before_backend(); print('xla flags for', k, perf.accelerator_xla_flags(k or 'cpu'))" | tee -a "$out/gpu.txt"
for m in gpt2 bert t5; do
  timeout 240 python3 benchmarks/run.py --model $m --what train --size "$size" --steps 20 --json | tee "$out/$m-train-$size.json"
done
timeout 120 python3 benchmarks/run.py --model gpt2 --what decode --json | tee "$out/gpt2-decode-$size.json"
if [ "${COMPILE_DEPTH:-1}" = 1 ]; then
  if [ "$size" = tiny ]; then depth=(--presets 124m --batch 1 --seq 32 --dtype float32); else depth=(--batch 16 --seq 1024 --dtype bfloat16); fi
  timeout 480 python3 benchmarks/compile_depth.py --size "$size" "${depth[@]}" --repeats 1 --timeout 150 --budget 420 --json | tee "$out/compile-depth-$size.json"
fi
if [ "${LEVERS:-1}" = 1 ]; then
  bash benchmarks/gpu_levers.sh "$out"
fi
