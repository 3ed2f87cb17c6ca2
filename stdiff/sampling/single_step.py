"""Single-step samplers: each step uses the model at its own start (and, for Heun, its end) only."""

from __future__ import annotations

import math

from stdiff._validation import check_range
from stdiff.sampling.base import Endpoint, Sampler, Spacing, _coefficient, _eps, _noise, alpha_sigma


class EulerMaruyama(Sampler):
    """Euler–Maruyama on the reverse SDE ``dx = [f x − g² ∇log p_t(x)] dt + g dW̄`` (Song et al. 2021)."""

    def step(self, model, schedule, x, t, s, generator):
        h = t - s
        f, g2 = _coefficient(schedule.drift, t), _coefficient(schedule.diffusion_sq, t)
        score = -_eps(model, x, t) / alpha_sigma(schedule, t)[1]
        return x - h * (f * x - g2 * score) + math.sqrt(g2 * h) * _noise(x, generator)


class Ancestral(Sampler):
    """DDPM ancestral sampling: draw x_s from the Gaussian posterior q(x_s | x_t, x̂₀) (Ho et al.
    2020, eq. 7, for any pair of times)."""

    def step(self, model, schedule, x, t, s, generator):
        (a_t, s_t), (a_s, s_s) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
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
        (a_t, s_t), (a_s, s_s) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
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
        (a_t, s_t), (a_s, s_s) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
        gain = -a_s * math.expm1(-(math.log(a_s / s_s) - math.log(a_t / s_t)))  # α_s (1 − e^{−h})
        x0_t = (x - s_t * _eps(model, x, t)) / a_t
        x_pred = (s_s / s_t) * x + gain * x0_t
        x0_s = (x_pred - s_s * _eps(model, x_pred, s)) / a_s
        return (s_s / s_t) * x + gain * 0.5 * (x0_t + x0_s)
