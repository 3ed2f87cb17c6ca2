"""Training throughput of the configured model on one GPU: fp32 vs bf16, torch.compile off vs on."""

from __future__ import annotations

import copy
import functools

import torch

from stdiff.bench.speed import stats, timed
from stdiff.bench.speed.training import autocast, build, drawer
from stdiff.callbacks.throughput import peak_flops
from stdiff.diffusion import denoising_loss, training_times

COLUMNS = ["precision", "compile", "samples_per_s", "tokens_per_s", "mfu", "peak_memory_gib", "data_fraction"]


SETTINGS = [("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True)]


def matrix(configs: list[str], overrides: list[str], steps: int, repeats: int, settings=SETTINGS,
           device: torch.device | None = None) -> list[dict]:  # fmt: skip
    """One row per (precision, compile) setting: samples/s, tokens/s, MFU against the card's dense
    peak for that dtype (``peak_flops``), peak memory, and the share of a step spent drawing
    the batch on the device. FLOPs per step: the backbone's forward + backward, counted on the meta
    device. A plain PyTorch loop on the configured model, optimizer and data (drawn on the device):
    what the hardware gives; ``training`` measures what stdiff's Trainer costs on top."""
    cli = build(configs, [*overrides, "--model.compile=false"])  # compiled below, for the rows that ask
    device = device or torch.device("cuda")
    on_gpu = device.type == "cuda"
    data = cli.datamodule
    data.generate_on = "device"
    draw = drawer(data, device)
    rows = []
    for precision, compiled in settings:
        module = copy.deepcopy(cli.model).to(device).train()
        flops = module.flops_per_batch * data.batch_size  # no trainer attached: counted for one sample
        if compiled:
            module.denoiser.compile()
        optimizer = module.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer

        def run(n: int, module=module, optimizer=optimizer, precision=precision) -> None:
            for k in range(n):
                x0 = draw(k)
                t = training_times(module.schedule, len(x0), module.time_sampling, device=device)
                with autocast(precision, device):
                    loss = denoising_loss(module.denoiser, x0, t, torch.randn_like(x0)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        run(5)  # warm-up, compilation included
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = [timed(functools.partial(run, steps), device) / steps for _ in range(repeats)]
        draw_seconds = timed(lambda: [draw(k) for k in range(steps)], device) / steps
        card_flops = peak_flops(device, torch.bfloat16 if precision.startswith("bf16") else torch.float32)
        tokens = module.tokens_per_sample * data.batch_size
        rows.append({
            "precision": precision, "compile": compiled,
            "samples_per_s": stats([data.batch_size / s for s in seconds]),
            "tokens_per_s": stats([tokens / s for s in seconds]),
            "mfu": stats([flops / s / card_flops for s in seconds]) if card_flops else "unknown device",
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if on_gpu else "n/a",
            "data_fraction": draw_seconds / min(seconds),
        })  # fmt: skip
        print(f"gpu {precision} compile={compiled}: {rows[-1]['tokens_per_s']['median']:.4g} tokens/s", flush=True)
        del module, optimizer
        if on_gpu:
            torch.cuda.empty_cache()
    return rows
