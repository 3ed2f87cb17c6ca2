"""Conditional samples against the exact GP posterior N(m, C) (``KroneckerGP.conditional``), or a
mixture's (``GPMixture.conditional``: its mean and, per case, its covariance; no residual KL/W2,
the posterior being a mixture).

For ``n`` cases ``x (n, T, *space)`` sharing one mask, and ``k`` samples of each, every number is
reported beside the same estimator on ``k`` exact posterior samples of each case (``…_exact``):
finite-sample effects cancel in the difference, so the excess is the method's and model's error.

- ``kl``, ``w2``: Gaussian fit of the pooled residuals (sample − m(x)) on the missing coordinates
  against N(0, C) (the covariance is the same for every case; the mean depends on x).
- ``crps``: per-coordinate CRPS of the k samples against the true held-out values (``crps``
  below), averaged over missing coordinates and cases; ``crps_ratio`` = crps / crps_exact, whose
  expectation is 1 for Bayes-optimal samples (the same estimator on both sides).
- ``energy``: the energy score E‖X − y‖ − ½ E‖X − X'‖ over the missing coordinates of a case.
- ``coverage50``, ``coverage90``: fraction of held-out values inside the samples' central 50 % and
  90 % intervals (nominal: 0.5, 0.9).
- ``crps_by_frame``: CRPS per frame with a missing coordinate (the lead time, for forecasts).
- ``spread``, ``spread_by_frame``: the samples' spread around their own case mean against the
  posterior's, as a ratio of root-mean variances (1: intervals of the right width; 0.9: 10 %
  too narrow). No finite-sample floor (sample variances are unbiased for any k), so it shows
  miscalibration that coverage's floor hides.

Both scores come with two estimators of E‖X − X'‖ from k samples (``estimator``): ``"biased"``
(the default: 1/k² over all pairs, the sample distribution's own score; what torchmetrics,
properscoring and scoringrules' default compute, to 1e-15) and ``"fair"`` (1/(k(k − 1)),
unbiased for the score of the distribution the samples come from, so it does not depend on k).

Real data (NaN = missing): each case is conditioned on its entries that the mask observes *and*
that are present, and scored only on entries the mask hides that are present (a missing value
has nothing to score against). Cases then differ in what they observe: KL and W2, which need one
posterior covariance, are reported only when every case shares it. Where the reference is a
Gaussian fitted to the data (``ArrayDataModule``), "exact" means "that reference's posterior":
the best Gaussian answer, not a bound on what a model can reach.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stdiff.metrics.distances import FULL_MAX_DIM, gaussian_kl, gaussian_w2
from stdiff.truth import DENSE_LIMIT, Truth, flat_mask

ESTIMATORS = ("biased", "fair")


def _pair_scale(k: int, estimator: str) -> float:
    """The factor of ½ Σ_ij |x_i − x_j| in each estimator of ½ E|X − X'|."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "fair" and k < 2:
        raise ValueError(f"the fair estimator needs at least 2 samples, got {k}")
    return 0.5 / (k * k if estimator == "biased" else k * (k - 1))


def crps(samples: Tensor, target: Tensor, estimator: str = "biased") -> Tensor:
    """CRPS of the ensembles ``samples (N, k)`` against ``target (N,)``, one per row:
    E|X − y| − ½ E|X − X'| (``estimator``: module docstring). The pair term comes from the sorted
    ensemble, Σ_ij |x_i − x_j| = 2 Σ_i (2i − k − 1) x_(i): O(N·k) memory and O(N·k log k) time,
    not the O(N·k²) of all pairs."""
    k = samples.shape[-1]
    scale = _pair_scale(k, estimator)
    ordered = samples.sort(-1).values
    weights = torch.arange(1 - k, k, 2, dtype=samples.dtype, device=samples.device)  # 2i − k − 1, i = 1..k
    return (samples - target[..., None]).abs().mean(-1) - scale * 2 * (ordered * weights).sum(-1)


def energy_score(samples: Tensor, target: Tensor, estimator: str = "biased") -> Tensor:
    """Energy score of ``samples (k, m)`` against ``target (m,)``: E‖X − y‖ − ½ E‖X − X'‖."""
    scale = _pair_scale(len(samples), estimator)
    return (samples - target).norm(dim=-1).mean() - scale * torch.cdist(samples[None], samples[None])[0].sum()


def _cases(truth: Truth, x: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Cases grouped by what they observe: ``(rows, observed (T·S,), conditioning mask)`` with the
    mask in the cheapest form ``truth.conditional`` takes (a frame mask when it is one)."""
    n, dims = len(x), len(truth.sample_shape)
    present = ~x.reshape(n, -1).isnan().cpu()
    if mask.ndim == dims + 1 and not (mask == mask[:1]).all():
        per_case = mask
    else:
        per_case = None
        mask = mask[0] if mask.ndim == dims + 1 else mask
        if bool(present.all()):  # one pattern for all: the mask as given (a frame mask stays cheap)
            return [(torch.arange(n), _coordinates(truth, mask), mask)]
    flat = _coordinates(truth, mask)[None].expand(n, -1) if per_case is None else per_case.reshape(n, -1).cpu()
    observed = flat & present
    patterns, inverse = torch.unique(observed, dim=0, return_inverse=True)
    return [(
        (inverse == i).nonzero().squeeze(1), p, p.reshape(truth.sample_shape)
    ) for i, p in enumerate(patterns)]  # fmt: skip


def posterior_samples(truth: Truth, x: Tensor, mask: Tensor, k: int, generator=None) -> Tensor:
    """``k`` exact posterior samples of each case: ``(n, k, T, *space)``, observed entries from ``x``
    (NaN in ``x``: missing, sampled too). ``mask``: ``(T,)``, ``(T, *space)`` or one per case.
    ``truth``: a ``KroneckerGP`` or a ``GPMixture`` (any truth with ``sample_conditional``)."""
    out = torch.empty(len(x), k, *truth.sample_shape, dtype=torch.float64)
    for rows, _, cond in _cases(truth, x, mask):
        out[rows] = truth.sample_conditional(torch.nan_to_num(x[rows].double().cpu()), cond, k, generator)
    return out


def _coordinates(truth: Truth, mask: Tensor) -> Tensor:
    """A frame mask ``(T,)`` or coordinate mask ``(T, *space)`` (or the first of per-case masks) as a
    flat ``(T·S,)`` coordinate mask on the CPU."""
    return flat_mask(truth, mask[0] if mask.ndim == len(truth.sample_shape) + 1 else mask).cpu()


def _scores(samples: Tensor, target: Tensor, frame_of: Tensor, case_of: Tensor, variance: Tensor,
            estimator: str) -> dict:  # fmt: skip
    """The statistics of ``samples (N, k)`` against ``target (N,)`` over the N scored coordinates
    of all cases, ``frame_of`` / ``case_of (N,)`` saying where each sits, ``variance (N,)`` the
    posterior's."""
    width = samples.var(1)
    per = crps(samples, target, estimator)
    energy = [energy_score(samples[case_of == c].T, target[case_of == c], estimator) for c in torch.unique(case_of)]
    lo50, hi50, lo90, hi90 = torch.quantile(samples, torch.tensor([0.25, 0.75, 0.05, 0.95], dtype=samples.dtype), 1)
    frames = torch.unique(frame_of)
    by_frame = [frame_of == f for f in frames]
    return {
        "crps": per.mean().item(),
        "energy": torch.stack(energy).mean().item(),
        "coverage50": ((target >= lo50) & (target <= hi50)).double().mean().item(),
        "coverage90": ((target >= lo90) & (target <= hi90)).double().mean().item(),
        "crps_by_frame": [per[f].mean().item() for f in by_frame],
        "spread": (width.mean() / variance.mean()).sqrt().item(),
        "spread_by_frame": [(width[f].mean() / variance[f].mean()).sqrt().item() for f in by_frame],
    }


def _posterior_moments(truth: Truth, x: Tensor, cond: Tensor, exact: Tensor, missing: Tensor,
                       covariance: bool) -> tuple[Tensor | None, Tensor, Tensor | None]:  # fmt: skip
    """The posterior's mean (None where it has no closed form), its variance ``(cases, m)`` on the
    ``missing`` coordinates and, with ``covariance``, its covariance ``(m, m)``. Scattered masks
    beyond the dense limit have neither in closed form: the variance of the ``exact`` draws."""
    x = torch.nan_to_num(x)
    if covariance:
        mean, cov = truth.conditional(x, cond)
        cov = cov[(0,) * (cov.ndim - 2)]
        return mean, cov.diagonal().expand(len(x), -1), cov
    try:
        mean, var = truth.conditional(x, cond, variance_only=True)
    except ValueError:
        if truth.dim <= DENSE_LIMIT:
            raise
        return None, exact.double().reshape(len(x), exact.shape[1], -1)[..., missing].var(1), None
    return mean, (var.expand(len(x), -1) if var.ndim == 1 else var), None


def conditional_report(truth: Truth, x: Tensor, mask: Tensor, samples: Tensor, seed: int = 0,
                       estimator: str = "biased") -> dict:  # fmt: skip
    """Conditional ``samples (n, k, T, *space)`` of cases ``x (n, T, *space)`` (NaN = missing)
    observed at ``mask`` (one ``(T,)`` or ``(T, *space)`` mask for all cases, or one per case)
    against the posterior of ``truth`` (module docstring; ``estimator`` of CRPS and energy score:
    ``"biased"`` or ``"fair"``). Returns floats, ``estimator``, and the ``…_by_frame`` statistics
    and ``frames`` as lists."""
    n, k = samples.shape[:2]
    _pair_scale(k, estimator)  # a bad estimator fails before any sampling
    x = x.double().cpu()
    exact = posterior_samples(truth, x, mask.cpu(), k, torch.Generator().manual_seed(seed))
    frame_index = torch.arange(truth.frames).repeat_interleave(truth.num_points)
    picks = {"": [], "_exact": []}
    target, frame_of, case_of, variance, residuals = [], [], [], [], {"": [], "_exact": []}
    groups = _cases(truth, x, mask)
    for rows, observed, cond in groups:
        missing = ~observed
        shared = len(groups) == 1 and not x.isnan().any() and truth.is_gaussian
        fit = shared and int(missing.sum()) <= FULL_MAX_DIM and n * k > int(missing.sum()) + 1
        mean, var_m, cov = _posterior_moments(truth, x[rows], cond, exact[rows], missing, fit)
        flat_x = x[rows].reshape(len(rows), -1)
        for j, row in enumerate(rows.tolist()):
            scored = missing & ~flat_x[j].isnan()  # hidden by the mask and really observed
            if not scored.any():
                continue
            target.append(flat_x[j][scored])
            frame_of.append(frame_index[scored])
            case_of.append(torch.full((int(scored.sum()),), row))
            variance.append(var_m[j][scored[missing]])
            for label, draws in (("", samples), ("_exact", exact)):
                picks[label].append(draws[row].double().cpu().reshape(k, -1)[:, scored].T)  # (m, k)
        if shared and mean is not None:  # one Gaussian posterior: fit the residuals
            for label, draws in (("", samples), ("_exact", exact)):
                s = draws.double().cpu().reshape(n, k, -1)[..., missing]
                residuals[label] = (s - mean.reshape(n, 1, -1)[..., missing]).reshape(n * k, -1)
            shared_cov = cov
    if not target:
        raise ValueError("conditional_report: no entry is both hidden by the mask and observed in the data; "
                         "nothing to score")  # fmt: skip
    target, frame_of, case_of, variance = (torch.cat(v) for v in (target, frame_of, case_of, variance))
    d = len(target)
    out: dict = {"cases": n, "samples_per_case": k, "missing": int(d // max(1, len(torch.unique(case_of)))),
                 "scored": d, "shared_posterior": bool(len(residuals[""])), "estimator": estimator}  # fmt: skip
    for label in ("", "_exact"):
        stats = _scores(torch.cat(picks[label]), target, frame_of, case_of, variance, estimator)
        res = residuals[label]
        if len(res):
            dim = res.shape[1]
            r_mean = res.mean(0)
            if shared_cov is not None:
                r_cov = torch.cov(res.T)
                zero = torch.zeros(dim, dtype=torch.float64)
                stats["kl"] = gaussian_kl(r_mean, r_cov, zero, shared_cov)
                stats["w2"] = gaussian_w2(r_mean, r_cov, zero, shared_cov)
            stats["bias"] = r_mean.norm().item() / dim**0.5
        out.update({f"{key}{label}": value for key, value in stats.items()})
    out["frames"] = torch.unique(frame_of).tolist()
    out["crps_ratio"] = out["crps"] / out["crps_exact"]
    for key in ("kl", "w2", "energy", "crps"):
        if key in out:
            out[f"{key}_excess"] = out[key] - out[f"{key}_exact"]
    return out
