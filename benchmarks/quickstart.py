"""Wall time and final validation loss of the quickstart, next to the loss the exact ε-predictor
gets on the same validation (x0, t, ε) triples (the floor no model can beat).

    python benchmarks/quickstart.py [extra CLI overrides, e.g. --trainer.max_steps=300]

Runs ``stdiff fit --config configs/quickstart.yaml`` in-process (logs under ./lightning_logs).
"""

import json
import pathlib
import sys
import time

import torch

from stdiff.cli import StdiffCLI
from stdiff.diffusion import ExactNoiseModel, denoising_loss

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def main() -> None:
    start = time.perf_counter()
    cli = StdiffCLI(args=["fit", "--config", str(CONFIG), *sys.argv[1:]])
    wall = time.perf_counter() - start
    model, dm = cli.model, cli.datamodule
    oracle = ExactNoiseModel(dm.gp, model.schedule)
    total, count = 0.0, 0
    with torch.no_grad():
        for i, x0 in enumerate(dm.val_dataloader()):
            t, noise = model.validation_inputs(x0, i)
            total += denoising_loss(oracle, model.schedule, x0.double(), t.double(), noise.double()).sum().item()
            count += len(x0)
    val = cli.trainer.callback_metrics["val/loss"].item()
    floor = total / count
    report = {
        "wall_time_s": round(wall, 1),
        "steps": cli.trainer.global_step,
        "val_loss": round(val, 5),
        "exact_model_val_loss": round(floor, 5),
        "excess_over_exact": round(val - floor, 5),
        "run_dir": cli.trainer.log_dir,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
