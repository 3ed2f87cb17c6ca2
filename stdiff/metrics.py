"""Distances between samples and the true Gaussian (plain torch, float64)."""

from __future__ import annotations

import torch
from torch import Tensor

from stdiff.gp import KroneckerGP


def gaussian_fit_kl(samples: Tensor, mean: Tensor, cov: Tensor) -> float:
    """KL(N(m̂, Ĉ) ‖ N(mean, cov)) between the Gaussian fitted to ``samples (n, …)`` (empirical mean
    and unbiased covariance, flattened to d = prod(…) coordinates) and the true ``N(mean, cov)``.

    Even exact samples give a positive value, about d(d + 1) / (4n) for n samples: compare
    against that floor (the same estimator on exact samples), not against 0. Needs n > d.
    """
    x = samples.reshape(len(samples), -1).to(torch.float64)
    n, d = x.shape
    if n <= d:
        raise ValueError(f"a Gaussian fit in {d} dimensions needs more than {d} samples, got {n}")
    mean, cov = mean.reshape(-1).to(x), cov.to(x)
    m_hat = x.mean(0)
    c_hat = torch.cov(x.T)
    chol = torch.linalg.cholesky(cov)
    trace = torch.cholesky_solve(c_hat, chol).diagonal().sum()
    diff = torch.cholesky_solve((mean - m_hat)[:, None], chol)[:, 0] @ (mean - m_hat)
    logdet_true = 2 * chol.diagonal().log().sum()
    logdet_fit = torch.linalg.slogdet(c_hat).logabsdet
    return 0.5 * (trace + diff - d + logdet_true - logdet_fit).item()


def gaussian_fit_kl_floor(gp: KroneckerGP, n: int, seed: int = 0) -> float:
    """``gaussian_fit_kl`` of ``n`` exact samples of ``gp``: what sampling noise alone gives.
    Report a sampler's KL as its excess over this floor, at the same n."""
    x = gp.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return gaussian_fit_kl(x, gp.mean, gp.covariance())


def early_stopping_kl(gp: KroneckerGP, alpha: float, sigma: float) -> float:
    """KL(N(αμ, α²K + σ²I) ‖ N(μ, K)) in closed form, K = Γ ⊗ Σ: how far the noised data at the
    early-stopping time is from the data itself, the bias left when sampling stops at t₀ > 0.
    (μ is taken as 0 for the shift; with α ≈ 1 at t₀ the mean term is (1 − α)² μᵀK⁻¹μ / 2.)"""
    lam = (gp.gamma_evals[:, None] * gp.sigma_evals[None, :]).reshape(-1)
    ratio = (alpha**2 * lam + sigma**2) / lam
    mu = gp._to_eigenbasis(gp.mean[None])[0].reshape(-1)
    return (0.5 * (ratio - 1 - ratio.log()).sum() + 0.5 * (1 - alpha) ** 2 * (mu**2 / lam).sum()).item()
