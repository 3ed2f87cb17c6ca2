"""Experiment 7: does attention track the inferred regime? On the mixture preset ``regimes`` (one
kernel family at ℓ = 1, 4, 16 frames, equal weights: ``configs/mixtures/regimes.yaml``) the exact
denoiser must infer from a noisy sequence which Γ_k it came from. Per seed, a DiT is trained at
the quickstart's budget; then, at each noise level, its frame-to-frame attention on samples of
component k (heads and layers averaged) is correlated with every Γ_j: the matrix P[k, j]
(Pearson of the off-diagonal entries). Attention tracks the regime when P[k, k] > P[k, j ≠ k]:
the index D = mean_k (P[k, k] − mean_{j≠k} P[k, j]), beside the same network at random
initialisation (the control) and the exact posterior's certainty of the true regime at that
noise (the mean responsibility of the sample's own component: how much a perfect model could
know). Since every regime's attention may share a large common part (attending to nearby frames),
the contrast removes it: mean_k Pearson(A_k − Ā, Γ_k − Γ̄), whether attention changes from regime
to regime the way Γ does (per unit; averaged over units, and the best unit, which is selected on
the same data and so biased upwards). Error bars: standard errors over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from stdiff.metrics import attention_report, random_init_copy
from stdiff.paper.common import figure, load, run_overrides, save, train, write_csv
from stdiff.seeding import SWEEP, generator

PRESET = str(Path(__file__).resolve().parents[1] / "configs" / "mixtures" / "regimes.yaml")
LEVELS = [6.0, 4.0, 2.0, 0.0, -2.0, -4.0]  # log-SNR; attention is read at each
LOW_NOISE = 4.0  # where the matrix P is shown
FULL = {"seeds": 5, "samples": 256, "overrides": []}
CPU = {"seeds": 3, "samples": 256, "overrides": []}  # the preset's own budget: the quickstart's 3000 steps


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
    return mean, se


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the off-diagonal entries of two (T, T) matrices."""
    off = ~torch.eye(len(a), dtype=torch.bool)
    x, y = a[off].double(), b[off].double()
    x, y = x - x.mean(), y - y.mean()
    return (x @ y / (x.norm() * y.norm()).clamp_min(1e-300)).item()


def component_maps(backbone, schedule, truth, log_snr: float, samples: int, seed: int) -> list[list[torch.Tensor]]:
    """maps[k][u]: attention unit u's frame-to-frame map (heads and samples averaged) on component k's samples."""
    out = []
    for k, component in enumerate(truth.components):
        x0 = component.sample(samples, generator(seed, SWEEP, 1, k))
        noise = torch.randn(x0.shape, generator=generator(seed, SWEEP, 2, k))
        _, maps = attention_report(backbone, schedule, x0, noise, truth.components[0].gamma, [log_snr])
        out.append([m.mean(0) for m in maps[log_snr].values()])
    return out


def alignment_matrix(maps: list[list[torch.Tensor]], truth) -> torch.Tensor:
    """P[k, j]: attention on component k's samples (units averaged) against Γ_j."""
    k_count = len(truth.components)
    p = torch.zeros(k_count, k_count, dtype=torch.float64)
    for k in range(k_count):
        for j, other in enumerate(truth.components):
            p[k, j] = sum(_pearson(m, other.gamma) for m in maps[k]) / len(maps[k])
    return p


def contrast(maps: list[list[torch.Tensor]], truth) -> list[float]:
    """Per unit: how the attention's changes across regimes follow Γ's, mean_k Pearson(A_k − Ā, Γ_k − Γ̄):
    the common part of every regime's attention (local attention, say) removed; 0 when the attention
    does not change with the regime in Γ's direction."""
    gammas = [c.gamma for c in truth.components]
    mean_gamma = sum(gammas) / len(gammas)
    out = []
    for u in range(len(maps[0])):
        mean_map = sum(maps[k][u] for k in range(len(maps))) / len(maps)
        out.append(sum(_pearson(maps[k][u] - mean_map, gammas[k] - mean_gamma) for k in range(len(maps))) / len(maps))
    return out


def certainty(truth, schedule, log_snr: float, samples: int, seed: int) -> float:
    """The exact posterior probability of each sample's own component at this noise, averaged."""
    t = schedule.time_at_log_snr(torch.tensor([log_snr], dtype=torch.float64)).clamp(schedule.t_min, schedule.t_max)
    alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
    values = []
    for k, component in enumerate(truth.components):
        x0 = component.sample(samples, generator(seed, SWEEP, 1, k), dtype=torch.float64)
        noise = torch.randn(x0.shape, generator=generator(seed, SWEEP, 2, k), dtype=torch.float64)
        values.append(truth.responsibilities(alpha * x0 + sigma * noise, alpha, sigma)[:, k].mean().item())
    return sum(values) / len(values)


def tracking_index(p: torch.Tensor) -> float:
    """mean_k (P[k, k] − mean_{j≠k} P[k, j])."""
    k = len(p)
    off = (p.sum(1) - p.diagonal()) / (k - 1)
    return (p.diagonal() - off).mean().item()


def run(out, scale: dict, **_) -> dict:
    configs = scale.get("configs") or [PRESET]
    rows, per_seed = [], []
    for seed in range(scale["seeds"]):
        overrides = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}", *run_overrides(scale)]
        run_dir, seconds = train(out, f"seed{seed}", configs, overrides)
        model, data = load(run_dir, configs, overrides)
        truth, schedule = data.truth, model.schedule
        backbone = model.denoiser.backbone
        control = random_init_copy(backbone, seed)
        record = {"seed": seed, "wall_s": round(seconds, 1), "levels": {}}
        for lam in LEVELS:
            sure = certainty(truth, schedule, lam, scale["samples"], seed)
            entry = {"certainty": sure}
            for label, net in (("trained", backbone), ("random_init", control)):
                maps = component_maps(net, schedule, truth, lam, scale["samples"], seed)
                p, by_unit = alignment_matrix(maps, truth), contrast(maps, truth)
                entry[label] = {"matrix": p.tolist(), "index": tracking_index(p), "contrast_by_unit": by_unit,
                                "contrast": sum(by_unit) / len(by_unit),
                                "matched": float((p.argmax(1) == torch.arange(len(p))).double().mean())}  # fmt: skip
                rows.extend({"seed": seed, "net": label, "log_snr": lam, "unit": u, "contrast": round(c, 5)}
                            for u, c in enumerate(by_unit))  # fmt: skip
                for k in range(len(p)):
                    for j in range(len(p)):
                        rows.append({"seed": seed, "net": label, "log_snr": lam, "component": k, "gamma": j,
                                     "pearson": round(p[k, j].item(), 5), "certainty": round(sure, 5)})  # fmt: skip
            record["levels"][lam] = entry
            print(f"seed {seed}, log-SNR {lam:+.0f}: tracking index {entry['trained']['index']:+.3f} "
                  f"(random init {entry['random_init']['index']:+.3f}), contrast {entry['trained']['contrast']:+.3f} "
                  f"(random init {entry['random_init']['contrast']:+.3f}, best unit "
                  f"{max(entry['trained']['contrast_by_unit']):+.3f}), exact certainty {sure:.3f}", flush=True)  # fmt: skip
        per_seed.append(record)
        write_csv(out / "results.csv", rows)
    summary = _summarise(per_seed)
    _figure(out / "regimes_attention.png", summary, len(per_seed))
    return summary


def _summarise(per_seed: list[dict]) -> dict:
    out: dict = {"seeds": len(per_seed), "by_log_snr": {}}
    for lam in LEVELS:
        entry = {"certainty": _mean_se([r["levels"][lam]["certainty"] for r in per_seed])}
        for label in ("trained", "random_init"):
            entry[f"{label}_index"] = _mean_se([r["levels"][lam][label]["index"] for r in per_seed])
            entry[f"{label}_matched"] = _mean_se([r["levels"][lam][label]["matched"] for r in per_seed])
            entry[f"{label}_contrast"] = _mean_se([r["levels"][lam][label]["contrast"] for r in per_seed])
            entry[f"{label}_contrast_best_unit"] = _mean_se([max(r["levels"][lam][label]["contrast_by_unit"])
                                                             for r in per_seed])  # fmt: skip
        out["by_log_snr"][lam] = entry
    matrices = torch.tensor([r["levels"][LOW_NOISE]["trained"]["matrix"] for r in per_seed], dtype=torch.float64)
    out["low_noise_log_snr"] = LOW_NOISE
    out["low_noise_matrix_mean"] = matrices.mean(0).tolist()
    out["low_noise_matrix_se"] = (matrices.std(0) / math.sqrt(len(matrices))).tolist() if len(matrices) > 1 else None
    return out


def _figure(path: Path, summary: dict, seeds: int) -> None:
    fig, axes = figure(1, 2, size=(4.6, 3.6))
    mean = torch.tensor(summary["low_noise_matrix_mean"])
    se = summary["low_noise_matrix_se"]
    ax = axes[0, 0]
    im = ax.imshow(mean.numpy(), cmap="viridis")
    for k in range(len(mean)):
        for j in range(len(mean)):
            text = f"{mean[k, j]:.2f}" + (f"\n±{se[k][j]:.2f}" if se else "")
            ax.text(j, k, text, ha="center", va="center", fontsize=7, color="w")
    labels = ["ℓ=1", "ℓ=4", "ℓ=16"][: len(mean)]
    ax.set_xticks(range(len(mean)), [f"Γ ({x})" for x in labels], fontsize=7)
    ax.set_yticks(range(len(mean)), [f"samples {x}" for x in labels], fontsize=7)
    ax.set_title(f"attention vs each Γ_k, log-SNR {LOW_NOISE:+.0f}\n(Pearson, mean ± SE over {seeds} seeds)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[0, 1]
    levels = LEVELS
    for label, colour in (("trained", "tab:blue"), ("random_init", "tab:grey")):
        for key, style, what in (("index", "-o", "tracking index"), ("contrast", "--s", "contrast")):
            values = [summary["by_log_snr"][lam][f"{label}_{key}"] for lam in levels]
            ax.errorbar(levels, [v[0] for v in values], yerr=[0 if math.isnan(v[1]) else v[1] for v in values],
                        fmt=style, capsize=3, color=colour, label=f"{label.replace('_', ' ')}: {what}")  # fmt: skip
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("log-SNR (low noise on the left)", fontsize=8)
    ax.set_ylabel("index: P[k,k] − mean P[k,j≠k]; contrast", fontsize=8)
    ax.invert_xaxis()
    twin = ax.twinx()
    twin.plot(levels, [summary["by_log_snr"][lam]["certainty"][0] for lam in levels], "g--", label="exact certainty")
    twin.set_ylabel("exact P(true regime | x_t)", fontsize=8, color="g")
    twin.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("does attention follow the sample's regime?", fontsize=8)
    save(fig, path)
