"""Where along the sampling path a trained model's samples leave the exact law.

    python -m stdiff.bench sampling_path <run dir> [--samples 2000] [--out stdiff/bench/results/sampling_path]

The run directory is any ``stdiff fit`` run on GP data (its ``config.yaml`` and
``checkpoints/last.ckpt``). With the run's own sampler unless ``--sampler`` is given, it measures:

1. **Swaps**: the network replaced by the exact model above (or below) a log-SNR threshold; the
   sample KL excess says which part of the time range the error comes from.
2. **KL by time**: the Gaussian-fit KL of the samples at each grid time against the exact noised
   marginal N(αμ, α²Γ⊗Σ + σ²I), beside that of as many exact draws of that marginal.
3. **Variance by eigendirection**: the samples' variance along each eigenvector of Γ⊗Σ over its
   true value, for the run's sampler and for the other samplers at the same number of network
   evaluations.
4. **Gain error**: the network's ε̂ projected on each eigendirection, regressed on x_t there, over
   the exact gain σ/(α²λ + σ²), by noise level: the probability-flow ODE turns a relative gain
   error e into a log-variance error of about ∫ e dλ, accumulated over the whole path, while the
   reverse SDE forgets it on the local time scale.

Writes ``summary.json`` and ``sampling_path.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from stdiff.diffusion import ExactDenoiser, NoiseModel
from stdiff.paper.common import figure, load_run, save
from stdiff.sampling import SAMPLERS, Sampler
from stdiff.seeding import SWEEP, generator


class Swapped(NoiseModel):
    """The network where ``use_network(log-SNR)`` is True, the exact model elsewhere."""

    def __init__(self, network, exact, use_network) -> None:
        super().__init__(network.sample_shape, network.schedule)
        self.network, self.exact, self.use_network = network, exact, use_network

    def forward(self, x_t, t, **cond):
        lam = self.schedule.log_snr(t[:1].double()).item()
        return (self.network if self.use_network(lam) else self.exact)(x_t, t, **cond)


def eigen_coordinates(gp, x: torch.Tensor) -> torch.Tensor:
    """Coordinates of centred ``x (n, T, *space)`` in the Kronecker eigenbasis, ``(n, T·S)``."""
    return gp.to_eigenbasis(x - gp.mean).reshape(len(x), -1)


def fit_kl_diagonal(y: torch.Tensor, var: torch.Tensor) -> float:
    """KL(N(m̂, Ĉ) ‖ N(0, diag(var))) of the Gaussian fitted to ``y (n, d)``."""
    m, c = y.mean(0), torch.cov(y.T)
    c_w = c / torch.sqrt(var[:, None] * var[None, :])
    quad = (m**2 / var).sum()
    return 0.5 * (c_w.trace() + quad - len(m) - torch.linalg.slogdet(c_w).logabsdet).item()


def run_sampler(sampler: Sampler, model, shape, seed: int, record: bool = False):
    """Samples (and, with ``record``, the state at every grid time, float64 on the CPU)."""
    states: list[torch.Tensor] = []
    schedule = model.schedule
    times = sampler.times(schedule)
    g = generator(seed, SWEEP, 0)
    x = sampler.initial(schedule, shape, g)
    with torch.no_grad():
        sampler.begin()
        for i in range(sampler.steps):
            x = sampler.step(model, schedule, x, times[i].item(), times[i + 1].item(), g)
            if record:
                states.append(x.double())
        x = sampler.finish(model, schedule, x)
    return x.double(), times, states


def rounded(value):
    """``value`` with every float to 4 significant digits (the per-direction lists are long)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--sampler", default=None, help="sampler class (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    p.add_argument("--out", type=Path, default=Path("stdiff/bench/results/sampling_path"))
    args = p.parse_args()
    overrides = [f"--model.sampler={args.sampler}"] if args.sampler else []
    overrides += [f"--model.sampler.init_args.steps={args.steps}"] if args.steps else []
    model, data = load_run(args.run, overrides)
    gp, schedule, sampler = data.truth, model.schedule, model.sampler
    net, exact = model.denoiser, ExactDenoiser.from_gp(data.truth, model.schedule)
    shape = (args.samples, *gp.sample_shape)
    lam = gp.eigenvalues(torch.device("cpu")).reshape(-1)
    floor_x = gp.sample(args.samples, generator(1, SWEEP, 1), dtype=torch.float64)
    floor = fit_kl_diagonal(eigen_coordinates(gp, floor_x), lam)
    out: dict = {"run": str(args.run), "sampler": repr(sampler), "samples": args.samples, "kl_floor": floor}
    print(f"{sampler!r}, {args.samples} samples, d = {gp.dim}; exact-sample KL floor {floor:.3f}")

    def kl_excess(model_) -> float:
        x, _, _ = run_sampler(sampler, model_, shape, seed=2)
        return fit_kl_diagonal(eigen_coordinates(gp, x), lam) - floor

    # 1. swaps ---------------------------------------------------------------------------------
    ends = schedule.log_snr(torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)).tolist()
    thresholds = [round(v, 2) for v in torch.linspace(ends[0], ends[1], 5)[1:-1].tolist()]
    swaps = {"network": kl_excess(net), "exact": kl_excess(exact)}
    for th in thresholds:
        swaps[f"network_below_logsnr_{th}"] = kl_excess(Swapped(net, exact, lambda v, th=th: v < th))
        swaps[f"network_above_logsnr_{th}"] = kl_excess(Swapped(net, exact, lambda v, th=th: v >= th))
    out["swaps_kl_excess"] = swaps
    for k, v in swaps.items():
        print(f"  swap {k:32s} KL excess {v:9.3f}")

    # 2. KL by time ----------------------------------------------------------------------------
    _, times, states = run_sampler(sampler, net, shape, seed=2, record=True)
    by_time = []
    for i, state in enumerate(states):
        t = times[i + 1]
        a, s = schedule.alpha(t).item(), schedule.sigma(t).item()
        var = a**2 * lam + s**2
        yk = gp.to_eigenbasis(state - a * gp.mean).reshape(len(state), -1)
        z = torch.randn(floor_x.shape, generator=generator(1, SWEEP, 2), dtype=torch.float64)
        ref = a * floor_x + s * z
        ref_kl = fit_kl_diagonal(gp.to_eigenbasis(ref - a * gp.mean).reshape(len(ref), -1), var)
        by_time.append({"log_snr": schedule.log_snr(t).item(), "kl": fit_kl_diagonal(yk, var), "floor": ref_kl})
    out["kl_by_time"] = by_time

    # 3. variance by eigendirection, several samplers at the same network evaluations ---------
    order = lam.argsort()
    variance = {}
    nfe = sampler.evaluations
    for name, cls in SAMPLERS.items():
        other = sampler if type(sampler) is cls else cls(steps=max(1, nfe // cls.evaluations_per_step))
        y = eigen_coordinates(gp, run_sampler(other, net, shape, seed=2)[0])
        ratio = y.var(0) / lam
        variance[name] = {"kl_excess": fit_kl_diagonal(y, lam) - floor, "whitened_norm": ratio.mean().item(),
                          "ratio_smallest_decile": ratio[order[: len(order) // 10]].mean().item(),
                          "ratio_largest_decile": ratio[order[-len(order) // 10 :]].mean().item(),
                          "ratio": ratio[order].tolist()}  # fmt: skip
        print(
            f"  {name:14s} KL excess {variance[name]['kl_excess']:8.3f}, variance/true: smallest decile "
            f"{variance[name]['ratio_smallest_decile']:.3f}, largest {variance[name]['ratio_largest_decile']:.3f}"
        )
    out["variance_by_direction"] = variance

    # 4. gain error by direction and noise level ------------------------------------------------
    grid_lam = torch.linspace(ends[0], ends[1], 24, dtype=torch.float64)
    x0 = gp.sample(4096, generator(1, SWEEP, 3), dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=generator(1, SWEEP, 4), dtype=torch.float64)
    gains = []
    with torch.no_grad():
        for lv in grid_lam:
            t = schedule.time_at_log_snr(lv[None])
            a, s = schedule.alpha(t).item(), schedule.sigma(t).item()
            xt = a * x0 + s * eps
            pred = torch.cat([net(c.float(), t.float().expand(len(c))).double() for c in xt.split(1024)])
            yx, ye = eigen_coordinates(gp, xt), gp.to_eigenbasis(pred).reshape(len(pred), -1)
            gain = (yx * ye).sum(0) / (yx * yx).sum(0)
            true = s / (a**2 * lam + s**2)
            gains.append(((gain / true) - 1)[order].tolist())
    out["gain_error"] = {"log_snr": grid_lam.tolist(), "eigenvalues_sorted": lam[order].tolist(), "relative": gains}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rounded(out)))
    fig, (axes,) = figure(1, 3, (4.6, 3.4))
    ax = axes[0]
    ax.plot([b["log_snr"] for b in by_time], [b["kl"] for b in by_time], label="network samples")
    ax.plot([b["log_snr"] for b in by_time], [b["floor"] for b in by_time], "--", label="exact marginal draws")
    ax.set(xlabel="log-SNR along the path", ylabel="Gaussian-fit KL to the noised truth", yscale="log",
           title="KL by time")  # fmt: skip
    ax.legend(fontsize=7)
    ax = axes[1]
    for name, v in variance.items():
        ax.plot(lam[order].tolist(), v["ratio"], ".", ms=2, label=f"{name} (KL exc. {v['kl_excess']:.1f})")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set(xscale="log", xlabel="eigenvalue of Γ⊗Σ", ylabel="sample variance / true", title=f"{nfe} evaluations")
    ax.legend(fontsize=7, markerscale=4)
    ax = axes[2]
    im = ax.imshow(torch.tensor(gains).T, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-0.1, vmax=0.1,
                   extent=[grid_lam[0].item(), grid_lam[-1].item(), 0, len(lam)])  # fmt: skip
    ax.set(xlabel="log-SNR", ylabel="eigendirection (by eigenvalue, small→large)", title="relative gain error of ε̂")
    fig.colorbar(im, ax=ax)
    save(fig, args.out / "sampling_path.png")
    print(f"wrote {args.out}/summary.json and sampling_path.png")


if __name__ == "__main__":
    main()
