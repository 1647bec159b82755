#!/usr/bin/env bash
# GPU workloads in one call of a few minutes: GPT-2 124M 16 x 1024, BERT-base 64 x 512,
# T5-base 64 x 512 -> 114, bf16 compute with float32 params, MFU against the card's dense bf16 peak.
# Usage (repository root, on the GPU machine):  bash benchmarks/gpu.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
for m in gpt2 bert t5; do
  timeout 240 python3 benchmarks/run.py --model $m --what train --size gpu --steps 20 --json | tee "$out/$m-train-gpu.json"
done
timeout 120 python3 benchmarks/run.py --model gpt2 --what decode --json | tee "$out/gpt2-decode-gpu.json"
