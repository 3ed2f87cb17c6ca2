"""The quickstart, measured: wall time, final validation loss next to the exact model's loss on
the same (x0, t, ε) triples, the truth-checking diagnostics of the final validation, and the same
sample metrics for the exact model under the same sampler settings (what sampling alone costs).

    python -m stdiff.bench quickstart [extra CLI overrides, e.g. --trainer.max_steps=300]

Runs ``stdiff fit --config configs/quickstart.yaml`` in-process (logs under ./lightning_logs).
"""

import json
import pathlib
import sys
import time

import torch

from stdiff.cli import StdiffCLI
from stdiff.diffusion import ExactDenoiser
from stdiff.metrics import sample_distances

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
KEYS = ["val/loss", "val/loss_exact", "val/excess_loss", "val/score_rel_error", "val/attention/pearson_best",
        "val/attention/random_init/pearson_best", "val/samples/kl", "val/samples/kl_floor", "val/samples/kl_excess",
        "val/samples/w2", "val/samples/w2_floor", "val/samples/w2_excess", "val/samples/gamma_rel_frob_excess",
        "val/samples/sigma_rel_frob_excess", "val/samples/ks_excess", "val/samples/whitened_norm"]  # fmt: skip


def main() -> None:
    extra, sys.argv[1:] = sys.argv[1:], []  # handed to the CLI as args, not read twice
    start = time.perf_counter()
    cli = StdiffCLI(args=["fit", "--config", str(CONFIG), *extra])
    wall = time.perf_counter() - start
    metrics = {k: round(v.item(), 5) for k, v in cli.trainer.callback_metrics.items() if k in KEYS}
    diagnostics = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "GPDiagnostics")
    model, gp = cli.model, cli.datamodule.truth
    x = model.sampler.sample(ExactDenoiser.from_gp(gp, model.schedule), (diagnostics.num_samples, *gp.sample_shape),
                             torch.Generator().manual_seed(0))  # fmt: skip
    exact = sample_distances(gp, x.double(), seed=diagnostics.seed)
    report = {
        "wall_time_s": round(wall, 1),
        "steps": cli.trainer.global_step,
        "trained_model": metrics,
        "exact_model_same_sampler": {k: round(v, 5) for k, v in exact.items() if f"val/samples/{k}" in KEYS},
        "sampler": repr(model.sampler),
        "run_dir": cli.trainer.log_dir,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
