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

from stdiff.bench.speed import stats, synchronize, timed
from stdiff.data import BatchStream
from stdiff.diffusion import denoising_loss, training_times
from stdiff.seeding import NOISE, derive_seed

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
    return cli


def device_of(cli) -> torch.device:
    return cli.trainer.strategy.root_device


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
    stream = BatchStream(data.sample, data.batch_size, data.seed)
    if data.generate_on == "device":
        return lambda step: data.sample(
            data.batch_size, torch.Generator(device=device).manual_seed(stream.seed_of(step)), device
        )
    return lambda step: stream.batch(step).to(device, non_blocking=True)


class HandWritten:
    """A minimal PyTorch training loop on the configured model (a copy), data stream, optimizer,
    precision, loss and EMA: what someone would write by hand; ``step(k)`` trains on batch k."""

    def __init__(self, cli) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.device = device_of(cli)
        self.model = copy.deepcopy(cli.model).to(self.device).train()
        decay = ema_decay(cli)
        self.ema = None
        if decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        optimizer = self.model.configure_optimizers()
        self.optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        self.precision = str(cli.trainer.precision)
        self.draw = drawer(cli.datamodule, self.device)

    def step(self, k: int, time_data: bool = False) -> float:
        """One training step on batch ``k``; returns the seconds spent drawing the batch if
        ``time_data`` (synchronising the device around the draw), else 0."""
        model, device = self.model, self.device
        data_seconds = 0.0
        if time_data:
            synchronize(device)
            start = time.perf_counter()
        x0 = self.draw(k)
        if time_data:
            synchronize(device)
            data_seconds = time.perf_counter() - start
        generator = torch.Generator(device=device).manual_seed(derive_seed(0, NOISE, 0, k, 0))
        t = training_times(model.schedule, len(x0), model.time_sampling, generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        with autocast(self.precision, device):
            loss = denoising_loss(model.denoiser, x0, t, noise, model.weighting, model.min_snr_gamma).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(model)
        return data_seconds


class _Paired(L.Callback):
    """After each stdiff step, one hand-written step, timed on its own: the stdiff step is the
    cycle from one ``on_train_batch_start`` to the next minus the hand-written step in it."""

    def __init__(self, hand: HandWritten, time_data: bool) -> None:
        self.hand, self.time_data = hand, time_data
        self.marks: list[float] = []
        self.hand_seconds: list[float] = []
        self.data_seconds: list[float] = []

    def _mark(self, pl_module) -> None:
        synchronize(pl_module.device)
        self.marks.append(time.perf_counter())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        synchronize(pl_module.device)
        start = time.perf_counter()
        self.data_seconds.append(self.hand.step(batch_idx, self.time_data))
        synchronize(pl_module.device)
        self.hand_seconds.append(time.perf_counter() - start)

    def on_train_end(self, trainer, pl_module):
        self._mark(pl_module)

    def seconds(self, skip: int) -> tuple[float, float, float]:
        """(stdiff, hand-written, data drawing) seconds over the steps after the first ``skip``."""
        cycles = [b - a for a, b in zip(self.marks, self.marks[1:])]
        ours = sum(c - h for c, h in zip(cycles[skip:], self.hand_seconds[skip:]))
        return ours, sum(self.hand_seconds[skip:]), sum(self.data_seconds[skip:])


def paired(cli, configs: list[str], overrides: list[str], steps: int, time_data: bool) -> tuple[float, float, float]:
    """stdiff (a fresh ``stdiff fit`` from the configuration; logs in a temporary directory,
    deleted afterwards) and the hand-written loop interleaved step by step, so that both meet the
    same machine at the same moment: seconds of each over ``steps`` steps (after 5 warm-up
    steps), and of the hand-written loop's data drawing."""
    warm_up = 5
    root = tempfile.mkdtemp(prefix="stdiff-bench-")
    try:
        run = build(configs, [*overrides, f"--trainer.max_steps={steps + warm_up}", f"--trainer.default_root_dir={root}",
                              *TRAINING_ONLY])  # fmt: skip
        probe = _Paired(HandWritten(cli), time_data)
        run.trainer.callbacks.append(probe)
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar runs (and costs) as usual, off the tables
            run.trainer.fit(run.model, datamodule=run.datamodule)
        return probe.seconds(warm_up)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def overhead(configs: list[str], overrides: list[str], steps: int, repeats: int) -> dict:
    """stdiff's steps/s, the hand-written loop's, their ratio and the time stdiff adds per step,
    both measured in the same run, step by step in turn (``paired``); and the share of the
    hand-written step spent drawing the batch."""
    cli = build(configs, overrides)
    cli.datamodule.setup("fit")
    device = device_of(cli)
    on_cpu = device.type == "cpu"  # timing the data costs nothing there: no separate pass needed
    runs: dict[str, list[float]] = {k: [] for k in COLUMNS[:5]}
    for r in range(repeats):
        seconds, hand_seconds, data_seconds = paired(cli, configs, overrides, steps, time_data=on_cpu)
        fraction = data_seconds / hand_seconds
        if not on_cpu:  # a pass of its own, synchronised around each draw: an upper bound
            hand = HandWritten(cli)
            synchronize(device)
            start = time.perf_counter()
            data_seconds = sum(hand.step(k, time_data=True) for k in range(steps))
            synchronize(device)
            fraction = data_seconds / (time.perf_counter() - start)
        ours, theirs = steps / seconds, steps / hand_seconds
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
    return {"device": str(device), "batch_size": data.batch_size, "sample_shape": list(data.sample_shape),
            "samples_per_s": stats(rates)}  # fmt: skip
