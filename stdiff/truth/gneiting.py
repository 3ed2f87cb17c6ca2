"""Gneiting's (2002) non-separable space-time covariance fitted by maximum likelihood: a reference
beside the separable Γ ⊗ Σ fits of ``stdiff.truth.fitting`` (same EM on missing values), for comparing
log-likelihoods; a dense (T·S)² covariance, not a ``KroneckerGP``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stdiff.kernels import check_coordinates
from stdiff.truth.base import DENSE_LIMIT
from stdiff.truth.fitting import _dense_q, _em, _Flat, observed_log_likelihood


def gneiting_covariance(times: Tensor, points: Tensor, variance, a, alpha, beta, c, gamma, delta, nugget=0.0) -> Tensor:
    """Gneiting's (2002, eq. 14) space-time covariance on ``times (T,)`` × ``points (S, k)``,
    frame-major ``(T·S, T·S)``:

    ``C(h, u) = σ² / ψ(u)^(δ + βk/2) · exp(−c‖h‖^(2γ) / ψ(u)^(βγ))``, ``ψ(u) = a|u|^(2α) + 1``,

    α, γ ∈ (0, 1], β ∈ [0, 1] the space-time interaction (β = 0: separable), plus ``nugget`` on the
    diagonal."""
    k = points.shape[1]
    u = (times[:, None] - times[None, :]).abs()  # (T, T)
    h = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")  # (S, S)
    psi = a * u.clamp_min(1e-300) ** (2 * alpha) * (u > 0) + 1  # (T, T)
    temporal = psi ** -(delta + beta * k / 2)
    powered = h.clamp_min(1e-300) ** (2 * gamma) * (h > 0)  # ‖h‖^(2γ), with a finite gradient at h = 0
    spatial = torch.exp(-c * powered[None, None] / psi[:, :, None, None] ** (beta * gamma))  # (T, T, S, S)
    cov = variance * (temporal[:, :, None, None] * spatial).permute(0, 2, 1, 3).reshape(len(u) * len(h), -1)
    return cov + nugget * torch.eye(len(cov), dtype=cov.dtype)


# Upper bound of each parameter (all are > 0): None for (0, ∞), fitted in log; 1 for (0, 1), in logit.
GNEITING = {"variance": None, "a": None, "alpha": 1.0, "beta": 1.0, "c": None, "gamma": 1.0, "delta": None,
            "nugget": None}  # fmt: skip


def fit_gneiting(x: Tensor, coordinates: Tensor, steps: int = 300, held_out: Tensor | None = None,
                 separable: bool = False, em_iterations: int = 30, tolerance: float = 1e-3) -> dict:  # fmt: skip
    """Gneiting's non-separable covariance fitted by maximum likelihood (EM with missing values) to
    windows ``x (n, T, S)`` at spatial ``coordinates (S, k)``; ``separable=True`` pins β = 0, its
    separable special case, for a like-for-like comparison. Returns the report: parameters,
    log-likelihood per window (observed data) on ``x`` and ``held_out``, the covariance."""
    data = _Flat(x)
    if data.t * data.s > DENSE_LIMIT:
        raise ValueError(f"fit_gneiting forms the dense covariance: T·S = {data.t * data.s} > {DENSE_LIMIT}")
    times = torch.arange(data.t, dtype=torch.float64)
    points = torch.as_tensor(coordinates, dtype=torch.float64)
    points = points[:, None] if points.ndim == 1 else points
    check_coordinates(points)  # magnitudes (the fitted nugget keeps coincident points positive definite)
    scale = torch.cdist(points, points).median().item() or 1.0
    start = {"variance": 0.9 * data.var, "a": 0.5, "alpha": 0.5, "beta": 0.5, "c": 1.0 / scale, "gamma": 0.5,
             "delta": 1.0, "nugget": 0.05 * data.var}  # fmt: skip
    raw = {}
    for name, value in start.items():
        hi = GNEITING[name]
        v = math.log(value) if hi is None else math.log(value / (hi - value))
        raw[name] = torch.tensor(v, dtype=torch.float64, requires_grad=not (separable and name == "beta"))
    if separable:
        raw["beta"] = torch.tensor(-math.inf, dtype=torch.float64)

    def values() -> dict:
        return {n: (r.exp() if GNEITING[n] is None else GNEITING[n] * torch.sigmoid(r)) for n, r in raw.items()}

    def covariance() -> Tensor:
        return gneiting_covariance(times, points, **values()) + 1e-8 * torch.eye(data.t * data.s, dtype=torch.float64)

    params = [r for r in raw.values() if r.requires_grad]
    fit = _em(data, lambda m: (lambda: _dense_q(m, covariance())), covariance, params, steps, em_iterations, tolerance)
    with torch.no_grad():
        cov = covariance()
        out = {"method": "gneiting_separable" if separable else "gneiting",
               **{n: v.item() for n, v in values().items()}, "mean": data.mean,
               "log_likelihood_per_window": observed_log_likelihood(data.x, cov, data.mean).item(),
               "windows": len(data.x), "converged": bool(fit["converged"]), "iterations": fit["iterations"],
               "em_iterations": fit["em_iterations"], "parameters": len(params)}  # fmt: skip
        if held_out is not None and len(held_out):
            h = held_out.double().reshape(len(held_out), -1)
            out["held_out_log_likelihood_per_window"] = observed_log_likelihood(h, cov, data.mean).item()
            out["held_out_windows"] = len(h)
    out["covariance"] = cov
    return out
