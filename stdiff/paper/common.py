"""What every experiment needs: train one configuration through the real CLI, read its
diagnostics, rebuild the trained model, write the CSV and summary."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stdiff.runs import claim_version
from stdiff.seeding import SWEEP, generator

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"  # shipped inside the package
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def config(name: str) -> str:
    return str(CONFIGS / f"{name}.yaml")


def experiment_configs(experiment: str, scale: str) -> list[str]:
    """The experiment's base configuration (full scale) and, at CPU scale, its overlay ``cpu/<experiment>.yaml``."""
    base = CONFIGS / f"{experiment}.yaml"
    if not base.is_file():
        return []
    return [str(base)] + ([config(f"cpu/{experiment}")] if scale == "cpu" else [])


def output_dir(experiment: str, root: str | Path) -> Path:
    """A fresh ``<root>/paper/<experiment>/version_N`` for this invocation."""
    base = Path(root) / "paper" / experiment
    return base / f"version_{claim_version(base)}"


def cli_args(configs: Sequence[str], overrides: Sequence[str]) -> list[str]:
    return [a for c in configs for a in ("--config", c)] + list(overrides)


def train(out: Path, tag: str, configs: Sequence[str], overrides: Sequence[str]) -> tuple[Path, float]:
    """``stdiff fit`` with these configs and overrides, its run directory under ``out/runs/<tag>``;
    returns the run directory and the wall time in seconds."""
    from stdiff.cli import main

    root = out / "runs" / tag
    start = time.perf_counter()
    main(["fit", *cli_args(configs, overrides), f"--trainer.default_root_dir={root}", *QUIET])
    (run,) = (root / "lightning_logs").glob("version_*")
    return run, time.perf_counter() - start


def metrics(run: Path) -> dict[str, float]:
    """The diagnostics of the run's last validation (``metrics.json``)."""
    return json.loads((run / "metrics.json").read_text())["metrics"]


def load(run: Path, configs: Sequence[str], overrides: Sequence[str], checkpoint: str | None = "last"):
    """The trained model (EMA weights, eval mode) and its data module, rebuilt from the same
    configuration as the run, with the weights of ``checkpoints/<checkpoint>.ckpt`` (a name, or a
    path to a ``.ckpt``); ``checkpoint=None``: the model as initialised, before any step."""
    from stdiff.cli import StdiffCLI

    cli = StdiffCLI(args=cli_args(configs, overrides), run=False)
    model = cli.model
    if model.denoiser.needs_truth:  # the data's own (a checkpoint of a ResidualDenoiser brings its prior)
        model.denoiser.attach_truth(lambda: cli.datamodule.truth)
    if checkpoint is not None:
        path = Path(checkpoint) if str(checkpoint).endswith(".ckpt") else run / "checkpoints" / f"{checkpoint}.ckpt"
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        model.on_load_checkpoint(state)
    return model.eval(), cli.datamodule


def load_run(run: Path, overrides: Sequence[str] = (), checkpoint: str | None = "last"):
    """``load`` of any ``stdiff fit`` run, rebuilt from its own resolved ``config.yaml``."""
    import tempfile

    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("ckpt_path", "weights_only"):  # fit's own options, not the configuration
        config.pop(key, None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    try:
        return load(run, [f.name], overrides, checkpoint)
    finally:
        os.unlink(f.name)


@torch.no_grad()
def generate(model, n: int, seed: int = 0, batch: int = 500) -> torch.Tensor:
    """``n`` samples from the model with its configured sampler, batch k seeded by ``(seed, SWEEP, k)``."""
    out = []
    for k, start in enumerate(range(0, n, batch)):
        shape = (min(batch, n - start), *model.sample_shape)
        out.append(model.sampler.sample(model.denoiser, shape, generator(seed, SWEEP, k), torch.device("cpu")))
    return torch.cat(out)


def run_overrides(scale: dict) -> list[str]:
    """The scale's overrides, plus its ``steps`` (if any) as the run length, the one validation at
    its end and the checkpoint interval."""
    steps = scale.get("steps")
    at_end = [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
              f"--checkpoint.every_n_train_steps={steps}"] if steps else []  # fmt: skip
    return [*scale["overrides"], *at_end]


@torch.no_grad()
def attention_maps(model, x0: torch.Tensor, log_snr: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Frame-to-frame attention ``(T, T)`` of every attention unit (heads averaged) on ``x0``
    noised to ``log_snr``."""
    from stdiff.metrics import attention_report

    noise = torch.randn(x0.shape, generator=generator(seed, SWEEP, 0))
    _, maps = attention_report(model.denoiser.backbone, model.schedule, x0, noise, torch.eye(x0.shape[1]), [log_snr])
    return {name: w.mean(0) for name, w in maps.get(log_snr, {}).items()}


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of log y against log x, and its standard error."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    a = np.vstack([lx, np.ones_like(lx)]).T
    coef, res, *_ = np.linalg.lstsq(a, ly, rcond=None)
    dof = max(len(lx) - 2, 1)
    sigma2 = float(res[0]) / dof if len(res) else 0.0
    se = math.sqrt(sigma2 / ((lx - lx.mean()) ** 2).sum()) if len(lx) > 2 else float("nan")
    return float(coef[0]), se


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (4.0, 3.2)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    return fig, axes


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
