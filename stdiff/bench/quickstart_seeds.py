"""The quickstart's expected result: ``stdiff fit --config configs/quickstart.yaml`` with several
seeds (model initialisation, data stream, training noise and diagnostics all follow the seed),
each run's final-validation metrics, their mean, standard deviation and range, and the end-of-fit
verdict of each.

    python -m stdiff.bench quickstart_seeds [--seeds 5] [--root /tmp/stdiff_seeds] [--out stdiff/bench/results]
        [any stdiff fit override, e.g. --trainer.max_steps=300]

``stdiff/bench/results/residual_quickstart/`` holds the same with ``--model.denoiser=ResidualDenoiser``
(the exact GP as its prior).

About 4–5 min a seed on 2 CPU cores, one after the other. Each run's output goes to
``<root>/seed<N>.log``; a seed whose run already finished under ``root`` is read, not rerun, so an
interrupted sweep continues where it stopped. Writes ``quickstart_seeds.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from stdiff.callbacks.verdicts import verdict

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
# (metrics.json key, label, format)
KEYS = [
    ("val/score_rel_error", "score error", ".4f"),
    ("val/excess_loss", "excess loss", ".2e"),
    ("val/loss", "val/loss", ".4f"),
    ("val/loss_exact", "exact model's loss", ".4f"),
    ("val/samples/kl_excess", "sample KL excess", ".3f"),
    ("val/samples/kl_floor", "KL floor (exact samples)", ".3f"),
    ("val/samples/whitened_norm_excess", "whitened-norm excess", ".4f"),
    ("val/samples/gamma_kl_excess", "Γ KL excess", ".3f"),
    ("val/samples/w2_excess", "W2 excess", ".3f"),
    ("val/samples/early_stopping_kl", "early-stopping KL after the endpoint (in every KL)", ".2g"),
    ("val/attention/pearson_best", "attention Pearson with Γ (best layer)", ".3f"),
    ("val/correction", "a ResidualDenoiser's correction (RMS of its ε)", ".4f"),
]


def run_seed(seed: int, root: Path, overrides: list[str]) -> dict:
    out = root / f"seed{seed}"
    done = list(out.glob("lightning_logs/version_*/metrics.json"))
    start = time.perf_counter()
    if not done:
        cmd = [sys.executable, "-m", "stdiff", "fit", "--config", str(QUICKSTART), f"--seed_everything={seed}",
               f"--data.init_args.seed={seed}", f"--diagnostics.seed={seed}", f"--trainer.default_root_dir={out}",
               "--trainer.enable_progress_bar=false", *overrides]  # fmt: skip
        with open(root / f"seed{seed}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        done = list(out.glob("lightning_logs/version_*/metrics.json"))
        wall = time.perf_counter() - start
    else:
        wall = json.loads((out / "wall.json").read_text())["wall_s"] if (out / "wall.json").exists() else None
    (out / "wall.json").write_text(json.dumps({"wall_s": wall}))
    metrics_file = max(done, key=lambda p: p.stat().st_mtime)
    written = json.loads(metrics_file.read_text())
    config = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())
    return {"seed": seed, "wall_s": wall, "global_step": written["global_step"], "metrics": written["metrics"],
            "num_samples": config["diagnostics"]["num_samples"], "run": str(metrics_file.parent)}  # fmt: skip


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "stdiff_seeds")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args, overrides = p.parse_known_args()
    args.root.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(args.seeds):
        print(f"seed {seed + 1} of {args.seeds}: stdiff fit --config configs/quickstart.yaml --seed_everything={seed} "
              f"(log: {args.root / f'seed{seed}.log'})", flush=True)  # fmt: skip
        runs.append(run_seed(seed, args.root, overrides))
        m = runs[-1]["metrics"]
        print(f"  score error {m['val/score_rel_error']:.4f}, sample KL excess {m['val/samples/kl_excess']:.3f}, "
              f"wall {runs[-1]['wall_s'] or float('nan'):.0f} s", flush=True)  # fmt: skip
    for r in runs:  # d = 256: the quickstart's dimension
        r["verdict"] = verdict(r["metrics"]["val/samples/kl_excess"], 32 * 8, r["num_samples"])
    keys = [k for k in KEYS if all(k[0] in r["metrics"] for r in runs)]  # those of this model
    summary = {key: spread([r["metrics"][key] for r in runs]) for key, _, _ in keys}
    walls = [r["wall_s"] for r in runs if r["wall_s"] is not None]
    if walls:
        summary["wall_s"] = spread(walls)
    command = " ".join(["python -m stdiff.bench quickstart_seeds", f"--seeds {args.seeds}", *overrides])
    result = {"command": command, "seeds": args.seeds, "summary": summary, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quickstart_seeds.json").write_text(json.dumps(result, indent=1))
    lines = [(f"The quickstart's final validation over {args.seeds} seeds (`{command}`; seed = model init, data "
              f"stream, training noise, diagnostics; {runs[0]['global_step']} steps, {runs[0]['num_samples']} samples, "
              "d = 256).\n"),
             "| metric | mean ± sd | range | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |",
             "|---" * (3 + len(runs)) + "|"]  # fmt: skip
    for key, label, fmt in keys:
        s = summary[key]
        cells = " | ".join(f"{r['metrics'][key]:{fmt}}" for r in runs)
        lines.append(f"| {label} | {s['mean']:{fmt}} ± {s['sd']:{fmt}} | {s['min']:{fmt}} – {s['max']:{fmt}} | {cells} |")
    if walls:
        lines.append(f"| wall time, s | {summary['wall_s']['mean']:.0f} ± {summary['wall_s']['sd']:.0f} | "
                     f"{min(walls):.0f} – {max(walls):.0f} | " + " | ".join(f"{r['wall_s']:.0f}" for r in runs) + " |")  # fmt: skip
    lines += ["", "Verdicts (the end-of-fit summary's):", ""] + [f"- seed {r['seed']}: {r['verdict']}" for r in runs]
    (args.out / "quickstart_seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
