"""A ``KroneckerGP`` conditioned on some of its coordinates: the exact conditional denoiser with its
evidence, the posterior given observed entries, their likelihood and exact posterior draws.

Conditioning on whole frames keeps the Kronecker structure at any size (Σ factors out: everything
goes through Γ_oo, or one T × T block per spatial eigenvalue; ``stdiff.truth.structured``); a
coordinate mask that observes whole frames is recognised as one. Conditioning on single
coordinates is dense up to ``T·S <= DENSE_LIMIT``, and always in covariance form: with K = Γ ⊗ Σ +
τ² I (formed once per device) and C the covariance of what is conditioned on, every solve is a
Cholesky factor of C or of a principal block of K. The precision form (Q = K⁻¹, then (Q_mm + I/s)
on the unobserved entries) cancels in the evidence: at high noise the unobserved x_t/α are of
order 1/α, and its quadratic form is the difference of two terms of that size (a two-component
mixture's posterior weight came out 0.011 instead of 0.937 through it). Beyond the dense limit,
scattered masks are solved in the precision form by conjugate gradients, for x̂₀ and posterior
draws only, never the evidence (``structured.pcg_solve``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stdiff.truth import structured
from stdiff.truth.base import DENSE_LIMIT, flat_mask

LOG_2PI = math.log(2 * math.pi)
SYSTEM_BYTES = 512 * 2**20  # Cholesky factors held at once by the conditional denoiser


def _check_dense(gp, what: str) -> None:
    if gp.dim > DENSE_LIMIT:
        raise ValueError(f"{what} is dense: T·S = {gp.dim} > {DENSE_LIMIT}; observe whole frames (a mask of shape "
                         "(T,)) or use shorter windows or fewer points")  # fmt: skip


def masked_denoise(gp, x_t: Tensor, alpha: Tensor, sigma: Tensor, observed: Tensor, mask: Tensor,
                   evidence: bool = True) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """``E[x_0 | x_t, x_0[mask] = observed[mask]]`` ``(B, T, *space)`` and the log-density ``(B,)`` of
    what it conditions on (None unless ``evidence``), for ``alpha``, ``sigma`` ``(B,)`` float64.

    What is conditioned on is v = (observed values on the observed entries, x_t/α elsewhere), which
    is N(μ, C) with C = K + s·diag(unobserved), s = σ²/α², and x_0 is jointly Gaussian with it,
    Cov(x_0, v) = K. So x̂₀ = μ + K C⁻¹ (v − μ) (observed entries: the observed values exactly) and
    log p(v) = −½ (vᵀ C⁻¹ v + log det C + d log 2π): no term is of order 1/α without its variance
    beside it. Rows that observe whole frames are solved exactly through the Kronecker structure at
    any size (``stdiff.truth.structured.frame_solve``); other rows by dense Cholesky factors up to
    ``DENSE_LIMIT`` (``_dense_solve``), beyond it by conjugate gradients (``pcg_solve``: x̂₀ only, so
    ``evidence`` must be False there).
    """
    b, d = len(x_t), gp.dim
    shape = (b, gp.frames, gp.num_points)
    seen = mask.reshape(shape).bool()
    mu = gp.mean_value
    s = (sigma / alpha) ** 2  # (B,)
    y = observed.reshape(shape).to(torch.float64)
    z = x_t.reshape(shape).to(torch.float64) / alpha[:, None, None]
    v = torch.where(seen, y, z) - mu  # what is conditioned on, centred
    kw = torch.empty_like(v)
    quad, logdet = (torch.zeros(b, dtype=torch.float64, device=v.device) for _ in range(2))
    frames = structured.whole_frames(seen) & structured.frames_pay(gp)
    if frames.any():
        rows = frames.nonzero().squeeze(1)
        kw[rows], quad[rows], logdet[rows] = structured.frame_solve(gp, v[rows], seen[rows].all(-1), s[rows])
    if not frames.all():
        rows = (~frames).nonzero().squeeze(1)
        if d <= DENSE_LIMIT:
            kw[rows], quad[rows], logdet[rows] = _dense_solve(gp, v[rows].reshape(len(rows), d), seen[rows], s[rows])
        elif evidence:
            raise ValueError(f"the evidence of a scattered mask on T·S = {d} > {DENSE_LIMIT} values needs the "
                             "log-determinant of a (T·S)² matrix: a mixture cannot be conditioned on it; observe whole "
                             "frames (Forecast, Interpolation), or use shorter windows or fewer points")  # fmt: skip
        else:
            kw[rows] = structured.pcg_solve(gp, v[rows], seen[rows], s[rows])[0]
    x0 = torch.where(seen, y, mu + kw).reshape(x_t.shape)
    return x0, (-0.5 * (quad + logdet + d * LOG_2PI) if evidence else None)


def _dense_solve(gp, v: Tensor, seen: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``K C⁻¹ v`` ``(B, d)``, vᵀ C⁻¹ v and log det C ``(B,)`` for centred ``v (B, d)``: one Cholesky
    factor of K + s·diag(unobserved) per distinct (mask, s) among the rows (the samples of one case
    at one sampler step share it), batched, O(G·d³/3) flops for G pairs."""
    b, d = v.shape
    seen = seen.reshape(b, d)
    k = gp.dense_covariance(v.device)
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
    return (w @ k).reshape(b, gp.frames, gp.num_points), quad, logdet  # K symmetric: (K w)ᵀ = wᵀ K


def conditional(gp, x: Tensor, observed: Tensor, variance_only: bool = False) -> tuple[Tensor, Tensor]:
    """``KroneckerGP.conditional``: mean ``(..., T, *space)`` and covariance ``(..., m, m)`` (or with
    ``variance_only`` its diagonal ``(m,)``, which whole frames give at any size)."""
    gp.check_sample_shape(x, "x")
    observed, frames_only = _frame_or_coordinates(gp, observed, x.device)
    batch = x.shape[: x.ndim - len(gp.sample_shape)]
    mean, schur, m = _posterior(gp, x, observed, frames_only)
    if variance_only:
        if not frames_only:
            return mean, schur.diagonal()
        return mean, (schur.diagonal()[:, None] * gp.space.diagonal().to(x.device)[None, :]).reshape(-1)
    if frames_only:
        if len(m) * gp.num_points > DENSE_LIMIT:
            raise ValueError(f"the covariance of {len(m) * gp.num_points} unobserved values is dense beyond "
                             f"{DENSE_LIMIT}: ask for its diagonal (variance_only=True) or draw from it "
                             "(sample_conditional), both exact at any size")  # fmt: skip
        schur = torch.kron(schur, gp.sigma.to(x.device))
    return mean, schur.expand(*batch, *schur.shape)


def _posterior(gp, x: Tensor, mask: Tensor, frames_only: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The conditional mean ``(..., T, *space)``, the Schur complement K_mm − K_mo K_oo⁻¹ K_om and
    the unobserved indices m: of frames (K = Γ; the covariance is that ⊗ Σ) or of coordinates
    (K = Γ ⊗ Σ + τ² I, dense)."""
    batch = x.shape[: x.ndim - len(gp.sample_shape)]
    if frames_only:  # x_m | x_o = μ + (Γ_mo Γ_oo⁻¹ ⊗ I)(x_o − μ), covariance (Γ_mm − Γ_mo Γ_oo⁻¹ Γ_om) ⊗ Σ
        k, flat = gp.gamma.to(x.device), x.to(torch.float64).reshape(*batch, gp.frames, gp.num_points)
    else:
        _check_dense(gp, "conditioning on single coordinates")
        k, flat = gp.dense_covariance(x.device), x.to(torch.float64).reshape(*batch, gp.dim, 1)
        mask = mask.reshape(-1)
    o, m = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    weights = torch.zeros(len(m), len(o), dtype=torch.float64, device=x.device)
    if len(o) and len(m):  # K_mo K_oo⁻¹, through the Cholesky factor of K_oo
        chol = torch.linalg.cholesky(k[o][:, o])
        weights = torch.cholesky_solve(k[o][:, m], chol).T
    mean = flat.clone()
    mean[..., m, :] = gp.mean_value + weights @ (flat[..., o, :] - gp.mean_value)
    return mean.reshape(*batch, *gp.sample_shape), k[m][:, m] - weights @ k[o][:, m], m


def _frame_or_coordinates(gp, observed: Tensor, device) -> tuple[Tensor, bool]:
    """A checked mask and whether it is of whole frames ``(T,)`` (then Σ factors out: without a
    nugget, since τ² I does not factor over frames; with one, as coordinates)."""
    observed = torch.as_tensor(observed, device=device)
    frames_only = tuple(observed.shape) == (gp.frames,)
    if observed.dtype != torch.bool or not (frames_only or tuple(observed.shape) == gp.sample_shape):
        raise ValueError(f"observed must be a boolean mask of shape ({gp.frames},) (frames) or {gp.sample_shape} "
                         f"(coordinates), got {observed.dtype} {tuple(observed.shape)}")  # fmt: skip
    whole = not frames_only and bool(structured.whole_frames(observed.reshape(1, gp.frames, -1)))
    if whole and gp.nugget == 0 and structured.frames_pay(gp):
        return observed.reshape(gp.frames, -1).all(-1), True  # a coordinate mask of whole frames
    if frames_only and gp.nugget > 0:
        return observed[:, None].expand(gp.frames, gp.num_points).reshape(gp.sample_shape), False
    return observed, frames_only


def observed_log_prob(gp, x: Tensor, observed: Tensor) -> Tensor:
    """``KroneckerGP.observed_log_prob``: through Γ_oo ⊗ Σ for whole frames, dense otherwise."""
    gp.check_sample_shape(x, "x")
    observed, frames_only = _frame_or_coordinates(gp, observed, x.device)
    batch = x.shape[: x.ndim - len(gp.sample_shape)]
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
    """``KroneckerGP.sample_conditional``: ``(n, k, T, *space)`` float64 on the CPU. Whole frames
    (no nugget): the Schur complement over frames times √Σ by factors, at any size; coordinates:
    the dense Cholesky factor of the conditional covariance up to ``DENSE_LIMIT``, beyond it
    Matheron's rule, a prior draw f moved by E[g | g_o = x_o − f_o] (g ~ N(0, K), by conjugate
    gradients: ``structured.pcg_solve``, exact to its tolerance)."""
    x, observed = x.double().cpu(), observed.cpu()
    mask, frames_only = _frame_or_coordinates(gp, observed, "cpu")
    if frames_only:
        mean, schur, m = _posterior(gp, x, mask, True)
        chol = torch.linalg.cholesky(schur + 1e-12 * schur.diagonal().mean() * torch.eye(len(m), dtype=schur.dtype))
        z = torch.randn(len(x), k, len(m), gp.num_points, generator=generator, dtype=torch.float64)
        flat = mean.reshape(len(x), 1, gp.frames, gp.num_points).repeat(1, k, 1, 1)
        flat[:, :, m] += gp.space.apply(chol @ z, "sqrt", transpose=True)
        return flat.reshape(len(x), k, *gp.sample_shape)
    if gp.dim > DENSE_LIMIT:
        return _matheron(gp, x, mask, k, generator)
    mean, cov = conditional(gp, x, mask)
    cov = cov[(0,) * (cov.ndim - 2)]  # one Gaussian: the same covariance for every case
    missing = ~flat_mask(gp, mask)
    chol = torch.linalg.cholesky(cov + 1e-12 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype))
    z = torch.randn(len(x), k, len(cov), generator=generator, dtype=torch.float64)
    flat = mean.reshape(len(x), 1, -1).repeat(1, k, 1)
    flat[..., missing] += z @ chol.T
    return flat.reshape(len(x), k, *gp.sample_shape)


MATHERON_ROWS = 64  # posterior draws solved together by conjugate gradients


def _matheron(gp, x: Tensor, mask: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Exact posterior draws ``(n, k, T, *space)`` given the coordinates at ``mask`` of ``x (n, ...)``
    beyond the dense limit: f ~ N(μ, K), then f + E[g | g_o = x_o − f_o] (the noise-free limit of
    ``structured.pcg_solve``), ``MATHERON_ROWS`` draws at a time."""
    shape = (gp.frames, gp.num_points)
    seen = mask.reshape(shape)
    target = x.reshape(len(x), 1, *shape).expand(len(x), k, *shape).reshape(-1, *shape)
    out = torch.empty(len(target), *shape, dtype=torch.float64)
    for start in range(0, len(target), MATHERON_ROWS):
        y = target[start : start + MATHERON_ROWS]
        f = gp.sample(len(y), generator, dtype=torch.float64).reshape(len(y), *shape)
        v = torch.where(seen, y - f, torch.zeros((), dtype=torch.float64))
        inf = torch.full((len(y),), torch.inf, dtype=torch.float64)
        out[start : start + len(y)] = f + structured.pcg_solve(gp, v, seen.expand_as(v), inf)[0]
    return out.reshape(len(x), k, *gp.sample_shape)
