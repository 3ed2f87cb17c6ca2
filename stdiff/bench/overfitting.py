"""What the small-data recipe of the real-data example does: the example's DiT trained
with and without it, same steps, same data.

    python -m stdiff.bench overfitting OUT [--recipe-run OUT/lightning_logs/version_0]

``OUT`` is a folder prepared by ``python -m stdiff.examples.nyc_temperature prepare OUT`` (or
``all``, whose run can be passed as ``--recipe-run`` instead of training it again). Variants:

- ``recipe``: ``configs/real/nyc_temperature.yaml`` as shipped: every window offset
  (``train_stride: 1``, ~6,200 windows), dropout 0.1, weight decay 0.01, early stopping on val/loss;
- ``plain``: non-overlapping windows (``train_stride: 24``, ~270 windows), no dropout, no weight
  decay, no early stopping, the full 4000 steps.

For each: the val/loss curve (best, final, step of the best), whether stdiff warned of a rise,
and the example's forecast / imputation CRPS (°C) with the best and the last checkpoint. Writes
``stdiff/bench/results/nyc_temperature/overfitting.md`` and ``.json``. About 5 min per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from stdiff.examples import nyc_temperature as example

RESULTS = Path(__file__).resolve().parent / "results" / "nyc_temperature"
PLAIN = {
    "trainer": {"callbacks": [{"class_path": "stdiff.callbacks.EMA", "init_args": {"decay": 0.995}}]},
    "model": {"denoiser": {"init_args": {"backbone": {"init_args": {"dropout": 0.0}}}},
              "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001, "weight_decay": 0.0}}},
    "data": {"init_args": {"train_stride": 24}},
}  # fmt: skip


def curve(run: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [(e.step + 1, e.value) for e in EventAccumulator(str(run)).Reload().Scalars("val/loss")]


def train(out: Path, tag: str, overlay: dict) -> tuple[Path, str]:
    root = out / "ablation" / tag
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(overlay, f)
    args = [a.replace(f"--trainer.default_root_dir={out}", f"--trainer.default_root_dir={root}")
            for a in example.fit_command(out)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "stdiff", "fit", *args, "--config", f.name,
                           "--trainer.enable_progress_bar=false"], capture_output=True, text=True, check=True)  # fmt: skip
    (run,) = (root / "lightning_logs").glob("version_*")
    return run, done.stderr + done.stdout


def summarise(out: Path, run: Path, log: str | None) -> dict:
    values = curve(run)
    best_step, best = min(values, key=lambda v: v[1])
    row = {"run": str(run), "val_loss_best": best, "best_step": best_step, "val_loss_final": values[-1][1],
           "final_step": values[-1][0], "curve": values}  # fmt: skip
    if log is not None:
        row["warned_rise"] = "val/loss has risen" in log
    for checkpoint in ("best", "last"):
        results = example.evaluate(out, run, k=100, checkpoint=checkpoint)
        row[checkpoint] = {task: results["tasks"][task]["DiT"]["crps"] for task in results["tasks"]}
        row[checkpoint]["reference"] = {task: results["tasks"][task]["fitted Gaussian"]["crps"] for task in results["tasks"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--recipe-run", type=Path, default=None)
    args = parser.parse_args()
    out = args.out.resolve()
    rows = {}
    if args.recipe_run is not None:
        rows["recipe"] = summarise(out, args.recipe_run.resolve(), None)
    else:
        run, log = train(out, "recipe", {})
        rows["recipe"] = summarise(out, run, log)
    run, log = train(out, "plain", PLAIN)
    rows["plain"] = summarise(out, run, log)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overfitting.json").write_text(json.dumps(rows, indent=1))
    lines = ["| variant | val/loss best (step) | final (step) | warned | forecast CRPS °C best / last ckpt | impute best / last | fitted Gaussian (forecast, impute) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for tag, r in rows.items():
        ref = r["best"]["reference"]
        lines.append(f"| {tag} | {r['val_loss_best']:.4f} ({r['best_step']}) | {r['val_loss_final']:.4f} ({r['final_step']}) | "
                     f"{r.get('warned_rise', 'n/a')} | {r['best']['forecast']:.4f} / {r['last']['forecast']:.4f} | "
                     f"{r['best']['impute']:.4f} / {r['last']['impute']:.4f} | {ref['forecast']:.4f}, {ref['impute']:.4f} |")  # fmt: skip
    (RESULTS / "overfitting.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
