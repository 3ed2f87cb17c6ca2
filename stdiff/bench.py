"""``python -m stdiff.bench --config <yaml>``: what stdiff costs over hand-written PyTorch.

Trains the configured model for ``--steps`` steps twice per repeat, side by side in one process:
once through stdiff (Lightning's ``Trainer`` with stdiff's callbacks, logging at the config's
interval, no validation, no checkpoint writes, no progress bar) and once with a minimal
hand-written loop on the same model, data stream, optimizer and loss. Also times the GP data
generation alone. Prints a table and writes JSON: the median of the repeats and their spread.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings

import lightning as L
import torch

from stdiff.data import GPStream, derive_seed
from stdiff.diffusion import denoising_loss, training_times


def build(configs: list[str], extra: list[str]):
    from stdiff.cli import StdiffCLI

    args = [a for c in configs for a in ("--config", c)] + extra
    return StdiffCLI(args=args, run=False)


def hand_written(model, data, steps: int, ema_decay: float | None = None) -> tuple[float, float]:
    """Seconds for ``steps`` steps of a plain loop (with the same EMA of the weights, if the
    configuration keeps one), and the part spent drawing data."""
    model = copy.deepcopy(model).train()
    ema = None
    if ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    stream = GPStream(data.gp, data.batch_size, data.seed)
    data_time = 0.0
    start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        x0 = stream.batch(step)
        data_time += time.perf_counter() - t0
        generator = torch.Generator().manual_seed(derive_seed(0, 0, step, 0))
        t = training_times(model.schedule, len(x0), model.time_sampling, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator)
        loss = denoising_loss(model, model.schedule, x0, t, noise, model.weighting, model.min_snr_gamma).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
    return time.perf_counter() - start, data_time


def through_stdiff(cli, steps: int) -> float:
    """Seconds for ``steps`` steps of ``trainer.fit`` (set-up excluded: timed from the first batch)."""
    marks: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                marks.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            marks.append(time.perf_counter())

    model = copy.deepcopy(cli.model)
    keep = [cb for cb in cli.trainer.callbacks if type(cb).__name__ in ("NonFiniteGuard", "EMAWeightAveraging")]
    trainer = L.Trainer(
        accelerator=cli.trainer.accelerator,
        devices=1,
        precision=cli.trainer.precision,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=cli.trainer.log_every_n_steps,
        logger=L.pytorch.loggers.TensorBoardLogger(save_dir=_tmp()),  # the default logger
        callbacks=[*(copy.deepcopy(cb) for cb in keep), Clock()],
    )
    trainer.fit(model, datamodule=copy.deepcopy(cli.datamodule))
    return marks[-1] - marks[0]


def ema_decay(config) -> float | None:
    """The decay of the configuration's ``EMAWeightAveraging`` (None without one)."""
    for cb in config.get("trainer.callbacks") or []:
        if str(cb.get("class_path", "")).endswith("EMAWeightAveraging"):
            return float((cb.get("init_args") or {}).get("decay", 0.999))
    return None


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="stdiff-bench-")


def generation(data, batches: int) -> float:
    """Samples per second of the GP data stream."""
    stream = GPStream(data.gp, data.batch_size, data.seed)
    start = time.perf_counter()
    for k in range(batches):
        stream.batch(k)
    return batches * data.batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m stdiff.bench", description=__doc__)
    parser.add_argument("--config", action="append", required=True, help="config file(s), as for stdiff fit")
    parser.add_argument("--steps", type=int, default=200, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.epilog = "Any other argument is passed to stdiff, e.g. --data.init_args.batch_size=128"
    args, overrides = parser.parse_known_args(argv)
    args.overrides = overrides
    warnings.filterwarnings("ignore")
    cli = build(args.config, args.overrides)
    cli.datamodule.setup("fit")
    decay = ema_decay(cli.config)
    hand_written(cli.model, cli.datamodule, min(10, args.steps), decay)  # warm-up
    runs = {"stdiff_steps_per_s": [], "hand_written_steps_per_s": [], "ratio": [], "data_fraction": []}
    for r in range(args.repeats):
        ours = args.steps / through_stdiff(cli, args.steps)
        seconds, data_seconds = hand_written(cli.model, cli.datamodule, args.steps, decay)
        theirs = args.steps / seconds
        runs["stdiff_steps_per_s"].append(ours)
        runs["hand_written_steps_per_s"].append(theirs)
        runs["ratio"].append(ours / theirs)
        runs["data_fraction"].append(data_seconds / seconds)
        print(
            f"repeat {r + 1}/{args.repeats}: stdiff {ours:.2f} steps/s, hand-written {theirs:.2f} steps/s",
            file=sys.stderr,
        )
    runs["generation_samples_per_s"] = [generation(cli.datamodule, 50) for _ in range(args.repeats)]
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "steps": args.steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in runs.items()},
    }
    print("| figure | median | min | max |\n|---|---|---|---|")
    for k, v in runs.items():
        print(f"| {k} | {statistics.median(v):.4g} | {min(v):.4g} | {max(v):.4g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
