"""Framework overhead (stdiff's ``Trainer`` against a hand-written loop) and the data path."""

from __future__ import annotations

import contextlib
import copy
import shutil
import sys
import tempfile
import time

import lightning as L
import torch

from stdiff.bench import stats, synchronize, timed
from stdiff.data import GPStream, derive_seed
from stdiff.diffusion import denoising_loss, training_times

COLUMNS = ["stdiff_steps_per_s", "hand_written_steps_per_s", "ratio", "overhead_ms_per_step", "data_fraction",
           "device", "precision"]  # fmt: skip
# Only training is timed: no validation, no checkpoint files, no model summary print.
TRAINING_ONLY = [
    "--trainer.limit_val_batches=0",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_model_summary=false",
]


def build(configs: list[str], overrides: list[str]):
    """The configured model, data and trainer, as ``stdiff fit`` would build them (nothing run)."""
    from stdiff.cli import StdiffCLI

    args = [a for c in configs for a in ("--config", c)] + list(overrides)
    cli = StdiffCLI(args=args, run=False)
    if not hasattr(cli.datamodule, "gp"):
        raise SystemExit(f"stdiff.bench needs a GP data module (data.gp); {type(cli.datamodule).__name__} has none")
    return cli


def device_of(cli) -> torch.device:
    return cli.trainer.strategy.root_device


class _Clock(L.Callback):
    """Seconds from the first training batch to the end of training (set-up excluded)."""

    def __init__(self) -> None:
        self.start = self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.start


def through_stdiff(configs: list[str], overrides: list[str], steps: int) -> float:
    """Seconds for ``steps`` steps of ``stdiff fit`` (a fresh trainer from the configuration;
    logs in a temporary directory, deleted afterwards)."""
    root = tempfile.mkdtemp(prefix="stdiff-bench-")
    try:
        cli = build(configs, [*overrides, f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root}",
                              *TRAINING_ONLY])  # fmt: skip
        clock = _Clock()
        cli.trainer.callbacks.append(clock)
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar runs (and costs) as usual, off the tables
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return clock.seconds
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ema_decay(cli) -> float | None:
    """The decay of the configured EMA callback (None without one)."""
    for cb in cli.config.get("trainer.callbacks") or []:
        if str(cb.get("class_path", "")).endswith(("EMA", "EMAWeightAveraging")):
            return float((cb.get("init_args") or {}).get("decay", 0.999))
    return None


def autocast(precision: str, device: torch.device):
    """The hand-written loop's equivalent of Lightning's precision setting."""
    if precision in ("32-true", "32"):
        return contextlib.nullcontext()
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise SystemExit(f"stdiff.bench: the hand-written loop does 32-true and bf16-mixed, not precision={precision}")


def drawer(data, device: torch.device):
    """``draw(step) -> x0`` on ``device``, the way the data module serves it (drawn on the CPU and
    moved, or drawn on the device from the same seed)."""
    stream = GPStream(data.gp, data.batch_size, data.seed)
    if getattr(data, "generate_on", "cpu") == "device":
        return lambda step: data.gp.sample(
            data.batch_size, torch.Generator(device=device).manual_seed(stream.seed_of(step)), device=device
        )
    return lambda step: stream.batch(step).to(device, non_blocking=True)


def hand_written(cli, steps: int, time_data: bool) -> tuple[float, float]:
    """Seconds for ``steps`` steps of a minimal PyTorch loop on the configured model, data stream,
    optimizer, precision, loss and EMA, and (``time_data``) the part spent drawing the batch
    (synchronising the device around it, so only in a pass of its own on GPUs)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    device, data = device_of(cli), cli.datamodule
    model = copy.deepcopy(cli.model).to(device).train()
    decay = ema_decay(cli)
    ema = None
    if decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    precision = str(cli.trainer.precision)
    draw = drawer(data, device)
    data_seconds = 0.0
    synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        if time_data:
            synchronize(device)
            t0 = time.perf_counter()
            x0 = draw(step)
            synchronize(device)
            data_seconds += time.perf_counter() - t0
        else:
            x0 = draw(step)
        generator = torch.Generator(device=device).manual_seed(derive_seed(0, 0, step, 0))
        t = training_times(model.schedule, len(x0), model.time_sampling, generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        with autocast(precision, device):
            loss = denoising_loss(model, model.schedule, x0, t, noise, model.weighting, model.min_snr_gamma).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
    synchronize(device)
    return time.perf_counter() - start, data_seconds


def overhead(configs: list[str], overrides: list[str], steps: int, repeats: int) -> dict:
    """stdiff's steps/s, the hand-written loop's, their ratio and the time stdiff adds per step
    (per repeat, measured back to back, the order alternating), and the data share of the
    hand-written step."""
    cli = build(configs, overrides)
    cli.datamodule.setup("fit")
    device = device_of(cli)
    on_cpu = device.type == "cpu"  # timing the data costs nothing there: no separate pass needed
    hand_written(cli, min(10, steps), time_data=False)  # warm-up (allocator, kernels, compilation)
    runs: dict[str, list[float]] = {k: [] for k in COLUMNS[:5]}
    for r in range(repeats):
        if r % 2 == 0:
            ours = steps / through_stdiff(configs, overrides, steps)
            seconds, data_seconds = hand_written(cli, steps, time_data=on_cpu)
        else:
            seconds, data_seconds = hand_written(cli, steps, time_data=on_cpu)
            ours = steps / through_stdiff(configs, overrides, steps)
        fraction = data_seconds / seconds
        if not on_cpu:  # a pass of its own, synchronised around each draw: an upper bound
            synced_seconds, data_seconds = hand_written(cli, steps, time_data=True)
            fraction = data_seconds / synced_seconds
        theirs = steps / seconds
        runs["stdiff_steps_per_s"].append(ours)
        runs["hand_written_steps_per_s"].append(theirs)
        runs["ratio"].append(ours / theirs)
        runs["overhead_ms_per_step"].append(1000 * (1 / ours - 1 / theirs))
        runs["data_fraction"].append(fraction)
        print(f"training {r + 1}/{repeats}: stdiff {ours:.2f} steps/s, hand-written {theirs:.2f} steps/s", flush=True)
    return {**{k: stats(v) for k, v in runs.items()}, "device": str(device), "precision": str(cli.trainer.precision),
            "steps": steps}  # fmt: skip


def generation(configs: list[str], overrides: list[str], repeats: int, batches: int = 20) -> dict:
    """Samples/s of the GP generation alone, at the configured batch size, where the data module
    draws it (the CPU, or the training device with ``generate_on: device``)."""
    cli = build(configs, overrides)
    data = cli.datamodule
    device = device_of(cli) if getattr(data, "generate_on", "cpu") == "device" else torch.device("cpu")
    draw = drawer(data, device)
    draw(0)  # factors moved to the device, kernels loaded
    rates = [
        batches * data.batch_size / timed(lambda: [draw(k) for k in range(batches)], device) for _ in range(repeats)
    ]
    return {"device": str(device), "batch_size": data.batch_size, "sample_shape": list(data.gp.sample_shape),
            "samples_per_s": stats(rates)}  # fmt: skip
