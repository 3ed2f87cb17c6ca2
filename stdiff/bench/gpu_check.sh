#!/usr/bin/env bash
# Everything that needs a GPU, in one go (at most 9 minutes: give the call a 10-minute limit): the
# GPU tests, then the benchmark on the DiT-B-scale preset (fp32/bf16 × compile off/on; stdiff vs
# hand-written; data drawn on the device) and on the smaller single-GPU preset. Results: $OUT
# (default stdiff/bench/results), one NAME.md (what was printed) and NAME.log (stderr) per stage,
# and the benchmarks' JSON.
#   python -m stdiff.bench gpu_check
#
# On the lent device machines (no network; their image has torch, lightning, torchmetrics and
# tensorboard but not jsonargparse): carry `.whl` with jsonargparse, docstring-parser and
# typeshed-client wheels (py3-none-any; `pip download` them here), they are installed from it.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the checkout: the GPU tests and configs/ are there
OUT=${OUT:-stdiff/bench/results}
export PYTHONUNBUFFERED=1  # output as it comes, also from a stage cut off by its limit
if ! python3 -c "import jsonargparse" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -c "import stdiff" 2>/dev/null || export PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
# Each stage has its own time limit and a failing stage does not stop the later ones: the device
# time is short, so one run must bring back every number it can. Failures are listed at the end.
failed=()
stage() {  # stage NAME SECONDS COMMAND...: run it, tee its output into $OUT/NAME.md
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2> "$OUT/$name.log" | tee "$OUT/$name.md" || failed+=("$name")
}
GPU="--config configs/gpu/single.yaml"
stage gpu_tests 120 python3 -m pytest -m gpu -q -p no:cacheprovider
# DiT-B scale: hardware use (fp32/bf16 × compile off/on), then stdiff's overhead uncompiled.
stage bench_dit_b_gpu 210 python3 -m stdiff.bench speed $GPU --config configs/gpu/dit_b.yaml --sections gpu \
  --gpu-steps 20 --repeats 2 --json "$OUT/bench_dit_b_gpu.json"
stage bench_dit_b_gpu_training 120 python3 -m stdiff.bench speed $GPU --config configs/gpu/dit_b.yaml \
  --model.compile=false --sections training,data --steps 50 --repeats 2 --json "$OUT/bench_dit_b_gpu_training.json"
# The single-GPU preset: overhead, data path, sampling, attention variants up to 16k tokens.
stage bench_single_gpu 90 python3 -m stdiff.bench speed $GPU --sections training,data,sampling,attention --steps 100 \
  --repeats 2 --sample-batch 1024 --max-tokens 16384 --frames 16 32 64 128 256 --patches 4 16 64 \
  --json "$OUT/bench_single_gpu.json"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED stages: ${failed[*]} (their .log files in $OUT)"
  exit 1
fi
