"""A separable Gaussian Γ ⊗ Σ fitted to sequences by maximum likelihood: the best Gaussian
reference for data whose truth is unknown (your own arrays), against which stdiff's diagnostics
then score a model.

- ``fit_kernels(x, temporal, spatial)``: the hyperparameters (lengthscales, scales) of kernels from
  the registry, and an overall variance, by gradient descent (autograd) on the exact Kronecker
  log-likelihood. Shape parameters (power, ν, α, β, period) stay as given.
- ``flip_flop(x)``: free-form Γ and Σ by the flip-flop algorithm (Dutilleul 1999), returned as
  ``Tabulated`` kernels.

Both return a ``KroneckerGP`` and a report (the kernels, log-likelihood per window on the windows
fitted and on held-out ones). ``ArrayDataModule(reference=...)`` calls them on its training windows.
"""

from __future__ import annotations

import copy
import math

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from stdiff.gp import KroneckerGP, grid
from stdiff.kernels import RBF, Kernel, Matern, Scaled, Tabulated

FITTED = ("lengthscale", "scale")  # the kernel attributes fitted; others stay as given


def log_likelihood(x: Tensor, gamma: Tensor, sigma: Tensor, mean: float | Tensor = 0.0) -> Tensor:
    """Mean log-density per window of ``x (n, T, S)`` under N(mean, Γ ⊗ Σ), through the Cholesky
    factors of Γ (T × T) and Σ (S × S): never a (T·S)² matrix."""
    _, t, s = x.shape
    lg, ls = torch.linalg.cholesky(gamma), torch.linalg.cholesky(sigma)
    y = torch.linalg.solve_triangular(lg, x - mean, upper=False)  # L_Γ⁻¹ X, (n, T, S)
    z = torch.linalg.solve_triangular(ls, y.transpose(1, 2), upper=False)  # L_Σ⁻¹ (L_Γ⁻¹ X)ᵀ, (n, S, T)
    logdet = 2 * (s * lg.diagonal().log().sum() + t * ls.diagonal().log().sum())
    return -0.5 * (z.pow(2).sum((1, 2)).mean() + logdet + t * s * math.log(2 * math.pi))


def _moment_log_likelihood(moments: Tensor, gamma: Tensor, sigma: Tensor) -> Tensor:
    """``log_likelihood`` from the windows' second moments ``E[X_ts X_uv]`` ``(T, S, T, S)``."""
    t, s = gamma.shape[0], sigma.shape[0]
    quad = torch.einsum("tu,sv,tsuv->", torch.cholesky_inverse(torch.linalg.cholesky(gamma)),
                        torch.cholesky_inverse(torch.linalg.cholesky(sigma)), moments)  # fmt: skip
    logdet = s * torch.logdet(gamma) + t * torch.logdet(sigma)
    return -0.5 * (quad + logdet + t * s * math.log(2 * math.pi))


def _leaves(kernel: Kernel) -> list[tuple[object, str]]:
    """The (kernel, attribute) pairs holding fitted hyperparameters, composites included."""
    out = [(kernel, name) for name in FITTED if isinstance(getattr(kernel, name, None), float)]
    for child in getattr(kernel, "kernels", []) + ([kernel.kernel] if isinstance(kernel, Scaled) else []):
        out += _leaves(child)
    return out


def fit_kernels(x: Tensor, temporal: Kernel, spatial: Kernel, space_shape: tuple[int, ...], steps: int = 300,
                held_out: Tensor | None = None) -> tuple[KroneckerGP, dict]:  # fmt: skip
    """Kernel hyperparameters by maximum likelihood on windows ``x (n, T, *space)`` (float64, no NaN)."""
    x = x.double().reshape(len(x), x.shape[1], -1)
    t, s = x.shape[1], x.shape[2]
    times, points = torch.arange(t, dtype=torch.float64)[:, None], grid(space_shape)
    temporal, spatial = copy.deepcopy(temporal), copy.deepcopy(spatial)
    leaves = _leaves(temporal) + _leaves(spatial)
    mean = x.mean().item()
    logs = [torch.tensor(math.log(getattr(k, a)), dtype=torch.float64, requires_grad=True) for k, a in leaves]
    log_var = torch.tensor(math.log(x.var().item()), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([*logs, log_var], lr=0.05)

    def matrices():
        for (k, a), p in zip(leaves, logs):
            setattr(k, a, p.exp())  # tensors while fitting: the kernels' own code carries the gradient
        eye_t, eye_s = torch.eye(t, dtype=torch.float64), torch.eye(s, dtype=torch.float64)
        return temporal(times) + 1e-8 * eye_t, log_var.exp() * spatial(points) + 1e-8 * eye_s

    # The likelihood needs the data only through its second moments: (T, S, T, S) of them when small
    # enough, so that a step costs O(T²S²) whatever the number of windows.
    moments = torch.einsum("nts,nuv->tsuv", x - mean, x - mean) / len(x) if (t * s) ** 2 <= 2**24 else None
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            gamma, sigma = matrices()
            nll = (
                -_moment_log_likelihood(moments, gamma, sigma)
                if moments is not None
                else -log_likelihood(x, gamma, sigma, mean)
            )
            nll.backward()
            optimizer.step()
    finally:
        for (k, a), p in zip(leaves, logs):
            setattr(k, a, p.detach().exp().item())
    gp = KroneckerGP(temporal, Scaled(spatial, log_var.detach().exp().item()), t, space_shape, mean, jitter="auto")
    return gp, _report(gp, x, held_out, "kernels")


def flip_flop(x: Tensor, space_shape: tuple[int, ...], iterations: int = 30,
              held_out: Tensor | None = None) -> tuple[KroneckerGP, dict]:  # fmt: skip
    """Free-form Γ and Σ maximising the likelihood of ``x (n, T, *space)`` (flip-flop, Dutilleul
    1999): Σ = Σ_i X_iᵀ Γ⁻¹ X_i / (nT), Γ = Σ_i X_i Σ⁻¹ X_iᵀ / (nS), alternated; Γ scaled to unit
    mean variance (the scale of Γ ⊗ Σ lives in Σ). Needs n·S > T and n·T > S."""
    x = x.double().reshape(len(x), x.shape[1], -1)
    n, t, s = x.shape
    if n * s <= t or n * t <= s:
        raise ValueError(f"flip_flop needs n·S > T and n·T > S windows' worth of data; got n={n}, T={t}, S={s}")
    mean = x.mean()
    xc = x - mean
    gamma = torch.eye(t, dtype=torch.float64)
    for _ in range(iterations):
        sigma = torch.einsum("nts,ntu->su", xc, torch.linalg.solve(gamma, xc)) / (n * t)
        gamma = torch.einsum("nts,nus->tu", xc, torch.linalg.solve(sigma, xc.transpose(1, 2)).transpose(1, 2)) / (n * s)
        scale = gamma.diagonal().mean()
        gamma, sigma = gamma / scale, sigma * scale
    gamma, sigma = (gamma + gamma.T) / 2, (sigma + sigma.T) / 2
    shape = list(space_shape) if len(space_shape) > 1 else None
    gp = KroneckerGP(Tabulated(gamma.tolist()), Tabulated(sigma.tolist(), shape), t, space_shape, mean.item(),
                     jitter="auto")  # fmt: skip
    return gp, _report(gp, x, held_out, "flip_flop")


def _report(gp: KroneckerGP, x: Tensor, held_out: Tensor | None, method: str) -> dict:
    gamma, sigma = gp.gamma, gp.sigma
    out = {"method": method, "temporal": repr(gp.temporal)[:300], "spatial": repr(gp.spatial)[:300],
           "mean": gp.mean_value, "log_likelihood_per_window": log_likelihood(x, gamma, sigma, gp.mean_value).item(),
           "windows": len(x)}  # fmt: skip
    if held_out is not None and len(held_out):
        h = held_out.double().reshape(len(held_out), x.shape[1], -1)
        out["held_out_log_likelihood_per_window"] = log_likelihood(h, gamma, sigma, gp.mean_value).item()
        out["held_out_windows"] = len(h)
    return out


def fit_reference(data, method: str, temporal: Kernel | None, spatial: Kernel | None,
                  max_windows: int = 2048) -> KroneckerGP:  # fmt: skip
    """The reference of an ``ArrayDataModule``: ``method`` (``kernels`` or ``flip_flop``) fitted to
    up to ``max_windows`` complete training windows (evenly spaced), checked on test windows; the
    report is printed and kept as ``data.reference_report``."""
    train = _complete(data.training_set(), max_windows)
    held_out = _complete(data.evaluation_samples("test"), max_windows) if len(data.index["test"]) else None
    if len(train) < 2:
        raise ValueError("ArrayDataModule.reference: fewer than 2 training windows without missing values to fit")
    if method == "kernels":
        temporal = temporal if temporal is not None else Matern(4.0, 1.5)
        spatial = spatial if spatial is not None else RBF(1.0)
        gp, report = fit_kernels(train, temporal, spatial, data.space_shape, held_out=held_out)
    elif method == "flip_flop":
        gp, report = flip_flop(train, data.space_shape, held_out=held_out)
    else:
        raise ValueError(f"reference must be 'none', 'kernels' or 'flip_flop', got {method!r}")
    data.reference_report = report
    rank_zero_info("separable Gaussian reference: " + ", ".join(f"{k}={v}" for k, v in report.items()))
    return gp


def _complete(windows, limit: int) -> Tensor:
    """Up to ``limit`` evenly spaced windows without NaN, stacked."""
    if isinstance(windows, Tensor):
        rows = windows
    else:
        picks = torch.linspace(0, len(windows) - 1, min(limit * 2, len(windows))).round().long().unique().tolist()
        rows = torch.stack([windows[i] for i in picks])
    rows = rows[~rows.flatten(1).isnan().any(1)]
    return rows[torch.linspace(0, len(rows) - 1, min(limit, len(rows))).round().long().unique()] if len(rows) else rows
