"""Samples against any truth (``sample_distances``): a Gaussian's through ``distances.py``, a
mixture's (``stdiff.truth.GPMixture``) by the statistics below, which see modes.

A Gaussian fit of all the samples sees only the mixture's first two moments: a model that
merges the modes, or drops a rare one, can have a small Gaussian-fit KL to the moment-matched
Gaussian (``moment_matched_kl``, reported only as that). What is reported instead:

- ``weights/<k>``: the weights recovered from the samples, each sample's exact responsibilities
  averaged (``weights/<k>/true`` beside them), ``weights_tv``, their total-variation distance to
  the true weights, and ``weights_kl``, KL(ŵ ‖ w) (floors: the same for as many exact samples, the
  finite-sample noise);
- ``component<k>/kl``: the Gaussian-fit KL of the samples assigned to component k (each drawn to
  a component from its exact responsibilities) against that component, beside its floor (as many
  exact draws of component k), and ``component<k>/whitened_norm``, ``component<k>/samples``;
- ``kl``: the mixture's KL by components, ``KL(ŵ ‖ w) + Σ_k ŵ_k·component<k>/kl``. With labels drawn
  from the true responsibilities for both laws, KL(q(x, z) ‖ p(x, z)) = KL(q ‖ p) exactly, and the
  chain rule splits it into the weights' KL and the components' KLs; each Gaussian fit is a lower
  bound of its component's KL (p_k is Gaussian), so ``kl`` is a lower bound of KL(q ‖ p) whose
  only loss is non-Gaussian shape within a component. For one component it is the Gaussian-fit
  KL, and ``kl_excess`` is read by the verdict as for a Gaussian, with ``kl_excess_noise``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stdiff.metrics.distances import gaussian_fit_kl, gaussian_sample_distances, kl_noise, whiten
from stdiff.truth import Truth


def sample_distances(truth: Truth, x: Tensor, seed: int = 0, full_max_dim: int = 1024) -> dict[str, float]:
    """Distances of samples ``x (n, T, *space)`` to ``truth``, each beside ``<name>_floor`` (the same
    statistic of as many exact samples, drawn with ``seed``) and ``<name>_excess``: a Gaussian's
    (a mixture of one included) by ``gaussian_sample_distances``, a mixture's by ``mixture_distances``."""
    truth = truth.simplified()
    if truth.is_gaussian:
        return gaussian_sample_distances(truth, x, seed, full_max_dim)
    return mixture_distances(truth, x, seed, full_max_dim)


def missing_kl_note(truth: Truth, values: dict[str, float], n: int, full_max_dim: int) -> str | None:
    """Why ``sample_distances`` gave no ``kl`` for ``n`` samples (None when it gave one)."""
    if "kl" in values:
        return None
    if truth.simplified().is_gaussian:
        return None  # the eigen-direction KL is the headline at any d and n (stdiff.metrics.eigen)
    counts = [int(values.get(f"component{k}/samples", 0)) for k in range(len(truth.components))]
    return (f"the mixture's KL needs more than 2·d = {2 * truth.dim} samples of every component (dimension <= "
            f"{full_max_dim}); its {n} samples were assigned {counts}: raise diagnostics.num_samples; reporting the "
            "weights and whitened norms only.")  # fmt: skip


def mixture_statistics(mixture, x: Tensor, seed: int = 0, full_max_dim: int = 1024) -> dict[str, float]:
    """The statistics of the module docstring for samples ``x (n, T, *space)`` (labels drawn with ``seed``)."""
    x = x.to(torch.float64).cpu()
    n, d, w = len(x), mixture.dim, mixture.weights
    r = mixture.responsibilities(x)  # (n, K)
    w_hat = r.mean(0)
    out: dict[str, float] = {f"weights/{k}": v for k, v in enumerate(w_hat.tolist())}
    out.update({f"weights/{k}/true": v for k, v in enumerate(w.tolist())})
    out["weights_tv"] = 0.5 * (w_hat - w).abs().sum().item()
    labels = torch.multinomial(r, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    weights_kl = sum(p * math.log(p / q) for p, q in zip(w_hat.tolist(), w.tolist()) if p > 0)
    out["weights_kl"] = weights_kl
    total, noise_sq, complete = weights_kl, (len(w) - 1) / (2 * n**2), True
    for k, c in enumerate(mixture.components):
        xk = x[labels == k]
        out[f"component{k}/samples"] = float(len(xk))
        if len(xk):
            z = whiten(c, xk)
            out[f"component{k}/whitened_norm"] = (z**2).sum(1).mean().item() / d
        if d <= full_max_dim and len(xk) > 2 * d:
            kl = gaussian_fit_kl(xk, c.mean, c.covariance())
            out[f"component{k}/kl"] = kl
            total += w_hat[k].item() * kl
            noise_sq += w_hat[k].item() ** 2 * kl_noise(d, len(xk)) ** 2
        else:
            complete = False
    if complete:
        out["kl"] = total
        out["kl_excess_noise"] = math.sqrt(2 * noise_sq)  # of the excess over exact samples' (two sets)
    if d <= full_max_dim and n > 2 * d:
        out["moment_matched_kl"] = gaussian_fit_kl(x, mixture.mean, mixture.covariance())
    return out


def mixture_distances(mixture, x: Tensor, seed: int = 0, full_max_dim: int = 1024) -> dict[str, float]:
    """``mixture_statistics`` of ``x``, each beside ``<name>_floor`` and ``<name>_excess`` (for
    ``whitened_norm``, the excess of |value − 1|). The floors come from exact draws (seeded by
    ``seed``) of the same sizes: the weights' and the moment-matched fit's from as many exact
    samples of the mixture; component k's from exactly as many draws of component k as were
    assigned to it (a Gaussian-fit KL's bias, d(d+3)/(4n), depends on n: an equal count makes the
    excess fair; exact samples assigned to k by their responsibilities are draws of component k);
    ``kl_floor`` = the exact samples' weights KL + Σ_k ŵ_k · component k's floor."""
    values = mixture_statistics(mixture, x, seed, full_max_dim)
    g = torch.Generator().manual_seed(seed)
    exact = mixture_statistics(mixture, mixture.sample(len(x), g, dtype=torch.float64), seed, full_max_dim)
    out = dict(values)
    for name in ("weights_tv", "weights_kl", "moment_matched_kl"):
        if name in exact and name in values:
            out[f"{name}_floor"], out[f"{name}_excess"] = exact[name], values[name] - exact[name]
    d, floor, complete = mixture.dim, exact["weights_kl"], "kl" in values
    for k, c in enumerate(mixture.components):
        n_k = int(values[f"component{k}/samples"])
        if not n_k:
            continue
        draws = c.sample(n_k, g, dtype=torch.float64)
        white = (whiten(c, draws) ** 2).sum(1).mean().item() / d
        out[f"component{k}/whitened_norm_floor"] = white
        out[f"component{k}/whitened_norm_excess"] = abs(values[f"component{k}/whitened_norm"] - 1) - abs(white - 1)
        if f"component{k}/kl" in values:
            kl = gaussian_fit_kl(draws, c.mean, c.covariance())
            out[f"component{k}/kl_floor"], out[f"component{k}/kl_excess"] = kl, values[f"component{k}/kl"] - kl
            floor += values[f"weights/{k}"] * kl
    if complete:
        out["kl_floor"], out["kl_excess"] = floor, values["kl"] - floor
    return out
