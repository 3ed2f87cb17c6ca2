"""Peak resident memory of ``stdiff predict`` with very many samples: SampleWriter streams them into a
``.npy`` on disk, so memory is bounded by the batch, not by ``num_predict``.

Draws N samples of a small GP (8 frames × 4 points) with the exact model and DDIM (2 steps), in
batches of 100 000, once with N = 10⁵ and once with N = 10⁷ (1.2 GiB of float32 on disk), and
reports each run's peak RSS (VmHWM of the child) and the file it wrote.
    python -m stdiff.bench predict_memory [--samples 10000000] [--out stdiff/bench/results/predict_memory.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stdiff.bench import RESULTS, run_with_peak

ROOT = Path(__file__).resolve().parents[1]  # the package: its configs/ are the presets


def predict(n: int, root: Path) -> dict:
    args = [sys.executable, "-m", "stdiff", "predict", "--config", str(ROOT / "configs" / "quickstart.yaml"),
            "--model.denoiser=ExactDenoiser", "--model.sampler=DDIM", "--model.sampler.init_args.steps=2",
            "--data.init_args.frames=8", "--data.init_args.space_shape=[4]", f"--data.init_args.num_predict={n}",
            "--data.init_args.batch_size=100000", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}"]  # fmt: skip
    start = time.perf_counter()
    done, peak = run_with_peak(args)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    (path,) = root.glob("lightning_logs/exact_predict_*/samples.npy")
    x = np.load(path, mmap_mode="r")
    sd = float(np.asarray(x[-100000:]).std())  # the last batch was written too
    return {"samples": n, "file_gib": round(path.stat().st_size / 2**30, 3), "shape": list(x.shape),
            "last_batch_sd": round(sd, 3), "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_mib": round(peak, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=10_000_000)
    p.add_argument("--out", type=Path, default=RESULTS / "predict_memory.json")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (100_000, args.samples):
            results.append(predict(n, Path(tmp) / str(n)))
            print(results[-1], flush=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
