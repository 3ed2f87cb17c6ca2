"""The diffusion process around any noise model: forward noising, parameterisations and their exact
conversions, loss weightings, training-time sampling, and the loss floor of GP data."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stdiff._validation import lookup
from stdiff.schedules import NoiseSchedule
from stdiff.truth import KroneckerGP

if TYPE_CHECKING:
    from stdiff.diffusion.denoisers import NoiseModel


def per_sample(v: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or per-sample ``(B,)`` value, shaped to broadcast against ``like (B, …)``."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *[1] * (like.ndim - 1)) if v.ndim else v


def diffuse(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The forward process ``x_t = α(t) x_0 + σ(t) ε`` for ``x0, noise (B, …)``, ``t (B,)``."""
    return per_sample(schedule.alpha(t), x0) * x0 + per_sample(schedule.sigma(t), x0) * noise


# --- parameterisations: what the network predicts ----------------------------------------------


class Parameterization(ABC):
    """What a network outputs, and its exact conversion to and from the noise ε given
    ``x_t = α x_0 + σ ε``. ``alpha``, ``sigma`` are scalars or tensors broadcastable to ``x_t``."""

    @abstractmethod
    def to_noise(self, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The ε̂ implied by a network output."""

    @abstractmethod
    def from_noise(self, eps: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The network output that implies ``eps``."""


class NoisePrediction(Parameterization):
    """ε-prediction (Ho et al. 2020)."""

    def to_noise(self, out, x_t, alpha, sigma):
        return out

    def from_noise(self, eps, x_t, alpha, sigma):
        return eps


class DataPrediction(Parameterization):
    """x₀-prediction: x̂₀ = (x_t − σ ε̂) / α."""

    def to_noise(self, out, x_t, alpha, sigma):
        return (x_t - alpha * out) / sigma

    def from_noise(self, eps, x_t, alpha, sigma):
        return (x_t - sigma * eps) / alpha


class VelocityPrediction(Parameterization):
    """v-prediction, v = α ε − σ x₀ (Salimans & Ho 2022); inverted for any α, σ (not only VP):
    ε = (σ x_t + α v) / (α² + σ²)."""

    def to_noise(self, out, x_t, alpha, sigma):
        return (sigma * x_t + alpha * out) / (alpha**2 + sigma**2)

    def from_noise(self, eps, x_t, alpha, sigma):
        return ((alpha**2 + sigma**2) * eps - sigma * x_t) / alpha


class ScorePrediction(Parameterization):
    """Score prediction, ŝ = ∇ log p_t(x_t) = −ε̂ / σ (Tweedie)."""

    def to_noise(self, out, x_t, alpha, sigma):
        return -sigma * out

    def from_noise(self, eps, x_t, alpha, sigma):
        return -eps / sigma


PARAMETERIZATIONS: dict[str, Parameterization] = {
    "eps": NoisePrediction(),
    "x0": DataPrediction(),
    "v": VelocityPrediction(),
    "score": ScorePrediction(),
}


def get_parameterization(name: str) -> Parameterization:
    return lookup("parameterization", PARAMETERIZATIONS, name)


def convert(value: Tensor, source: str, target: str, x_t: Tensor, alpha, sigma) -> Tensor:
    """Convert a prediction between parameterisations (names in ``PARAMETERIZATIONS``)."""
    alpha, sigma = per_sample(alpha, x_t), per_sample(sigma, x_t)
    eps = get_parameterization(source).to_noise(value, x_t, alpha, sigma)
    return get_parameterization(target).from_noise(eps, x_t, alpha, sigma)


# --- loss weightings, all expressed on the ε-error ‖ε̂ − ε‖² -----------------------------------
# Training on another target is the ε-loss times a weight: ‖x̂₀ − x₀‖² = (σ/α)² ‖ε̂ − ε‖²,
# ‖v̂ − v‖² = ((α² + σ²)/α)² ‖ε̂ − ε‖², ‖ŝ − ∇log p(x_t|x₀)‖² = ‖ε̂ − ε‖² / σ² (Kingma & Gao 2023).
WEIGHTINGS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "eps": lambda a, s, g: torch.ones_like(a),
    "x0": lambda a, s, g: (s / a) ** 2,
    "v": lambda a, s, g: ((a**2 + s**2) / a) ** 2,
    "score": lambda a, s, g: 1 / s**2,  # the paper's plain denoising score matching
    "min_snr": lambda a, s, g: torch.clamp((a / s) ** 2, max=g) / (a / s) ** 2,  # Hang et al. 2023
}


def loss_weight(name: str, alpha: Tensor, sigma: Tensor, min_snr_gamma: float = 5.0) -> Tensor:
    """Weight ``(B,)`` of the per-sample ε-error under weighting ``name`` (see ``WEIGHTINGS``)."""
    return lookup("loss weighting", WEIGHTINGS, name)(alpha, sigma, min_snr_gamma)


def denoising_loss(
    model: NoiseModel,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    weighting: str = "eps",
    min_snr_gamma: float = 5.0,
    where: Tensor | None = None,
    **cond,
) -> Tensor:
    """Per-sample weighted ε-loss ``w(t) · mean ‖ε̂(x_t, t, **cond) − ε‖²`` over the coordinates
    (those where ``where (B, T, *space)`` is True, if given: a conditional model's missing ones) -> ``(B,)``.

    With ``weighting="eps"`` this is DDPM's loss, denoising score matching weighted by σ(t)².
    """
    schedule = model.schedule
    x_t = diffuse(schedule, x0, t, noise)
    sq = (model(x_t, t, **cond) - noise).pow(2)
    if where is None:
        err = sq.flatten(1).mean(1)
    else:
        w = where.to(sq.dtype)
        err = (sq * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1)
    if weighting == "eps":
        return err
    return loss_weight(weighting, schedule.alpha(t), schedule.sigma(t), min_snr_gamma).to(err.dtype) * err


TIME_SAMPLING = ("uniform", "log_snr")


def times_from_uniform(schedule: NoiseSchedule, u: Tensor, spacing: str = "uniform") -> Tensor:
    """Map uniform variates ``u`` in [0, 1] to diffusion times: uniform in t, or uniform in log-SNR."""
    if spacing == "uniform":
        return schedule.t_min + (schedule.t_max - schedule.t_min) * u
    if spacing == "log_snr":
        lo, hi = (schedule.log_snr(torch.tensor(t, dtype=torch.float64)) for t in (schedule.t_max, schedule.t_min))
        return schedule.time_at_log_snr(lo + (hi - lo) * u.double()).to(u)
    raise ValueError(f"time spacing must be one of {', '.join(TIME_SAMPLING)}, got {spacing!r}")


def training_times(
    schedule: NoiseSchedule,
    n: int,
    spacing: str = "uniform",
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """``n`` diffusion times ``(n,)`` on ``[t_min, t_max]``: uniform in t, or uniform in log-SNR."""
    return times_from_uniform(schedule, torch.rand(n, generator=generator, device=device), spacing)


def denoising_loss_floor(gp: KroneckerGP, schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Expected ε-loss of ``ExactDenoiser`` at times ``t (B,)`` -> ``(B,)``, the smallest any
    model can reach: ``(1/d) tr Cov(ε | x_t) = (1/d) Σ_k α²λ_k / (α²λ_k + σ²)``, λ_k the
    eigenvalues of Γ ⊗ Σ (+ τ² I)."""
    lam = gp.eigenvalues(t.device).reshape(1, -1)
    a2 = schedule.alpha(t.double())[:, None] ** 2
    s2 = schedule.sigma(t.double())[:, None] ** 2
    return (a2 * lam / (a2 * lam + s2)).mean(1)
