"""The sampler comparison of ``diffusers_kl`` on a trained model, where no exact KL exists: the
Gaussian-fit KL of the samples in excess of exact samples' (the diagnostics' ``samples/kl_excess``),
with its noise, for stdiff's default and diffusers' defaults and best settings, by budget.

    python -m stdiff.bench trained_sampler_kl lightning_logs/version_0 [--samples 2000] [--budgets 4 6 8 10 15 25 50]

The run is any ``stdiff fit`` of GP data (the quickstart's: ``stdiff fit --config
configs/quickstart.yaml``); its ``checkpoints/last.ckpt`` is loaded. Every sampler starts from
the same noise; diffusers' settings are those of ``diffusers_kl.py`` (``pip install -e
".[bench]"``), "best" the one that was best at that budget with the exact model on the run's GP
(``diffusers_kl.csv``; the quickstart's problem). Beside each row, the exact model through the
same sampler: what the sampler costs without the network's error. The likelihood ODE's ``kl_true``
does not apply here: a sampler of few steps does not draw from the ODE's density. Writes
``trained_sampler_kl.md`` and ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import pathlib
import time

import torch

from stdiff.bench.diffusers_kl import diffusers_draw, diffusers_settings, fmt, stdiff_draw
from stdiff.diffusion import ExactDenoiser
from stdiff.metrics import gaussian_fit_kl, gaussian_fit_kl_floor
from stdiff.metrics.distances import excess_noise
from stdiff.paper.common import load_run
from stdiff.sampling import DPMSolver, UniPC

RESULTS = pathlib.Path(__file__).parent / "results"


def best_diffusers_settings(problem: str = "quickstart") -> dict[int, str]:
    """budget -> the diffusers setting with the least exact KL on ``problem`` (``diffusers_kl.csv``)."""
    with open(RESULTS / "diffusers_kl.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["problem"] == problem and r["library"] == "diffusers"]
    out: dict[int, tuple[float, str]] = {}
    for r in rows:
        b, v = int(r["budget"]), float(r["exact_kl"])
        if b not in out or v < out[b][0]:
            out[b] = (v, r["setting"])
    return {b: name for b, (_, name) in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=pathlib.Path)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--budgets", type=int, nargs="+", default=[4, 6, 8, 10, 15, 25, 50])
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = p.parse_args()
    model, data = load_run(args.run)
    gp, sched, net = data.truth, model.schedule, model.denoiser.eval()
    exact = ExactDenoiser.from_gp(gp, sched)
    n, d = args.samples, gp.dim
    floor = gaussian_fit_kl_floor(gp, n, seed=1)
    noise = excess_noise(d, n)
    z = torch.randn(n, *gp.sample_shape, generator=torch.Generator().manual_seed(2))
    with_diffusers = importlib.util.find_spec("diffusers") is not None
    best = best_diffusers_settings() if with_diffusers else {}
    settings = diffusers_settings() if with_diffusers else {}

    def kl(draw) -> float:
        with torch.no_grad():
            x = draw(z.clone())
        return gaussian_fit_kl(x.double(), gp.mean, gp.covariance()) - floor if torch.isfinite(x).all() else float("inf")

    rows = []
    for b in args.budgets:
        candidates = {"stdiff UniPC (default)": lambda m, b=b: stdiff_draw(UniPC(steps=b), m),
                      "stdiff DPMSolver 2M (default before)": lambda m, b=b: stdiff_draw(DPMSolver(steps=b), m)}  # fmt: skip
        if with_diffusers:
            for name in ("DPMSolverMultistep (defaults)", "UniPCMultistep (defaults)"):
                candidates[f"diffusers {name}"] = lambda m, b=b, name=name: diffusers_draw(*settings[name], b, m, sched, [0])
            candidates[f"diffusers best on the exact model: {best[b]}"] = (
                lambda m, b=b: diffusers_draw(*settings[best[b]], b, m, sched, [0]))  # fmt: skip
        for name, make in candidates.items():
            start = time.perf_counter()
            row = {"budget": b, "sampler": name, "network": kl(make(net)), "exact_model": kl(make(exact))}
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(row, flush=True)
    lines = [__doc__.split("\n\n")[0].replace("\n", " "), "",
             (f"`python -m stdiff.bench trained_sampler_kl {args.run}`: {n} samples from the same noise, d = {d}, noise "
              f"of each value ±{noise:.2g} (√2 × one KL's); in parentheses the exact model through the same sampler."), "",
             "| sampler | " + " | ".join(str(b) for b in args.budgets) + " |", "|---" * (len(args.budgets) + 1) + "|"]  # fmt: skip
    kinds = ["stdiff UniPC (default)", "stdiff DPMSolver 2M (default before)", "diffusers DPMSolverMultistep (defaults)",
             "diffusers UniPCMultistep (defaults)", "diffusers best on the exact model"]  # fmt: skip
    for kind in kinds:
        picked = [next((r for r in rows if r["budget"] == b and r["sampler"].startswith(kind)), None) for b in args.budgets]
        if all(r is None for r in picked):
            continue
        cells = ["" if r is None else f"{fmt(r['network'])} ({fmt(r['exact_model'])})" for r in picked]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trained_sampler_kl.md").write_text("\n".join(lines) + "\n")
    (args.out / "trained_sampler_kl.json").write_text(json.dumps({"run": str(args.run), "samples": n, "noise": noise,
                                                                 "rows": rows}, indent=1))  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
