"""How UniPC's automatic settings were chosen: on the tuning half of the sampling problems only.

    python -m stdiff.bench sampler_tuning [--top 10]

For every tuning problem (``sampling_problems.generate("tuning")``, the even-numbered 32), budget
of ``BUDGETS``, endpoint (``t_min``, ``denoise``, ``ode``, ``root``), order (2 with the skew
0.6 + n/6, or 3 uniform in λ) and start offset c (half log-SNR c − ln n − ½ ln v), the exact KL
of UniPC with the exact model (``sampling_problems.eigen_kl``); beside it the probe's
early-stopping floor F of each problem (``stdiff.sampling.base.early_stopping_floor``). Every rule
of the family

    order 2 below the budget O3, 3 from it; c by order;
    F ≥ L2: denoise up to T4 evaluations, root above;  L1 ≤ F < L2: t_min up to T2, ode up to T3, root above;
    F < L1: t_min up to T1, ode above

is then scored against diffusers' best setting at each (problem, budget), from the cached sweep of
``sampler_heldout`` (``sampler_heldout_diffusers.csv.gz``, tuning problems only), and ranked by:
fewest pairs above 1.5 × diffusers' best, then most pairs at or below it, then fewest rises in the
budget, then the mean log ratio. The held-out half is never read here.

The shipped setting (``SHIPPED``, ``stdiff.sampling.multistep``'s constants) is not the first of
that ranking but the first with ten fewer rises in the budget (36 against 46) at the cost of one
pair at or below diffusers' best (274 against 275 of 320), both with 30 pairs above 1.5.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
import torch

from stdiff.bench.diffusers_kl import BUDGETS
from stdiff.bench.sampler_heldout import RESULTS, diffusers_best, load_diffusers
from stdiff.bench.sampling_problems import EigenModel, eigen_kl, generate
from stdiff.sampling import UniPC
from stdiff.sampling.base import early_stopping_floor

ENDPOINTS = ("t_min", "denoise", "ode", "root")
STARTS = (-0.5, -1.0, -1.5, -2.0)
RULES = list(itertools.product([0.03, 0.1, 0.3], [1.0, 3.0, 10.0], [4, 5, 6, 8, 10], [3, 4, 5], [8, 10, 12, 15, 20],
                               [4, 5, 6]))  # L1, L2, T1, T2, T3, T4  # fmt: skip
SHIPPED = (15, -2.0, -1.5, 0.1, 3.0, 8, 4, 15, 4)  # what stdiff.sampling.multistep's constants say
TRAJECTORIES = list(itertools.product([8, 10, 12, 15, 20], STARTS, STARTS))  # O3, c for order 2, c for order 3


def kl_table(problems) -> tuple[dict, dict]:
    """(problem, budget, endpoint, order, c) -> exact KL; problem -> probed floor F."""
    kls, floors = {}, {}
    for p in problems:
        model = EigenModel(p)
        floors[p.number] = early_stopping_floor(model, (p.dim,), model.data_moments, None, torch.float64)
        for b, end, order, c in itertools.product(BUDGETS, ENDPOINTS, (2, 3), STARTS):
            try:
                sampler = UniPC(b, order=order, endpoint=end, lambda_start=c - math.log(b),
                                skew=0.6 + b / 6 if order == 2 else 1.0)  # fmt: skip
            except ValueError:  # root needs 5 evaluations
                continue
            sampler.auto_start = True  # c − ln n − ½ ln v, as the automatic start
            try:
                kls[(p.number, b, end, order, c)] = eigen_kl(lambda z, s=sampler, m=model: s.sample(m, z.shape, dtype=z.dtype, noise=z), p)
            except (ZeroDivisionError, RuntimeError, ValueError):  # a grid of coincident steps, a diverged law
                kls[(p.number, b, end, order, c)] = math.inf
        print(f"  problem {p.number}: floor {floors[p.number]:.3g}", flush=True)
    return kls, floors


def endpoint_index(floors: np.ndarray, rule) -> np.ndarray:
    """Index into ``ENDPOINTS`` of each (problem, budget) under ``rule`` = (L1, L2, T1, T2, T3, T4)."""
    low, high, t1, t2, t3, t4 = rule
    f, b = floors[:, None], np.array(BUDGETS)[None, :]
    ill = np.where(b <= t4, 1, 3)
    mid = np.where(b <= t2, 0, np.where(b <= t3, 2, 3))
    well = np.where(b <= t1, 0, 2)
    return np.where(f >= high, ill, np.where(f >= low, mid, well))


def search(kls: dict, floors: dict, best: dict) -> list[tuple[tuple, tuple]]:
    """Every rule and trajectory, scored (see the module docstring), best first."""
    numbers = sorted(floors)
    theirs = np.array([[best[(n, b)] for b in BUDGETS] for n in numbers])
    index = np.stack([endpoint_index(np.array([floors[n] for n in numbers]), r) for r in RULES])  # R × P × B
    out = []
    for o3, c2, c3 in TRAJECTORIES:
        table = np.array([[[kls.get((n, b, e, 2 if b < o3 else 3, c2 if b < o3 else c3), math.inf) for b in BUDGETS]
                           for n in numbers] for e in ENDPOINTS])  # fmt: skip
        mine = np.take_along_axis(np.broadcast_to(table, (len(RULES), *table.shape)), index[:, None], 1)[:, 0]
        ratio = mine / theirs[None]
        finite = np.isfinite(ratio)
        scores = zip((ratio > 1.5).sum((1, 2)), -(ratio <= 1).sum((1, 2)), (mine[:, :, 1:] > 1.01 * mine[:, :, :-1]).sum((1, 2)),
                     np.where(finite, np.log(np.where(finite, ratio, 1.0)), 50.0).mean((1, 2)), strict=True)  # fmt: skip
        out += [(tuple(float(v) for v in s), (o3, c2, c3, *r)) for s, r in zip(scores, RULES, strict=True)]
    return sorted(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args()
    problems = generate("tuning")
    numbers = {q.number for q in problems}
    rows = load_diffusers(RESULTS / "sampler_heldout_diffusers.csv.gz", sorted(numbers), jobs=2, rerun=False)
    best = {k: r["exact_kl"] for k, r in diffusers_best(rows).items()}
    print(f"exact KL of {len(problems)} tuning problems × {len(BUDGETS)} budgets × {len(ENDPOINTS)} endpoints × 2 orders "
          f"× {len(STARTS)} starts", flush=True)  # fmt: skip
    kls, floors = kl_table(problems)
    print("(pairs > 1.5, −pairs ≤ 1, rises, mean log ratio)  (O3, c2, c3, L1, L2, T1, T2, T3, T4)")
    ranked = search(kls, floors, best)
    for score, setting in ranked[: args.top]:
        print(score, setting, "<- shipped" if setting == SHIPPED else "")
    rank = next(i for i, (_, setting) in enumerate(ranked) if setting == SHIPPED)
    print(f"shipped {SHIPPED}: rank {rank + 1} of {len(ranked)}, {ranked[rank][0]}")


if __name__ == "__main__":
    main()
