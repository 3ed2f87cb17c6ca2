"""Diffusion math around any model: forward noising, ε-prediction, the denoising loss, and the
exact ε-predictor of Gaussian data.

A *noise model* is any callable ``model(x_t (B, T, *space), t (B,)) -> ε̂ (B, T, *space)``: the
trained ``DiffusionModule`` (which feeds its network the log-SNR of t, so the network reads the
noise level the same way under every schedule) or ``ExactNoiseModel`` built from the true score.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from stdiff.gp import KroneckerGP
from stdiff.schedules import NoiseSchedule

NoiseModel = Callable[[Tensor, Tensor], Tensor]


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``like (B, …)``."""
    return v.reshape(-1, *[1] * (like.ndim - 1))


def diffuse(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The forward process ``x_t = α(t) x_0 + σ(t) ε`` for ``x0, noise (B, …)``, ``t (B,)``."""
    return _per_sample(schedule.alpha(t), x0) * x0 + _per_sample(schedule.sigma(t), x0) * noise


def score_from_noise(noise_pred: Tensor, schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Score estimate ``∇ log p_t(x_t) ≈ −ε̂ / σ(t)`` (Tweedie)."""
    return -noise_pred / _per_sample(schedule.sigma(t), noise_pred)


def denoising_loss(model: NoiseModel, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Per-sample ε-prediction loss ``mean ‖ε̂(x_t, t) − ε‖²`` over the coordinates -> ``(B,)``.

    Equals denoising score matching with weighting σ(t)² (Ho et al. 2020; Vincent 2011).
    """
    x_t = diffuse(schedule, x0, t, noise)
    return (model(x_t, t) - noise).pow(2).flatten(1).mean(1)


class ExactNoiseModel:
    """The optimal ε-predictor for GP data, ``ε̂ = E[ε | x_t] = −σ(t) ∇ log p_t(x_t)``: a noise
    model usable wherever a trained one is, to separate model error from everything else."""

    def __init__(self, gp: KroneckerGP, schedule: NoiseSchedule) -> None:
        self.gp, self.schedule = gp, schedule

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        return -_per_sample(sigma, x_t) * self.gp.score(x_t, alpha, sigma)


def denoising_loss_floor(gp: KroneckerGP, schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Expected loss of ``ExactNoiseModel`` at times ``t (B,)`` -> ``(B,)``, the smallest any model
    can reach: ``(1/d) tr Cov(ε | x_t) = (1/d) Σ_k α²λ_k / (α²λ_k + σ²)``, λ_k the eigenvalues of
    Γ ⊗ Σ."""
    lam = (gp.gamma_evals[:, None] * gp.sigma_evals[None, :]).reshape(1, -1).to(t.device)
    a2 = schedule.alpha(t.double())[:, None] ** 2
    s2 = schedule.sigma(t.double())[:, None] ** 2
    return (a2 * lam / (a2 * lam + s2)).mean(1)
