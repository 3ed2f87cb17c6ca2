"""A ``KroneckerGP`` conditioned on some of its coordinates: the exact conditional denoiser with its
evidence, the posterior given observed entries, their likelihood and exact posterior draws.

Conditioning on whole frames keeps the Kronecker structure (Σ factors out: everything goes through
Γ_oo). Conditioning on single coordinates is dense, ``T·S <= DENSE_LIMIT``, and always in
covariance form: with K = Γ ⊗ Σ + τ² I (formed once per device) and C the covariance of what is
conditioned on, every solve is a Cholesky factor of C or of a principal block of K. The precision
form (Q = K⁻¹, then (Q_mm + I/s) on the unobserved entries) is cheaper but cancels: at high noise
the unobserved x_t/α are of order 1/α, and its quadratic form is the difference of two terms of
that size (a two-component mixture's posterior weight came out 0.011 instead of 0.937 through it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stdiff.truth.base import DENSE_LIMIT, flat_mask

LOG_2PI = math.log(2 * math.pi)
SYSTEM_BYTES = 512 * 2**20  # Cholesky factors held at once by the conditional denoiser


def _check_dense(gp, what: str) -> None:
    if gp.dim > DENSE_LIMIT:
        raise ValueError(f"{what} is dense: T·S = {gp.dim} > {DENSE_LIMIT}; observe whole frames (a mask of shape "
                         "(T,)) or use shorter windows or fewer points")  # fmt: skip


def masked_denoise(gp, x_t: Tensor, alpha: Tensor, sigma: Tensor, observed: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``E[x_0 | x_t, x_0[mask] = observed[mask]]`` ``(B, T, *space)`` and the log-density ``(B,)`` of
    what it conditions on, for ``alpha``, ``sigma`` ``(B,)`` float64.

    What is conditioned on is v = (observed values on the observed entries, x_t/α elsewhere), which
    is N(μ, C) with C = K + s·diag(unobserved), s = σ²/α², and x_0 is jointly Gaussian with it,
    Cov(x_0, v) = K. So x̂₀ = μ + K C⁻¹ (v − μ) (observed entries: the observed values exactly) and
    log p(v) = −½ (‖L⁻¹(v − μ)‖² + log det C + d log 2π), L the Cholesky factor of C: no term is of
    order 1/α without its variance beside it. One factor per distinct (mask, s) among the rows (the
    samples of one case at one sampler step share it), batched, O(G·d³/3) flops for G pairs.
    """
    _check_dense(gp, "the exact conditional denoiser")
    b, d = len(x_t), gp.dim
    seen = mask.reshape(b, -1).bool()
    mu = gp.mean_value
    s = (sigma / alpha) ** 2  # (B,)
    y = observed.reshape(b, -1).to(torch.float64)
    z = x_t.reshape(b, -1).to(torch.float64) / alpha[:, None]
    v = torch.where(seen, y, z) - mu  # what is conditioned on, centred
    k = gp.dense_covariance(x_t.device)
    keys = torch.cat([seen.to(torch.float64), s[:, None]], dim=1)
    groups, inverse = torch.unique(keys, dim=0, return_inverse=True)
    w, quad = torch.empty_like(v), torch.empty(b, dtype=torch.float64, device=v.device)
    logdet = torch.empty(b, dtype=torch.float64, device=v.device)
    chunk = max(1, SYSTEM_BYTES // (8 * d * d))
    for start in range(0, len(groups), chunk):
        part = groups[start : start + chunk]
        noise = (part[:, :-1] == 0).to(torch.float64) * part[:, -1:]  # (g, d): s on the unobserved entries
        chol = torch.linalg.cholesky(k + torch.diag_embed(noise))  # (g, d, d)
        rows = ((inverse >= start) & (inverse < start + len(part))).nonzero().squeeze(1)
        local = inverse[rows] - start
        # the right-hand sides of each group side by side: (g, d, width), zero where padded
        order = torch.argsort(local, stable=True)
        counts = torch.bincount(local, minlength=len(part))
        position = torch.empty_like(local)
        position[order] = torch.arange(len(rows), device=v.device) - (torch.cumsum(counts, 0) - counts)[local[order]]
        rhs = torch.zeros(len(part), d, int(position.max()) + 1, dtype=torch.float64, device=v.device)
        rhs[local, :, position] = v[rows]
        half = torch.linalg.solve_triangular(chol, rhs, upper=False)  # L⁻¹ (v − μ)
        w[rows] = torch.linalg.solve_triangular(chol.transpose(-2, -1), half, upper=True)[local, :, position]
        quad[rows] = half[local, :, position].pow(2).sum(1)
        logdet[rows] = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(1)[local]
    x0 = torch.where(seen, y, mu + w @ k)  # K symmetric: (K w)ᵀ = wᵀ K
    return x0.reshape(x_t.shape), -0.5 * (quad + logdet + d * LOG_2PI)


def conditional(gp, x: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    """``KroneckerGP.conditional``: mean ``(..., T, *space)`` and covariance ``(..., m, m)``."""
    gp.check_sample_shape(x, "x")
    observed = torch.as_tensor(observed, device=x.device)
    frames_only = tuple(observed.shape) == (gp.frames,)
    if observed.dtype != torch.bool or not (frames_only or tuple(observed.shape) == gp.sample_shape):
        raise ValueError(f"observed must be a boolean mask of shape ({gp.frames},) (frames) or {gp.sample_shape} "
                         f"(coordinates), got {observed.dtype} {tuple(observed.shape)}")  # fmt: skip
    batch = x.shape[: x.ndim - len(gp.sample_shape)]
    mu = gp.mean_value
    if frames_only and gp.nugget > 0:  # τ² I does not factor over frames: condition on the coordinates
        observed, frames_only = observed[:, None].expand(gp.frames, gp.num_points).reshape(gp.sample_shape), False
    if frames_only:  # x_m | x_o = μ + (Γ_mo Γ_oo⁻¹ ⊗ I)(x_o − μ), covariance (Γ_mm − Γ_mo Γ_oo⁻¹ Γ_om) ⊗ Σ
        k, flat = gp.gamma.to(x.device), x.to(torch.float64).reshape(*batch, gp.frames, gp.num_points)
        mask = observed
    else:
        _check_dense(gp, "conditioning on single coordinates")
        k, flat = gp.dense_covariance(x.device), x.to(torch.float64).reshape(*batch, gp.dim, 1)
        mask = observed.reshape(-1)
    o, m = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    weights = torch.zeros(len(m), len(o), dtype=torch.float64, device=x.device)
    if len(o) and len(m):  # K_mo K_oo⁻¹, through the Cholesky factor of K_oo
        chol = torch.linalg.cholesky(k[o][:, o])
        weights = torch.cholesky_solve(k[o][:, m], chol).T
    mean = flat.clone()
    mean[..., m, :] = mu + weights @ (flat[..., o, :] - mu)
    schur = k[m][:, m] - weights @ k[o][:, m]
    covariance = torch.kron(schur, gp.sigma.to(x.device)) if frames_only else schur
    return mean.reshape(*batch, *gp.sample_shape), covariance.expand(*batch, *covariance.shape)


def observed_log_prob(gp, x: Tensor, observed: Tensor) -> Tensor:
    """``KroneckerGP.observed_log_prob``: through Γ_oo ⊗ Σ for whole frames, dense otherwise."""
    gp.check_sample_shape(x, "x")
    observed = torch.as_tensor(observed, device=x.device)
    batch = x.shape[: x.ndim - len(gp.sample_shape)]
    frames_only = tuple(observed.shape) == (gp.frames,) and gp.nugget == 0
    flat = x.to(torch.float64).reshape(*batch, gp.frames, gp.num_points) - gp.mean_value
    if frames_only:
        o = observed.nonzero().squeeze(1)
        evals, evecs = torch.linalg.eigh(gp.gamma.to(x.device)[o][:, o])
        y = gp.space_to_eigenbasis(evecs.T @ flat[..., o, :])
        var = evals[:, None] * gp.sigma_evals.to(x.device)[None, :]
        return -0.5 * ((y**2 / var).sum((-2, -1)) + var.log().sum() + var.numel() * LOG_2PI)
    _check_dense(gp, "the likelihood of single coordinates")
    o = flat_mask(gp, observed).nonzero().squeeze(1)
    chol = torch.linalg.cholesky(gp.dense_covariance(x.device)[o][:, o])
    w = torch.linalg.solve_triangular(chol, flat.reshape(*batch, -1)[..., o, None], upper=False)[..., 0]
    return -0.5 * (w.pow(2).sum(-1) + 2 * chol.diagonal().log().sum() + len(o) * LOG_2PI)


def sample_conditional(gp, x: Tensor, observed: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``KroneckerGP.sample_conditional``: ``(n, k, T, *space)`` float64 on the CPU."""
    mean, cov = conditional(gp, x.double().cpu(), observed.cpu())
    cov = cov[(0,) * (cov.ndim - 2)]  # one Gaussian: the same covariance for every case
    missing = ~flat_mask(gp, observed.cpu())
    chol = torch.linalg.cholesky(cov + 1e-12 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype))
    z = torch.randn(len(x), k, len(cov), generator=generator, dtype=torch.float64)
    flat = mean.reshape(len(x), 1, -1).repeat(1, k, 1)
    flat[..., missing] += z @ chol.T
    return flat.reshape(len(x), k, *gp.sample_shape)
