"""How noisy ``crps_ratio`` is, and what CRPS costs in memory: exact posterior samples scored
against a second, independent draw of exact posterior samples (the "exact posterior" row of
the conditional table of stdiff/guide/conditional.md), over many seeds, with both estimators.

    python -m stdiff.bench crps_noise [--repeats 200] [--cases 16] [--samples 64] [--out stdiff/bench/results/crps_noise.json]

The truth and the tasks are the conditional experiment's (``python -m stdiff.paper conditional``
at CPU scale: 16 cases × 64 samples per task). Both draws are exact, so the ratio's expectation is
1 for either estimator; its spread over seeds is the noise of one table entry. The memory part
times ``stdiff.metrics.crps`` (sorted ensemble) against the all-pairs form at the size of
``python -m stdiff.bench conditional_coverage`` (64 cases × 256 samples × 128 missing coordinates: 16 frames × 8 points).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from stdiff.bench import RESULTS


def ratios(repeats: int, n: int, k: int) -> dict:
    from stdiff.cli import StdiffCLI
    from stdiff.metrics import conditional_report, posterior_samples
    from stdiff.paper.common import CONFIGS, cli_args
    from stdiff.paper.conditional import TASKS
    from stdiff.seeding import SWEEP, generator

    cli = StdiffCLI(args=cli_args([str(CONFIGS / "conditional.yaml"), str(CONFIGS / "cpu" / "conditional.yaml")], []),
                    run=False)  # fmt: skip
    truth, out = cli.datamodule.truth, {}
    start = time.perf_counter()
    for t, (name, task) in enumerate(TASKS.items()):
        values: dict[str, list[float]] = {"biased": [], "fair": []}
        for r in range(repeats):
            x = truth.sample(n, generator(2, SWEEP, 30, t, r))
            mask = task.draw(1, truth.sample_shape, generator(2, SWEEP, 31, t, r))[0]
            draws = posterior_samples(truth, x, mask, k, generator(2, SWEEP, 32, t, r))
            for estimator, kept in values.items():
                kept.append(conditional_report(truth, x, mask, draws, seed=r, estimator=estimator)["crps_ratio"])
        out[name] = {e: {"mean": statistics.fmean(v), "sd": statistics.stdev(v), "se": statistics.stdev(v) / math.sqrt(len(v)),
                         "min": min(v), "max": max(v)} for e, v in values.items()}  # fmt: skip
        print(f"{name:13s} " + "  ".join(f"{e}: {s['mean']:.4f} ± {s['sd']:.4f} (sd; se {s['se']:.4f})"
                                         for e, s in out[name].items()), f"{time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    return out


def _peak(form: str, entries: int, k: int) -> None:
    """One measurement in this process (run in a fresh one): prints peak RSS growth (MiB) and seconds."""
    from stdiff.metrics import crps

    g = torch.Generator().manual_seed(0)
    samples, target = torch.randn(entries, k, generator=g, dtype=torch.float64), torch.randn(entries, generator=g, dtype=torch.float64)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if form == "sorted":
        value = crps(samples, target).mean()
    else:  # all pairs: the (entries, k, k) tensor of |x_i − x_j|
        value = ((samples - target[:, None]).abs().mean(1)
                 - (samples[:, :, None] - samples[:, None, :]).abs().sum((1, 2)) / (2 * k * k)).mean()  # fmt: skip
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
                      "seconds": seconds, "value": value.item()}))  # fmt: skip


def memory(entries: int, k: int) -> dict:
    out = {"entries": entries, "samples": k}
    for form in ("sorted", "all_pairs"):
        code = f"from stdiff.bench.crps_noise import _peak; _peak({form!r}, {entries}, {k})"
        out[form] = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout.splitlines()[-1])  # fmt: skip
        print(f"{form:9s} {out[form]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m stdiff.bench crps_noise", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200, help="seeds per task")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--memory-entries", type=int, default=64 * 16 * 8, help="scored entries (cases × missing coordinates)")
    p.add_argument("--memory-samples", type=int, default=256)
    p.add_argument("--out", type=Path, default=RESULTS / "crps_noise.json")
    args = p.parse_args()
    for name in ("repeats", "cases", "samples", "memory_entries", "memory_samples"):
        if getattr(args, name) < 2:
            p.error(f"--{name.replace('_', '-')} must be >= 2, got {getattr(args, name)}")
    result = {"cases": args.cases, "samples_per_case": args.samples, "repeats": args.repeats,
              "crps_ratio_exact_vs_exact": ratios(args.repeats, args.cases, args.samples),
              "memory": memory(args.memory_entries, args.memory_samples)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
