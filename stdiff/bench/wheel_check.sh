#!/usr/bin/env bash
# A non-editable install runs every documented command: build the wheel, install it into a fresh
# virtual environment outside the checkout, and run, from an empty directory, the quickstart (its
# config resolved from the package: configs/ does not exist there) and `python -m stdiff.paper theory`.
#   python -m stdiff.bench wheel_check [extra stdiff fit arguments, e.g. --trainer.max_steps=100]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
pip install -q torch==2.13.0 2>/dev/null || true   # a local CPU wheel where there is one; else the dependency range decides
# built from a copy of the checkout: setuptools would leave build/ in it
mkdir "$work/src" && tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
  --exclude=./lightning_logs --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -
pip wheel -q --no-deps -w "$work/dist" "$work/src"
pip install -q "$work"/dist/stdiff-*.whl
mkdir "$work/run" && cd "$work/run"
python - <<'PY'
import stdiff, pathlib
assert "site-packages" in stdiff.__file__, stdiff.__file__   # the installed copy, not the checkout
print("installed at", pathlib.Path(stdiff.__file__).parent)
PY
stdiff fit --config configs/quickstart.yaml --trainer.enable_progress_bar=false "$@"
test -f lightning_logs/version_0/metrics.json && test -f lightning_logs/version_0/checkpoints/last.ckpt
python -m stdiff.paper theory --root .
test -f paper/theory/version_0/summary.json
echo "wheel check passed: quickstart and paper theory ran from the installed package"
