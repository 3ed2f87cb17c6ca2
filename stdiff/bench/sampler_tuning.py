"""How UniPC's candidate grids were chosen: on the tuning problems only.

    python -m stdiff.bench sampler_tuning [--jobs 2] [--grids 9]

UniPC plans every draw on the Gaussian its probe reads off the model (``UniPC.plan``): it runs each
grid of ``GRIDS`` (order, start c, skew) with every number of steps k in its window and every fitted
endpoint there, and keeps the one that leaves the least KL. ``GRIDS`` is the part chosen by hand,
and this is how: for every tuning problem (``sampling_problems.generate("tuning")``; 0-63 when ``GRIDS`` was chosen),
budget of ``BUDGETS`` and each of the 36 grids of ``CANDIDATES`` (orders 2 and 3 × c ∈ {-1, -1.5,
-2} × skew ∈ {1, 1.5, 2, 2.5, 3, 4}), the plan made with that grid alone: the KL the surrogate
expects and the exact KL of the draw (``sampling_problems.eigen_kl``). A set of grids then gives, at
each (problem, budget), the draw of the grid whose plan expects least, as ``UniPC`` would choose;
grids are added greedily by (fewest pairs above 1.5 × diffusers' best, then most pairs at or below
it, then the mean log ratio), diffusers' best from the cached sweep of ``sampler_heldout``
(``sampler_heldout_diffusers.csv.gz``, tuning problems only). The held-out problems (128-191) are
never read here.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from stdiff.bench.diffusers_kl import BUDGETS
from stdiff.bench.sampler_heldout import RESULTS, diffusers_best, load_diffusers
from stdiff.bench.sampling_problems import EigenModel, eigen_kl, generate, problem
from stdiff.sampling import UniPC, multistep
from stdiff.sampling.probe import probe

CANDIDATES = list(itertools.product((2, 3), (-1.0, -1.5, -2.0), (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)))


def plans(number: int) -> dict[tuple, tuple[float, float]]:
    """(budget, grid) -> (the KL the plan with that grid alone expects, the draw's exact KL)."""
    torch.set_num_threads(1)
    p = problem(number)
    model, out = EigenModel(p), {}
    nodes, weights, mean_precision = probe(model, (p.dim,), model.data_moments, None, torch.float64)  # as UniPC's
    for grid in CANDIDATES:
        multistep.GRIDS = [grid]  # this process only
        for b in BUDGETS:
            sampler = UniPC(b)
            plan = sampler.plan(p.schedule, nodes, weights, model.data_moments[1], mean_precision)
            sampler.use(plan, keep=True)
            kl = eigen_kl(lambda z, s=sampler: s.sample(model, z.shape, dtype=z.dtype, noise=z), p)
            out[(b, grid)] = (plan["kl"], kl)
    return out


def greedy(table: dict[int, dict], best: dict, count: int) -> list[tuple[tuple, tuple]]:
    """The first ``count`` grids added greedily, each with the score of the set it completes."""
    numbers = sorted(table)
    expected = {g: np.array([[table[n][(b, g)][0] for b in BUDGETS] for n in numbers]) for g in CANDIDATES}
    exact = {g: np.array([[table[n][(b, g)][1] for b in BUDGETS] for n in numbers]) for g in CANDIDATES}
    theirs = np.array([[best[(n, b)] for b in BUDGETS] for n in numbers])
    chosen: list[tuple] = []
    out = []

    def score(grids: list[tuple]) -> tuple:
        pick = np.argmin(np.stack([expected[g] for g in grids]), 0)
        mine = np.take_along_axis(np.stack([exact[g] for g in grids]), pick[None], 0)[0]
        ratio = mine / theirs
        return (int((ratio > 1.5).sum()), -int((ratio <= 1).sum()), float(np.log(np.clip(ratio, 1e-12, 1e12)).mean()))

    for _ in range(count):
        grid = min((g for g in CANDIDATES if g not in chosen), key=lambda g: score([*chosen, g]))
        chosen.append(grid)
        out.append((grid, score(chosen)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--grids", type=int, default=len(multistep.GRIDS), help="how many grids to choose")
    args = p.parse_args()
    numbers = [q.number for q in generate("tuning")]
    rows = load_diffusers(RESULTS / "sampler_heldout_diffusers.csv.gz", numbers, jobs=args.jobs, rerun=False)
    best = {k: r["exact_kl"] for k, r in diffusers_best(rows).items()}
    print(f"{len(numbers)} tuning problems × {len(BUDGETS)} budgets × {len(CANDIDATES)} grids", flush=True)
    work = importlib.import_module("stdiff.bench.sampler_tuning").plans  # by its module's name: run as __main__, workers could not find it

    with ProcessPoolExecutor(args.jobs) as pool:
        table = dict(zip(numbers, pool.map(work, numbers), strict=True))
    print("grid (order, c, skew) -> (pairs > 1.5, −pairs ≤ 1, mean log ratio) of the set so far")
    for grid, score in greedy(table, best, args.grids):
        print(grid, score, "" if grid in multistep.GRIDS else "<- not in GRIDS")
    print(f"shipped GRIDS: {multistep.GRIDS}")


if __name__ == "__main__":
    main()
