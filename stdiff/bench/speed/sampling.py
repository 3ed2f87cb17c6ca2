"""Generated samples per second of every sampler, network against the exact (oracle) model."""

from __future__ import annotations

import copy
import functools

import torch

from stdiff.bench.speed import stats, timed
from stdiff.bench.speed.training import autocast, build, device_of
from stdiff.diffusion import ExactDenoiser
from stdiff.sampling import SAMPLERS

COLUMNS = ["sampler", "steps", "model", "evaluations", "samples_per_s"]


class _Counted:
    """A noise model that counts its evaluations of the whole batch (to report evaluations per sample;
    UniPC's probe of a few rows per draw is not one)."""

    def __init__(self, model, schedule, batch: int) -> None:
        self.model, self.schedule, self.batch, self.calls = model, schedule, batch, 0

    def __call__(self, x_t, t):
        self.calls += len(x_t) == self.batch
        return self.model(x_t, t)


def throughput(configs: list[str], overrides: list[str], steps_list: list[int], batch: int, repeats: int) -> list[dict]:
    """One row per (sampler, steps, model): samples/s drawing ``batch`` samples at once on the
    training device (the network in the configured precision, untrained: speed does not depend
    on the weights)."""
    cli = build(configs, overrides)
    device = device_of(cli)
    network = copy.deepcopy(cli.model).to(device).eval()
    precision = str(cli.trainer.precision)
    if cli.datamodule.truth is None:
        raise SystemExit(
            f"stdiff.bench sampling compares with the exact model: {type(cli.datamodule).__name__} has no truth"
        )
    oracle = ExactDenoiser.from_gp(cli.datamodule.truth, network.schedule)

    def in_precision(x_t, t):
        with autocast(precision, device):
            return network(x_t, t).float()

    models = {"network": in_precision, "oracle": oracle}
    shape = (batch, *network.sample_shape)
    SAMPLERS["Heun"](steps=2).sample(oracle, shape, device=device)  # warm-up
    rows = []
    for name, cls in SAMPLERS.items():
        for steps in steps_list:
            sampler = cls(steps=steps)
            for which, model in models.items():
                counted = _Counted(model, network.schedule, batch)
                seconds = []
                for r in range(repeats):
                    generator = torch.Generator(device=device).manual_seed(r)
                    draw = functools.partial(sampler.sample, counted, shape, generator)
                    seconds.append(timed(draw, device))
                rows.append({"sampler": name, "steps": steps, "model": which, "evaluations": counted.calls // repeats,
                             "samples_per_s": stats([batch / s for s in seconds])})  # fmt: skip
                print(f"sampling {name} {steps} steps {which}: {batch / min(seconds):.4g} samples/s", flush=True)
    return rows
