"""The ``NoiseSchedule`` contract: ``x_t = α(t) x_0 + σ(t) ε`` for continuous ``t ∈ [t_min, t_max]``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from stdiff._validation import check_positive


class NoiseSchedule(ABC):
    """Signal scale α(t) and noise scale σ(t) of the forward process on ``[t_min, t_max]``.

    Subclasses implement ``alpha`` and ``sigma``; everything else is derived. Predictions are
    never clamped anywhere downstream: GP data is unbounded.

    Args:
        t_min: early-stopping time t₀ > 0 (the smallest noise level trained and sampled).
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
        """log(α² / σ²), strictly decreasing in t."""
        return 2 * (self.alpha(t).log() - self.sigma(t).log())

    def sample_time(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``n`` training times ``(n,)``, uniform on ``[t_min, t_max]``."""
        u = torch.rand(n, generator=generator, device=device)
        return self.t_min + (self.t_max - self.t_min) * u

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min}, t_max={self.t_max})"
