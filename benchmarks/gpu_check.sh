#!/usr/bin/env bash
# Everything that needs a GPU, in one go (a few minutes on one H100): the GPU tests, then the
# benchmark on the DiT-B-scale preset (fp32/bf16 × compile off/on; stdiff vs hand-written; data
# drawn on the device) and on the smaller single-GPU preset. Results: $OUT (default benchmarks/results).
#   bash benchmarks/gpu_check.sh
set -euo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -m gpu -x -q 2>&1 | tee "$OUT/gpu_tests.txt"
GPU="--config configs/gpu/single.yaml"
python -m stdiff.bench $GPU --config configs/gpu/dit_b.yaml --sections gpu,training,data --steps 100 \
  --json "$OUT/bench_dit_b_gpu.json" 2> "$OUT/bench_dit_b_gpu.log" | tee "$OUT/bench_dit_b_gpu.md"
python -m stdiff.bench $GPU --sections training,data,sampling,attention --sample-steps 50 100 500 \
  --sample-batch 1024 --max-tokens 16384 --frames 16 32 64 128 256 --patches 4 16 64 \
  --json "$OUT/bench_single_gpu.json" 2> "$OUT/bench_single_gpu.log" | tee "$OUT/bench_single_gpu.md"
