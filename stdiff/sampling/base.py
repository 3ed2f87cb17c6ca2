"""The sampler interface: the time grid, ``Sampler`` (its loop, start and endpoint) and the helpers
every step shares."""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from stdiff._validation import check_int, check_positive, init_repr
from stdiff.diffusion import NoiseModel
from stdiff.schedules import NoiseSchedule

Spacing = Literal["uniform", "log_snr", "karras"]
DataMoments = tuple[Tensor | None, float]  # (mean (T, *space) or None for zero, per-coordinate variance)
Endpoint = Literal["t_min", "denoise", "ode", "root"]
ENDPOINTS = {
    "t_min": "the state at t_min: a draw of the data noised to t_min, off by the early-stopping KL",
    "denoise": "E[x0 | x_t_min] (Tweedie): as far off as t_min to second order, on the other side",
    "ode": "the probability-flow ODE from t_min to sigma = 0 in one Euler step in the noise variance s^2 = "
           "sigma^2/alpha^2, where its rate is smooth: y0 = y - (s/2) eps, i.e. (x/alpha + x0)/2; "
           "exact to first order in s^2 (Gaussian data: the bias falls from O(s^4) to O(s^8)), but only in "
           "directions whose variance is far above s^2: in the others it leaves half the noise, worse than denoise",
    "root": "the probability-flow ODE from t_min to sigma = 0 in every direction: for a linear denoiser of gain g "
            "(x0 = g y in an eigen-direction, y = x/alpha) the flow's end is sqrt(g) y, approximated by "
            "x0 + p(G)(y - x0) with p(g) = g - g^2/2 (exact as g -> 1, p(0) = 0), G applied by two more "
            "evaluations at t_min; never worse than t_min or denoise in any direction (UniPC's auto fits its own "
            "polynomial to the model's gain spectrum instead: stdiff.sampling.probe)",
}  # fmt: skip
# Every endpoint but t_min is a polynomial in the denoiser's gain G at t_min: x̂₀ + p(G) w, w = x/α − x̂₀,
# p(g) = Σ_k c_k g^k, one evaluation for x̂₀ and one more for each power of G (``_endpoint``).
POLYNOMIALS = {"t_min": None, "denoise": (0.0,), "ode": (0.5,), "root": (0.0, 1.0, -0.5)}
Polynomial = tuple[float, ...]  # (c_0, c_1, …): an endpoint fitted to the model (``stdiff.sampling.probe``)


def endpoint_evaluations(endpoint: str | Polynomial | None) -> int:
    """Network evaluations an endpoint (a name of ``ENDPOINTS`` or a polynomial's coefficients) costs."""
    coefficients = POLYNOMIALS[endpoint] if isinstance(endpoint, str) else endpoint
    return 0 if coefficients is None else len(coefficients)


ENDPOINT_EVALUATIONS = {name: endpoint_evaluations(name) for name in POLYNOMIALS}


def time_grid(schedule: NoiseSchedule, steps: int, spacing: Spacing = "log_snr", rho: float = 7.0) -> Tensor:
    """``steps + 1`` decreasing times from ``t_max`` to ``t_min`` (float64).

    ``uniform``: equal steps in t. ``log_snr``: equal steps in λ = log(α²/σ²). ``karras``: the
    noise-to-signal ratio σ/α spaced as in Karras et al. (2022, eq. 5) with exponent ``rho``.
    """
    check_int("steps", steps, 1)
    if spacing == "uniform":
        return torch.linspace(schedule.t_max, schedule.t_min, steps + 1, dtype=torch.float64)
    ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
    lam_lo, lam_hi = schedule.log_snr(ends)
    if spacing == "log_snr":
        lam = torch.linspace(lam_lo.item(), lam_hi.item(), steps + 1, dtype=torch.float64)
    elif spacing == "karras":
        return ratio_grid(schedule, steps, check_positive("rho", rho))
    else:
        raise ValueError(f"spacing must be one of uniform, log_snr, karras, got {spacing!r}")
    times = schedule.time_at_log_snr(lam)
    times[0], times[-1] = schedule.t_max, schedule.t_min  # exact ends despite round-off
    return times


def start_lambda(schedule: NoiseSchedule, lambda_start: float | None) -> tuple[float, float, float]:
    """(λ where a grid starts, λ at ``t_max``, λ at ``t_min``), λ the half log-SNR log(α/σ): the
    grid starts at ``lambda_start`` (None: at ``t_max``), or at ``t_max`` if that is later, and at
    least one unit of λ before ``t_min``."""
    ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
    lam_end, lam_hi = (schedule.log_snr(ends) / 2).tolist()
    if lambda_start is None:
        return lam_end, lam_end, lam_hi
    return max(lam_end, min(lambda_start, lam_hi - 1.0)), lam_end, lam_hi


def ratio_grid(schedule: NoiseSchedule, intervals: int, rho: float, lambda_start: float | None = None) -> Tensor:
    """``intervals + 1`` decreasing times whose noise-to-signal ratios ρ = σ/α are spaced as in
    Karras et al. (2022, eq. 5) with exponent ``rho``, from ``lambda_start`` (``start_lambda``) to
    ``t_min``: ρ_i^{1/rho} uniform, so the steps crowd where ρ is small."""
    lam_lo, lam_end, lam_hi = start_lambda(schedule, lambda_start)
    ramp = torch.linspace(0, 1, intervals + 1, dtype=torch.float64)
    lo, hi = math.exp(-lam_lo / rho), math.exp(-lam_hi / rho)  # ρ^{1/rho} at both ends
    lam = -rho * torch.log(lo + ramp * (hi - lo))
    times = schedule.time_at_log_snr(2 * lam)
    times[-1] = schedule.t_min
    if lam_lo == lam_end:
        times[0] = schedule.t_max
    return times


class Sampler(ABC):
    """Integrates the reverse process over a time grid; subclasses implement one ``step``.

    Args:
        steps: number of steps (network evaluations per step depend on the method: ``evaluations``
            gives the total), >= 1.
        spacing: time grid: ``uniform`` in t, ``log_snr`` (uniform in log-SNR) or ``karras``.
        rho: exponent of the ``karras`` spacing.
        endpoint: what the sample is, from the state x at ``t_min``: ``t_min``, x itself (a draw of
            the data noised to ``t_min``); ``denoise``, its denoised estimate x̂₀ = E[x₀ | x] (Tweedie,
            diffusers' final step to σ = 0); ``ode``, the probability-flow ODE carried on to σ = 0 by
            one Euler step in the noise variance, ``(x/α + x̂₀)/2`` (see ``ENDPOINTS``). The last two
            cost one more network evaluation and remove the early-stopping bias to leading order
            (``ode``) or overshoot it (``denoise``).
    """

    evaluations_per_step = 1  # network evaluations per step

    def __init__(
        self, steps: int = 100, spacing: Spacing = "log_snr", rho: float = 7.0, endpoint: Endpoint = "t_min"
    ) -> None:
        self.steps = check_int(f"{type(self).__name__}.steps", steps, 1)
        if spacing not in ("uniform", "log_snr", "karras"):
            raise ValueError(f"{type(self).__name__}.spacing must be one of uniform, log_snr, karras, got {spacing!r}")
        self.spacing = spacing
        self.rho = check_positive(f"{type(self).__name__}.rho", rho)
        self.endpoint = _check_endpoint(type(self).__name__, endpoint)

    @property
    def intervals(self) -> int:
        """Steps of the time grid from ``t_max`` (or where the grid starts) to ``t_min``."""
        return self.steps

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample: the cost of a sampler, whatever its order."""
        return self.intervals * self.evaluations_per_step + ENDPOINT_EVALUATIONS[self.endpoint]

    @torch.no_grad()
    def sample(
        self,
        model: NoiseModel,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        progress: Callable[[int, int], None] | None = None,
        cond: dict[str, Tensor] | None = None,
        start: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Draw samples of ``shape = (n, T, *space)`` at time ``t_min`` of ``model.schedule``.

        Starts from the state ``start`` at the grid's first time if given, else from the forward
        marginal there of data with the model's ``data_moments`` (mean m, per-coordinate variance
        v; zero and one unless the model says otherwise), made white: x = α m + √(α² v + σ²) z,
        z = ``noise`` or N(0, I) (``start_state``). ``progress(i, steps)`` is called after each
        step (``intervals`` of them); ``cond`` goes to every model call. A deterministic sampler is
        a function of z alone: with a linear model (the exact model of Gaussian data) an affine
        one, whose push-forward of N(0, I) is exact (``stdiff.metrics.pushforward_kl``).
        """
        schedule = model.schedule
        moments = getattr(model, "data_moments", None)
        self.prepare(model, tuple(shape[1:]), moments, device, dtype, cond)
        if cond:
            model = functools.partial(model, **cond)
        times = self.times(schedule, 1.0 if moments is None else moments[1])
        if start is not None:
            x = start.to(device=device or start.device, dtype=dtype).clone()
        else:
            if noise is None:
                device = generator.device if generator is not None and device is None else device
                noise = torch.randn(*shape, generator=generator, device=device, dtype=dtype)
            x = self.start_state(schedule, times[0].item(), noise.to(device=device or noise.device, dtype=dtype), moments)
        self.begin()
        for i in range(self.intervals):
            x = self.step(model, schedule, x, times[i].item(), times[i + 1].item(), generator)
            if progress is not None:
                progress(i + 1, self.intervals)
        return self.finish(model, schedule, x)

    def prepare(self, model: NoiseModel, sample_shape: tuple[int, ...], moments: DataMoments | None, device,
                dtype: torch.dtype, cond: dict[str, Tensor] | None, conditional: bool | None = None) -> None:  # fmt: skip
        """Called at the start of every ``sample``, before the grid is made (``UniPC`` probes the model
        there to choose its endpoint); ``conditional`` (default: whether ``cond`` is given) says the
        draw completes observed values."""

    def endpoint_for(self, nodes: Tensor, weights: Tensor, schedule: NoiseSchedule, variance: float = 1.0,
                     mean_precision: float = 0.0):  # fmt: skip
        """The endpoint this sampler ends on for a model whose denoiser's gain at t_min has the spectrum
        (``nodes``, ``weights``; ``stdiff.sampling.probe``): its own, unless it plans by the spectrum
        (``UniPC``'s auto)."""
        return self.endpoint

    def begin(self) -> None:
        """Called before the first step of every draw (multistep samplers forget their history)."""

    def finish(self, model: NoiseModel, schedule: NoiseSchedule, x: Tensor) -> Tensor:
        """The sample from the state ``x`` at ``t_min``, by ``endpoint``."""
        if self.endpoint == "t_min":
            return x
        return _endpoint(self.endpoint, model, schedule, x, _x0(model, schedule, x, schedule.t_min))

    @staticmethod
    def start_state(schedule: NoiseSchedule, t: float, noise: Tensor, moments: DataMoments | None = None) -> Tensor:
        """The state at time ``t`` from white ``noise``: α m + √(α² v + σ²) z, the forward marginal at
        ``t`` of data with mean m and per-coordinate variance v (``moments``; 0 and 1 if None), its
        correlations left out (they are what the sampler recovers)."""
        a, s = alpha_sigma(schedule, t)
        mean, variance = (None, 1.0) if moments is None else moments
        x = math.sqrt(a**2 * variance + s**2) * noise
        return x if mean is None else x + a * mean.to(device=x.device, dtype=x.dtype)

    def times(self, schedule: NoiseSchedule, variance: float = 1.0) -> Tensor:
        """The ``intervals + 1`` decreasing times of this sampler's grid, for data of per-coordinate
        ``variance`` (a grid that starts later than ``t_max`` starts later for smaller data)."""
        return time_grid(schedule, self.steps, self.spacing, self.rho)

    @staticmethod
    def initial(schedule: NoiseSchedule, shape: Sequence[int], generator=None, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
        """Noise at ``t_max``: N(0, s² I) with s = ``initial_scale``."""
        device = generator.device if generator is not None and device is None else device
        return Sampler.initial_scale(schedule) * torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    @staticmethod
    def initial_scale(schedule: NoiseSchedule) -> float:
        """The start's standard deviation, √(α(t_max)² + σ(t_max)²): the forward marginal of
        unit-variance data (1 for variance-preserving schedules)."""
        t_max = torch.tensor([schedule.t_max], dtype=torch.float64)
        return math.sqrt((schedule.alpha(t_max) ** 2 + schedule.sigma(t_max) ** 2).item())

    @abstractmethod
    def step(self, model: NoiseModel, schedule: NoiseSchedule, x: Tensor, t: float, s: float, generator) -> Tensor:
        """Move ``x`` from time ``t`` to the earlier time ``s < t``."""

    def __repr__(self) -> str:
        return init_repr(self)


# --- helpers shared by the steps -----------------------------------------------------------------


def alpha_sigma(schedule: NoiseSchedule, t: float) -> tuple[float, float]:
    """(α(t), σ(t)) as floats, computed in float64."""
    tt = torch.tensor(t, dtype=torch.float64)
    return schedule.alpha(tt).item(), schedule.sigma(tt).item()


def _eps(model: NoiseModel, x: Tensor, t: float) -> Tensor:
    return model(x, torch.full((len(x),), t, dtype=x.dtype, device=x.device))


def _x0(model: NoiseModel, schedule: NoiseSchedule, x: Tensor, t: float) -> Tensor:
    """The data prediction x̂₀ = (x − σ ε̂) / α at time ``t``."""
    a, s = alpha_sigma(schedule, t)
    return (x - s * _eps(model, x, t)) / a


def _check_endpoint(owner: str, endpoint, allowed: tuple[str, ...] = tuple(ENDPOINTS)) -> str:
    if endpoint not in allowed:
        raise ValueError(f"{owner}.endpoint must be one of {', '.join(allowed)}, got {endpoint!r}")
    return endpoint


def _endpoint(endpoint: str | Polynomial, model: NoiseModel, schedule: NoiseSchedule, x: Tensor, x0: Tensor,
              at: Tensor | None = None) -> Tensor:  # fmt: skip
    """The sample from the state ``x`` at ``t_min`` and the data prediction ``x0`` evaluated at
    ``at`` (``x`` itself, or the point a corrector then moved to ``x``): x̂₀ + p(G) w, w = x/α − x̂₀,
    ``endpoint`` a name of ``ENDPOINTS`` or p's coefficients (c_0, c_1, …), each power of the gain G
    applied by one more evaluation: G v = x̂₀(at) − x̂₀(at − α v), a secant about the point where
    ``x0`` was evaluated (about ``x`` it would add G's image of the corrector's move to every power)."""
    coefficients = POLYNOMIALS[endpoint] if isinstance(endpoint, str) else endpoint
    if coefficients is None:
        return x
    if coefficients == (0.0,):
        return x0  # denoise
    a = alpha_sigma(schedule, schedule.t_min)[0]
    power = x / a - x0
    out = x0 + coefficients[0] * power
    for c in coefficients[1:]:
        power = x0 - _x0(model, schedule, (x if at is None else at) - a * power, schedule.t_min)
        out = out + c * power
    return out


def _noise(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _coefficient(fn: Callable[[Tensor], Tensor], t: float) -> float:
    return fn(torch.tensor([t], dtype=torch.float64)).item()


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting, for the few unknowns of a multistep weight (in
    float64 like torch's solve, and without its per-call cost)."""
    n = len(rhs)
    rows = [list(row) + [b] for row, b in zip(matrix, rhs, strict=True)]
    for i in range(n):
        pivot = max(range(i, n), key=lambda r: abs(rows[r][i]))
        rows[i], rows[pivot] = rows[pivot], rows[i]
        if rows[i][i] == 0:
            raise ZeroDivisionError("coincident points in a multistep weight")
        for r in range(i + 1, n):
            f = rows[r][i] / rows[i][i]
            rows[r] = [a - f * b for a, b in zip(rows[r], rows[i], strict=True)]
    out = [0.0] * n
    for i in reversed(range(n)):
        out[i] = (rows[i][n] - sum(rows[i][j] * out[j] for j in range(i + 1, n))) / rows[i][i]
    return out
