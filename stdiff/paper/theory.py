"""The theory without training (the paper's constructions, checked numerically).

(a) The score at time t is the minimiser of the quadratic ``½ yᵀ(α²K + σ²I)y + yᵀx_t``: gradient
descent unrolled K steps (what the paper's transformer layers implement) converges at the rate
``((κ−1)/(κ+1))^K``, κ the condition number of ``α²K + σ²I``. Measured: the relative error of the
K-step iterate against the exact score, averaged over samples x_t, for several t, beside the bound.

(b) Truncating temporal correlations beyond lag J (the paper's sparse-attention argument): the
exact score map ``M = (α²Γ⊗Σ + σ²I)⁻¹`` with its frame blocks beyond lag J set to zero. Measured
exactly (no sampling): ``E‖(M_J − M)x_t‖² / E‖M x_t‖²``, and the smallest J reaching a fixed error
as T grows (the paper predicts J = O(log T)).
"""

from __future__ import annotations

import math

import torch

from stdiff.kernels import GeneralizedCauchy, PoweredExponential
from stdiff.paper.common import figure, save, write_csv, write_summary
from stdiff.schedules import OrnsteinUhlenbeck
from stdiff.seeding import SWEEP, generator
from stdiff.truth import KroneckerGP

FULL = {"frames": 64, "points": 8, "steps": 200, "samples": 256, "truncation_frames": [16, 32, 64, 128, 256, 512]}
CPU = {"frames": 32, "points": 4, "steps": 120, "samples": 128, "truncation_frames": [16, 32, 64, 128, 256]}
TIMES = [0.01, 0.1, 0.5, 2.0]
KERNELS = {"exponential (ν=1)": PoweredExponential(4.0, 1.0), "generalized Cauchy": GeneralizedCauchy(4.0, 1.0, 1.0)}
TOLERANCE = 1e-3


def unrolled_gd(gp: KroneckerGP, t: float, steps: int, samples: int, seed: int = 0) -> tuple[list[float], float]:
    """Relative error of K-step gradient descent on the score's quadratic, K = 0..steps, and κ."""
    schedule = OrnsteinUhlenbeck()
    tt = torch.tensor(t, dtype=torch.float64)
    alpha, sigma = schedule.alpha(tt).item(), schedule.sigma(tt).item()
    a = alpha**2 * gp.covariance() + sigma**2 * torch.eye(gp.dim, dtype=torch.float64)
    evals = torch.linalg.eigvalsh(a)
    lo, hi = evals[0].item(), evals[-1].item()
    eta = 2.0 / (lo + hi)  # the step size that gives the (κ−1)/(κ+1) rate
    g = generator(seed, SWEEP, 0)
    x0 = gp.sample(samples, g, dtype=torch.float64).reshape(samples, -1)
    x = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    exact = gp.score(x.reshape(samples, *gp.sample_shape), alpha, sigma).reshape(samples, -1)
    y = torch.zeros_like(x)
    errors = []
    for _ in range(steps + 1):
        errors.append(((y - exact).norm(dim=1) / exact.norm(dim=1)).mean().item())
        y = y - eta * (y @ a + x)  # ∇ of ½ yᵀAy + yᵀx
    return errors, hi / lo


def truncation_error(gp: KroneckerGP, t: float, lag: int) -> tuple[float, float]:
    """(E‖(M_J − M)x‖², E‖Mx‖²) for x ~ N(0, C), C = α²K + σ²I, M = C⁻¹ banded to |i − j| ≤ J frames."""
    schedule = OrnsteinUhlenbeck()
    tt = torch.tensor(t, dtype=torch.float64)
    alpha, sigma = schedule.alpha(tt).item(), schedule.sigma(tt).item()
    c = alpha**2 * gp.covariance() + sigma**2 * torch.eye(gp.dim, dtype=torch.float64)
    m = torch.linalg.inv(c)
    frame = torch.arange(gp.frames).repeat_interleave(gp.num_points)
    band = (frame[:, None] - frame[None, :]).abs() <= lag
    d = torch.where(band, m, torch.zeros_like(m)) - m
    return torch.trace(d @ c @ d.T).item(), torch.trace(m @ c @ m.T).item()


def run(out, scale: dict, seed: int = 0, **_) -> dict:
    rows, summary = [], {"tolerance": TOLERANCE}
    fig, axes = figure(1, 3, size=(4.2, 3.4))
    # (a) unrolled gradient descent
    gp = KroneckerGP(PoweredExponential(4.0, 1.0), PoweredExponential(2.0, 1.0), scale["frames"], (scale["points"],))
    for t in TIMES:
        errors, kappa = unrolled_gd(gp, t, scale["steps"], scale["samples"], seed)
        rate = (kappa - 1) / (kappa + 1)
        for k, e in enumerate(errors):
            rows.append({"part": "unrolled_gd", "t": t, "K": k, "rel_error": e, "bound": rate**k, "kappa": kappa})
        line = axes[0, 0].semilogy(errors, label=f"t={t} (κ={kappa:.3g})")[0]
        axes[0, 0].semilogy([rate**k for k in range(len(errors))], "--", color=line.get_color(), lw=0.8)
        # measured rate over the last half of the iterations, against the bound
        half = len(errors) // 2
        del half
        kept = [e for e in errors[1:] if e > 1e-12]  # before round-off takes over
        measured = (kept[-1] / kept[0]) ** (1 / (len(kept) - 1)) if len(kept) > 1 else 0.0
        summary[f"gd_t{t}"] = {"kappa": kappa, "bound_rate": rate, "measured_rate": measured}
    axes[0, 0].set_ylim(1e-17, 2)
    axes[0, 0].set(
        xlabel="K (gradient steps = layers)", ylabel="relative score error", title="(a) unrolled GD; -- bound"
    )
    axes[0, 0].legend(fontsize=7)
    # (b) truncation at lag J
    t_trunc = 0.1
    for name, kernel in KERNELS.items():
        frames = scale["truncation_frames"]
        needed, needed_total, budget = [], [], None
        for T in frames:
            gp_t = KroneckerGP(kernel, None, T, (1,))
            parts = [truncation_error(gp_t, t_trunc, j) for j in range(T)]
            errs = [a / b for a, b in parts]
            # two criteria: the relative error (per coordinate), and the total error E‖(M_J − M)x‖²
            # within a fixed budget (TOLERANCE × E‖Mx‖² at the smallest T): the paper's uniform bound
            budget = budget if budget is not None else TOLERANCE * parts[0][1]
            needed.append(next((j for j, e in enumerate(errs) if e <= TOLERANCE), T - 1))
            needed_total.append(next((j for j, (a, _) in enumerate(parts) if a <= budget), T - 1))
            for j, (e, (a, _)) in enumerate(zip(errs, parts)):
                rows.append(
                    {
                        "part": "truncation",
                        "kernel": name,
                        "T": T,
                        "J": j,
                        "t": t_trunc,
                        "rel_error": e,
                        "total_error": a,
                    }
                )
            if T == frames[1]:
                axes[0, 1].semilogy(range(T), [max(e, 1e-18) for e in errs], label=f"{name}, T={T}")
        line = axes[0, 2].plot(frames, needed_total, "o-", label=f"{name}: total error")[0]
        axes[0, 2].plot(frames, needed, "s:", color=line.get_color(), label=f"{name}: relative error")
        growth = (needed_total[-1] - needed_total[0]) / (math.log(frames[-1]) - math.log(frames[0]))
        summary[f"J_needed/{name}"] = {
            "T": frames,
            "relative_error_criterion": needed,
            "total_error_criterion": needed_total,
            "total_criterion_growth_per_log_T": growth,
        }
    axes[0, 1].axhline(TOLERANCE, color="k", lw=0.6)
    axes[0, 1].set(xlabel="J (lags kept)", ylabel="relative score error", title=f"(b) truncation, t={t_trunc}")
    axes[0, 1].legend(fontsize=7)
    axes[0, 2].set_xscale("log", base=2)
    axes[0, 2].set_xticks(scale["truncation_frames"], [str(f) for f in scale["truncation_frames"]])
    axes[0, 2].minorticks_off()
    axes[0, 2].set(xlabel="T (frames)", ylabel=f"J for error ≤ {TOLERANCE:g}", title="(b) J needed vs T")
    axes[0, 2].legend(fontsize=7)
    save(fig, out / "theory.png")
    write_csv(out / "results.csv", rows)
    write_summary(out, summary)
    return summary
