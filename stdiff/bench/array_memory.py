"""Peak resident memory of training on a large array file (ArrayDataModule reads windows in place).

Writes a float32 ``.npy`` of the given size (GP-like smooth series, chunk by chunk), then runs
``stdiff fit`` on it for a few steps in a child process, and the same on a file 1/200 the size:
the two peaks should be close (memory bounded by the batch and the model, not the file).
    python -m stdiff.bench array_memory [--gigabytes 2] [--steps 20] [--out stdiff/bench/results/array_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stdiff.bench import RESULTS

ROOT = Path(__file__).resolve().parents[1]  # the package: its configs/ are the presets
POINTS = 256


def write(path: Path, gigabytes: float) -> tuple[int, ...]:
    """A ``(N, 32768, POINTS)`` float32 file of about ``gigabytes``, written 64 MB at a time."""
    frames = 32768
    n = max(1, round(gigabytes * 2**30 / (frames * POINTS * 4)))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, frames, POINTS))
    rng = np.random.default_rng(0)
    for i in range(n):
        for start in range(0, frames, 8192):
            steps = rng.standard_normal((8192, POINTS)).astype(np.float32)
            out[i, start : start + 8192] = np.cumsum(steps, 0) / 30.0  # random walks: smooth in time
        out.flush()
    del out
    return (n, frames, POINTS)


def fit(path: Path, steps: int, root: Path) -> dict:
    """``stdiff fit`` on ``path`` in a child process: its wall time and peak resident memory."""
    args = [sys.executable, "-m", "stdiff", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
            "--data=ArrayDataModule", f"--data.init_args.paths={path}", "--data.init_args.frames=32",
            "--data.init_args.batch_size=16", "--data.init_args.num_val=64",
            "--model.denoiser.init_args.backbone.init_args.patch_size=32", f"--trainer.max_steps={steps}",
            f"--trainer.val_check_interval={steps}", "--diagnostics.num_samples=50", "--trainer.num_sanity_val_steps=0",
            "--model.sampler.init_args.steps=2", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"]  # fmt: skip
    start = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    while child.poll() is None:  # VmHWM: the child's own high-water mark (its image after exec, not the fork)
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.2)
    if child.returncode != 0:
        raise SystemExit(child.stderr.read()[-3000:])
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gigabytes", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS / "array_memory.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for name, size in (("small", args.gigabytes / 200), ("large", args.gigabytes)):
            path = tmp / f"{name}.npy"
            shape = write(path, size)
            print(f"{name}: {path.stat().st_size / 2**30:.2f} GiB {shape}", flush=True)
            results[name] = {"file_gib": round(path.stat().st_size / 2**30, 3), "shape": shape,
                             **fit(path, args.steps, tmp / f"run_{name}")}  # fmt: skip
            print(results[name], flush=True)
            path.unlink()
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
