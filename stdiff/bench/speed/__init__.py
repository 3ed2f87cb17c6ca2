"""``python -m stdiff.bench speed --config <yaml> [stdiff overrides]``: what stdiff costs and how fast it
runs, on your hardware.

Sections (``--sections``; by default all, ``gpu`` only where CUDA is available):

- ``training``: steps/s through stdiff (the configured ``Trainer``: Lightning, stdiff's callbacks,
  logging and progress bar as configured; validation and checkpoint writes off) against a minimal
  hand-written PyTorch loop with the same model, data stream, optimizer, precision, loss and EMA,
  step by step in turn in one run (so machine noise hits both alike); and the share of the
  hand-written step spent drawing the batch.
- ``data``: GP generation samples/s at the configured batch size, on the configured device.
- ``sampling``: generated samples/s of every sampler at ``--sample-steps``, network vs exact model.
- ``attention``: time and peak memory of a DiT training step (forward + backward) for each
  attention variant as T and P grow, and where factorized attention starts to beat full.
- ``gpu``: tokens/s, MFU and peak memory of the configured model, fp32 vs bf16, compile off vs on
  (``--gpu-settings`` to measure fewer: each compiled setting compiles once).
- ``fit``: a real fit's tokens/s and MFU as its ``Throughput`` callback reports them, against the
  plain loop's on the same model and setting (not in the default sections: it trains ``--fit-steps``).

Every figure is the median over ``--repeats`` with its spread (min, max). Prints one table per
section; ``--json`` writes everything, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

SECTIONS = ("training", "data", "sampling", "attention", "gpu", "fit")
DEFAULT = ("training", "data", "sampling", "attention", "gpu")


def stats(values: list[float]) -> dict[str, float]:
    """Median and spread of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts), numbers to 4 significant digits."""

    def cell(v) -> str:
        if isinstance(v, dict) and "median" in v:
            return f"{v['median']:.4g} ({v['min']:.4g}–{v['max']:.4g})"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m stdiff.bench speed",
        description=__doc__.split("\n\n")[0],
        epilog="Any other argument goes to stdiff, e.g. --data.init_args.batch_size=128",
    )
    parser.add_argument("--config", action="append", required=True, help="config file(s), as for stdiff fit")
    parser.add_argument("--sections", default=None, help=f"comma-separated, from {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (median and spread)")
    parser.add_argument("--steps", type=int, default=200, help="training: steps per measurement")
    parser.add_argument("--sample-steps", type=int, nargs="+", default=[50, 100, 500], help="sampling: sampler steps")
    parser.add_argument("--sample-batch", type=int, default=64, help="sampling: samples drawn at once")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256], help="attention: T values")
    parser.add_argument("--patches", type=int, nargs="+", default=[4, 16, 64], help="attention: P values")
    parser.add_argument("--max-tokens", type=int, default=2048, help="attention: skip grids with T·P above this")
    parser.add_argument("--attention-batch", type=int, default=8, help="attention: batch size")
    parser.add_argument("--gpu-steps", type=int, default=30, help="gpu: timed steps per setting")
    parser.add_argument("--gpu-settings", default="32-true:eager,32-true:compile,bf16-mixed:eager,bf16-mixed:compile",
                        help="gpu: comma-separated precision:eager|compile settings")
    parser.add_argument("--fit-steps", type=int, default=150, help="fit: steps of the real fit (last half timed)")
    parser.add_argument("--json", default=None, help="write the results here")
    args, overrides = parser.parse_known_args(argv)
    wanted = DEFAULT if args.sections is None else tuple(s.strip() for s in args.sections.split(","))
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.sections is None and not torch.cuda.is_available():
        wanted = tuple(s for s in wanted if s != "gpu")
    if "gpu" in wanted and not torch.cuda.is_available():
        parser.error("--sections gpu needs a CUDA device; none is available here")
    try:
        args.gpu_settings = [(p, {"eager": False, "compile": True}[c]) for p, c in
                             (item.strip().split(":") for item in args.gpu_settings.split(","))]  # fmt: skip
    except (ValueError, KeyError):
        parser.error(f"--gpu-settings: expected precision:eager|compile, comma-separated; got {args.gpu_settings!r}")
    for name in ("repeats", "steps", "sample_batch", "attention_batch", "gpu_steps", "max_tokens", "fit_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            parser.error(f"--json {args.json}: cannot write in {folder} (missing or not writable)")
    args.sections = wanted
    return args, overrides


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse(argv)
    warnings.filterwarnings("ignore")
    from stdiff.bench.speed import attention, fit, gpu, sampling, training

    result: dict = {"machine": machine(), "config": args.config, "overrides": overrides, "repeats": args.repeats}

    def report(title: str, rows: list[dict], columns: list[str], note: str = "") -> None:
        print(f"\n## {title}\n\n{table(rows, columns)}" + (f"\n\n{note}" if note else ""), flush=True)
        if args.json:  # after every section: a later failure loses nothing measured
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    if "training" in args.sections:
        result["training"] = training.overhead(args.config, overrides, args.steps, args.repeats)
        report("training: stdiff vs a hand-written loop", [result["training"]], training.COLUMNS)
    if "data" in args.sections:
        result["data"] = training.generation(args.config, overrides, args.repeats)
        report("data: GP generation", [result["data"]], ["device", "batch_size", "sample_shape", "samples_per_s"])
    if "sampling" in args.sections:
        result["sampling"] = sampling.throughput(args.config, overrides, args.sample_steps, args.sample_batch,
                                                 args.repeats)  # fmt: skip
        report(f"sampling: samples/s, batch {args.sample_batch}", result["sampling"], sampling.COLUMNS)
    if "attention" in args.sections:
        result["attention"] = attention.sweep(args.config, overrides, args.frames, args.patches, args.max_tokens,
                                              args.attention_batch, args.repeats)  # fmt: skip
        report("attention: one training step (forward + backward) per variant", result["attention"]["rows"],
               attention.COLUMNS, attention.describe(result["attention"]))  # fmt: skip
    if "gpu" in args.sections:
        result["gpu"] = gpu.matrix(args.config, overrides, args.gpu_steps, args.repeats, args.gpu_settings)
        report("gpu: training throughput", result["gpu"], gpu.COLUMNS)
    if "fit" in args.sections:
        result["fit"] = fit.real_fit(args.config, overrides, args.fit_steps, args.repeats)
        report("fit: a real stdiff fit's Throughput callback against the plain loop", [result["fit"]], fit.COLUMNS)
    print(f"\nmachine: {json.dumps(result['machine'])}", file=sys.stderr)
    return result
