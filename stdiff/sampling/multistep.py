"""Multistep samplers: each step reuses the data predictions of the steps before it."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from stdiff._validation import check_int, check_positive
from stdiff.sampling.base import (
    ENDPOINT_EVALUATIONS,
    Endpoint,
    Sampler,
    Spacing,
    _check_endpoint,
    _endpoint,
    _noise,
    _x0,
    alpha_sigma,
    early_stopping_floor,
)
from stdiff.schedules import NoiseSchedule


class DPMSolver(Sampler):
    """DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): a multistep solver of the probability-flow
    ODE in half log-SNR λ = log(α/σ), integrating the linear part exactly and the data prediction
    x̂₀ = (x − σ ε̂)/α by a polynomial through the last ``order`` evaluations (Alg. 2, "2M", and
    the third-order multistep update): one network evaluation per step. With ``stochastic`` it is
    the SDE variant (diffusers' ``sde-dpmsolver++``; order 1 is DDPM's ancestral step), which
    injects the reverse SDE's noise and so forgets a model's errors instead of carrying them to
    the end.

    Args:
        steps: number of steps (network evaluations), >= 1.
        spacing: time grid (see ``Sampler``); ``log_snr`` is the solver's natural one.
        rho: exponent of the ``karras`` spacing.
        order: 1, 2 or 3 (``stochastic``: 1 or 2); the first steps use lower orders until enough
            evaluations exist.
        stochastic: the SDE variant.
        lower_order_final: below 15 steps, lower the order of the last steps to the steps left
            (diffusers' default): fewer, larger steps make a high order unstable at the end.
        endpoint: ``t_min``, ``denoise`` or ``ode`` (see ``Sampler``).
    """

    def __init__(
        self,
        steps: int = 20,
        spacing: Spacing = "log_snr",
        rho: float = 7.0,
        order: int = 2,
        stochastic: bool = False,
        lower_order_final: bool = True,
        endpoint: Endpoint = "t_min",
    ) -> None:
        super().__init__(steps, spacing, rho, endpoint)
        if order not in (1, 2, 3) or (stochastic and order == 3):
            allowed = "1 or 2 with stochastic=true" if stochastic else "1, 2 or 3"
            raise ValueError(f"DPMSolver.order must be {allowed}, got {order!r}")
        self.order, self.stochastic, self.lower_order_final = order, bool(stochastic), bool(lower_order_final)
        self.begin()

    def begin(self) -> None:
        self._history: list[tuple[float, Tensor]] = []  # (λ, x̂₀) of the last evaluations
        self._taken = 0

    def step(self, model, schedule, x, t, s, generator):
        (a_t, s_t), (a_s, s_s) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
        lam_t, lam_s = math.log(a_t / s_t), math.log(a_s / s_s)
        x0 = _x0(model, schedule, x, t)
        if self._history and self._history[-1][0] == lam_t:  # the same time again (Replacement's resampling)
            self._history.pop()
        else:
            self._taken += 1
        self._history = (self._history + [(lam_t, x0)])[-3:]
        order = min(self.order, len(self._history))
        if self.lower_order_final and self.steps < 15:
            order = min(order, self.steps - self._taken + 1)
        h = lam_s - lam_t
        (_, d0), d1, d2 = self._history[-1], 0.0, 0.0
        if order >= 2:
            lam_1, m1 = self._history[-2]
            d1_0 = (d0 - m1) / ((lam_t - lam_1) / h)
            d1 = d1_0
        if order == 3:
            lam_2, m2 = self._history[-3]
            r0, r1 = (lam_t - lam_1) / h, (lam_1 - lam_2) / h
            d1_1 = (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
        if self.stochastic:
            decay = -math.expm1(-2 * h)  # 1 − e^{−2h}
            mean = (s_s / s_t) * math.exp(-h) * x + a_s * decay * (d0 + 0.5 * d1)
            return mean + s_s * math.sqrt(decay) * _noise(x, generator)
        phi1 = math.expm1(-h)  # e^{−h} − 1
        out = (s_s / s_t) * x - a_s * phi1 * d0
        if order == 2:
            out = out - 0.5 * a_s * phi1 * d1
        elif order == 3:
            out = out + a_s * (phi1 / h + 1) * d1 - a_s * ((phi1 + h) / h**2 - 0.5) * d2
        return out


def _unipc_weights(ratios: list[float], h: float) -> tuple[list[float], float]:
    """UniPC's weights of the divided differences D_k = (x̂₀ at r_k − x̂₀ now)/r_k, ``ratios`` r_k
    the λ-offsets of the other points in units of the step h, and φ = e^{−h} − 1 (Zhao et al. 2023,
    Alg. 2 with B(h) = e^{−h} − 1, "bh2", data prediction): they solve Σ_k a_k r_k^{i−1} =
    i!·hφ_{i+1}/B(h), i = 1 … len(ratios), which makes the update exact for x̂₀ polynomial in λ."""
    phi = math.expm1(-h)
    g, factorial, rhs = phi / -h - 1, 1.0, []
    for i in range(1, len(ratios) + 1):
        rhs.append(g * factorial / phi)
        factorial *= i + 1
        g = g / -h - 1 / factorial
    if not ratios:
        return [], phi
    matrix = torch.tensor([[r ** (i - 1) for r in ratios] for i in range(1, len(ratios) + 1)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(rhs, dtype=torch.float64)).tolist(), phi


# UniPC's auto settings, chosen on the tuning half of ``stdiff.bench.sampling_problems`` only
# (``python -m stdiff.bench sampler_tuning``); ``sampler_heldout.md`` scores them on the other half.
ORDER3_FROM = 15  # order 2 below this budget, 3 from it
LAMBDA_START = {2: -2.0, 3: -1.5}  # the grid's start, half log-SNR c − ln n − ½ ln v, by order
FLOOR_LOW, FLOOR_HIGH = 0.1, 3.0  # early-stopping floors (nats) that separate the three endpoint rules


def auto_endpoint(steps: int, floor: float) -> str:
    """UniPC's endpoint for a budget of ``steps`` evaluations and the KL ``floor`` (nats) that stopping
    at t_min would leave, as the model's probe there reads it (``early_stopping_floor``): stop at
    t_min where the floor is far below what the evaluations buy, else spend one on ``ode``, or three
    on ``root`` where the noise at t_min hides much of the data."""
    if steps < 2:
        return "t_min"  # no evaluation to spare
    if floor >= FLOOR_HIGH:
        return "denoise" if steps <= 4 else "root"
    if floor >= FLOOR_LOW:
        return "t_min" if steps <= 4 else ("ode" if steps <= 15 else "root")
    return "t_min" if steps <= 8 else "ode"


class UniPC(Sampler):
    """UniPC (Zhao et al. 2023, arXiv 2302.04867), stdiff's default: a multistep predictor (UniP)
    and corrector (UniC) on the probability-flow ODE in half log-SNR λ = log(α/σ), data
    prediction, linear part exact. The corrector reuses the evaluation that starts the next step,
    so it raises the order by one at no cost.

    ``steps`` is the budget in network evaluations, all included, and every other option defaults
    to a setting chosen for that budget (``auto``), on the tuning half of 64 seeded Gaussian
    problems (``stdiff.bench.sampler_tuning``) and scored on the other half against every setting
    of diffusers' multistep schedulers (``stdiff/bench/results/sampler_heldout.md``):

    - up to 14 evaluations: order 2, a grid denser near t_min (skew 0.6 + n/6), starting at
      half log-SNR −2.0 − ln n − ½ ln v (v the data's per-coordinate variance);
    - from 15: order 3, a grid uniform in λ, starting at −1.5 − ln n − ½ ln v.

    The endpoint is chosen per call from a probe of the model at t_min (one call on a few rows of
    noise, ``early_stopping_floor``), which reads F, the KL that stopping at t_min would leave:
    F < 0.1 nats: ``t_min`` up to 8 evaluations, ``ode`` above; 0.1 ≤ F < 3: ``t_min`` up to 4,
    ``ode`` up to 15, ``root`` above; F ≥ 3 (the noise at t_min hides much of the data):
    ``denoise`` at 4, ``root`` above.

    The grid starts at the half log-SNR ``lambda_start`` (or ``t_max``, whichever is later), where
    the data is all but forgotten, from the forward marginal of data with the model's mean and
    variance (``Sampler.start_state``): a mean or a scale costs nothing. It is uniform in
    ``u ∈ [0, 1]`` mapped by λ = λ₀ + (λ₁ − λ₀)(1 − (1 − u)^skew), ``skew`` > 1 putting the steps
    where the data prediction still changes, near t_min.

    Args:
        steps: network evaluations, >= 1 (an explicit endpoint needs room for two steps besides
            its own evaluations: ``denoise`` and ``ode`` take one, ``root`` three).
        order: 1, 2 or 3, or None for auto; the first steps use lower orders until enough evaluations exist.
        endpoint: ``auto``, ``t_min``, ``denoise``, ``ode`` or ``root`` (see ``Sampler``).
        lambda_start: half log-SNR where the grid starts, or None for auto (c − ln steps − ½ ln v,
            v the data's variance, ``NoiseModel.data_moments``); the schedule's ``t_max`` if that is later.
        skew: the grid's exponent (1: uniform in λ), > 0, or None for auto.
        corrector: apply UniC after every predictor step.
    """

    def __init__(
        self,
        steps: int = 20,
        order: int | None = None,
        endpoint: Literal["auto", "t_min", "denoise", "ode", "root"] = "auto",
        lambda_start: float | None = None,
        skew: float | None = None,
        corrector: bool = True,
    ) -> None:
        check_int("UniPC.steps", steps, 1)
        endpoint = _check_endpoint("UniPC", endpoint, ("auto", "t_min", "denoise", "ode", "root"))
        if order is not None and order not in (1, 2, 3):
            raise ValueError(f"UniPC.order must be 1, 2, 3 or null (auto), got {order!r}")
        if lambda_start is not None and not (isinstance(lambda_start, int | float) and math.isfinite(lambda_start)):
            raise ValueError(f"UniPC.lambda_start must be a finite number or null (auto), got {lambda_start!r}")
        if skew is not None:
            check_positive("UniPC.skew", skew)
        if not isinstance(corrector, bool):
            raise ValueError(f"UniPC.corrector must be true or false, got {corrector!r}")  # noqa: TRY004
        self.order = order if order is not None else (2 if steps < ORDER3_FROM else 3)
        super().__init__(steps, "log_snr", 7.0, "t_min")
        self.endpoint = endpoint
        self.resolved = endpoint if endpoint != "auto" else auto_endpoint(steps, 0.0)  # until a probe says otherwise
        if endpoint != "auto" and self.intervals < 2 and endpoint != "t_min":
            raise ValueError(f"UniPC.steps={steps} with endpoint {endpoint!r} leaves {self.intervals} step(s) from the "
                             f"start to t_min (the endpoint takes {ENDPOINT_EVALUATIONS[endpoint]} evaluations): use "
                             f"steps >= {ENDPOINT_EVALUATIONS[endpoint] + 2}, or endpoint auto")  # fmt: skip
        self.auto_start = lambda_start is None
        self.lambda_start = lambda_start if lambda_start is not None else LAMBDA_START[max(self.order, 2)] - math.log(steps)
        self.skew = skew if skew is not None else (0.6 + steps / 6 if self.order <= 2 else 1.0)
        self.corrector = corrector
        self.begin()

    @property
    def intervals(self) -> int:
        return self.steps - ENDPOINT_EVALUATIONS[self.resolved]

    @property
    def evaluations(self) -> int:
        return self.steps  # the budget, whichever endpoint takes its share

    def prepare(self, model, sample_shape, moments, device, dtype, cond) -> None:
        if self.endpoint == "auto":
            self.resolved = auto_endpoint(self.steps, early_stopping_floor(model, sample_shape, moments, device, dtype, cond))

    def endpoint_for(self, floor: float) -> str:
        return self.endpoint if self.endpoint != "auto" else auto_endpoint(self.steps, floor)

    def times(self, schedule: NoiseSchedule, variance: float = 1.0) -> Tensor:
        ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
        lam_end, lam_hi = (schedule.log_snr(ends) / 2).tolist()  # half log-SNR
        start = self.lambda_start - (0.5 * math.log(variance) if self.auto_start else 0.0)  # the data's own SNR
        lam_lo = max(lam_end, min(start, lam_hi - 1.0))
        u = torch.linspace(0, 1, self.intervals + 1, dtype=torch.float64)
        lam = lam_lo + (lam_hi - lam_lo) * (1 - (1 - u) ** self.skew)
        times = schedule.time_at_log_snr(2 * lam)
        times[-1] = schedule.t_min
        if lam_lo == lam_end:  # the grid starts at t_max itself: exactly there, despite round-off
            times[0] = schedule.t_max
        return times

    def begin(self) -> None:
        self._history: list[tuple[float, Tensor]] = []  # (λ, x̂₀) of the last evaluations
        self._pending = None  # what the corrector needs at the point the last step predicted

    def _evaluate(self, model, schedule, x: Tensor, t: float) -> tuple[Tensor, float]:
        """Evaluate x̂₀ at (x, t), apply the corrector to x with it, and record it: (x, λ)."""
        a_t, s_t = alpha_sigma(schedule, t)
        lam_t = math.log(a_t / s_t)
        x0 = _x0(model, schedule, x, t)
        pending, self._pending = self._pending, None
        if self._history and self._history[-1][0] == lam_t:  # the same time again (Replacement's resampling)
            self._history.pop()
        elif pending is not None and self.corrector and pending[0] == lam_t:
            _, base, ratios, diffs, x_pred, h, x0_from = pending
            weights, phi = _unipc_weights([*ratios, 1.0], h)
            correction = sum(w * d for w, d in zip(weights, [*diffs, x0 - x0_from], strict=True))
            x = x + (base - a_t * phi * correction - x_pred)  # the corrected point, kept as a change to x
        self._history = (self._history + [(lam_t, x0)])[-self.order:]
        return x, lam_t

    def step(self, model, schedule, x, t, s, generator):
        x, lam_t = self._evaluate(model, schedule, x, t)
        s_t, (a_s, s_s) = alpha_sigma(schedule, t)[1], alpha_sigma(schedule, s)
        h = math.log(a_s / s_s) - lam_t
        x0 = self._history[-1][1]
        older = self._history[:-1][::-1]  # newest first
        ratios = [(lam - lam_t) / h for lam, _ in older]
        diffs = [(m - x0) / r for (_, m), r in zip(older, ratios, strict=True)]
        weights, phi = _unipc_weights(ratios, h)
        base = (s_s / s_t) * x - a_s * phi * x0
        out = base - a_s * phi * sum(w * d for w, d in zip(weights, diffs, strict=True)) if weights else base
        self._pending = (math.log(a_s / s_s), base, ratios, diffs, out, h, x0)
        return out

    def finish(self, model, schedule, x):
        if self.resolved == "t_min":
            return x
        x, _ = self._evaluate(model, schedule, x, schedule.t_min)
        return _endpoint(self.resolved, model, schedule, x, self._history[-1][1])

    def __repr__(self) -> str:
        # the settings in use, whether chosen for the budget or given
        return (f"UniPC(steps={self.steps}, order={self.order}, endpoint={self.endpoint!r}, "
                f"lambda_start={self.lambda_start:.4g}, skew={self.skew:.4g}, corrector={self.corrector})")
