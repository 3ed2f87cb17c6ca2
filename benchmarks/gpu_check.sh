#!/usr/bin/env bash
# Everything that needs a GPU, in one go (a few minutes on one H100): the GPU tests, then the
# benchmark on the DiT-B-scale preset (fp32/bf16 × compile off/on; stdiff vs hand-written; data
# drawn on the device) and on the smaller single-GPU preset. Results: $OUT (default benchmarks/results).
#   bash benchmarks/gpu_check.sh
#
# On the lent device machines (no network; their image has torch, lightning, torchmetrics and
# tensorboard but not jsonargparse): carry `.whl` with jsonargparse, docstring-parser and
# typeshed-client wheels (py3-none-any; `pip download` them here), they are installed from it.
set -euo pipefail
OUT=${OUT:-benchmarks/results}
if ! python -c "import jsonargparse" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python -c "import stdiff" 2>/dev/null || export PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -m gpu -x -q 2>&1 | tee "$OUT/gpu_tests.txt"
GPU="--config configs/gpu/single.yaml"
# DiT-B scale: hardware use (fp32/bf16 × compile off/on), then stdiff's overhead uncompiled.
python -m stdiff.bench $GPU --config configs/gpu/dit_b.yaml --sections gpu --gpu-steps 20 --repeats 2 \
  --json "$OUT/bench_dit_b_gpu.json" 2> "$OUT/bench_dit_b_gpu.log" | tee "$OUT/bench_dit_b_gpu.md"
python -m stdiff.bench $GPU --config configs/gpu/dit_b.yaml --model.compile=false --sections training,data \
  --steps 50 --repeats 2 --json "$OUT/bench_dit_b_gpu_training.json" 2>> "$OUT/bench_dit_b_gpu.log" \
  | tee -a "$OUT/bench_dit_b_gpu.md"
# The single-GPU preset: overhead, data path, sampling, attention variants up to 16k tokens.
python -m stdiff.bench $GPU --sections training,data,sampling,attention --steps 100 --repeats 2 \
  --sample-batch 1024 --max-tokens 16384 --frames 16 32 64 128 256 --patches 4 16 64 \
  --json "$OUT/bench_single_gpu.json" 2> "$OUT/bench_single_gpu.log" | tee "$OUT/bench_single_gpu.md"
