"""How UniPC's candidate grids were chosen: on the tuning problems only.

    python -m stdiff.bench sampler_tuning [--jobs 2] [--grids 13] [--add deis]

UniPC plans every draw on the Gaussian its probe reads off the model (``UniPC.plan``): it runs each
grid of ``GRIDS`` (method, order, start c, shape) with every number of steps k in its window and
every fitted endpoint there, and keeps the one that leaves the least KL. ``GRIDS`` is the part
chosen by hand, and this is how: for every tuning problem (``sampling_problems.generate("tuning")``),
budget of ``BUDGETS`` and candidate grid, the plan made with that grid alone: the KL the surrogate
expects and the exact KL of the draw (``sampling_problems.eigen_kl``). A set of grids then gives, at
each (problem, budget), the draw of the grid whose plan expects least, as ``UniPC`` would choose;
grids are added greedily by (fewest pairs above 1.5 × diffusers' best, then most pairs at or below
it, then the mean log ratio), diffusers' best from the cached sweep of ``sampler_heldout``
(``sampler_heldout_diffusers.csv.gz``, tuning problems only). The held-out problems are never read here.

Round two chose 9 UniPC grids of 36 (``UNIPC``: orders 2 and 3 × c ∈ {-1, -1.5, -2} × skew ∈ {1,
1.5, 2, 2.5, 3, 4}) on problems 0-63 (``--add unipc``). Round four keeps them and adds DEIS grids
(``DEIS_GRIDS``: orders 2 and 3 × c ∈ {-1, -2, -30 (t_max)} × rho ∈ {4, 7, 12}) greedily on problems
0-191 (``--add deis``, the default), and writes ``sampler_tuning.md``.
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
from stdiff.sampling import UniPC, plan
from stdiff.sampling.probe import probe

UNIPC = [("unipc", *g) for g in itertools.product((2, 3), (-1.0, -1.5, -2.0), (1.0, 1.5, 2.0, 2.5, 3.0, 4.0))]
DEIS_GRIDS = [("deis", *g) for g in itertools.product((2, 3), (-1.0, -2.0, -30.0), (4.0, 7.0, 12.0))]
KEPT = [g for g in plan.GRIDS if g[0] == "unipc"]  # round two's choice, kept when DEIS grids are added
CANDIDATES = KEPT + DEIS_GRIDS  # what ``plans`` runs (``main`` sets it)


def plans(number: int) -> dict[tuple, tuple[float, float]]:
    """(budget, grid) -> (the KL the plan with that grid alone expects, the draw's exact KL)."""
    torch.set_num_threads(1)
    p = problem(number)
    model, out = EigenModel(p), {}
    nodes, weights, mean_precision = probe(model, (p.dim,), model.data_moments, None, torch.float64)  # as UniPC's
    for grid in CANDIDATES:
        plan.GRIDS = [grid]  # this process only
        for b in BUDGETS:
            sampler = UniPC(b)
            made = sampler.plan(p.schedule, nodes, weights, model.data_moments[1], mean_precision)
            sampler.use(made, keep=True)
            kl = eigen_kl(lambda z, s=sampler: s.sample(model, z.shape, dtype=z.dtype, noise=z), p)
            out[(b, grid)] = (made["kl"], kl)
    return out


def greedy(table: dict[int, dict], best: dict, count: int, chosen: list[tuple] | None = None) -> list[tuple[tuple, tuple]]:
    """Grids added greedily to ``chosen`` until it has ``count``, each with the score of the set it completes."""
    numbers = sorted(table)
    expected = {g: np.array([[table[n][(b, g)][0] for b in BUDGETS] for n in numbers]) for g in CANDIDATES}
    exact = {g: np.array([[table[n][(b, g)][1] for b in BUDGETS] for n in numbers]) for g in CANDIDATES}
    theirs = np.array([[best[(n, b)] for b in BUDGETS] for n in numbers])
    chosen = list(chosen or [])
    out = []

    def score(grids: list[tuple]) -> tuple:
        pick = np.argmin(np.stack([expected[g] for g in grids]), 0)
        mine = np.take_along_axis(np.stack([exact[g] for g in grids]), pick[None], 0)[0]
        ratio = mine / theirs
        return (int((ratio > 1.5).sum()), -int((ratio <= 1).sum()), float(np.log(np.clip(ratio, 1e-12, 1e12)).mean()))

    if chosen:
        out.append((tuple(chosen), score(chosen)))
    for _ in range(count - len(chosen)):
        grid = min((g for g in CANDIDATES if g not in chosen), key=lambda g: score([*chosen, g]))
        chosen.append(grid)
        out.append((grid, score(chosen)))
    return out


def main() -> None:
    global CANDIDATES
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--grids", type=int, default=len(plan.GRIDS), help="how many grids to end with")
    p.add_argument("--add", choices=["deis", "unipc"], default="deis",
                   help="deis: add DEIS grids to round two's UniPC grids (round four); unipc: choose UniPC grids from none (round two)")
    args = p.parse_args()
    CANDIDATES = KEPT + DEIS_GRIDS if args.add == "deis" else UNIPC
    numbers = [q.number for q in generate("tuning")]
    rows = load_diffusers(RESULTS / "sampler_heldout_diffusers.csv.gz", numbers, jobs=args.jobs, rerun=False)
    best = {k: r["exact_kl"] for k, r in diffusers_best(rows).items()}
    lines = [f"{len(numbers)} tuning problems × {len(BUDGETS)} budgets × {len(CANDIDATES)} grids"]
    print(lines[0], flush=True)
    work = importlib.import_module("stdiff.bench.sampler_tuning").plans  # by its module's name: run as __main__, workers could not find it
    with ProcessPoolExecutor(args.jobs, initializer=_set_candidates, initargs=(CANDIDATES,)) as pool:
        table = dict(zip(numbers, pool.map(work, numbers), strict=True))
    lines.append("grid (method, order, c, shape) -> (pairs > 1.5, −pairs ≤ 1, mean log ratio) of the set so far")
    for grid, score in greedy(table, best, args.grids, KEPT if args.add == "deis" else None):
        lines.append(f"{grid} {score} {'' if grid in plan.GRIDS or grid == tuple(KEPT) else '<- not in GRIDS'}")
        print(lines[-1], flush=True)
    lines.append(f"shipped GRIDS: {plan.GRIDS}")
    print(lines[-1])
    if args.add == "deis":
        text = (f"`python -m stdiff.bench sampler_tuning --grids {args.grids}` (torch {torch.__version__}; round two's 9 UniPC "
                "grids kept, DEIS grids added greedily; the first line scores the UniPC grids alone):\n\n```\n")
        (RESULTS / "sampler_tuning.md").write_text(text + "\n".join(lines) + "\n```\n")


def _set_candidates(candidates: list[tuple]) -> None:
    global CANDIDATES
    CANDIDATES = candidates


if __name__ == "__main__":
    main()
