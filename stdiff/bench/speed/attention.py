"""Time and peak memory of one DiT training step per attention variant, as T and P grow.

Each grid point is a DiT with one token per grid point (``patch_size=1``: P = spatial points) and
the configured width, depth and heads. Memory is the peak of the first step above what was held
before it (parameters and input): on the CPU, the peak resident set of a process of its own per
point; on a GPU, the peak allocated memory. Time is the median of ``repeats`` further steps.

    python -m stdiff.bench.speed.attention VARIANT T P BATCH WIDTH DEPTH HEADS REPEATS   # one point, JSON
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch

from stdiff.bench.speed import stats, synchronize
from stdiff.bench.speed.training import build, device_of

VARIANTS = ["FullAttention", "TemporalAttention", "FactorizedAttention", "WindowedTemporalAttention"]
COLUMNS = ["T", "P", "tokens", "variant", "seconds", "peak_mib", "time_vs_full", "memory_vs_full"]
WINDOW = 4  # J of the windowed variant: each frame attends to frames within ±4


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> None:
    """Start the process's peak resident set (VmHWM) afresh (Linux >= 4.0), so that the peak read
    after a step is the step's own, not an earlier one (importing torch, say)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def measure(variant: str, frames: int, patches: int, batch: int, width: int, depth: int, heads: int, repeats: int,
            device: torch.device) -> dict:  # fmt: skip
    """Forward + backward of the DiT at one grid point: median seconds and spread, peak MiB."""
    from stdiff.nn import ATTENTIONS, DiT

    torch.manual_seed(0)
    cls = ATTENTIONS[variant]
    attention = (lambda w, h: cls(w, h, window=WINDOW)) if variant == "WindowedTemporalAttention" else cls
    net = DiT((frames, patches), patch_size=1, width=width, depth=depth, heads=heads, attention=attention).to(device)
    x, c = torch.randn(batch, frames, patches, device=device), torch.randn(batch, device=device)

    def step():
        net(x, c).square().mean().backward()
        net.zero_grad(set_to_none=True)

    # Memory: the first step's peak above what is held before it (parameters, input).
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_mib()
        _reset_peak_rss()
    step()
    synchronize(device)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        peak = _peak_rss_mib() - before
    seconds = []  # time: the median of the steps after it
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {"variant": variant, "T": frames, "P": patches, "tokens": frames * patches, "seconds": stats(seconds),
            "peak_mib": round(peak, 1)}  # fmt: skip


def sweep(configs: list[str], overrides: list[str], frames: list[int], patches: list[int], max_tokens: int,
          batch: int, repeats: int) -> dict:  # fmt: skip
    """Every variant at every (T, P) with T·P <= ``max_tokens``, ratios to full attention, and the
    crossover: per P, the smallest T from which factorized attention is faster than full."""
    cli = build(configs, overrides)
    device = device_of(cli)
    options = cli.config.get("model.denoiser.init_args.backbone.init_args") or {}
    width, depth, heads = options.get("width", 128), options.get("depth", 2), options.get("heads", 4)
    rows = []
    for p in patches:
        for t in frames:
            if t * p > max_tokens:
                continue
            for variant in VARIANTS:
                point = [variant, t, p, batch, width, depth, heads, repeats]
                if device.type == "cpu":  # a fresh process: its peak memory is this point's alone
                    cmd = [sys.executable, "-m", "stdiff.bench.speed.attention", *map(str, point)]
                    rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
                else:
                    rows.append(measure(*point, device=device))
                print(f"attention T={t} P={p} {variant}: {rows[-1]['seconds']['median']:.4g} s", flush=True)
    full = {(r["T"], r["P"]): r for r in rows if r["variant"] == "FullAttention"}
    for r in rows:
        base = full[(r["T"], r["P"])]
        r["time_vs_full"] = round(r["seconds"]["median"] / base["seconds"]["median"], 3)
        r["memory_vs_full"] = round(r["peak_mib"] / base["peak_mib"], 3) if base["peak_mib"] > 0 else None
    crossover = {}
    for p in patches:
        faster = [
            r["T"] for r in rows if r["P"] == p and r["variant"] == "FactorizedAttention" and r["time_vs_full"] < 1
        ]
        measured = sorted(r["T"] for r in rows if r["P"] == p and r["variant"] == "FullAttention")
        # The smallest T from which factorized stays faster at every larger measured T.
        from_t = next((t for t in measured if all(u in faster for u in measured if u >= t)), None)
        crossover[str(p)] = {"factorized_faster_from_T": from_t, "measured_T": measured}
    return {"device": str(device), "batch": batch, "width": width, "depth": depth, "heads": heads,
            "window": WINDOW, "rows": rows, "crossover": crossover}  # fmt: skip


def describe(result: dict) -> str:
    """One line per P: where factorized attention starts to beat full attention."""
    head = (f"DiT width {result['width']}, depth {result['depth']}, {result['heads']} heads, batch {result['batch']}, "
            f"patch 1, window ±{result['window']}, on {result['device']}. Crossover (factorized faster than full):")  # fmt: skip
    lines = [head]
    for p, c in result["crossover"].items():
        t = c["factorized_faster_from_T"]
        if not c["measured_T"]:
            where = "not measured (every T·P above --max-tokens)"
        elif t is None:
            where = f"not up to T = {max(c['measured_T'])}"
        else:
            where = f"from T = {t} (T·P = {t * int(p)} tokens)"
        lines.append(f"- P = {p}: {where}")
    return "\n".join(lines)


if __name__ == "__main__":
    variant, *numbers = sys.argv[1:]
    print(json.dumps(measure(variant, *map(int, numbers), device=torch.device("cpu"))))
