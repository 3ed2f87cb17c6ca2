"""Conditional samples against the exact GP posterior N(m, C) (``KroneckerGP.conditional``).

For ``n`` cases ``x (n, T, *space)`` sharing one mask, and ``k`` samples of each, every number is
reported beside the same estimator on ``k`` exact posterior samples of each case (``…_exact``):
finite-sample effects cancel in the difference, so the excess is the method's and model's error.

- ``kl``, ``w2``: Gaussian fit of the pooled residuals (sample − m(x)) on the missing coordinates
  against N(0, C) (the covariance is the same for every case; the mean depends on x).
- ``crps``: per-coordinate CRPS of the k samples against the true held-out values (torchmetrics'
  ``ContinuousRankedProbabilityScore``), averaged over missing coordinates and cases; ``crps_ratio``
  = crps / crps_exact (1 is Bayes-optimal).
- ``energy``: the energy score E‖X − y‖ − ½ E‖X − X'‖ over the missing coordinates of a case.
- ``coverage50``, ``coverage90``: fraction of held-out values inside the samples' central 50 % and
  90 % intervals (nominal: 0.5, 0.9).
- ``crps_by_frame``: CRPS per frame with a missing coordinate (the lead time, for forecasts).
- ``spread``, ``spread_by_frame``: the samples' spread around their own case mean against the
  posterior's, as a ratio of root-mean variances (1: intervals of the right width; 0.9: 10 %
  too narrow). No finite-sample floor (sample variances are unbiased for any k), so it shows
  miscalibration that coverage's floor hides.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.regression.crps import _crps_update

from stdiff.gp import KroneckerGP
from stdiff.metrics.distances import gaussian_kl, gaussian_w2


def posterior_samples(truth: KroneckerGP, x: Tensor, mask: Tensor, k: int, generator=None) -> Tensor:
    """``k`` exact posterior samples of each case: ``(n, k, T, *space)``, observed entries from ``x``."""
    mean, cov = truth.conditional(x.double(), mask if mask.ndim == len(truth.sample_shape) else mask[0])
    missing = ~_coordinates(truth, mask)
    chol = torch.linalg.cholesky(cov + 1e-12 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype))
    z = torch.randn(len(x), k, len(cov), generator=generator, dtype=torch.float64)
    flat = mean.reshape(len(x), 1, -1).repeat(1, k, 1)
    flat[..., missing] += z @ chol.T
    return flat.reshape(len(x), k, *truth.sample_shape)


def _coordinates(truth: KroneckerGP, mask: Tensor) -> Tensor:
    """A frame mask ``(T,)`` or coordinate mask ``(T, *space)`` as a flat ``(T·S,)`` coordinate mask."""
    mask = mask[0] if mask.ndim == len(truth.sample_shape) + 1 else mask
    if tuple(mask.shape) == (truth.frames,):
        mask = mask[:, None].expand(truth.frames, truth.num_points)
    return mask.reshape(-1).cpu()


def _scores(samples: Tensor, target: Tensor, residuals: Tensor, frame_of: Tensor, variance: Tensor) -> dict:
    """The statistics of ``samples (n, k, d)`` against ``target (n, d)``; ``residuals (n·k, d)``;
    ``variance (d,)`` the posterior's."""
    n, k, d = samples.shape
    width = samples.var(1).mean(0)
    _, diff, spread = _crps_update(samples.permute(0, 2, 1).reshape(n * d, k), target.reshape(n * d))
    crps = (diff - spread).reshape(n, d)
    energy = (samples - target[:, None]).norm(dim=-1).mean(1)
    energy = energy - 0.5 * torch.cdist(samples, samples).sum((1, 2)) / k**2
    lo50, hi50, lo90, hi90 = torch.quantile(samples, torch.tensor([0.25, 0.75, 0.05, 0.95], dtype=samples.dtype), 1)
    frames = torch.unique(frame_of)
    by_frame = [frame_of == f for f in frames]
    return {
        "crps": crps.mean().item(),
        "energy": energy.mean().item(),
        "coverage50": ((target >= lo50) & (target <= hi50)).double().mean().item(),
        "coverage90": ((target >= lo90) & (target <= hi90)).double().mean().item(),
        "crps_by_frame": torch.stack([crps[:, f].mean() for f in by_frame]),
        "spread": (width.mean() / variance.mean()).sqrt().item(),
        "spread_by_frame": torch.stack([(width[f].mean() / variance[f].mean()).sqrt() for f in by_frame]),
        "residual_mean": residuals.mean(0),
        "residual_cov": torch.cov(residuals.T),
    }


def conditional_report(truth: KroneckerGP, x: Tensor, mask: Tensor, samples: Tensor, seed: int = 0) -> dict:
    """Conditional ``samples (n, k, T, *space)`` of cases ``x (n, T, *space)`` observed at ``mask``
    (one ``(T,)`` or ``(T, *space)`` mask for all cases) against the exact posterior (module
    docstring). Returns floats, and the ``…_by_frame`` statistics and ``frames`` as lists."""
    n, k = samples.shape[:2]
    missing = ~_coordinates(truth, mask)
    d = int(missing.sum())
    mean, cov = truth.conditional(x.double().cpu(), mask[0] if mask.ndim == len(truth.sample_shape) + 1 else mask)
    mean_m = mean.reshape(n, -1)[:, missing]
    target = x.double().cpu().reshape(n, -1)[:, missing]
    frame_of = torch.arange(truth.frames).repeat_interleave(truth.num_points)[missing]
    exact = posterior_samples(truth, x.cpu(), mask.cpu(), k, torch.Generator().manual_seed(seed))
    out: dict = {"cases": n, "samples_per_case": k, "missing": d}
    for label, draws in (("", samples), ("_exact", exact)):
        s = draws.double().cpu().reshape(n, k, -1)[..., missing]
        residuals = (s - mean_m[:, None]).reshape(n * k, d)
        stats = _scores(s, target, residuals, frame_of, cov.diagonal())
        if n * k > d + 1:
            zero = torch.zeros(d, dtype=torch.float64)
            stats["kl"] = gaussian_kl(stats["residual_mean"], stats["residual_cov"], zero, cov)
            stats["w2"] = gaussian_w2(stats["residual_mean"], stats["residual_cov"], zero, cov)
        stats["bias"] = stats.pop("residual_mean").norm().item() / d**0.5
        stats.pop("residual_cov")
        for key in ("crps_by_frame", "spread_by_frame"):
            stats[key] = stats[key].tolist()
        out.update({f"{key}{label}": value for key, value in stats.items()})
    out["frames"] = torch.unique(frame_of).tolist()
    out["crps_ratio"] = out["crps"] / out["crps_exact"]
    for key in ("kl", "w2", "energy", "crps"):
        if key in out:
            out[f"{key}_excess"] = out[key] - out[f"{key}_exact"]
    return out
