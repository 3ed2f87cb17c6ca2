#!/usr/bin/env bash
# Everything that needs a GPU, in one go (stages of 100 + 190 + 240 s, at most 9 minutes with the
# start: give the call a 10-minute limit): the GPU tests; DiT-B's throughput, plain loop against a
# real fit; the time to truth of configs/gpu/fast_truth.yaml. Results in $OUT (default
# stdiff/bench/results), 7 files, within the 8 a device returns: gpu_check.md (everything printed),
# gpu_check.log (stderr), dit_b.json, time_to_truth_gpu.{json,md,png,log}.
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
: > "$OUT/gpu_check.md"; : > "$OUT/gpu_check.log"
stage() {  # stage NAME SECONDS COMMAND...: run it, its output added to $OUT/gpu_check.md and .log
  local name=$1 limit=$2 start=$SECONDS; shift 2
  echo "== $name (at most ${limit}s)" | tee -a "$OUT/gpu_check.md" >> "$OUT/gpu_check.log"
  timeout --kill-after=10 "$limit" "$@" 2>> "$OUT/gpu_check.log" | tee -a "$OUT/gpu_check.md" || failed+=("$name")
  echo "== $name: $((SECONDS - start)) s" | tee -a "$OUT/gpu_check.md"
}
GPU="--config configs/gpu/single.yaml"
# 1. The GPU tests (76 s on an H200).
stage gpu_tests 100 python3 -m pytest -m gpu -q -p no:cacheprovider
# 2. DiT-B scale, bf16 + compile: a real `stdiff fit` (its Throughput callback's tokens/s and MFU)
#    against the plain loop on the same model; one compilation each (the second from inductor's cache).
stage dit_b 190 python3 -m stdiff.bench speed $GPU --config configs/gpu/dit_b.yaml --sections fit \
  --fit-steps 120 --repeats 2 --json "$OUT/dit_b.json"
# 3. Time to truth at d = 1024: the fast_truth preset until its verdict reads "close to the truth",
#    at most 3 min 10 s of fitting (Lightning's max_time, then its final validation) inside the stage.
stage time_to_truth 240 python3 -m stdiff.bench time_to_truth $GPU --config configs/gpu/fast_truth.yaml \
  --stop-at close --name time_to_truth_gpu --out "$OUT" --trainer.max_time=00:00:03:10
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED stages: ${failed[*]} (their .log files in $OUT)"
  exit 1
fi
