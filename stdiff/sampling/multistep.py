"""Multistep samplers: each step reuses the data predictions of the steps before it."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from stdiff._validation import check_int, check_positive
from stdiff.sampling import plan as planning
from stdiff.sampling.base import (
    ENDPOINT_EVALUATIONS,
    Endpoint,
    Polynomial,
    Sampler,
    Spacing,
    _check_endpoint,
    _endpoint,
    _noise,
    _solve,
    _x0,
    alpha_sigma,
    endpoint_evaluations,
    ratio_grid,
    start_lambda,
)
from stdiff.sampling.deis import DEIS
from stdiff.sampling.plan import FEWER_STEPS, make_plan, steps_window
from stdiff.sampling.probe import probe
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
    return _solve([[r ** (i - 1) for r in ratios] for i in range(1, len(ratios) + 1)], rhs), phi


# UniPC's settings before a probe (an explicit ``order``, ``lambda_start`` or ``skew`` is used as given)
ORDER3_FROM = 15  # order 2 below this budget, 3 from it
LAMBDA_START = {2: -2.0, 3: -1.5}  # the grid's start, half log-SNR c − ln n − ½ ln v, by order
_PLANS: dict[tuple, dict] = {}  # the last plans made, by the sampler's settings and the spectrum they were made for


class UniPC(Sampler):
    """UniPC (Zhao et al. 2023, arXiv 2302.04867), stdiff's default: a multistep predictor (UniP)
    and corrector (UniC) on the probability-flow ODE in half log-SNR λ = log(α/σ), data
    prediction, linear part exact. The corrector reuses the evaluation that starts the next step,
    so it raises the order by one at no cost.

    ``steps`` is the budget in network evaluations, all included, and every option left to ``auto``
    (None) is planned for the model at hand before each draw (``plan``):

    - a probe reads the spectrum of the denoiser's gain at t_min: exactly where d <= ``SPANNED`` (2 calls,
      on 1 row and d), else by Lanczos, 2 (``PROBE_STEPS`` + 1) model calls on ``PROBE_ROWS`` + 1 rows,
      whatever the batch, not counted in ``evaluations`` (``stdiff.sampling.probe.probe``);
    - that spectrum describes a Gaussian (``GaussianSurrogate``) on which every candidate runs in
      microseconds, with no model call (``stdiff.sampling.plan``): each method and grid of ``GRIDS``
      (UniPC's steps with an order, start c and skew, or DEIS's ε-polynomial steps in ln σ/α,
      ``stdiff.sampling.deis``, with an order, start c and grid exponent rho), with k steps (every k
      up to ``EVERY_STEPS``, then 8 % apart: the same k for every budget, ``steps_window``), and each
      endpoint of e evaluations, k + e <= steps (``t_min``, or x̂₀ + p(G)(x/α − x̂₀) with p of e
      coefficients fitted to the spectrum, ``stdiff.sampling.probe.fit_endpoint``);
    - the candidate that leaves the least KL there is used (``planned`` holds it and the KL it
      expects); the same spectrum again reuses the plan.

    Where the data are Gaussian the surrogate is the model itself, up to the quadrature, so the plan's
    KL is the draw's. The candidates were chosen on seeded Gaussian problems
    (``stdiff.bench.sampler_tuning``) and scored on 64 others against every setting of diffusers'
    multistep schedulers (``stdiff/bench/results/sampler_heldout.md``). So ``UniPC`` names the
    default, and its own steps are one of the methods its plan may choose (``repr`` says which). With nothing left to ``auto``,
    no probe runs; before the first probe the settings are order 2 below 15 evaluations (skew
    0.6 + n/6, start −2.0 − ln n − ½ ln v) and 3 from 15 (uniform in λ, start −1.5 − ln n − ½ ln v).

    The grid starts at the half log-SNR ``lambda_start`` (or ``t_max``, whichever is later), where
    the data is all but forgotten, from the forward marginal of data with the model's mean and
    variance (``Sampler.start_state``): a mean or a scale costs nothing. It is uniform in
    ``u ∈ [0, 1]`` mapped by λ = λ₀ + (λ₁ − λ₀)(1 − (1 − u)^skew), ``skew`` > 1 putting the steps
    where the data prediction still changes, near t_min.

    Args:
        steps: network evaluations, >= 1 (an explicit endpoint needs room for two steps besides
            its own evaluations: ``denoise`` and ``ode`` take one, ``root`` three).
        order: 1, 2 or 3, or None for auto; the first steps use lower orders until enough evaluations exist.
        endpoint: ``auto`` (planned), ``t_min``, ``denoise``, ``ode`` or ``root`` (see ``Sampler``).
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
        self.given = {"order": order, "lambda_start": lambda_start, "skew": skew}  # None: chosen by the plan
        self.order = order if order is not None else (2 if steps < ORDER3_FROM else 3)
        super().__init__(steps, "log_snr", 7.0, "t_min")
        self.endpoint = endpoint
        self.resolved: str | Polynomial = endpoint if endpoint != "auto" else "t_min"  # until a probe says otherwise
        self._steps: int | None = None  # the grid's steps, where a plan chose fewer than the budget allows
        if endpoint != "auto" and self.intervals < 2 and endpoint != "t_min":
            raise ValueError(f"UniPC.steps={steps} with endpoint {endpoint!r} leaves {self.intervals} step(s) from the "
                             f"start to t_min (the endpoint takes {ENDPOINT_EVALUATIONS[endpoint]} evaluations): use "
                             f"steps >= {ENDPOINT_EVALUATIONS[endpoint] + 2}, or endpoint auto")  # fmt: skip
        self.auto_start = lambda_start is None
        self.lambda_start = lambda_start if lambda_start is not None else LAMBDA_START[max(self.order, 2)] - math.log(steps)
        self.skew = skew if skew is not None else (0.6 + steps / 6 if self.order <= 2 else 1.0)
        self.corrector = corrector
        self.method = "unipc"  # or "deis", where a plan chose DEIS's steps (``stdiff.sampling.deis``) on its grid of exponent rho
        self.planned: dict | None = None  # the last plan: its settings and the KL it expects
        self._kept = False  # a plan given to ``use`` to keep: no probe
        self.begin()

    @property
    def intervals(self) -> int:
        return self._steps if self._steps is not None else self.steps - endpoint_evaluations(self.resolved)

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample: the budget ``steps``, or fewer where the plan found them better."""
        return self.intervals + endpoint_evaluations(self.resolved)

    @property
    def automatic(self) -> bool:
        """Whether anything is left to the probe's plan (the endpoint or a grid setting)."""
        return self.endpoint == "auto" or any(v is None for v in self.given.values())

    def prepare(self, model, sample_shape, moments, device, dtype, cond, conditional=None) -> None:
        if self.automatic and self.steps >= 2 and not self._kept:
            conditional = bool(cond) if conditional is None else conditional
            nodes, weights, mean_precision = probe(model, sample_shape, moments, device, dtype, cond)
            variance = 1.0 if moments is None else moments[1]
            key = (self.steps, self.endpoint, self.corrector, tuple(self.given.items()), tuple(planning.GRIDS), repr(model.schedule), variance,
                   nodes.numpy().tobytes(), weights.numpy().tobytes(), mean_precision, conditional)  # fmt: skip
            if key not in _PLANS:  # the same settings and spectrum again (the same model): the same plan
                while len(_PLANS) >= 64:
                    _PLANS.pop(next(iter(_PLANS)))
                _PLANS[key] = self.plan(model.schedule, nodes, weights, variance, mean_precision, conditional)
            self.use(_PLANS[key])

    def endpoint_for(self, nodes: Tensor, weights: Tensor, schedule: NoiseSchedule, variance: float = 1.0,
                     mean_precision: float = 0.0) -> str | Polynomial:  # fmt: skip
        """The endpoint this sampler ends on for a model whose gain at t_min has the spectrum
        (``nodes``, ``weights``), and whose data's mean has the precision ``mean_precision`` (mᵀK⁻¹m):
        the plan's where the endpoint is ``auto``."""
        if not self.automatic or self.steps < 2:
            return self.resolved
        return self.plan(schedule, nodes, weights, variance, mean_precision)["endpoint"]

    def plan(self, schedule: NoiseSchedule, nodes: Tensor, weights: Tensor, variance: float = 1.0,
             mean_precision: float = 0.0, conditional: bool = False) -> dict:  # fmt: skip
        """The settings, among those left to choose (``GRIDS`` for method, order, start and skew or rho; the grid's
        steps k of ``steps_window``; an endpoint of e evaluations, a
        polynomial fitted to the spectrum, ``stdiff.sampling.probe.fit_endpoint``, k + e <= n), that
        leave the least KL on the Gaussian the gain's spectrum (``nodes``, ``weights``) describes
        (``GaussianSurrogate``): every candidate run there, where it costs no model call; stopping at
        t_min also costs ½ (1 − α)² ``mean_precision`` (mᵀK⁻¹m: the mean shrunk to α m). A
        ``conditional`` draw keeps k >= n − ``FEWER_STEPS``: its mean is the observed values' posterior
        mean, which the zero-mean surrogate cannot see, and fewer steps start later, where the start's
        mean α m misses it (a forecast's CRPS 1.06 × the exact posterior's at k = 7, 1.046 from 17). Returns
        method, order, lambda_start, skew, rho, steps, endpoint and kl (what the surrogate expects)."""
        lowest = 1 if self.steps < 3 else 2
        window = steps_window(self.steps, lowest) if not conditional else range(max(lowest, self.steps - FEWER_STEPS), self.steps + 1)
        return make_plan(self, schedule, nodes, weights, variance, mean_precision, list(window))

    def use(self, plan: dict, keep: bool = False) -> None:
        """Take a ``plan``'s settings for the next draw (every later draw with ``keep``, no probe)."""
        self._kept = keep
        if not math.isfinite(plan.get("kl", math.inf)):
            return  # nothing ran on the surrogate: keep the settings as they are
        self.order, self.lambda_start, self.auto_start, self.skew = (plan[k] for k in ("order", "lambda_start", "auto_start", "skew"))
        self.method, self.rho = plan.get("method", "unipc"), plan.get("rho", 7.0)
        self.resolved = plan["endpoint"]
        self._steps = plan["steps"]
        self.planned = dict(plan)

    def times(self, schedule: NoiseSchedule, variance: float = 1.0) -> Tensor:
        start = self.lambda_start - (0.5 * math.log(variance) if self.auto_start else 0.0)  # the data's own SNR
        if self.method == "deis":
            return ratio_grid(schedule, self.intervals, self.rho, start)
        lam_lo, lam_end, lam_hi = start_lambda(schedule, start)  # half log-SNR
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
        self._coefficients: dict[float, tuple[float, float]] = {}  # (α, σ) at the draw's times
        self._deis = DEIS(self.intervals, self.order) if self.method == "deis" else None  # its steps, where the plan chose DEIS

    def _alpha_sigma(self, schedule: NoiseSchedule, t: float) -> tuple[float, float]:
        if t not in self._coefficients:
            self._coefficients[t] = alpha_sigma(schedule, t)
        return self._coefficients[t]

    def _evaluate(self, model, schedule, x: Tensor, t: float) -> tuple[Tensor, float]:
        """Evaluate x̂₀ at (x, t), apply the corrector to x with it, and record it: (x, λ)."""
        a_t, s_t = self._alpha_sigma(schedule, t)
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
        if self._deis is not None:
            return self._deis.step(model, schedule, x, t, s, generator)
        x, lam_t = self._evaluate(model, schedule, x, t)
        s_t, (a_s, s_s) = self._alpha_sigma(schedule, t)[1], self._alpha_sigma(schedule, s)
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
        at = x  # x̂₀ is evaluated here, before the corrector moves x
        x, _ = self._evaluate(model, schedule, x, schedule.t_min)
        return _endpoint(self.resolved, model, schedule, x, self._history[-1][1], at)

    def __repr__(self) -> str:
        # the settings in use, whether chosen for the budget or given
        grid = f"skew={self.skew:.4g}" if self.method == "unipc" else f"DEIS steps, rho={self.rho:.4g}"
        return (f"UniPC(steps={self.steps}, order={self.order}, endpoint={self.endpoint!r}, "
                f"lambda_start={self.lambda_start:.4g}, {grid}, corrector={self.corrector})")
