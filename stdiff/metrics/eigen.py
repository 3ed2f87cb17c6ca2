"""Samples against a Gaussian truth at any dimension, in its Kronecker eigenbasis: O(n·d) memory
and O(n·d·(T + S)) time, no d × d object, each statistic with its exact mean and standard
deviation under the truth (so a floor, a noise and a verdict from a few hundred samples).

In the eigenbasis of K = Γ ⊗ Σ + τ² I a sample's coordinates y_i are independent N(0, λ_i). From
n samples, with ȳ_i their mean and v̂_i their unbiased variance, r_i = v̂_i / λ_i:

- ``eigen_kl`` = Σ_i ½(r_i − 1 − log r_i) + ½ ȳ_i² / λ_i, the KL to the truth of the samples'
  Gaussian fit restricted to the truth's eigen-directions (a diagonal covariance there). It is the
  full Gaussian-fit KL minus the fit's total correlation in those directions, so it misses only
  errors of the eigenvectors, not of the eigenvalues or the mean. Under the truth (n − 1) r_i is
  χ² with m = n − 1 degrees of freedom and n ȳ_i² / λ_i is χ²₁, independent, so per direction
  E = ½(log(m/2) − ψ(m/2)) + 1/(2n) and Var = ¼(ψ′(m/2) − 2/m) + 1/(2n²) (Var r = 2/m,
  Cov(r, log r) = 2/m, Var log r = ψ′(m/2)): ``eigen_kl_floor`` is exact, d·E, not estimated from
  a second set of samples, and ``eigen_kl_excess`` = value − floor is an unbiased estimate of the
  samples' law's KL in those directions (the bias of log r̂ does not depend on r).
  ``eigen_kl_noise`` is its standard deviation for exact samples, √(d·Var): what "indistinguishable
  from exact samples" is judged by; ``eigen_kl_noise_own``, a plug-in estimate of it under the
  samples' own law (``eigen_kl_noise``), larger where they are wider than the truth.
- ``eigen_decile<k>/…``: the same for the tenth k of the directions by eigenvalue (0: smallest),
  with ``variance_ratio`` (mean r_i, 1 under the truth) and ``z`` (excess over its noise): where a
  model's error lives (rough or smooth directions), and a defect confined to a tenth of the
  directions stands out of its tenth's noise, √10 times smaller than the total's.
- ``frame_mean_chi2``: n·Σ over frames of the whitened shift of each frame's mean, the most
  powerful test of a constant shift per frame: χ²_T under the truth, so ``frame_mean_z`` =
  (value − T)/√(2T).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DECILES = 10


def eigen_kl_moments(directions: int, n: int) -> tuple[float, float]:
    """Mean and standard deviation of ``eigen_kl`` over ``directions`` eigen-directions for ``n``
    exact samples (module docstring)."""
    if n < 2:
        raise ValueError(f"the eigen-direction KL needs n >= 2 samples, got {n}")
    m = n - 1
    half = torch.tensor(m / 2, dtype=torch.float64)
    mean = 0.5 * (math.log(m / 2) - torch.special.digamma(half).item()) + 1 / (2 * n)
    var = 0.25 * (torch.special.polygamma(1, half).item() - 2 / m) + 1 / (2 * n**2)
    return directions * mean, math.sqrt(directions * var)


def eigen_kl_noise(ratio: Tensor, y_bar: Tensor, lam: Tensor, n: int) -> float:
    """Standard deviation of ``eigen_kl`` under the samples' own law, by plug-in: a direction with
    variance ratio r and mean c has r̂ = r·χ²_m/m, so Var ½(r̂ − log r̂) = ¼(2r²/m + ψ′(m/2) − 4r/m),
    and ȳ ~ N(c, rλ/n), so Var ½ȳ²/λ = ¼(2r²/n² + 4rc²/(λn)); equal to ``eigen_kl_moments``'s
    noise for exact samples (r = 1, c = 0), larger where the samples are wider than the truth."""
    m = n - 1
    trigamma = torch.special.polygamma(1, torch.tensor(m / 2, dtype=torch.float64)).item()
    shift = (y_bar**2 - ratio * lam / n) / lam  # c²/λ, unbiased (negative terms too: no clamp, no bias)
    square = ratio**2 / (1 + 2 / m)  # r², unbiased: E r̂² = r²(1 + 2/m)
    var = 0.25 * (2 * square / m + trigamma - 4 * ratio / m) + 0.25 * (2 * square / n**2 + 4 * ratio * shift / n)
    return var.clamp_min(0).sum().sqrt().item()


def eigen_terms(y: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per direction: the variance ratio r, the variance term ½(r − 1 − log r) and the mean term
    ½ ȳ²/λ, from coordinates ``y (n, T, S)`` in the eigenbasis (centred on the truth's mean) and
    the eigenvalues ``lam (T, S)``."""
    ratio = y.var(0) / lam
    return ratio, 0.5 * (ratio - 1 - ratio.log()), 0.5 * y.mean(0) ** 2 / lam


def eigen_statistics(gp, y: Tensor) -> dict[str, float]:
    """The statistics of the module docstring from ``y = gp.to_eigenbasis(x − μ)`` ``(n, T, S)``."""
    n = len(y)
    lam = gp.eigenvalues(y.device)
    ratio, var_term, mean_term = eigen_terms(y, lam)
    kl = var_term + mean_term
    floor, noise = eigen_kl_moments(gp.dim, n)
    out = {"eigen_kl": kl.sum().item(), "eigen_kl_floor": floor, "eigen_kl_noise": noise,
           "eigen_kl_noise_own": eigen_kl_noise(ratio, y.mean(0), lam, n)}  # fmt: skip
    out["eigen_kl_excess"] = out["eigen_kl"] - floor
    mean_floor = gp.dim / (2 * n)  # of the mean terms alone: ½ χ²_d / n
    out["eigen_kl_mean_excess"] = mean_term.sum().item() - mean_floor
    out["eigen_kl_mean_noise"] = math.sqrt(gp.dim / 2) / n
    order = lam.reshape(-1).argsort()
    parts = min(DECILES, gp.dim)  # fewer directions than ten: one part each
    for k, idx in enumerate(order.tensor_split(parts)):
        part_floor, part_noise = eigen_kl_moments(len(idx), n)
        excess = kl.reshape(-1)[idx].sum().item() - part_floor
        out[f"eigen_decile{k}/variance_ratio"] = ratio.reshape(-1)[idx].mean().item()
        out[f"eigen_decile{k}/kl_excess"] = excess
        out[f"eigen_decile{k}/z"] = excess / part_noise
    out["eigen_decile_max_z"] = max(out[f"eigen_decile{k}/z"] for k in range(parts))
    out.update(frame_mean_test(gp, y.mean(0), n))
    return out


def frame_mean_test(gp, y_bar: Tensor, n: int) -> dict[str, float]:
    """``frame_mean_chi2`` and ``frame_mean_z`` from the samples' mean in the eigenbasis ``(T, S)``:
    with c = U_Σᵀ 1 (a constant over space, in Σ's eigenbasis), the shift of frame mode i is
    w_i = Σ_a ȳ_ia c_a / λ_ia with variance G_i / n, G_i = Σ_a c_a² / λ_ia, so n Σ_i w_i² / G_i ~ χ²_T."""
    lam = gp.eigenvalues(y_bar.device)
    c = gp.space_to_eigenbasis(torch.ones(gp.num_points, dtype=torch.float64, device=y_bar.device))
    w = (y_bar / lam) @ c
    g = (c**2 / lam).sum(-1)
    chi2 = n * (w**2 / g).sum().item()
    return {"frame_mean_chi2": chi2, "frame_mean_z": (chi2 - gp.frames) / math.sqrt(2 * gp.frames)}


def linear_sampler_law(gp, sampler, model, device="cpu") -> tuple[Tensor, Tensor] | None:
    """The exact law, per eigen-direction, of what a deterministic ``sampler`` returns with the
    exact (linear) ``model`` of ``gp``: the sampler is then affine in its white starting noise and
    diagonal in the eigenbasis, y_out = g ⊙ z + c, so two one-sample draws (from z = 0 and from the
    z whose eigen-coordinates are all 1) give the mean ``c`` and standard deviation ``|g|`` of every
    direction ``(T, S)``. A third draw from 0 with another generator tells a stochastic sampler,
    for which it returns None."""
    shape = (1, *gp.sample_shape)
    zero = torch.zeros(shape, dtype=torch.float64, device=device)
    unit = gp.from_eigenbasis(torch.ones(1, gp.frames, gp.num_points, dtype=torch.float64, device=device))
    draws = []
    for noise, seed in ((zero, 0), (zero, 1), (unit, 0)):
        g = torch.Generator(device=device).manual_seed(seed)
        draws.append(sampler.sample(model, shape, g, device, torch.float64, noise=noise))
    if not torch.equal(draws[0], draws[1]):
        return None
    mean = gp.to_eigenbasis(draws[0] - gp.mean.to(device))[0]
    gain = gp.to_eigenbasis(draws[2] - draws[0])[0]
    return mean, gain.abs()


def law_eigen_kl(gp, mean: Tensor, std: Tensor) -> float:
    """KL(N(μ + U mean, U diag(std²) Uᵀ) ‖ gp), the law given per eigen-direction ``(T, S)``: exact."""
    lam = gp.eigenvalues(mean.device)
    ratio = std**2 / lam
    return (0.5 * (ratio - 1 - ratio.log()) + 0.5 * mean**2 / lam).sum().item()
