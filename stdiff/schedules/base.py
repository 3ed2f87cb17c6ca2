"""The ``NoiseSchedule`` contract: ``x_t = α(t) x_0 + σ(t) ε`` for continuous ``t ∈ [t_min, t_max]``,
and what samplers derive from it (log-SNR and its inverse, SDE drift and diffusion)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from stdiff._validation import check_positive, init_repr


class NoiseSchedule(ABC):
    """Signal scale α(t) and noise scale σ(t) of the forward process on ``[t_min, t_max]``.

    Subclasses implement ``alpha`` and ``sigma`` (as functions of a float tensor, differentiable
    by autograd); everything else is derived, and may be overridden with a closed form.
    ``validate()`` checks a schedule before use: α, σ finite and positive, log-SNR strictly
    decreasing. Predictions are never clamped downstream: GP data is unbounded.

    Args:
        t_min: early-stopping time t₀ > 0, the smallest noise level trained and sampled.
        t_max: horizon, > t_min.
    """

    def __init__(self, t_min: float, t_max: float) -> None:
        self.t_min = check_positive(f"{type(self).__name__}.t_min", t_min)
        self.t_max = check_positive(f"{type(self).__name__}.t_max", t_max)
        if not self.t_max > self.t_min:
            raise ValueError(f"{type(self).__name__}.t_max must be > t_min={t_min}, got {t_max}")

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale α(t), same shape as ``t``."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale σ(t), same shape as ``t``."""

    def log_snr(self, t: Tensor) -> Tensor:
        """λ(t) = log(α² / σ²), strictly decreasing in t."""
        return 2 * (self.alpha(t).log() - self.sigma(t).log())

    def drift(self, t: Tensor) -> Tensor:
        """f(t) = d log α / dt of the forward SDE ``dx = f(t) x dt + g(t) dW``."""
        return _derivative(lambda s: self.alpha(s).log(), t)

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """g(t)² = dσ²/dt − 2 f(t) σ² = −σ² dλ/dt of the forward SDE (Song et al. 2021)."""
        return -(self.sigma(t) ** 2) * _derivative(self.log_snr, t)

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of ``log_snr`` on ``[t_min, t_max]`` (bisection in float64; override with a
        closed form where there is one)."""
        lam = lam.to(torch.float64)
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(64):  # 64 halvings of the interval reach float64 resolution
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # λ decreasing: the root lies later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def validate(self, points: int = 1001) -> None:
        """Raise ``ValueError`` unless α, σ are finite and > 0 and λ strictly decreases on a grid."""
        name = type(self).__name__
        t = torch.linspace(self.t_min, self.t_max, points, dtype=torch.float64)
        for label, values in (("alpha", self.alpha(t)), ("sigma", self.sigma(t))):
            bad = ~(torch.isfinite(values) & (values > 0))
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(
                    f"{name}.{label}(t) must be finite and > 0 on [t_min, t_max] = [{self.t_min}, {self.t_max}]; "
                    f"at t={t[i].item():.6g} it is {values[i].item()!r}"
                )
        lam = self.log_snr(t)
        rising = ~(lam.diff() < 0)
        if rising.any():
            i = int(rising.nonzero()[0])
            raise ValueError(
                f"{name}: log-SNR must decrease strictly on [t_min, t_max]; it goes from {lam[i].item():.6g} at "
                f"t={t[i].item():.6g} to {lam[i + 1].item():.6g} at t={t[i + 1].item():.6g}"
            )

    def __repr__(self) -> str:
        return init_repr(self)


def _derivative(fn, t: Tensor) -> Tensor:
    """Elementwise d fn / dt by autograd (fn acts elementwise)."""
    # Also under torch.no_grad and Lightning's inference mode (predict, test), where a plug-in's
    # schedule without a closed-form derivative is differentiated for the Heun / SDE samplers.
    with torch.inference_mode(False), torch.enable_grad():
        s = t.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(s).sum(), s)
    return grad


class VPSchedule(NoiseSchedule):
    """Variance-preserving schedule, α² + σ² = 1, defined by ``log_alpha(t)``.

    σ is computed as ``sqrt(−expm1(2 log α))``, accurate where α ≈ 1 (small t).
    """

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log α(t), decreasing from about 0."""

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        log_a2 = 2 * self.log_alpha(t)
        return log_a2 - torch.log(-torch.expm1(log_a2))  # no cancellation at small t

    def drift(self, t: Tensor) -> Tensor:
        return _derivative(self.log_alpha, t)
