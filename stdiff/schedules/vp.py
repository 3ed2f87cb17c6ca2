"""Variance-preserving schedules (α² + σ² = 1), each defined by its log α(t)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stdiff._validation import check_positive
from stdiff.schedules.base import VPSchedule


class OrnsteinUhlenbeck(VPSchedule):
    """The paper's forward process ``dX = −X/2 dt + dW``: α(t) = e^{−t/2}, σ(t)² = 1 − e^{−t}.

    At the default horizon t_max = 10, α ≈ 6.7e-3: the marginal is N(0, I) to within that factor.

    Args:
        t_min: early-stopping time t₀ > 0.
        t_max: horizon, > t_min.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 10.0) -> None:
        super().__init__(t_min, t_max)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * t

    def drift(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -0.5)

    def diffusion_sq(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        return F.softplus(-lam.to(torch.float64))  # e^{−λ} = e^t − 1


class LinearBeta(VPSchedule):
    """DDPM's linear β schedule in continuous time (Song et al. 2021, VP SDE):
    β(t) = β_min + t (β_max − β_min) on t ∈ (0, 1], log α(t) = −½ ∫₀ᵗ β.

    The defaults are DDPM's β range (β₁ = 1e-4, β_1000 = 0.02 over 1000 steps) in continuous time,
    not DDPM itself: at the last step this ᾱ(1) = e^(−10.05) = 4.32e-5 against DDPM's
    Π(1 − β_i) = 4.04e-5, 7 % above it (6.5 % of this value; the gap grows with t, 0.6 % at t = ½).
    ``DiscreteBeta()`` is DDPM's schedule exactly at every step.

    Args:
        t_min: early-stopping time t₀ > 0.
        t_max: horizon, > t_min (1 is DDPM's last step).
        beta_min: β(0) > 0.
        beta_max: β(1) >= beta_min.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__(t_min, t_max)
        self.beta_min = check_positive("LinearBeta.beta_min", beta_min)
        self.beta_max = check_positive("LinearBeta.beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(f"LinearBeta.beta_max must be >= beta_min={beta_min}, got {beta_max}")

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        # β_min t + ½ (β_max − β_min) t² = −2 log α = softplus(−λ): the positive root, in its stable form
        c = F.softplus(-lam.to(torch.float64))
        t = 2 * c / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * (self.beta_max - self.beta_min) * c))
        return t.clamp(self.t_min, self.t_max)


class Cosine(VPSchedule):
    """Cosine schedule (Nichol & Dhariwal 2021): α(t) = cos(π/2 · (t + s)/(1 + s)) / cos(π/2 · s/(1 + s))
    on t ∈ (0, 1). α reaches 0 at t = 1, so the horizon must stay below 1.

    Args:
        t_min: early-stopping time t₀ > 0.
        t_max: horizon in (t_min, 1).
        offset: s >= 0, keeps σ from being too small near t = 0.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 0.995, offset: float = 0.008) -> None:
        super().__init__(t_min, t_max)
        if not t_max < 1:
            raise ValueError(f"Cosine.t_max must be < 1 (α(1) = 0), got {t_max}")
        if not (isinstance(offset, (int, float)) and 0 <= offset < math.inf):
            raise ValueError(f"Cosine.offset must be a finite number >= 0, got {offset!r}")
        self.offset = float(offset)

    def log_alpha(self, t: Tensor) -> Tensor:
        s = self.offset
        return torch.log(torch.cos(0.5 * math.pi * (t + s) / (1 + s))) - math.log(math.cos(0.5 * math.pi * s / (1 + s)))

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        # cos(π/2 · (t + s)/(1 + s)) = α cos(π/2 · s/(1 + s)), α = exp(−½ softplus(−λ))
        s = self.offset
        a = torch.exp(-0.5 * F.softplus(-lam.to(torch.float64))) * math.cos(0.5 * math.pi * s / (1 + s))
        return ((1 + s) * torch.arccos(a.clamp(-1.0, 1.0)) / (0.5 * math.pi) - s).clamp(self.t_min, self.t_max)


class SigmoidLogSNR(VPSchedule):
    """Log-SNR linear in t, so α(t)² = sigmoid(λ(t)) is a sigmoid in t (Kingma et al. 2021), with
    a shift (Hoogeboom et al. 2023, "simple diffusion"): λ(t) = λ_max + t (λ_min − λ_max) + shift
    on t ∈ (0, 1]. A negative shift puts more training and sampling effort at high noise, which
    large or strongly correlated samples need.

    Args:
        t_min: early-stopping time t₀ > 0.
        t_max: horizon, > t_min.
        logsnr_max: λ at t = 0 before the shift.
        logsnr_min: λ at t = 1 before the shift, < logsnr_max.
        shift: added to λ everywhere (e.g. 2 log(64 / d) for a d-dimensional sample).
    """

    def __init__(
        self,
        t_min: float = 1e-3,
        t_max: float = 1.0,
        logsnr_max: float = 10.0,
        logsnr_min: float = -10.0,
        shift: float = 0.0,
    ) -> None:
        super().__init__(t_min, t_max)
        if not logsnr_min < logsnr_max:
            raise ValueError(f"SigmoidLogSNR.logsnr_min must be < logsnr_max={logsnr_max}, got {logsnr_min}")
        self.logsnr_max, self.logsnr_min, self.shift = float(logsnr_max), float(logsnr_min), float(shift)

    def log_snr(self, t: Tensor) -> Tensor:
        return self.logsnr_max + t * (self.logsnr_min - self.logsnr_max) + self.shift

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * F.softplus(-self.log_snr(t))  # log α² = log sigmoid(λ)

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        return (lam.to(torch.float64) - self.shift - self.logsnr_max) / (self.logsnr_min - self.logsnr_max)
