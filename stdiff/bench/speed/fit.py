"""A real fit's throughput, as the ``Throughput`` callback reports it at the end of training,
against the plain loop's (``gpu.matrix``) on the same model, precision and compile setting."""

from __future__ import annotations

import tempfile

import torch

from stdiff.bench.speed.gpu import matrix
from stdiff.bench.speed.training import TRAINING_ONLY, build, device_of
from stdiff.callbacks.throughput import Throughput

COLUMNS = ["precision", "compile", "steps", "fit_tokens_per_s", "plain_tokens_per_s", "ratio", "fit_mfu", "plain_mfu"]


def real_fit(configs: list[str], overrides: list[str], steps: int, repeats: int) -> dict:
    """``stdiff``'s own Trainer (callbacks, EMA, logging, progress as configured; validation and
    checkpoint files off) for ``steps`` steps; its Throughput callback averages the last
    ``window_size`` (at most ``steps // 2``, so that compilation stays out of it). Then the plain
    loop for the same setting."""
    with tempfile.TemporaryDirectory() as root:
        cli = build(configs, [*overrides, f"--trainer.max_steps={steps}", *TRAINING_ONLY,
                              "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"])  # fmt: skip
        window = max(2, min(50, steps // 2))
        for cb in [cb for cb in cli.trainer.callbacks if isinstance(cb, Throughput)]:
            cli.trainer.callbacks.remove(cb)
        throughput = Throughput(window_size=window)
        cli.trainer.callbacks.append(throughput)
        precision = cli.trainer.precision
        compiled = bool(cli.config.model.compile)
        cli.trainer.fit(cli.model, cli.datamodule)
    fit = throughput.final
    plain = matrix(configs, overrides, max(window, 20), repeats, settings=[(precision, compiled)],
                   device=device_of(cli))[0]  # fmt: skip
    fit_tokens = fit.get("train/device/items_per_sec", float("nan"))
    plain_tokens = plain["tokens_per_s"]["median"]
    row = {"precision": precision, "compile": compiled, "steps": steps, "fit_tokens_per_s": fit_tokens,
           "plain_tokens_per_s": plain_tokens, "ratio": fit_tokens / plain_tokens,
           "fit_mfu": fit.get("train/device/mfu", "unknown device"),
           "plain_mfu": plain["mfu"]["median"] if isinstance(plain["mfu"], dict) else plain["mfu"]}  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row
