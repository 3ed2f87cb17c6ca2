"""Seeded Gaussian sampling problems, and the exact KL of any deterministic sampler on them.

    python -m stdiff.bench sampling_problems [--split tuning|held_out]   # lists them

A problem is N(m, K) with K = Γ ⊗ Σ (+ τ² I), sampled through a noise schedule with the exact
ε-model. ``generate`` draws them over every registered kernel family in time and space (compositions
included), lengthscales from well- to ill-conditioned (eigenvalues of K from ~1e-7 to ~1e2), 1-D
and 2-D space, nuggets, zero and non-zero means (constant, trend in time, per location) and scales
≠ 1, t_min 1e-4 … 1e-2 and t_max 5 … 20 (``OrnsteinUhlenbeck``) or the other VP schedules, d from
16 to 1,024. ``TUNING`` fixes which problems tune and which are held out: numbers 0-191 tune,
192-255 are never looked at while choosing a default. Each round's held-out problems, once scored,
become tuning problems for the next: the odd numbers of 0-63 in the first round, 64-127 in the
second, 128-191 in the third, 192-255 in the fourth (each fixed, and diffusers run on it, before
stdiff was scored there).

The exact ε-model of N(m, K) is linear in (x, m) and diagonal in K's eigenbasis, and so is every
deterministic sampler that uses it (stdiff's and diffusers' alike: their steps combine states and
model outputs with scalar coefficients). So each problem is run in the eigenbasis, one independent
coordinate per eigenvalue λᵢ with mean μᵢ = (Uᵀm)ᵢ, and the sampler's output is yᵢ = aᵢ zᵢ + bᵢ:
two runs (z = 0 and z = 1) give its exact law and the KL
Σᵢ ½ (aᵢ²/λᵢ − 1 − log(aᵢ²/λᵢ)) + ½ (bᵢ − μᵢ)²/λᵢ, the same number ``pushforward_kl`` gives from
d + 1 runs in the original coordinates (``tests/test_sampling_problems.py`` checks that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from stdiff.kernels import KERNELS, Kernel, Scaled, Separable, Tabulated
from stdiff.schedules import Cosine, LinearBeta, NoiseSchedule, OrnsteinUhlenbeck, SigmoidLogSNR
from stdiff.truth import KroneckerGP

COUNT = 256  # problems
TUNING = 192  # numbers below this tune, the others are held out
SMALLEST_EIGENVALUE = 1e-7  # a nugget lifts K's spectrum to at least this
STATIONARY = [name for name, cls in KERNELS.items() if name not in ("Sum", "Product", "Scaled", "Separable", "Tabulated")]


@dataclass
class Problem:
    """One Gaussian sampling problem, in K's eigenbasis: ``evals`` λ (d,), ``mean`` μ = Uᵀm (d,)."""

    number: int
    schedule: NoiseSchedule
    evals: Tensor
    mean: Tensor
    info: dict = field(default_factory=dict)
    gp: KroneckerGP | None = None  # the zero-mean GP before scale and nugget, for checks
    mean_field: Tensor | None = None  # m (T, *space)
    scale: float = 1.0
    nugget: float = 0.0

    @property
    def split(self) -> str:
        return "tuning" if self.number < TUNING else "held_out"

    @property
    def dim(self) -> int:
        return len(self.evals)

    def label(self) -> str:
        i = self.info
        return (f"#{self.number} {i['temporal']} × {i['spatial']} on {i['shape']}, scale {self.scale:.2g}, nugget "
                f"{self.nugget:.1g}, mean {i['mean']}, {i['schedule']}, λ {self.evals.min():.1e} … {self.evals.max():.1e}")  # fmt: skip

    def covariance(self) -> Tensor:
        return self.scale * self.gp.covariance() + self.nugget * torch.eye(self.dim, dtype=torch.float64)


class EigenModel(torch.nn.Module):
    """The exact ε-model of a problem in its eigenbasis: ε̂ = σ (x − α μ) / (α² λ + σ²), x of shape
    (n, d). It carries the data's mean and scale (``data_mean``, ``data_variance``) as models do."""

    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.schedule = problem.schedule
        self.evals, self.mu = problem.evals, problem.mean
        self.data_moments = (problem.mean, problem.evals.mean().item())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        tt = t.to(torch.float64)[:, None]
        a, s = self.schedule.alpha(tt), self.schedule.sigma(tt)
        return (s * (x.to(torch.float64) - a * self.mu) / (a**2 * self.evals + s**2)).to(x.dtype)


def eigen_kl(draw, problem: Problem) -> float:
    """The exact KL of ``draw(z)``, z ~ N(0, I) of shape (n, d), affine in z and diagonal: two runs."""
    z = torch.stack([torch.zeros(problem.dim), torch.ones(problem.dim)]).to(torch.float64)
    out = draw(z).to(torch.float64)
    if not torch.isfinite(out).all():
        return math.inf
    gain, shift = out[1] - out[0], out[0]
    ratio = gain**2 / problem.evals
    if (ratio <= 0).any():
        return math.inf
    return (0.5 * (ratio - 1 - ratio.log()) + 0.5 * (shift - problem.mean) ** 2 / problem.evals).sum().item()


# --- the generator -----------------------------------------------------------------------------


def _stationary(rng: np.random.Generator, name: str, axis_points: int) -> Kernel:
    cls = KERNELS[name]
    if name == "White":
        return cls()
    lengthscale = float(np.exp(rng.uniform(np.log(0.3), np.log(max(1.0, axis_points / 2)))))
    options = {"PoweredExponential": {"power": rng.uniform(0.5, 2.0)}, "GeneralizedCauchy": {"alpha": rng.uniform(0.5, 2.0)},
               "LogarithmicDecay": {"power": rng.uniform(0.5, 2.0)}, "Matern": {"nu": float(rng.choice([0.5, 1.5, 2.5]))},
               "RationalQuadratic": {"alpha": rng.uniform(0.5, 4.0)}, "Periodic": {"period": rng.uniform(2.0, 8.0)}}  # fmt: skip
    return cls(lengthscale, **options.get(name, {}))


def _kernel(rng: np.random.Generator, points: int, dims: int) -> Kernel:
    """Any registered family: a stationary one (most often), or a Sum, Product, Scaled, Tabulated or
    (2-D) Separable built from them."""
    kind = rng.choice(["stationary"] * 5 + ["Sum", "Product", "Scaled", "Tabulated"] + (["Separable"] if dims == 2 else []))
    pick = lambda: _stationary(rng, str(rng.choice(STATIONARY)), points)
    if kind == "stationary":
        return pick()
    if kind in ("Sum", "Product"):
        return KERNELS[kind]([pick(), pick()])
    if kind == "Scaled":
        return Scaled(pick(), float(np.exp(rng.uniform(np.log(0.1), np.log(10.0)))))
    if kind == "Separable":
        return Separable([pick(), pick()])
    return pick()  # Tabulated: built from the matrix once the grid is known (see ``generate``)


def _schedule(rng: np.random.Generator) -> tuple[NoiseSchedule, str]:
    t_min = float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-2))))
    kind = rng.choice(["OU", "OU", "OU", "SigmoidLogSNR", "LinearBeta", "Cosine"])
    if kind == "OU":
        sched = OrnsteinUhlenbeck(t_min, float(rng.uniform(5.0, 20.0)))
    elif kind == "SigmoidLogSNR":
        sched = SigmoidLogSNR(t_min, 1.0, float(rng.uniform(8.0, 14.0)), float(rng.uniform(-14.0, -8.0)),
                              float(rng.uniform(-2.0, 2.0)))  # fmt: skip
    elif kind == "LinearBeta":
        sched = LinearBeta(t_min, 1.0, 0.1, float(rng.uniform(15.0, 25.0)))
    else:
        sched = Cosine(t_min, 0.995)
    return sched, f"{type(sched).__name__}(t_min={sched.t_min:.2g}, t_max={sched.t_max:.3g})"


def _shape(rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
    while True:
        frames = int(rng.integers(2, 33))
        space = (int(rng.integers(1, 33)),) if rng.random() < 0.6 else (int(rng.integers(2, 7)), int(rng.integers(2, 7)))
        if 16 <= frames * math.prod(space) <= 1024:
            return frames, space


def problem(number: int) -> Problem:
    """Problem ``number``, the same on every machine (seeded by its number)."""
    rng = np.random.default_rng(20261207 + number)
    frames, space = _shape(rng)
    temporal, spatial = _kernel(rng, frames, 1), _kernel(rng, max(space), len(space))
    if isinstance(spatial, Separable) and len(space) != 2:
        spatial = spatial.kernels[0]
    kinds = [type(temporal).__name__, type(spatial).__name__]
    tab = rng.random() < 0.1  # a Tabulated spatial kernel: the matrix of the one drawn, as a fit returns it
    gp = KroneckerGP(temporal, spatial, frames=frames, space_shape=space, jitter="auto")
    if tab:
        spatial = Tabulated(gp.sigma.tolist(), list(space) if len(space) > 1 else None)
        gp = KroneckerGP(temporal, spatial, frames=frames, space_shape=space, jitter="auto")
        kinds[1] = "Tabulated"
    scale = float(np.exp(rng.uniform(np.log(0.05), np.log(20.0)))) if rng.random() < 0.5 else 1.0
    base = scale * gp.eigenvalues().reshape(-1)
    nugget = float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-1)))) if rng.random() < 0.3 else 0.0
    nugget = max(nugget, SMALLEST_EIGENVALUE - base.min().item())
    evals = base + nugget
    mean_kind = str(rng.choice(["zero", "zero", "constant", "trend", "per location"]))
    level = float(rng.normal(0, 3.0)) if mean_kind != "zero" else 0.0
    m = torch.full((frames, *space), level, dtype=torch.float64)
    if mean_kind == "trend":
        m = m + float(rng.normal(0, 0.3)) * torch.arange(frames, dtype=torch.float64).reshape(-1, *[1] * len(space))
    elif mean_kind == "per location":
        m = m + torch.tensor(rng.normal(0, 2.0, space), dtype=torch.float64)
    sched, sched_name = _schedule(rng)
    info = {"temporal": kinds[0], "spatial": kinds[1], "shape": f"{frames} × {' × '.join(map(str, space))}",
            "mean": mean_kind if mean_kind == "zero" else f"{mean_kind} ({level:+.2g})", "schedule": sched_name}  # fmt: skip
    mean = gp.to_eigenbasis(m[None]).reshape(-1)
    return Problem(number, sched, evals, mean, info, gp, m, scale, nugget)


def generate(split: str | None = None, count: int = COUNT) -> list[Problem]:
    """The problems (both halves, or the ``tuning`` or ``held_out`` half)."""
    out = [problem(i) for i in range(count)]
    return out if split is None else [p for p in out if p.split == split]


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["tuning", "held_out"], default=None, help="one half (default: both)")
    args = p.parse_args()
    for q in generate(args.split):
        print(f"{q.split:8s} d = {q.dim:4d}  {q.label()}")


if __name__ == "__main__":
    main()
