"""UniPC's plan: the settings that leave the least KL on the Gaussian the probe reads off the model.

Every candidate runs on ``GaussianSurrogate``, where it costs no model call: a method and grid of
``GRIDS``, k steps of ``steps_window``, and an endpoint of e evaluations (``t_min``, or a polynomial
in the gain fitted to the spectrum, ``stdiff.sampling.probe.fit_endpoints``), k + e <= the budget.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stdiff.sampling.base import POLYNOMIALS, Polynomial, alpha_sigma, endpoint_evaluations
from stdiff.sampling.probe import GaussianSurrogate, fit_endpoints, surrogate_kl
from stdiff.schedules import NoiseSchedule

if TYPE_CHECKING:
    from stdiff.sampling.multistep import UniPC

# What the plan chooses from: a method and its grid, (method, order, c, shape), started at half log-SNR
# c − ln k − ½ ln v for k steps; shape is UniPC's skew (the grid uniform in u, λ = λ₀ + (λ₁ − λ₀)(1 − (1 − u)^skew))
# or DEIS's rho (σ/α spaced in its 1/rho-th power, ``stdiff.sampling.deis.ratio_grid``).
GRIDS = [("unipc", 3, -1.0, 1.0), ("unipc", 2, -1.5, 1.5), ("unipc", 2, -1.0, 2.0), ("unipc", 2, -1.5, 2.5),
         ("unipc", 2, -1.0, 1.5), ("unipc", 3, -1.5, 1.0), ("unipc", 2, -2.0, 1.5), ("unipc", 3, -1.5, 3.0),
         ("unipc", 3, -2.0, 1.5),  # round two's 9 of 36, added greedily on problems 0-63
         ("deis", 3, -1.0, 7.0), ("deis", 3, -30.0, 7.0), ("deis", 3, -1.0, 4.0), ("deis", 3, -2.0, 12.0),
         ("deis", 3, -1.0, 12.0)]  # round four's first 5 of 18, added greedily to them on problems 0-191 (c = -30: t_max)  # fmt: skip
# k is every number up to EVERY_STEPS, then grows by 8 % a step (25, 27, 29, 31, 33, 36, 39, 42, 45, 49, 53, …): the
# same numbers for every budget, so a budget's candidates include every smaller budget's and, where the surrogate is
# the model, a larger budget never plans a worse draw; an endpoint takes at most MOST_ENDPOINT_EVALUATIONS evaluations.
# A conditional draw keeps k >= n − FEWER_STEPS (``UniPC.plan``).
FEWER_STEPS, EVERY_STEPS, GROWTH = 8, 25, 0.08
MOST_ENDPOINT_EVALUATIONS = 4


def steps_window(n: int, lowest: int = 2) -> list[int]:
    """The grid's step counts a plan for a budget of n evaluations tries: every k from ``lowest`` up to
    ``EVERY_STEPS``, then k + round(``GROWTH`` k) after k, up to n: nested in n."""
    window, k = [], lowest
    while k <= n:
        window.append(k)
        k += 1 if k < EVERY_STEPS else max(1, round(GROWTH * k))
    return window


def polynomial(coefficients: Polynomial, g: Tensor) -> Tensor:
    return sum(c * g**k for k, c in enumerate(coefficients))


def candidates(given: dict) -> list[tuple]:
    """``GRIDS`` with what the user gave in place of what it would choose: an order or start given is used
    as given (c None: the given ``lambda_start``), a skew given keeps UniPC's grids only."""
    grids = [g for g in GRIDS if given["skew"] is None or g[0] == "unipc"]
    return list(dict.fromkeys((m, o if given["order"] is None else given["order"],
                               c if given["lambda_start"] is None else None,
                               sk if given["skew"] is None else given["skew"]) for m, o, c, sk in grids))  # fmt: skip


def make_plan(sampler: UniPC, schedule: NoiseSchedule, nodes: Tensor, weights: Tensor, variance: float,
              mean_precision: float, window: list[int]) -> dict:  # fmt: skip
    """The candidate (``candidates`` × k in ``window`` × endpoints) that leaves the least KL on the
    surrogate; stopping at t_min also costs ½ (1 − α)² ``mean_precision``. See ``UniPC.plan``."""
    from stdiff.sampling.multistep import UniPC

    surrogate = GaussianSurrogate(schedule, nodes, variance)
    weights = weights.double()
    if sampler.endpoint == "auto":
        fits = [("t_min", None)] + fit_endpoints(nodes, weights, MOST_ENDPOINT_EVALUATIONS)
    else:
        fits = [(sampler.endpoint, None)]
    a = alpha_sigma(schedule, schedule.t_min)[0]
    shrunk = 0.5 * (1 - a) ** 2 * mean_precision  # the mean's share of stopping at t_min: α m for m
    ones = torch.ones(1, len(nodes), dtype=torch.float64)
    best: dict = {"kl": math.inf}

    def run(grid: tuple, k: int) -> None:
        nonlocal best
        method, order, c, shape = grid
        start = sampler.given["lambda_start"] if c is None else c - math.log(k)
        candidate = UniPC(k, order=order, endpoint="t_min", lambda_start=start, skew=shape if method == "unipc" else 1.0,
                          corrector=sampler.corrector)  # fmt: skip
        candidate.auto_start = c is not None
        if method == "deis":
            candidate.method, candidate.rho = "deis", shape
        try:
            x = candidate.sample(surrogate, ones.shape, dtype=torch.float64, noise=ones)
            corrected, _ = candidate._evaluate(surrogate, schedule, x, schedule.t_min)
        except (ZeroDivisionError, RuntimeError, ValueError):  # a grid of coincident steps
            return
        x0 = candidate._history[-1][1]
        for endpoint, _ in fits:
            if endpoint_evaluations(endpoint) + k > sampler.steps:
                continue
            coefficients = POLYNOMIALS[endpoint] if isinstance(endpoint, str) else endpoint
            out = x if coefficients is None else x0 + polynomial(coefficients, surrogate.gain) * (corrected / a - x0)
            kl = surrogate_kl(out[0], surrogate, weights) + (shrunk if coefficients is None else 0.0)
            if kl < best["kl"]:
                best = {"method": method, "order": order, "lambda_start": start, "auto_start": c is not None,
                        "skew": candidate.skew, "rho": shape if method == "deis" else candidate.rho, "steps": k,
                        "endpoint": endpoint, "kl": kl}  # fmt: skip

    for grid in candidates(sampler.given):
        for k in window:
            run(grid, k)
    return best
