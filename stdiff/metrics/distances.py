"""Distances between samples and the true Gaussian process (plain torch, float64).

Every estimator here is biased upwards by sampling noise: even exact samples give a positive KL
or covariance error. ``sample_distances`` therefore reports each value next to its *floor*, the
same estimator on the same number of exact samples, and the excess over it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stdiff.truth import KroneckerGP, Truth

FULL_MAX_DIM = 1024  # largest d of the full-covariance KL and W2, and largest S of Σ̂'s statistics

# --- Gaussians in closed form -----------------------------------------------------------------


def gaussian_kl(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> float:
    """KL(N(m1, c1) ‖ N(m2, c2)) for d-dimensional Gaussians (float64, Cholesky of c2).

    ``ValueError`` when a covariance is not one: c2 not positive definite, or c1 with a negative
    eigenvalue beyond round-off (1e-10 of its largest); a singular c1 gives ``inf``."""
    chol, info = torch.linalg.cholesky_ex(c2)
    if info.item() != 0:
        low = torch.linalg.eigvalsh(c2)[0].item()
        raise ValueError(f"gaussian_kl: the second covariance (c2) is not positive definite (smallest eigenvalue {low:.3g})")
    evals = torch.linalg.eigvalsh(c1)
    if evals[0] < -1e-10 * evals[-1].abs().clamp_min(torch.finfo(evals.dtype).tiny):
        raise ValueError(f"gaussian_kl: the first covariance (c1) is not positive semi-definite (eigenvalues from "
                         f"{evals[0].item():.3g} to {evals[-1].item():.3g})")  # fmt: skip
    if evals[0] <= 0:
        return math.inf  # N(m1, c1) is degenerate: KL to a non-degenerate Gaussian is infinite
    diff = (m2 - m1)[:, None]
    trace = torch.cholesky_solve(c1, chol).diagonal().sum()
    quad = (diff * torch.cholesky_solve(diff, chol)).sum()
    logdet = 2 * chol.diagonal().log().sum() - evals.log().sum()
    return 0.5 * (trace + quad - len(m1) + logdet).item()


def _sqrtm_psd(c: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def gaussian_w2(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> float:
    """2-Wasserstein distance between Gaussians: ‖m1 − m2‖² + tr(c1 + c2 − 2 (c2^½ c1 c2^½)^½),
    the Bures metric on the covariances (Dowson & Landau 1982); returns W2, not W2²."""
    root = _sqrtm_psd(c2)
    cross = _sqrtm_psd(root @ c1 @ root)
    w2_sq = (m1 - m2).pow(2).sum() + c1.trace() + c2.trace() - 2 * cross.trace()
    return math.sqrt(max(w2_sq.item(), 0.0))


def _moments(samples: Tensor) -> tuple[Tensor, Tensor]:
    x = samples.reshape(len(samples), -1).to(torch.float64)
    return x.mean(0), torch.cov(x.T)


def gaussian_fit_kl(samples: Tensor, mean: Tensor, cov: Tensor) -> float:
    """KL(N(m̂, Ĉ) ‖ N(mean, cov)) between the Gaussian fitted to ``samples (n, …)`` (empirical mean
    and unbiased covariance over d = prod(…) coordinates) and the truth. Needs n > d; even exact
    samples give about d(d + 3) / (4n) (d / (2n) from the mean, d(d + 1) / (4n) from the
    covariance)."""
    n, d = len(samples), samples[0].numel()
    if n <= d:
        raise ValueError(f"a Gaussian fit in {d} dimensions needs more than {d} samples, got {n}")
    m_hat, c_hat = _moments(samples)
    return gaussian_kl(m_hat, c_hat, mean.reshape(-1).to(m_hat), cov.to(m_hat))


def kl_noise(d: int, n: int) -> float:
    """Standard deviation of the Gaussian-fit KL of ``n`` exact samples in dimension ``d``.

    Exact for ``stdiff.metrics.gaussian_fit_kl`` (empirical mean, unbiased covariance): in whitened
    coordinates 2·KL = tr Ĉ − log det Ĉ − d + ‖m̂‖², with Ĉ Wishart of m = n − 1 degrees of freedom
    scaled by 1/m, independent of m̂ ~ N(0, I/n); Var(log det Ĉ) = Σᵢ ψ′((m − i + 1)/2),
    Var(tr Ĉ) = Cov(tr Ĉ, log det Ĉ) = 2d/m and Var ‖m̂‖² = 2d/n². To first order in d/n this is
    √(d(d+3))/(2n)."""
    m = n - 1
    i = torch.arange(1, d + 1, dtype=torch.float64)
    var_cov = torch.special.polygamma(1, (m - i + 1) / 2).sum().item() - 2 * d / m
    return 0.5 * math.sqrt(var_cov + 2 * d / n**2)


def excess_noise(d: int, n: int) -> float:
    """Standard deviation of the KL excess (``samples/kl_excess``) when the samples are exact: the
    difference of the KLs of two independent sets of ``n`` exact samples, √2 × ``kl_noise``."""
    return math.sqrt(2) * kl_noise(d, n)



# --- structured statistics of a KroneckerGP -------------------------------------------------------


def whiten(gp: KroneckerGP, x: Tensor) -> Tensor:
    """Whitened coordinates ``(n, T·S)``: Λ^{-1/2} in the Kronecker eigenbasis of ``x − μ``; i.i.d.
    N(0, 1) exactly when x ~ GP."""
    y = gp.to_eigenbasis(x - gp.mean.to(x.device))  # (n, T, S)
    return (y / gp.eigenvalues(y.device).sqrt()).reshape(len(x), -1)


def ks_normal(z: Tensor) -> float:
    """Kolmogorov–Smirnov statistic of the values ``z`` against N(0, 1)."""
    z = z.reshape(-1).to(torch.float64).sort().values
    n = len(z)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()


def _inverse(evals: Tensor, evecs: Tensor) -> Tensor:
    return (evecs / evals) @ evecs.T


def factor_covariances(gp: KroneckerGP, x: Tensor, spatial: bool = True) -> tuple[Tensor, Tensor | None]:
    """Empirical temporal covariance Γ̂ = (1/nS) Σ_i X_i Σ⁻¹ X_iᵀ ``(T, T)`` and spatial covariance
    Σ̂ = (1/nT) Σ_i X_iᵀ Γ⁻¹ X_i ``(S, S)`` of centred samples X_i (T × S), each whitened by the
    other true factor so that E[Γ̂] = Γ and E[Σ̂] = Σ under the truth. Γ̂ goes through Σ's eigenbasis
    (by factors when Σ is separable), O(n·T·S·(T + S)); Σ̂, O(S²) memory and O(n·T·S²) time, only
    when ``spatial`` (else None)."""
    xc = (x.to(torch.float64) - gp.mean.to(x.device)).reshape(len(x), gp.frames, gp.num_points)  # (n, T, S)
    rotated = gp.space_to_eigenbasis(xc)  # X U_Σ: X Σ⁻¹ Xᵀ = (X U_Σ) Λ_Σ⁻¹ (X U_Σ)ᵀ
    gamma_hat = torch.einsum("nts,nvs->tv", rotated / gp.sigma_evals.to(x.device), rotated) / (len(x) * gp.num_points)
    if not spatial:
        return gamma_hat, None
    gamma_inv = _inverse(gp.gamma_evals, gp.gamma_evecs).to(x.device)
    sigma_hat = torch.einsum("nts,ntv->sv", gamma_inv @ xc, xc) / (len(x) * gp.frames)
    return gamma_hat, sigma_hat


def correlation_by_lag(cov: Tensor) -> Tensor:
    """Average correlation at each lag h = 0..T−1 from a temporal covariance ``(T, T)`` -> ``(T,)``."""
    std = cov.diagonal().sqrt()
    corr = cov / (std[:, None] * std[None, :])
    return torch.stack([corr.diagonal(h).mean() for h in range(len(cov))])


def sample_statistics(gp: KroneckerGP, x: Tensor, full_max_dim: int = 1024) -> dict[str, float]:
    """Distances of samples ``x (n, T, *space)`` to ``gp`` (see module docstring for the floors).

    Always, in O(n·d) memory: ``whitened_norm`` (mean ‖K^{-1/2}(x − μ)‖² / d, 1 under the truth),
    ``ks`` (whitened coordinates against N(0, 1)), ``gamma_rel_frob`` (relative Frobenius error of
    Γ̂), ``gamma_kl`` (T-dimensional Gaussian KL of Γ̂ to Γ) and ``corr_lag_max_error`` (largest
    error of the correlation at any lag). When S <= ``full_max_dim``: ``sigma_rel_frob`` and
    ``sigma_kl`` of Σ̂ (S × S). When d = T·S <= ``full_max_dim`` and n > 2d: the full
    Gaussian-fit ``kl`` and ``w2``. The eigen-direction statistics, with exact floors at any d, are
    ``stdiff.metrics.eigen``'s.
    """
    n, d = len(x), gp.dim
    z = whiten(gp, x)
    spatial = gp.num_points <= full_max_dim
    gamma_hat, sigma_hat = factor_covariances(gp, x, spatial)
    zero_t = torch.zeros(gp.frames, dtype=torch.float64, device=x.device)
    gamma = gp.gamma.to(x.device)
    out = {
        "whitened_norm": (z**2).sum(1).mean().item() / d,
        "ks": ks_normal(z),
        "gamma_rel_frob": ((gamma_hat - gamma).norm() / gamma.norm()).item(),
        "gamma_kl": gaussian_kl(zero_t, gamma_hat, zero_t, gamma),
        "corr_lag_max_error": (correlation_by_lag(gamma_hat) - correlation_by_lag(gamma)).abs().max().item(),
    }
    if spatial:
        zero_s, sigma = torch.zeros(gp.num_points, dtype=torch.float64, device=x.device), gp.sigma.to(x.device)
        out["sigma_rel_frob"] = ((sigma_hat - sigma).norm() / sigma.norm()).item()
        out["sigma_kl"] = gaussian_kl(zero_s, sigma_hat, zero_s, sigma)
    if d <= full_max_dim and n > 2 * d:
        m_hat, c_hat = _moments(x)
        mean, cov = gp.mean.reshape(-1).to(m_hat), gp.covariance().to(m_hat)
        out["kl"] = gaussian_kl(m_hat, c_hat, mean, cov)
        out["w2"] = gaussian_w2(m_hat, c_hat, mean, cov)
    return out


def gaussian_sample_distances(gp: KroneckerGP, x: Tensor, seed: int = 0, full_max_dim: int = 1024) -> dict[str, float]:
    """``sample_statistics`` of ``x`` with, for each, ``<name>_floor`` (the same statistic of as
    many exact samples, drawn with ``seed``) and ``<name>_excess`` (the difference; for
    ``whitened_norm`` the excess of |value − 1|); and the eigen-direction statistics
    (``stdiff.metrics.eigen``), whose floors and noise are exact. Any truth:
    ``stdiff.metrics.sample_distances``."""
    from stdiff.metrics.eigen import eigen_statistics

    values = sample_statistics(gp, x, full_max_dim)
    exact = gp.sample(len(x), torch.Generator().manual_seed(seed), dtype=torch.float64)
    floors = sample_statistics(gp, exact, full_max_dim)
    out = dict(values)
    for name, floor in floors.items():
        out[f"{name}_floor"] = floor
        if name == "whitened_norm":
            out[f"{name}_excess"] = abs(values[name] - 1) - abs(floor - 1)
        else:
            out[f"{name}_excess"] = values[name] - floor
    out.update(eigen_statistics(gp, gp.to_eigenbasis(x.to(torch.float64) - gp.mean.to(x.device))))
    return out


def gaussian_fit_kl_floor(gp: KroneckerGP, n: int, seed: int = 0) -> float:
    """``gaussian_fit_kl`` of ``n`` exact samples of ``gp``: what sampling noise alone gives."""
    x = gp.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return gaussian_fit_kl(x, gp.mean, gp.covariance())


def pushforward_kl(draw, gp: KroneckerGP) -> float:
    """KL(law of ``draw(z)`` for z ~ N(0, I) ‖ gp), exact, for any ``draw`` affine in its noise
    ``z (n, T, *space)`` (a deterministic sampler with the exact model of Gaussian data):
    ``draw(z) = M z + c`` is found from d + 1 calls at once, at z = 0 and the d unit vectors, and
    its law is N(c, M Mᵀ). No sampling noise: the KL of the sampler itself, floor zero."""
    d = gp.dim
    basis = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
    out = draw(basis.reshape(d + 1, *gp.sample_shape)).reshape(d + 1, d).to(torch.float64).cpu()
    if not torch.isfinite(out).all():
        return math.inf  # the sampler diverged
    shift, matrix = out[0], (out[1:] - out[0]).T
    return gaussian_kl(shift, matrix @ matrix.T, gp.mean.reshape(-1).to(torch.float64), gp.covariance().to(torch.float64))


def flow_kl(draw, truth, z: Tensor, scale: float) -> tuple[float, float]:
    """KL(q ‖ truth) and its standard error, for q the law of ``draw(z)``, z ~ N(0, scale² I), any
    ``draw`` differentiable in z and one-to-one (a deterministic sampler, whatever its model): by
    the change of variables, log q(draw(z)) = log N(z) − log |det ∂draw/∂z|, so
    KL = E_z[log N(z) − log |det J(z)| − log p(draw(z))], a Monte Carlo mean over the given
    ``z (n, T, *space)``, with the truth's exact ``log_prob`` (a mixture's too). No Gaussian fit:
    the true KL of the sampler's law. The Jacobians take d backward passes through ``draw`` (each
    sample's is block-diagonal in the batch), so d should be small (tens)."""
    n, d = len(z), z[0].numel()
    with torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        x = draw(z)
        flat = x.reshape(n, d)
        rows = [torch.autograd.grad(flat[:, i].sum(), z, retain_graph=i + 1 < d)[0].reshape(n, d) for i in range(d)]
    jac = torch.stack(rows, 1).to(torch.float64)  # (n, d, d): ∂x_i/∂z_j
    logdet = torch.linalg.slogdet(jac)[1]
    flat_z = z.detach().reshape(n, d).to(torch.float64)
    log_noise = -0.5 * (flat_z.pow(2).sum(1) / scale**2 + d * math.log(2 * math.pi * scale**2))
    gap = log_noise - logdet - truth.log_prob(x.detach().to(torch.float64))
    return gap.mean().item(), (gap.std() / math.sqrt(n)).item()


def early_stopping_kl(truth: Truth, alpha: float, sigma: float, endpoint: str | tuple[float, ...] = "t_min") -> float:
    """The KL to N(μ, K), K = Γ ⊗ Σ, of what a sampler returns from exact draws of the data noised
    to the early-stopping time, x ~ N(αμ, α²K + σ²I), in closed form: the bias left when sampling
    stops at t₀ > 0, after the sampler's ``endpoint`` (``stdiff.sampling.ENDPOINTS``, or the
    coefficients (c₀, c₁, …) of a fitted one, x̂₀ + p(G)(x/α − x̂₀)): ``t_min``, x itself;
    ``denoise``, E[x₀ | x]; ``ode``, (x/α + E[x₀ | x])/2; ``root``, p(g) = g − g²/2.

    For ``t_min`` it is KL(p_t₀ ‖ p_0), to second order ``¼·σ⁴·Σᵢ(1/λᵢ − 1)²`` over the eigenvalues
    λᵢ of K (α² = 1 − σ², as for variance-preserving schedules): a problem of higher dimension or
    with smaller eigenvalues has a larger bias at the same t₀ (OU, t₀ = 1e-3: 0.058 for the
    quickstart, d = 256, smallest eigenvalue 0.0075; 0.0013 for d = 32, smallest eigenvalue 0.023).
    ``denoise`` is about as far, on the other side (0.056, 0.0014); ``ode`` is of higher order (3.4e-5, 1.1e-7).
    A mixture's is Σ_k w_k KL_k: for t_min an upper bound (KL is jointly convex), else the average."""
    return sum(w * _gaussian_early_stopping_kl(c, alpha, sigma, endpoint)
               for w, c in zip(truth.weights.tolist(), truth.components))  # fmt: skip


def _gaussian_early_stopping_kl(gp: KroneckerGP, alpha: float, sigma: float, endpoint) -> float:
    from stdiff.sampling.base import POLYNOMIALS

    lam = gp.eigenvalues(torch.device("cpu")).reshape(-1)
    noised = alpha**2 * lam + sigma**2
    g = alpha**2 * lam / noised  # the denoiser's gain on x/α in each eigen-direction
    coefficients = POLYNOMIALS[endpoint] if isinstance(endpoint, str) else tuple(endpoint)
    if coefficients is None:
        gain = torch.ones_like(lam)
    else:
        gain = (g + (1 - g) * sum(c * g**k for k, c in enumerate(coefficients))) / alpha
    ratio = gain**2 * noised / lam
    mu = gp.to_eigenbasis(gp.mean[None])[0].reshape(-1)
    shift = (1 - alpha) ** 2 if coefficients is None else 0.0  # the other endpoints are unbiased in the mean
    return (0.5 * (ratio - 1 - ratio.log()).sum() + 0.5 * shift * (mu**2 / lam).sum()).item()


def early_stopping_t_min(gp: KroneckerGP, schedule, target: float, endpoint: str = "t_min") -> float:
    """The largest stopping time t₀ whose ``early_stopping_kl`` (after ``endpoint``) is at most
    ``target`` nats under ``schedule`` (bisection in log t₀ between 1e-12 and the schedule's t_max;
    the KL grows with t₀): the ``t_min`` to choose when stopping early is what keeps samples from
    the truth."""

    def kl(t: float) -> float:
        tt = torch.tensor(t, dtype=torch.float64)
        return early_stopping_kl(gp, schedule.alpha(tt).item(), schedule.sigma(tt).item(), endpoint)

    lo, hi = math.log(1e-12), math.log(schedule.t_max)
    if kl(math.exp(lo)) > target:
        return 1e-12
    if kl(math.exp(hi)) <= target:
        return schedule.t_max
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(math.exp(mid)) <= target else (lo, mid)
    return math.exp(lo)
