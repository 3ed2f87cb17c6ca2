"""Diffusion math around any network: forward noising, ε-prediction, the denoising loss.

The network is any callable ``net(x_t (B, T, *space), c (B,)) -> (B, T, *space)``; it is
conditioned on the log-SNR of the diffusion time, not on the time itself, so a trained network
reads the noise level the same way under every schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from stdiff.schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``like (B, …)``."""
    return v.reshape(-1, *[1] * (like.ndim - 1))


def diffuse(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The forward process ``x_t = α(t) x_0 + σ(t) ε`` for ``x0, noise (B, …)``, ``t (B,)``."""
    return _per_sample(schedule.alpha(t), x0) * x0 + _per_sample(schedule.sigma(t), x0) * noise


def predict_noise(net: Network, schedule: NoiseSchedule, x_t: Tensor, t: Tensor) -> Tensor:
    """The network's ε-prediction at diffusion times ``t (B,)``."""
    return net(x_t, schedule.log_snr(t))


def score_from_noise(noise_pred: Tensor, schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Score estimate ``∇ log p_t(x_t) ≈ −ε̂ / σ(t)`` (Tweedie)."""
    return -noise_pred / _per_sample(schedule.sigma(t), noise_pred)


def denoising_loss(net: Network, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Per-sample ε-prediction loss ``mean ‖ε̂(x_t, t) − ε‖²`` over the coordinates -> ``(B,)``.

    Equals denoising score matching with weighting σ(t)² (Ho et al. 2020; Vincent 2011).
    """
    x_t = diffuse(schedule, x0, t, noise)
    return (predict_noise(net, schedule, x_t, t) - noise).pow(2).flatten(1).mean(1)
