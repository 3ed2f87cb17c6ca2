"""DEIS: a multistep exponential integrator of the ε-prediction, on a grid in the noise-to-signal ratio."""

from __future__ import annotations

import math

from torch import Tensor

from stdiff._validation import check_positive
from stdiff.sampling.base import Endpoint, Sampler, _eps, alpha_sigma, ratio_grid
from stdiff.schedules import NoiseSchedule


def exp_lagrange_weights(nodes: list[float], u_from: float, u_to: float) -> list[float]:
    """∫ e^u ℓ_j(u) du from ``u_from`` to ``u_to`` for the Lagrange basis ℓ_j through ``nodes``: the
    weights of ε at those nodes in y(ρ_to) − y(ρ_from) = ∫ ε dρ, u = ln ρ (exact, not quadrature:
    e^v P(v) has the antiderivative e^v Q(v), Q = Σ_k (−1)^k P⁽ᵏ⁾, here with v = u − ``u_from``)."""
    shifted = [u - u_from for u in nodes]
    length, out = u_to - u_from, []
    for j, uj in enumerate(shifted):
        p = [1.0]  # ℓ_j's coefficients in v, lowest first
        for i, ui in enumerate(shifted):
            if i != j:
                if ui == uj:
                    raise ZeroDivisionError("coincident points in a multistep weight")
                p = [((p[k - 1] if k else 0.0) - ui * (p[k] if k < len(p) else 0.0)) / (uj - ui) for k in range(len(p) + 1)]
        q = [0.0] * len(p)  # Q's coefficients: q_k = Σ_{m >= k} (−1)^{m−k} m!/k! p_m
        for k in reversed(range(len(p))):
            q[k] = p[k] - (k + 1) * q[k + 1] if k + 1 < len(p) else p[k]
        at_end = sum(c * length**k for k, c in enumerate(q))
        out.append(math.exp(u_from) * (math.exp(length) * at_end - q[0]))
    return out


class DEIS(Sampler):
    """DEIS (Zhang & Chen 2023, arXiv 2204.13902): the probability-flow ODE in y = x/α and the
    noise-to-signal ratio ρ = σ/α is dy/dρ = ε̂, and each step integrates a polynomial in ln ρ through
    the ε̂ of the last ``order`` evaluations exactly (ρAB-DEIS with log-ρ nodes, diffusers'
    ``DEISMultistepScheduler``): one network evaluation per step. Order 1 is DDIM. On a grid spaced
    in ρ^{1/rho} (``ratio_grid``; Karras et al. 2022) it is the most accurate of diffusers'
    multistep settings on many Gaussian problems at 6 to 15 evaluations
    (``stdiff/bench/results/sampler_heldout.md``), and one of the methods ``UniPC``'s plan chooses from.

    Args:
        steps: number of steps (network evaluations), >= 1.
        order: 1, 2 or 3; the first steps use lower orders until enough evaluations exist.
        rho: the grid's exponent, > 0 (7 is Karras et al.'s; larger crowds the steps nearer t_min).
        lambda_start: half log-SNR log(α/σ) where the grid starts, or None for ``t_max``; ``t_max``
            where that is later.
        lower_order_final: below 15 steps, lower the order of the last steps to the steps left.
        endpoint: ``t_min``, ``denoise``, ``ode`` or ``root`` (see ``Sampler``).
    """

    def __init__(
        self,
        steps: int = 20,
        order: int = 3,
        rho: float = 7.0,
        lambda_start: float | None = None,
        lower_order_final: bool = False,
        endpoint: Endpoint = "t_min",
    ) -> None:
        super().__init__(steps, "karras", rho, endpoint)
        if order not in (1, 2, 3):
            raise ValueError(f"DEIS.order must be 1, 2 or 3, got {order!r}")
        if lambda_start is not None and not (isinstance(lambda_start, int | float) and math.isfinite(lambda_start)):
            raise ValueError(f"DEIS.lambda_start must be a finite number or null (t_max), got {lambda_start!r}")
        check_positive("DEIS.rho", rho)
        if not isinstance(lower_order_final, bool):
            raise ValueError(f"DEIS.lower_order_final must be true or false, got {lower_order_final!r}")  # noqa: TRY004
        self.order, self.lambda_start, self.lower_order_final = order, lambda_start, lower_order_final
        self.begin()

    def times(self, schedule: NoiseSchedule, variance: float = 1.0) -> Tensor:
        return ratio_grid(schedule, self.intervals, self.rho, self.lambda_start)

    def begin(self) -> None:
        self._history: list[tuple[float, Tensor]] = []  # (ln ρ, ε̂) of the last evaluations
        self._taken = 0

    def step(self, model, schedule, x, t, s, generator):
        (a_t, s_t), (a_s, s_s) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
        u_t, u_s = math.log(s_t / a_t), math.log(s_s / a_s)
        eps = _eps(model, x, t)
        if self._history and self._history[-1][0] == u_t:  # the same time again (Replacement's resampling)
            self._history.pop()
        else:
            self._taken += 1
        self._history = (self._history + [(u_t, eps)])[-self.order:]
        order = len(self._history)
        if self.lower_order_final and self.intervals < 15:
            order = min(order, self.intervals - self._taken + 1)
        used = self._history[-order:]
        weights = exp_lagrange_weights([u for u, _ in used], u_t, u_s)
        y = x / a_t + sum(w * e for w, (_, e) in zip(weights, used, strict=True))
        return a_s * y
