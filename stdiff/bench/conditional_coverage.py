"""Coverage of a trained conditional model's forecast intervals with many samples per case, where
the sample quantiles themselves are accurate (the paper experiment uses 64 samples per case, whose
50 % / 90 % intervals cover less than nominal even for exact posterior samples).

    python -m stdiff.bench conditional_coverage <paper run>/runs/conditional/lightning_logs/version_0 \\
        [--cases 64] [--samples 256] [--sampler Heun --sampler-steps 50] \\
        [--out stdiff/bench/results/conditional/coverage.json]

The run directory is the conditional model trained by ``python -m stdiff.paper conditional``
(CPU scale); it is rebuilt from the same configuration (base, CPU overlay, conditional overlay).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from stdiff.conditioning import Forecast
from stdiff.metrics import conditional_report, posterior_samples
from stdiff.paper.common import CONFIGS, load
from stdiff.seeding import SWEEP, generator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--cases", type=int, default=64)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--sampler", default=None, help="sampler class (default: the config's, Ancestral)")
    p.add_argument("--sampler-steps", type=int, default=None, help="sampler steps (default: the config's, 100)")
    p.add_argument("--out", type=Path, default=Path("stdiff/bench/results/conditional/coverage.json"))
    args = p.parse_args()
    configs = [str(CONFIGS / "conditional.yaml"), str(CONFIGS / "cpu" / "conditional.yaml"),
               str(CONFIGS.parent / "conditional" / "trained.yaml")]  # fmt: skip
    steps = [f"--model.sampler={args.sampler}"] if args.sampler else []
    steps += [f"--model.sampler.init_args.steps={args.sampler_steps}"] if args.sampler_steps else []
    model, data = load(args.run, configs, steps)
    truth, n, k = data.truth, args.cases, args.samples
    x = truth.sample(n, generator(1, SWEEP, 20))
    mask = Forecast(16).observed(truth.sample_shape)
    observed = x.repeat_interleave(k, 0)
    g = generator(1, SWEEP, 21)
    chunks, start = [], time.perf_counter()
    with torch.no_grad():
        for i, o in enumerate(observed.split(1024)):
            chunks.append(model.sample_conditional(o, mask.expand_as(o), g))
            print(f"{min(1, (i + 1) * 1024 / len(observed)):.0%} of {len(observed)} samples, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    draws = torch.cat(chunks)
    report = conditional_report(truth, x, mask, draws.reshape(n, k, *truth.sample_shape), seed=1)
    exact = conditional_report(truth, x, mask, posterior_samples(truth, x, mask, k, generator(1, SWEEP, 22)), seed=1)
    keys = ("crps_ratio", "coverage50", "coverage90", "spread", "spread_by_frame", "kl_excess", "w2_excess")
    out = {"cases": n, "samples_per_case": k, "sampler": repr(model.sampler), "seconds": round(time.perf_counter() - start), "trained_conditional_dit": {c: report.get(c) for c in keys},
           "exact_posterior": {c: exact.get(c) for c in keys}}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
