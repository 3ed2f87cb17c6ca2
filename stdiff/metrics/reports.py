"""The diagnostics as pure functions: given a model's outputs (or the model and some data) and the
truth, return numbers. The ``GPDiagnostics`` callback only decides when to call them and where the
numbers go; the diffusion math comes from ``stdiff.diffusion``, never re-implemented here."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from stdiff.diffusion import ExactDenoiser, diffuse, per_sample
from stdiff.metrics.attention import attention_alignment, frame_attention
from stdiff.metrics.distances import (
    early_stopping_kl,
    early_stopping_t_min,
    gaussian_fit_kl,
)
from stdiff.metrics.mixture import mixture_distances, sample_distances
from stdiff.schedules import NoiseSchedule
from stdiff.truth import KroneckerGP, Truth


def score_error_terms(truth: KroneckerGP, schedule: NoiseSchedule, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """What ``ScoreError.update`` takes, from a validation step's ``outputs`` (``x_t``, ``t``,
    ``noise``, ``noise_pred``, ``loss``): the model's score ŝ = −ε̂/σ and the exact score, both
    ``(B, T, *space)`` in float64, the log-SNR ``(B,)``, the model's per-sample ε-loss and the exact
    model's on the same inputs ``(B,)``."""
    t = outputs["t"].double()
    exact = ExactDenoiser.from_gp(truth, schedule)
    eps_exact = exact(outputs["x_t"].double(), t)
    sigma = per_sample(schedule.sigma(t), eps_exact)
    return {
        "score": -outputs["noise_pred"].double() / sigma,
        "score_exact": -eps_exact / sigma,
        "log_snr": schedule.log_snr(t),
        "loss": outputs["loss"],
        "loss_exact": (eps_exact - outputs["noise"].double()).pow(2).flatten(1).mean(1),
    }


def random_init_copy(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``net`` re-initialised (``reset_parameters``) from ``seed``: the untrained control."""
    control = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(control, "reset_parameters"):
            control.reset_parameters()
    return control


@torch.no_grad()
def attention_report(
    backbone: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    noise: Tensor,
    gamma: Tensor,
    log_snrs: list[float],
) -> tuple[dict[str, float], dict[float, dict[str, Tensor]]]:
    """Alignment with ``gamma (T, T)`` of each temporal attention unit of ``backbone`` on ``x0``
    noised with ``noise`` to each log-SNR in ``log_snrs`` (``stdiff.metrics.attention_alignment``).

    Returns the numbers, keyed ``<unit>/logsnr_<λ>/<pearson|rel_frob>`` (mean over heads),
    ``…/head<h>/…`` and ``pearson_best`` (empty when the backbone has no temporal attention), and
    the maps ``{λ: {unit: (H, T, T)}}`` for figures."""
    frames = x0.shape[1]
    out: dict[str, float] = {}
    maps_by_level: dict[float, dict[str, Tensor]] = {}
    best = []
    for lam in log_snrs:
        t = schedule.time_at_log_snr(torch.full((len(x0),), lam, dtype=torch.float64))
        t = t.clamp(schedule.t_min, schedule.t_max).to(x0)
        x_t = diffuse(schedule, x0, t, noise)
        maps = {k.removeprefix("blocks."): v for k, v in frame_attention(backbone, x_t, schedule.log_snr(t),
                                                                         frames=frames).items()}  # fmt: skip
        if not maps:
            return {}, {}
        maps_by_level[lam] = maps
        for name, m in maps.items():
            a = attention_alignment(m, gamma)
            prefix = f"{name}/logsnr_{lam:+.1f}"
            for key, per_head in a.items():
                out[f"{prefix}/{key}"] = per_head.mean().item()
                out.update({f"{prefix}/head{h}/{key}": v for h, v in enumerate(per_head.tolist())})
            best.append(a["pearson"].max().item())
    out["pearson_best"] = max(best)
    return out, maps_by_level


def attention_by_component(backbone: torch.nn.Module, schedule: NoiseSchedule, truth, log_snrs: list[float],
                           generator_for, device) -> dict[str, float]:  # fmt: skip
    """A mixture's (``GPMixture``) attention, read on 64 samples of each component k against each
    component's Γ_j: ``component<k>/gamma<j>/logsnr_<λ>/pearson`` (mean over layers and heads) and
    ``…/pearson_best``; a model that infers the regime aligns best with Γ_k on component k's samples.
    ``generator_for(*key)``: the seeded generator of each draw (key ``(0, k)`` samples, ``(1, k)`` noise)."""
    out: dict[str, float] = {}
    for k, component in enumerate(truth.components):
        x0 = component.sample(64, generator_for(0, k)).to(device)
        noise = torch.randn(x0.shape, generator=generator_for(1, k)).to(x0)
        for j, other in enumerate(truth.components):
            values, _ = attention_report(backbone, schedule, x0, noise, other.gamma, log_snrs)
            if not values:  # no temporal attention in this backbone
                return {}
            prefix = f"component{k}/gamma{j}"
            out[f"{prefix}/pearson_best"] = values["pearson_best"]
            for lam in log_snrs:
                level = [v for key, v in values.items() if key.endswith(f"/logsnr_{lam:+.1f}/pearson") and "/head" not in key]
                out[f"{prefix}/logsnr_{lam:+.1f}/pearson"] = sum(level) / len(level)
    return out


def sample_report(truth: Truth, samples: Tensor, schedule: NoiseSchedule, seed: int = 0,
                  full_max_dim: int = 1024, endpoint: str = "t_min") -> dict[str, float]:  # fmt: skip
    """Distances of generated ``samples (n, T, *space)`` to ``truth``, each beside its finite-sample
    floor (``sample_distances``, floors drawn with ``seed``), and ``early_stopping_kl``: how far
    the sampler's ``endpoint`` applied to the truth at ``t_min``, where sampling stops, is from the
    data (part of every KL above)."""
    values = sample_distances(truth, samples, seed, full_max_dim)
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    values["early_stopping_kl"] = early_stopping_kl(truth, schedule.alpha(t0).item(), schedule.sigma(t0).item(), endpoint)
    return values


def planned_endpoint(sampler, truth: Truth, schedule: NoiseSchedule) -> str | tuple[float, ...]:
    """The endpoint ``sampler`` ends on with the exact model of ``truth``: ``Sampler.endpoint_for``
    the spectrum of the exact denoiser's gain at t_min (every component's, weighted, for a mixture),
    which a perfect model's probe estimates (``stdiff.sampling.probe``)."""
    if not hasattr(sampler, "endpoint_for"):
        return getattr(sampler, "endpoint", "t_min")
    from stdiff.diffusion import data_moments
    from stdiff.sampling.probe import exact_spectrum

    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    a, s = schedule.alpha(t0).item(), schedule.sigma(t0).item()
    spectra = [exact_spectrum(c.eigenvalues(torch.device("cpu")), a, s) for c in truth.components]
    nodes = torch.cat([g for g, _ in spectra])
    weights = torch.cat([w * ones for w, (_, ones) in zip(truth.weights.tolist(), spectra, strict=True)])
    mean_precision = 0.0  # mᵀK⁻¹m, what stopping at t_min is charged for shrinking the mean (one Gaussian's)
    if len(truth.components) == 1:
        gp = truth.components[0]
        mean_precision = float((gp.to_eigenbasis(gp.mean[None]).reshape(-1) ** 2 / gp.eigenvalues().reshape(-1)).sum())
    return sampler.endpoint_for(nodes, weights, schedule, data_moments(truth)[1], mean_precision)


def early_stopping_report(truth: Truth, schedule: NoiseSchedule, target: float,
                          endpoint: str = "t_min") -> dict[str, float]:  # fmt: skip
    """What the verdict needs to say what to change when stopping at ``t_min`` keeps samples from
    the truth: Γ ⊗ Σ's ``smallest_eigenvalue`` and ``condition_number``, and
    ``t_min_for_early_stopping``, the largest t_min whose early-stopping KL (after the sampler's
    ``endpoint``) is ``target`` nats; ``early_stopping_kl_ode`` and ``early_stopping_kl_root``,
    that KL with the ``ode`` and ``root`` endpoints."""
    eigen = [c.eigenvalues().reshape(-1) for c in truth.components]
    lam = torch.cat(eigen)  # a mixture's: every component's (the worst conditioned decides)
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    ode, root = (early_stopping_kl(truth, schedule.alpha(t0).item(), schedule.sigma(t0).item(), e) for e in ("ode", "root"))
    return {"smallest_eigenvalue": lam.min().item(), "condition_number": max((e.max() / e.min()).item() for e in eigen),
            "t_min_for_early_stopping": early_stopping_t_min(truth, schedule, target, endpoint),
            "early_stopping_kl_ode": ode, "early_stopping_kl_root": root}  # fmt: skip


def exact_model_floor(truth: Truth, exact_samples: Tensor, values: dict[str, float], seed: int = 0) -> dict[str, float]:
    """What the exact model reaches through the same sampler, steps and t_min, from the same noise:
    ``exact_model_kl`` and ``exact_model_kl_excess`` of its samples ``(n, T, *space)`` beside the
    model's ``values`` (``sample_distances``; its ``kl_floor`` for a Gaussian, whose floor does not
    depend on where the samples went); for a mixture its own floor (labels drawn with ``seed``) and
    ``exact_model_weights_tv``, the sampler's own share of a weight error."""
    truth = truth.simplified()
    if truth.is_gaussian:
        kl = gaussian_fit_kl(exact_samples, truth.mean, truth.covariance())
        return {"exact_model_kl": kl, "exact_model_kl_excess": kl - values["kl_floor"]}
    own = mixture_distances(truth, exact_samples, seed)
    out = {"exact_model_weights_tv": own["weights_tv"]}
    if "kl" in own:
        out.update(exact_model_kl=own["kl"], exact_model_kl_excess=own["kl_excess"])
    return out


def sampler_floor(truth: Truth, sampler, model, values: dict[str, float], draw, seed: int = 0,
                  device="cpu") -> dict[str, float]:  # fmt: skip
    """What the exact model of ``truth`` reaches through ``sampler`` (same steps and t_min) beside
    the ``model``'s sample ``values`` (``sample_distances``): the part of the KL no training
    removes. ``draw(exact_model)`` returns the exact model's samples from the model's own noise.

    For a Gaussian truth and a deterministic sampler ``exact_model_eigen_kl`` is that floor
    exactly, from two one-sample draws (``stdiff.metrics.eigen.linear_sampler_law``), at any d.
    ``exact_model_kl_excess``: where the full KL exists (d <= 1024) the Gaussian-fit KL excess of
    the exact model's own samples (``exact_model_floor``); beyond, that exact floor, or for a
    stochastic sampler the eigen-KL excess of the exact model's samples."""
    from stdiff.metrics.eigen import eigen_statistics, law_eigen_kl, linear_sampler_law

    truth = truth.simplified()
    is_exact = isinstance(model, ExactDenoiser)  # (a ResidualDenoiser needs the truth too, but is not it)
    exact = model if is_exact else ExactDenoiser.from_gp(truth, model.schedule)
    out: dict[str, float] = {}
    if truth.is_gaussian:
        law = linear_sampler_law(truth, sampler, exact, device)
        if law is not None:
            out["exact_model_eigen_kl"] = law_eigen_kl(truth, *law)
    if "kl" in values and is_exact:  # the exact model already: its KL is the floor
        return {**out, "exact_model_kl": values["kl"], "exact_model_kl_excess": values["kl_excess"]}
    if "kl" in values:
        return {**out, **exact_model_floor(truth, draw(exact), values, seed)}
    if "exact_model_eigen_kl" in out:
        return {**out, "exact_model_kl_excess": out["exact_model_eigen_kl"]}
    if not truth.is_gaussian:  # a mixture without its KL: nothing comparable to report
        return out
    if is_exact:  # a stochastic sampler: the exact model's own eigen-KL excess
        return {**out, "exact_model_kl_excess": values["eigen_kl_excess"]}
    y = truth.to_eigenbasis(draw(exact).double() - truth.mean)
    return {**out, "exact_model_kl_excess": eigen_statistics(truth, y)["eigen_kl_excess"]}
