"""What the truth costs at video scale: time and peak memory of a sampling validation (the exact
model by ``validate``, and a small DiT by a one-step ``fit``, whose last validation samples) and the time of a training step, from d = 256 to
65,536 (16 frames of 4 × 4 to 64 × 64 grids, the video preset's separable kernel), with the
diagnostics' share and the preflight's memory estimate beside the peak really reached.

Each validation is a fresh ``stdiff validate`` process (``configs/video.yaml``, 256 samples, the
preset's UniPC with 25 evaluations): its parts (sampling, metrics, figures) come from its
``metrics.json``, its peak resident memory from ``/proc/<pid>/status`` (VmHWM), and the estimate
from ``stdiff.estimates.diagnostics_memory``, beside the peak less that of the same validation
with 2 samples (what the diagnostics' samples really add). The training step is timed in this process (forward
and backward on a batch of 4, the fastest of five after one warm-up).
    python -m stdiff.bench video_cost [--sides 4 8 16 32 64] [--dit-sides 4 8 16 32] [--samples 256] [--out stdiff/bench/results/video_cost]
Writes ``video_cost.json`` and ``video_cost.md`` (a table) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from stdiff.bench import RESULTS, run_with_peak

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / "configs" / "video.yaml"
SMALL_DIT = ["--model.denoiser.init_args.backbone.init_args.width=64", "--model.denoiser.init_args.backbone.init_args.depth=2",
             "--model.denoiser.init_args.backbone.init_args.heads=2"]  # fmt: skip


def grid_args(side: int) -> list[str]:
    patch = 4 if side <= 16 else 8  # 1 to 64 tokens per frame
    return [f"--data.init_args.space_shape=[{side},{side}]", f"--model.denoiser.init_args.backbone.init_args.patch_size={patch}"]


def validate(side: int, model: str, samples: int, root: Path) -> dict:
    # the exact model by validate; the DiT (validate refuses untrained weights) by a fit of one step,
    # whose last validation samples
    command = ["validate", "--model.denoiser=ExactDenoiser"] if model == "exact" else [
        "fit", "--trainer.max_steps=1", "--trainer.val_check_interval=1", "--trainer.num_sanity_val_steps=0"]  # fmt: skip
    args = [sys.executable, "-m", "stdiff", command[0], "--config", str(VIDEO), *grid_args(side), *SMALL_DIT,
            f"--diagnostics.num_samples={samples}", "--data.init_args.num_val=64", "--data.init_args.batch_size=32",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}", *command[1:]]  # fmt: skip
    start = time.perf_counter()
    done, peak = run_with_peak(args)
    if done.returncode != 0:
        raise SystemExit(f"side {side}, {model}: {done.stderr[-3000:]}")
    (path,) = sorted(root.glob("lightning_logs/*/metrics.json"), key=os.path.getmtime)[-1:]
    m = json.loads(path.read_text())["metrics"]
    verdict = next((line.strip() for line in done.stdout.splitlines() if line.strip().startswith("verdict")), "")
    return {"wall_s": round(time.perf_counter() - start, 2), "peak_rss_mib": round(peak, 1),
            "validation_s": round(m["val/seconds"], 3),
            **{f"{part}_s": round(m.get(f"val/seconds/{part}", 0.0), 3) for part in ("sampling", "metrics", "figures")},
            "eigen_kl_excess": m.get("val/samples/eigen_kl_excess"), "eigen_kl_noise": m.get("val/samples/eigen_kl_noise"),
            "exact_model_eigen_kl": m.get("val/samples/exact_model_eigen_kl"), "verdict": verdict[:160]}  # fmt: skip


def training_step_seconds(side: int) -> float:
    import torch

    from stdiff.cli import StdiffCLI

    cli = StdiffCLI(args=["--config", str(VIDEO), *grid_args(side), *SMALL_DIT], run=False)
    model, data = cli.model, cli.datamodule
    x = data.truth.sample(4, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timings = []
    for _ in range(6):
        start = time.perf_counter()
        model.training_step(x, 0).backward()
        opt.step()
        opt.zero_grad()
        timings.append(time.perf_counter() - start)
    return min(timings[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--dit-sides", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="grids the DiT is run on")
    p.add_argument("--out", type=Path, default=RESULTS / "video_cost")
    p.add_argument("--table", action="store_true", help="only rewrite video_cost.md from video_cost.json")
    args = p.parse_args()
    from stdiff.estimates import diagnostics_memory

    rows = json.loads((args.out / "video_cost.json").read_text()) if args.table else []
    for side in [] if args.table else args.sides:
        d = 16 * side * side
        parts, _ = diagnostics_memory(args.samples, (16, side, side))
        row = {"d": d, "grid": f"16 × {side} × {side}", "estimate_mib": round(sum(parts.values()) / 2**20, 1),
               "training_step_s": round(training_step_seconds(side), 4)}  # fmt: skip
        for model in ("exact", "dit") if side in args.dit_sides else ("exact",):
            with tempfile.TemporaryDirectory() as tmp:
                row[model] = validate(side, model, args.samples, Path(tmp))
            print(f"d = {d}: {model} {row[model]}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:  # the same validation with 2 samples: what the rest holds
            row["diagnostics_mib"] = round(row["exact"]["peak_rss_mib"] - validate(side, "exact", 2, Path(tmp))["peak_rss_mib"], 1)
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        (args.out / "video_cost.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# The truth at video scale: cost of a sampling validation ({args.samples} samples, UniPC 25 evaluations)",
             "", (f"`python -m stdiff.bench video_cost` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, CPU only). "
                  "Seconds from each run's metrics.json; peak: the validate process's VmHWM; estimate: the preflight's "
                  "(`stdiff.estimates.diagnostics_memory`) for the diagnostics alone, beside what they really add: the "
                  "exact model's peak less that of the same validation with 2 samples."), "",
             ("| d | grid | model | validation s | sampling s | metrics s | figures s | diagnostics' share | peak MiB | "
              "diagnostics MiB | estimate MiB | training step s | eigen KL excess ± noise | exact model floor |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        for model in [m for m in ("exact", "dit") if m in r]:
            v = r[model]
            share = (v["metrics_s"] + v["figures_s"]) / max(v["validation_s"], 1e-9)
            excess = f"{v['eigen_kl_excess']:.4g} ± {v['eigen_kl_noise']:.2g}" if v["eigen_kl_excess"] is not None else ""
            floor = f"{v['exact_model_eigen_kl']:.3g}" if v["exact_model_eigen_kl"] is not None else ""
            lines.append(f"| {r['d']} | {r['grid']} | {model} | {v['validation_s']:.2f} | {v['sampling_s']:.2f} | "
                         f"{v['metrics_s']:.2f} | {v['figures_s']:.2f} | {100 * share:.0f} % | {v['peak_rss_mib']:.0f} | "
                         f"{r['diagnostics_mib'] if model == 'exact' else ''} | {r['estimate_mib']:.0f} | "
                         f"{r['training_step_s'] if model == 'dit' else ''} | {excess} | {floor} |")  # fmt: skip
    (args.out / "video_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
