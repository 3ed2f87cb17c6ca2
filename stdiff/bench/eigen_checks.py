"""The eigen-direction statistics (``stdiff.metrics.eigen``) on what they are meant to catch, and every
preset's exact-model floor: the numbers the guide quotes.

1. Planted defects at d = 16,384 (16 frames of 32 × 32, a separable Matérn 3/2 kernel) from 256
   samples, over ``--seeds`` seeds: for exact samples and for each defect, the z of the statistic
   meant for it (a tenth of the directions, the total eigen KL excess over its noise, the frame-mean
   test), median and worst over seeds (worst: the smallest z of a defect, the largest |z| of exact
   samples).
2. Every shipped preset with a truth: what its exact model reaches through the preset's own sampler,
   steps and t_min (``linear_sampler_law``: exact for a Gaussian with a deterministic sampler; the
   early-stopping KL otherwise), beside "close" (0.01·d); and ``spatial_2d`` at its old t_min, 1e-3.
3. ``configs/video.yaml``'s exact model through its own sampler at d = 65,536 over
   ``--video-seeds`` seeds: whether its reading is chance.
    python -m stdiff.bench eigen_checks [--seeds 5] [--video-seeds 4] [--out stdiff/bench/results/eigen_checks.md]
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from stdiff.bench import RESULTS

ROOT = Path(__file__).resolve().parents[1]
N = 256


def defect_truth(lengthscale: float = 4.0):
    from stdiff.kernels import Matern, PoweredExponential, Separable
    from stdiff.truth import KroneckerGP

    return KroneckerGP(PoweredExponential(lengthscale), Separable([Matern(3.0, 1.5)] * 2), frames=16, space_shape=(32, 32))


def planted(gp, x, kind: str, seed: int):
    """Samples ``x`` of ``gp`` with a defect planted: ``variance`` (5 % high in the smallest tenth of
    the eigen-directions), ``lengthscale`` (fresh samples with Γ's lengthscale 10 % long),
    ``frame_shift`` (frame t shifted by 0.05·(−1)ᵗ), ``shift`` (0.05 everywhere), or ``none``."""
    if kind == "variance":
        y = gp.to_eigenbasis(x - gp.mean).reshape(len(x), -1)
        y[:, gp.eigenvalues().reshape(-1).argsort()[: gp.dim // 10]] *= math.sqrt(1.05)
        return gp.from_eigenbasis(y.reshape(len(x), gp.frames, -1)) + gp.mean
    if kind == "lengthscale":
        return defect_truth(4.4).sample(len(x), torch.Generator().manual_seed(seed), dtype=torch.float64)
    if kind == "frame_shift":
        return x + (0.05 * (-1.0) ** torch.arange(gp.frames, dtype=torch.float64))[:, None, None]
    if kind == "shift":
        return x + 0.05
    return x


# the statistic meant for each defect
MEANT = {"variance": "eigen_decile0/z", "lengthscale": "excess_z", "frame_shift": "frame_mean_z", "shift": "frame_mean_z"}


def zs(gp, x) -> dict[str, float]:
    from stdiff.metrics.eigen import eigen_statistics

    s = eigen_statistics(gp, gp.to_eigenbasis(x.double() - gp.mean))
    s["excess_z"] = s["eigen_kl_excess"] / s["eigen_kl_noise"]
    s["decile_max_abs_z"] = max(abs(s[f"eigen_decile{k}/z"]) for k in range(10))
    return s


def preset_floor(configs: list[Path], on_cpu: list[str] = ()) -> tuple[float, float, str]:
    """(the exact model's KL through the preset's sampler, 0.01·d, how it was computed)."""
    from stdiff.callbacks.verdicts import CLOSE_PER_DIM
    from stdiff.cli import StdiffCLI
    from stdiff.diffusion import ExactDenoiser
    from stdiff.metrics import early_stopping_kl, planned_endpoint
    from stdiff.metrics.eigen import law_eigen_kl, linear_sampler_law

    cli = StdiffCLI(args=[a for c in configs for a in ("--config", str(c))] + list(on_cpu), run=False)
    truth, model = cli.datamodule.truth.simplified(), cli.model
    law = linear_sampler_law(truth, model.sampler, ExactDenoiser.from_gp(truth, model.schedule)) if truth.is_gaussian else None
    if law is not None:
        return law_eigen_kl(truth, *law), CLOSE_PER_DIM * truth.dim, "exact"
    t0 = torch.tensor(model.schedule.t_min, dtype=torch.float64)
    kl = early_stopping_kl(truth, model.schedule.alpha(t0).item(), model.schedule.sigma(t0).item(),
                               planned_endpoint(model.sampler, truth, model.schedule))
    return kl, CLOSE_PER_DIM * truth.dim, "early stopping"


def video_exact(seed: int) -> tuple[dict[str, float], float]:
    """``configs/video.yaml``'s exact model through its own sampler (d = 65,536), ``N`` samples:
    the eigen statistics, and the exact KL of the law they come from (``law_eigen_kl``)."""
    from stdiff.cli import StdiffCLI
    from stdiff.diffusion import ExactDenoiser
    from stdiff.metrics.eigen import law_eigen_kl, linear_sampler_law

    cli = StdiffCLI(args=["--config", str(ROOT / "configs" / "video.yaml")], run=False)
    truth, model = cli.datamodule.truth, cli.model
    exact = ExactDenoiser.from_gp(truth, model.schedule)
    with torch.no_grad():
        x = model.sampler.sample(exact, (N, *truth.sample_shape), torch.Generator().manual_seed(seed), "cpu")
    return zs(truth, x), law_eigen_kl(truth, *linear_sampler_law(truth, model.sampler, exact))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--video-seeds", type=int, default=4, help="seeds of the exact model at d = 65,536 (~35 s each)")
    p.add_argument("--out", type=Path, default=RESULTS / "eigen_checks.md")
    args = p.parse_args()
    gp = defect_truth()
    lines = ["# The eigen-direction statistics: planted defects and every preset's exact-model floor", "",
             f"`python -m stdiff.bench eigen_checks --seeds {args.seeds}`", "",
             f"## Planted defects, d = {gp.dim}, n = {N}, {args.seeds} seeds", "",
             "| samples | statistic | median z | worst z |", "|---|---|---|---|"]  # fmt: skip
    for kind in ("none", "variance", "lengthscale", "frame_shift", "shift"):
        values: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            x = gp.sample(N, torch.Generator().manual_seed(seed), dtype=torch.float64)
            s = zs(gp, planted(gp, x, kind, seed))
            for key in ("excess_z", "decile_max_abs_z", "frame_mean_z", *MEANT.values()):
                values.setdefault(key, []).append(s[key])
        keys = ("excess_z", "decile_max_abs_z", "frame_mean_z") if kind == "none" else (MEANT[kind],)
        for key in keys:
            v = values[key]
            worst = max(v, key=abs) if kind == "none" else min(v)
            lines.append(f"| {kind} | {key} | {statistics.median(v):.3g} | {worst:.3g} |")
        print(lines[-1], flush=True)
    lines += ["", "## Every preset's exact model through its own sampler, steps and t_min", "",
              "| preset | KL (nats) | close (0.01·d) | how |", "|---|---|---|---|"]  # fmt: skip
    configs = ROOT / "configs"
    presets = [[configs / "quickstart.yaml"], [configs / "spatial_2d.yaml"], [configs / "video.yaml"],
               [configs / "gpu" / "single.yaml"], *[[f] for f in sorted((configs / "mixtures").glob("*.yaml"))]]  # fmt: skip
    on_cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32"]
    for preset in presets:
        kl, close, how = preset_floor(preset, on_cpu if "gpu" in preset[0].parts else [])
        lines.append(f"| {preset[0].relative_to(configs)} | {kl:.3g} | {close:.3g} | {how} |")
        print(lines[-1], flush=True)
    kl, close, how = preset_floor([configs / "spatial_2d.yaml"], ["--model.denoiser.init_args.schedule.init_args.t_min=0.001"])
    lines.append(f"| spatial_2d.yaml at t_min 1e-3 (before) | {kl:.3g} | {close:.3g} | {how} |")
    lines += ["", f"## The exact model through `video.yaml`'s sampler, d = 65,536, n = {N}, {args.video_seeds} seeds", "",
              ("Its samples' law is not the truth (stopping at t_min, the sampler's steps): the eigen KL excess "
              "expected of them is that law's KL, not 0."), "",
              "| seed | eigen KL excess | its noise | z | law's exact KL | largest tenth's \\|z\\| | frame-mean z |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for seed in range(args.video_seeds):
        s, law = video_exact(seed)
        lines.append(f"| {seed} | {s['eigen_kl_excess']:.3g} | {s['eigen_kl_noise']:.3g} | {s['excess_z']:+.2f} | "
                     f"{law:.3g} | {s['decile_max_abs_z']:.2f} | {s['frame_mean_z']:+.2f} |")  # fmt: skip
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
