"""Samplers: from noise at ``t_max`` to a sample at the early-stopping time ``t_min``.

Every sampler has the same signature, ``sampler.sample(model, shape, generator, …, cond=…)``, and
takes any noise model ``model(x_t, t, **cond) -> ε̂`` with a ``schedule`` (``Denoiser``,
``ExactDenoiser``, or the ``DiffusionModule`` holding one); ``cond`` (observations, masks) is
passed to every model call unchanged. The time grid (``steps``, ``spacing``) is a sampler option.
Nothing is clamped: GP data is unbounded.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from stdiff._validation import check_int, check_positive, check_range, init_repr
from stdiff.diffusion import NoiseModel
from stdiff.schedules import NoiseSchedule

Spacing = Literal["uniform", "log_snr", "karras"]
Endpoint = Literal["t_min", "denoise", "ode"]
ENDPOINTS = {
    "t_min": "the state at t_min: a draw of the data noised to t_min, off by the early-stopping KL",
    "denoise": "E[x0 | x_t_min] (Tweedie): as far off as t_min to second order, on the other side",
    "ode": "the probability-flow ODE from t_min to sigma = 0 in one Euler step in the noise variance s^2 = "
           "sigma^2/alpha^2, where its rate is smooth: y0 = y - (s/2) eps, i.e. (x/alpha + x0)/2; "
           "exact to first order in s^2 (Gaussian data: the bias falls from O(s^4) to O(s^8))",
}  # fmt: skip


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
        check_positive("rho", rho)
        s_max, s_min = torch.exp(-lam_lo / 2), torch.exp(-lam_hi / 2)  # σ/α at both ends
        ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        lam = -2 * s.log()
    else:
        raise ValueError(f"spacing must be one of uniform, log_snr, karras, got {spacing!r}")
    times = schedule.time_at_log_snr(lam)
    times[0], times[-1] = schedule.t_max, schedule.t_min  # exact ends despite round-off
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
        return self.intervals * self.evaluations_per_step + int(self.endpoint != "t_min")

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
    ) -> Tensor:
        """Draw samples of ``shape = (n, T, *space)`` at time ``t_min`` of ``model.schedule``.

        Starts from ``start`` if given, else from N(0, (α(t_max)² + σ(t_max)²) I), the forward
        marginal of unit-variance data (N(0, I) for variance-preserving schedules).
        ``progress(i, steps)`` is called after each step (``intervals`` of them); ``cond`` goes to
        every model call. A deterministic sampler is a function of ``start`` alone: with a linear
        model (the exact model of Gaussian data) an affine one, whose push-forward of N(0, I) is
        exact (``stdiff.metrics.pushforward_kl``).
        """
        schedule = model.schedule
        if cond:
            model = functools.partial(model, **cond)
        times = self.times(schedule)
        if start is not None:
            x = start.to(device=device or start.device, dtype=dtype).clone()
        else:
            x = self.initial(schedule, shape, generator, device, dtype)
        self.begin()
        for i in range(self.intervals):
            x = self.step(model, schedule, x, times[i].item(), times[i + 1].item(), generator)
            if progress is not None:
                progress(i + 1, self.intervals)
        return self.finish(model, schedule, x)

    def begin(self) -> None:
        """Called before the first step of every draw (multistep samplers forget their history)."""

    def finish(self, model: NoiseModel, schedule: NoiseSchedule, x: Tensor) -> Tensor:
        """The sample from the state ``x`` at ``t_min``, by ``endpoint``."""
        if self.endpoint == "t_min":
            return x
        return _endpoint(self.endpoint, schedule, x, _x0(model, schedule, x, schedule.t_min))

    def times(self, schedule: NoiseSchedule) -> Tensor:
        """The ``intervals + 1`` decreasing times of this sampler's grid."""
        return time_grid(schedule, self.steps, self.spacing, self.rho)

    @staticmethod
    def initial(schedule: NoiseSchedule, shape: Sequence[int], generator=None, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
        """Noise at ``t_max``: N(0, (α(t_max)² + σ(t_max)²) I), the forward marginal of unit-variance data."""
        device = generator.device if generator is not None and device is None else device
        t_max = torch.tensor([schedule.t_max], dtype=torch.float64)
        scale = math.sqrt((schedule.alpha(t_max) ** 2 + schedule.sigma(t_max) ** 2).item())
        return scale * torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    @abstractmethod
    def step(self, model: NoiseModel, schedule: NoiseSchedule, x: Tensor, t: float, s: float, generator) -> Tensor:
        """Move ``x`` from time ``t`` to the earlier time ``s < t``."""

    def __repr__(self) -> str:
        return init_repr(self)


# --- helpers shared by the steps -----------------------------------------------------------------


def _at(schedule: NoiseSchedule, t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return schedule.alpha(tt).item(), schedule.sigma(tt).item()


def _eps(model: NoiseModel, x: Tensor, t: float) -> Tensor:
    return model(x, torch.full((len(x),), t, dtype=x.dtype, device=x.device))


def _x0(model: NoiseModel, schedule: NoiseSchedule, x: Tensor, t: float) -> Tensor:
    """The data prediction x̂₀ = (x − σ ε̂) / α at time ``t``."""
    a, s = _at(schedule, t)
    return (x - s * _eps(model, x, t)) / a


def _check_endpoint(owner: str, endpoint, allowed: tuple[str, ...] = ("t_min", "denoise", "ode")) -> str:
    if endpoint not in allowed:
        raise ValueError(f"{owner}.endpoint must be one of {', '.join(allowed)}, got {endpoint!r}")
    return endpoint


def _endpoint(endpoint: str, schedule: NoiseSchedule, x: Tensor, x0: Tensor) -> Tensor:
    """The sample from the state ``x`` at ``t_min`` and its data prediction ``x0`` (see ``ENDPOINTS``)."""
    if endpoint == "denoise":
        return x0
    a = _at(schedule, schedule.t_min)[0]
    return 0.5 * (x / a + x0)  # "ode"


def _noise(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _coefficient(fn: Callable[[Tensor], Tensor], t: float) -> float:
    return fn(torch.tensor([t], dtype=torch.float64)).item()


# --- samplers ------------------------------------------------------------------------------------


class EulerMaruyama(Sampler):
    """Euler–Maruyama on the reverse SDE ``dx = [f x − g² ∇log p_t(x)] dt + g dW̄`` (Song et al. 2021)."""

    def step(self, model, schedule, x, t, s, generator):
        h = t - s
        f, g2 = _coefficient(schedule.drift, t), _coefficient(schedule.diffusion_sq, t)
        score = -_eps(model, x, t) / _at(schedule, t)[1]
        return x - h * (f * x - g2 * score) + math.sqrt(g2 * h) * _noise(x, generator)


class Ancestral(Sampler):
    """DDPM ancestral sampling: draw x_s from the Gaussian posterior q(x_s | x_t, x̂₀) (Ho et al.
    2020, eq. 7, for any pair of times)."""

    def step(self, model, schedule, x, t, s, generator):
        (a_t, s_t), (a_s, s_s) = _at(schedule, t), _at(schedule, s)
        eps = _eps(model, x, t)
        x0 = (x - s_t * eps) / a_t
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2  # variance of x_t given x_s
        mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
        return mean + math.sqrt(var_ts * s_s**2 / s_t**2) * _noise(x, generator)


class DDIM(Sampler):
    """DDIM (Song, Meng & Ermon 2021, eq. 12): η = 0 is deterministic, η = 1 is ancestral sampling.

    Args:
        steps: number of steps, >= 1.
        spacing: time grid (see ``Sampler``).
        rho: exponent of the ``karras`` spacing.
        eta: η ∈ [0, 1], the fraction of the posterior noise injected at each step.
        endpoint: ``t_min``, ``denoise`` or ``ode`` (see ``Sampler``).
    """

    def __init__(
        self,
        steps: int = 100,
        spacing: Spacing = "log_snr",
        rho: float = 7.0,
        eta: float = 0.0,
        endpoint: Endpoint = "t_min",
    ) -> None:
        super().__init__(steps, spacing, rho, endpoint)
        self.eta = check_range("DDIM.eta", eta, 0.0, 1.0, low_open=False)

    def step(self, model, schedule, x, t, s, generator):
        (a_t, s_t), (a_s, s_s) = _at(schedule, t), _at(schedule, s)
        eps = _eps(model, x, t)
        x0 = (x - s_t * eps) / a_t
        var_ts = s_t**2 - (a_t / a_s) ** 2 * s_s**2
        c = self.eta * math.sqrt(max(var_ts * s_s**2 / s_t**2, 0.0))
        out = a_s * x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
        return out + c * _noise(x, generator) if c > 0 else out


class Heun(Sampler):
    """Heun's second-order predictor–corrector on the probability-flow ODE, written in half
    log-SNR λ = log(α/σ) with its linear part integrated exactly: ``x_s = (σ_s/σ_t) x_t +
    α_s (1 − e^{−h}) x̂₀``, x̂₀ the data prediction, taken at t (predictor) and then as the mean of
    its values at t and at the predicted x_s (corrector). Two model evaluations per step, no noise.

    This is Heun's method in the variables where the ODE is least stiff: in t its rate grows like
    1/σ² near t_min (an excess KL of 1122 at 6 evaluations for that form), and
    Karras et al.'s Heun in σ/α (their Alg. 1) extrapolates x̂₀'s change linearly across large
    steps; this form degrades gracefully (``stdiff/bench/results/sampler_kl.md``).
    """

    evaluations_per_step = 2

    def step(self, model, schedule, x, t, s, generator):
        (a_t, s_t), (a_s, s_s) = _at(schedule, t), _at(schedule, s)
        gain = -a_s * math.expm1(-(math.log(a_s / s_s) - math.log(a_t / s_t)))  # α_s (1 − e^{−h})
        x0_t = (x - s_t * _eps(model, x, t)) / a_t
        x_pred = (s_s / s_t) * x + gain * x0_t
        x0_s = (x_pred - s_s * _eps(model, x_pred, s)) / a_s
        return (s_s / s_t) * x + gain * 0.5 * (x0_t + x0_s)


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
        (a_t, s_t), (a_s, s_s) = _at(schedule, t), _at(schedule, s)
        lam_t, lam_s = math.log(a_t / s_t), math.log(a_s / s_s)
        x0 = (x - s_t * _eps(model, x, t)) / a_t
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


class UniPC(Sampler):
    """UniPC (Zhao et al. 2023, arXiv 2302.04867), stdiff's default: a multistep predictor (UniP)
    and corrector (UniC) on the probability-flow ODE in half log-SNR λ = log(α/σ), data
    prediction, linear part exact. The corrector reuses the evaluation that starts the next step,
    so it raises the order by one at no cost.

    ``steps`` is the budget in network evaluations, all included, and every other option defaults
    to the setting that is best for that budget (``auto``), chosen on the error of the exact model
    of Gaussian data over eigenvalues 10^-2.5 … 10^2 of unit-variance data and checked on three GPs
    against every setting of diffusers' multistep schedulers (``stdiff/bench/results/diffusers_kl.md``):

    ========= ===== =========== ============ ===========================
    steps     order endpoint    λ grid start grid
    ========= ===== =========== ============ ===========================
    ≤ 7       2     ``t_min``   −1.5 − ln n  denser towards t_min (0.6 + n/6)
    8 … 13    2     ``ode``     −1.5 − ln n  denser towards t_min (0.6 + n/6)
    ≥ 14      3     ``ode``     −1.5 − ln n  1.25
    ========= ===== =========== ============ ===========================

    The grid starts at the half log-SNR ``lambda_start`` (or ``t_max``, whichever is later), where
    data of unit variance is all but forgotten, from N(0, I); below it steps would be spent where
    nothing happens. It is uniform in ``u ∈ [0, 1]`` mapped by λ = λ₀ + (λ₁ − λ₀)(1 − (1 − u)^skew),
    ``skew`` > 1 putting the steps where the data prediction still changes, near t_min.

    Args:
        steps: network evaluations, >= 1 (>= 2 with an endpoint other than ``t_min``: the last one
            is spent at t_min on the corrector and the endpoint).
        order: 1, 2 or 3, or None for auto; the first steps use lower orders until enough evaluations exist.
        endpoint: ``auto``, ``t_min``, ``denoise`` or ``ode`` (see ``Sampler``).
        lambda_start: half log-SNR where the grid starts, or None for auto (−1.5 − ln steps); the
            schedule's ``t_max`` if that is later.
        skew: the grid's exponent (1: uniform in λ), > 0, or None for auto.
        corrector: apply UniC after every predictor step.
    """

    def __init__(
        self,
        steps: int = 20,
        order: int | None = None,
        endpoint: Literal["auto", "t_min", "denoise", "ode"] = "auto",
        lambda_start: float | None = None,
        skew: float | None = None,
        corrector: bool = True,
    ) -> None:
        check_int("UniPC.steps", steps, 1)
        endpoint = _check_endpoint("UniPC", endpoint, ("auto", "t_min", "denoise", "ode"))
        if order is not None and order not in (1, 2, 3):
            raise ValueError(f"UniPC.order must be 1, 2, 3 or null (auto), got {order!r}")
        if lambda_start is not None and not (isinstance(lambda_start, int | float) and math.isfinite(lambda_start)):
            raise ValueError(f"UniPC.lambda_start must be a finite number or null (auto), got {lambda_start!r}")
        if skew is not None:
            check_positive("UniPC.skew", skew)
        if not isinstance(corrector, bool):
            raise ValueError(f"UniPC.corrector must be true or false, got {corrector!r}")  # noqa: TRY004
        self.order = order if order is not None else (2 if steps <= 13 else 3)
        auto_endpoint = "t_min" if steps <= 7 else "ode"
        super().__init__(steps, "log_snr", 7.0, auto_endpoint if endpoint == "auto" else endpoint)
        if self.intervals < 1:
            raise ValueError(f"UniPC.steps must be >= 2 with endpoint {self.endpoint!r} (its last evaluation goes to "
                             f"the endpoint), got {steps}")  # fmt: skip
        self.lambda_start = lambda_start if lambda_start is not None else -1.5 - math.log(steps)
        self.skew = skew if skew is not None else (0.6 + steps / 6 if self.order <= 2 else 1.25)
        self.corrector = corrector
        self._options = {"order": order, "endpoint": endpoint, "lambda_start": lambda_start, "skew": skew}
        self.begin()

    @property
    def intervals(self) -> int:
        return self.steps - int(self.endpoint != "t_min")

    def times(self, schedule: NoiseSchedule) -> Tensor:
        ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
        lam_lo, lam_hi = (schedule.log_snr(ends) / 2).tolist()  # half log-SNR
        lam_lo = max(lam_lo, min(self.lambda_start, lam_hi - 1.0))
        u = torch.linspace(0, 1, self.intervals + 1, dtype=torch.float64)
        lam = lam_lo + (lam_hi - lam_lo) * (1 - (1 - u) ** self.skew)
        times = schedule.time_at_log_snr(2 * lam)
        times[-1] = schedule.t_min
        if lam_lo <= (schedule.log_snr(ends[:1]) / 2).item():
            times[0] = schedule.t_max
        return times

    def begin(self) -> None:
        self._history: list[tuple[float, Tensor]] = []  # (λ, x̂₀) of the last evaluations
        self._pending = None  # what the corrector needs at the point the last step predicted

    def _evaluate(self, model, schedule, x: Tensor, t: float) -> tuple[Tensor, float]:
        """Evaluate x̂₀ at (x, t), apply the corrector to x with it, and record it: (x, λ)."""
        a_t, s_t = _at(schedule, t)
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
        s_t, (a_s, s_s) = _at(schedule, t)[1], _at(schedule, s)
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
        if self.endpoint == "t_min":
            return x
        x, _ = self._evaluate(model, schedule, x, schedule.t_min)
        return _endpoint(self.endpoint, schedule, x, self._history[-1][1])

    def __repr__(self) -> str:
        chosen = {k: v for k, v in self._options.items() if v is not None and v != "auto"}
        auto = {"order": self.order, "endpoint": self.endpoint, "lambda_start": round(self.lambda_start, 3),
                "skew": round(self.skew, 3)}  # fmt: skip
        shown = ", ".join(f"{k}={v!r}" for k, v in auto.items())
        fixed = "".join(f", {k}={v!r}" for k, v in chosen.items() if k not in auto)
        return f"UniPC(steps={self.steps}, {shown}{fixed}, corrector={self.corrector})"


SAMPLERS: dict[str, type[Sampler]] = {
    cls.__name__: cls for cls in (EulerMaruyama, Ancestral, DDIM, Heun, DPMSolver, UniPC)
}
