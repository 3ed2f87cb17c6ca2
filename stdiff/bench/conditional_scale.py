"""The exact conditional denoiser and posterior draws beyond the dense limit (``stdiff.truth.structured``):
time, conjugate-gradient iterations and, where the dense path also runs (d <= 4096, where stdiff
uses it for scattered masks), the error of the Kronecker and CG answers against it.

The truth is ``configs/video.yaml``'s (exponential in time, ℓ = 4; one exponential kernel per grid
axis, ℓ = 6), 16 frames of side × side grids. Two masks: ``Forecast(context=8)`` (whole frames:
the Kronecker path) and ``Imputation(missing=0.5)`` (scattered: conjugate gradients beyond 4096),
each in two batches of 8 rows: a training batch (each row its own mask and noise level, s = σ²/α²
log-uniform in [1e-4, 1e4]) and a sampler step (8 draws of one case: one mask, one s, at s = 1e4,
the slowest). Then 4 cases × 16 exact posterior draws of each mask (``sample_conditional``).
    python -m stdiff.bench conditional_scale [--sides 16 32 64] [--out stdiff/bench/results/conditional_scale.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from stdiff.bench import RESULTS

ROWS = 8


def truth(side: int):
    from stdiff.kernels import Matern, Separable
    from stdiff.truth import KroneckerGP

    return KroneckerGP(Matern(4.0, 0.5), Separable([Matern(6.0, 0.5), Matern(6.0, 0.5)]), 16, (side, side))


def masks(gp, kind: str, rows: int, g: torch.Generator) -> torch.Tensor:
    from stdiff.conditioning import Forecast, Imputation

    task = Forecast(context=8) if kind == "forecast" else Imputation(missing=0.5)
    return task.draw(rows, gp.sample_shape, g)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def denoise_row(gp, kind: str, batch: str, seed: int) -> dict:
    from stdiff.truth import DENSE_LIMIT, structured
    from stdiff.truth.conditioning import _dense_solve

    g = torch.Generator().manual_seed(seed)
    x0 = gp.sample(ROWS, g, dtype=torch.float64)
    if batch == "training":
        s = 10.0 ** (8 * torch.rand(ROWS, generator=g, dtype=torch.float64) - 4)
        mask = masks(gp, kind, ROWS, g)
    else:
        s = torch.full((ROWS,), 1e4, dtype=torch.float64)
        mask = masks(gp, kind, 1, g).expand(ROWS, *gp.sample_shape)
    xt = x0 + s.sqrt().reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    one = torch.ones(ROWS, dtype=torch.float64)
    got, seconds = timed(lambda: gp.denoise(xt, one, s.sqrt(), x0, mask))
    dense = gp.dim <= DENSE_LIMIT and kind == "imputation"
    frames = "Kronecker" if structured.frames_pay(gp) else "dense"
    row = {"d": gp.dim, "mask": kind, "batch": batch, "path": "dense" if dense else
           (frames if kind == "forecast" else "CG"), "seconds": seconds, "iterations": None, "cg_seconds": None,
           "error": None}  # fmt: skip
    shape = (ROWS, gp.frames, gp.num_points)
    v = (torch.where(mask, x0, xt) - gp.mean_value).reshape(shape)
    structured_x0 = got
    if kind == "imputation":
        (solved, row["iterations"]), row["cg_seconds"] = timed(lambda: structured.pcg_solve(gp, v, mask.reshape(shape), s))
        structured_x0 = (gp.mean_value + solved).reshape(x0.shape)
    if gp.dim <= DENSE_LIMIT:  # the Kronecker or CG answer against the dense Cholesky solve
        kw = _dense_solve(gp, v.reshape(ROWS, -1), mask, s)[0]
        want = torch.where(mask.reshape(shape), x0.reshape(shape), gp.mean_value + kw).reshape(x0.shape)
        row["error"] = ((structured_x0 - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)).max().item()
    return row


def draws_row(gp, kind: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = gp.sample(4, g, dtype=torch.float64)
    mask = masks(gp, kind, 1, g)[0]
    _, seconds = timed(lambda: gp.sample_conditional(x, mask, 16, g))
    return {"d": gp.dim, "mask": kind, "batch": "4 cases × 16 posterior draws", "seconds": seconds,
            "path": "Kronecker" if kind == "forecast" else ("dense" if gp.dim <= 4096 else "CG (Matheron)"),
            "iterations": None, "cg_seconds": None, "error": None}  # fmt: skip


def table(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    lines = ["| d | mask | batch | path | seconds | CG: iterations (most), seconds | Kronecker or CG x̂₀ against dense, relative error |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cg = "–" if r["iterations"] is None else f"{r['iterations']}, {r['cg_seconds']:.3f}"
        lines.append(f"| {r['d']:,} | {r['mask']} | {r['batch']} | {r['path']} | {r['seconds']:.3f} | {cg} | "
                     f"{fmt(r['error'], '.1e')} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m stdiff.bench conditional_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 32, 64], help="grid sides (16 frames each)")
    parser.add_argument("--out", type=Path, default=RESULTS / "conditional_scale.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = []
    for side in args.sides:
        gp = truth(side)
        for kind in ("forecast", "imputation"):
            for batch in ("training", "sampler step"):
                rows.append(denoise_row(gp, kind, batch, seed=len(rows)))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            rows.append(draws_row(gp, kind, seed=len(rows)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (f"# Exact conditional denoiser and posterior draws beyond the dense limit\n\n"
            f"`python -m stdiff.bench conditional_scale --sides {' '.join(map(str, args.sides))}` "
            f"({torch.get_num_threads()} threads, torch {torch.__version__}). Batches of {ROWS} rows; "
            "the module docstring says what each is.\n\n" + table(rows) + "\n")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
