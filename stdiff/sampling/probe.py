"""What a sampler can read off the model at t_min before it samples: the spectrum of the denoiser's
gain there, and the polynomial endpoint that spectrum says leaves the least KL.

Where the data's law is Gaussian the denoiser is linear, x̂₀ = m + G (y − m) with y = x/α, and in
each eigen-direction of its gain G (eigenvalue g = λ/(λ + σ²/α²), λ the data's variance there) the
probability-flow ODE carries y from t_min to σ = 0 by the factor √g. An endpoint x̂₀ + p(G)(y − x̂₀)
scales that direction by s(g) = g + (1 − g) p(g) instead, and leaves ½ (ρ − 1 − ln ρ) nats in it,
ρ = s²/g: ``t_min`` is s = 1, ``denoise`` s = g; ρ → 0 costs ln ρ, ρ → ∞ costs ρ itself, so an
endpoint that overshoots a direction of small g is far worse than one that stops short.

``probe`` reads that spectrum. Where d <= ``SPANNED`` (560) it reads G on d orthonormal rows, in
d + 1 row evaluations, and takes G's own eigenvalues: the spectrum exactly, so for Gaussian data
the plan's KL is the draw's, and a larger budget, whose candidates include every smaller budget's,
never plans a worse draw. Above, it estimates the distribution of g over the d directions by
Lanczos quadrature (stochastic Lanczos quadrature, Ubaru, Chen & Saad 2017): ``PROBE_STEPS``
products with G on each of ``PROBE_ROWS`` rows started on random orthonormal vectors, from a seed
of their own (the draw's randomness is untouched), give nodes and weights that integrate
polynomials in g of degree below 2·``PROBE_STEPS`` exactly on those vectors: Hutchinson's estimate
of tr f(G). Long runs on few rows resolve the low end of the spectrum, where the KL of an endpoint
lives, better than short runs on many rows at the same cost: on tuning problem 45, 16 products on
32 rows saw a cluster of 153 directions of very small g as one node above it, and the endpoint
fitted to that left 4.2 × the KL of one fitted to the exact spectrum; 32 products on 16 rows leave
1.34 × (``tests/test_sampling_problems.py``). ``fit_endpoint`` then chooses p's coefficients to
minimise the quadrature's KL (Newton's method), and ``endpoint_kl`` says what an endpoint leaves.
Above ``SPANNED`` the rows are read twice, at t_min and where σ²/α² is the data's variance, whose
nodes give the spectrum's high end (at t_min all large variances have g within a hair of 1). The
probe costs 2 (``PROBE_STEPS`` + 1) model calls on at most ``PROBE_ROWS`` + 1 rows (2 calls, on 1
row and on d, where d <= ``SPANNED``) per ``sample`` call, whatever the batch; a sampler's
``evaluations`` do not count it.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from stdiff.sampling.base import POLYNOMIALS, DataMoments, Polynomial, _x0, alpha_sigma

PROBE_ROWS, PROBE_SEED = 16, 0  # rows the probe reads G on where d > SPANNED, and their seed
PROBE_STEPS = 32  # products with G per probe row (at most d): Gauss quadrature with 32 nodes a row
# up to this d the probe reads G on d orthonormal rows, the spectrum exactly, in d + 1 row evaluations: no more than
# Lanczos takes, (PROBE_STEPS + 1)(PROBE_ROWS + 1)
SPANNED = (PROBE_STEPS + 1) * (PROBE_ROWS + 1) - 1
SMALLEST_GAIN = 1e-12  # nodes are clamped to [SMALLEST_GAIN, 1], the range of a linear denoiser's gain
HIGH_END = 0.01  # above this share of the data's variance, eigenvalues come from a second read where σ²/α² = variance
ZERO_GAIN = 1e-9  # below this the denoiser ignores x (a conditional model's observed entries): no KL to keep, dropped


class Probe(NamedTuple):
    """What ``probe`` reads off a model at t_min: a quadrature (``nodes``, ``weights``) of its gain's
    spectrum, and mᵀK⁻¹m, the data's mean m in the data's precision (0 without a mean)."""

    nodes: Tensor
    weights: Tensor
    mean_precision: float


def probe(model, sample_shape: tuple[int, ...], moments: DataMoments | None, device, dtype: torch.dtype,
          cond: dict[str, Tensor] | None = None, steps: int = PROBE_STEPS, spanned: int = SPANNED,
          high_end: bool = True) -> Probe:  # fmt: skip
    """Nodes g_j in [``SMALLEST_GAIN``, 1] and weights w_j (summing to d) of a quadrature of the
    spectrum of the denoiser's gain G at ``t_min`` (float64, CPU): Σ_j w_j f(g_j) ≈ tr f(G), less the
    directions where g < ``ZERO_GAIN`` (x is ignored there: a conditional model's observed values); and
    mᵀK⁻¹m = mᵀ(G⁻¹ − I)m/r, r = σ²/α², the precision of the data's mean m, which stopping at t_min
    shrinks to α m (a KL of ½ (1 − α)² mᵀK⁻¹m).

    G is read as a secant about noisy points x = α m + σ z (m the data's mean of ``moments``), over
    a step of a typical noise's length: G v = (x̂₀(x) − x̂₀(x − α c v))/c, c = √d σ/α. Where d <=
    ``spanned``, G on an orthonormal basis about one point, in a call on 1 row and one on d, and its
    eigen-decomposition (every weight 1): d + 1 row evaluations, no more than Lanczos takes; above, Lanczos with full reorthogonalisation, ``min(steps, d)`` products per row, on
    ``PROBE_ROWS`` rows started on random orthonormal vectors (Hutchinson's estimate of tr f(G)),
    and one more row started on m (Gauss quadrature of mᵀf(G)m, which under-estimates mᵀK⁻¹m); with
    ``high_end``, the same rows read again where σ²/α² is the data's variance give the nodes of
    variance above ``HIGH_END`` times it (the two rules overlap near the cut, so the weights sum to d
    only to within a few per cent)."""
    schedule = model.schedule
    a, s = alpha_sigma(schedule, schedule.t_min)
    d = math.prod(sample_shape)
    rows = probe_rows(d, spanned)
    generator = torch.Generator().manual_seed(PROBE_SEED)
    z = torch.randn(rows + 1, *sample_shape, generator=generator, dtype=torch.float64)
    # random orthonormal start vectors: (d/rows) Σ_i q_iᵀ f(G) q_i estimates tr f(G), exactly where rows = d
    starts = torch.linalg.qr(torch.randn(d, rows, generator=generator, dtype=torch.float64))[0].T
    mean = None if moments is None or moments[0] is None else moments[0].double().cpu().reshape(-1)
    if mean is not None and rows < d and mean.norm() > 0:  # (where rows = d, G's eigenvectors give mᵀK⁻¹m)
        starts = torch.cat([starts, (mean / mean.norm())[None]])  # one more row, started on the mean
    z = z[: 1 if rows == d else len(starts)]  # the rows span the space: G on them about one point, d + 1 row evaluations

    def given(n: int):  # the model with ``cond`` for n rows
        return functools.partial(model, **{k: v[:1].expand(n, *v.shape[1:]) for k, v in cond.items()}) if cond else model

    def reader(t: float, n: int):  # v (n, d) -> G v at time t, about the first n (or the one) base points
        a_t, s_t = alpha_sigma(schedule, t)
        base = s_t * z[: min(n, len(z))].to(device=device, dtype=dtype)
        if mean is not None:
            base = base + a_t * mean.reshape(sample_shape).to(device=base.device, dtype=dtype)
        x0, f, scale = _x0(given(len(base)), schedule, base, t), given(n), math.sqrt(d) * s_t / a_t

        def gain(v: Tensor) -> Tensor:
            step = (a_t * scale * v).reshape(len(v), *sample_shape).to(device=base.device, dtype=dtype)
            return (x0 - _x0(f, schedule, base - step, t)).double().cpu().reshape(len(v), d) / scale

        return gain

    r = (s / a) ** 2

    def precision(g: Tensor) -> Tensor:  # 1/λ in a direction of gain g
        return (1 / g - 1) / r

    q = starts / starts.norm(dim=1, keepdim=True)
    if rows == d:  # the rows span the space: G itself in one call, in the basis q (symmetrised), and its eigenvalues
        matrix = reader(schedule.t_min, d)(q) @ q.T
        nodes, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
        free = nodes > ZERO_GAIN
        nodes = nodes[free].clamp(SMALLEST_GAIN, 1.0)
        along = 0.0 if mean is None else float(((vectors.T @ (q @ mean))[free] ** 2 * precision(nodes)).sum())
        return Probe(nodes, torch.ones_like(nodes), along)
    nodes, weights = _lanczos(reader(schedule.t_min, len(q)), q, min(steps, d))
    along = 0.0
    if len(starts) > rows:  # the row started on the mean
        along = float(mean.norm() ** 2 * (weights[rows] * precision(nodes[rows])).sum())
        nodes, weights = nodes[:rows], weights[:rows]
    # the high end: at t_min every direction of variance λ >> r = σ²/α² has g = 1 − r/λ, which the
    # quadrature cannot resolve; read there at the time where σ²/α² is the data's variance v instead
    variance = 1.0 if moments is None else float(moments[1])
    mid = schedule.time_at_log_snr(torch.tensor([-math.log(variance)], dtype=torch.float64)).item()
    mid = min(max(mid, schedule.t_min), schedule.t_max)
    a_m, s_m = alpha_sigma(schedule, mid)
    r_mid, cut = (s_m / a_m) ** 2, HIGH_END * variance
    if high_end and r_mid > 100 * r:  # (data far smaller than the noise at t_min: the first read resolves it all)
        high, high_weights = _lanczos(reader(mid, rows), q[:rows], min(steps, d))
        low_lam, high_lam = r * nodes / (1 - nodes).clamp_min(1e-300), r_mid * high / (1 - high).clamp_min(1e-12)
        nodes = torch.cat([nodes, (high_lam / (high_lam + r)).clamp(SMALLEST_GAIN, 1.0)], 1)
        weights = torch.cat([weights * (low_lam < cut), high_weights * (high_lam >= cut)], 1)
    weights = weights * d / rows
    keep = weights.reshape(-1) > 0
    return Probe(nodes.reshape(-1)[keep], weights.reshape(-1)[keep], along)


def _lanczos(gain, q: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Lanczos with full reorthogonalisation from the rows of ``q`` (orthonormal), ``steps`` products with
    ``gain`` each: a Gauss rule per row, nodes (rows, steps) in [``SMALLEST_GAIN``, 1] and weights (the
    first components squared, summing to 1 a row; 0 where the node is below ``ZERO_GAIN``)."""
    basis, diagonal, off = [q], [], []
    for j in range(steps):
        w = gain(basis[-1])
        diagonal.append((w * basis[-1]).sum(1))
        for v in basis:  # full reorthogonalisation (twice is enough, Parlett)
            w = w - (w * v).sum(1, keepdim=True) * v
        for v in basis:
            w = w - (w * v).sum(1, keepdim=True) * v
        if j == steps - 1:
            break
        norm = w.norm(dim=1)
        off.append(norm)
        basis.append(torch.where(norm[:, None] > 1e-12, w / norm.clamp_min(1e-300)[:, None], torch.zeros_like(w)))
    tri = torch.diag_embed(torch.stack(diagonal, 1))
    if len(diagonal) > 1:
        tri = tri + torch.diag_embed(torch.stack(off, 1), 1) + torch.diag_embed(torch.stack(off, 1), -1)
    nodes, vectors = torch.linalg.eigh(tri)  # a Gauss rule per row: nodes, first components squared
    return nodes.clamp(SMALLEST_GAIN, 1.0), vectors[:, 0, :] ** 2 * (nodes > ZERO_GAIN)


def probe_rows(d: int, spanned: int = SPANNED) -> int:
    """The rows the probe reads the gain on for samples of d values: d up to ``spanned``, else ``PROBE_ROWS``."""
    return d if d <= spanned else PROBE_ROWS


def exact_spectrum(eigenvalues: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
    """The gain's spectrum of the exact denoiser of data with covariance ``eigenvalues`` at (α, σ):
    the quadrature ``probe`` estimates, exactly (every weight 1)."""
    lam = eigenvalues.reshape(-1).double().cpu()
    g = (alpha**2 * lam / (alpha**2 * lam + sigma**2)).clamp(SMALLEST_GAIN, 1.0)
    return g, torch.ones_like(g)


def _kl(coefficients, nodes: np.ndarray, weights: np.ndarray) -> float:
    if coefficients is None:  # t_min: s = 1
        ratio = 1 / nodes
    else:
        ratio = (nodes + (1 - nodes) * np.polynomial.polynomial.polyval(nodes, coefficients)) ** 2 / nodes
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float((weights * 0.5 * (ratio - 1 - np.log(ratio))).sum())
    return value if math.isfinite(value) else math.inf


def endpoint_kl(endpoint: str | Polynomial | None, nodes: Tensor, weights: Tensor) -> float:
    """The KL (nats) an endpoint (a name or p's coefficients) leaves from exact draws at t_min, by the
    quadrature (``nodes``, ``weights``) of the gain's spectrum (the mean's share of ``t_min`` aside)."""
    coefficients = POLYNOMIALS[endpoint] if isinstance(endpoint, str) else endpoint
    return _kl(None if coefficients is None else np.asarray(coefficients, dtype=np.float64), _np(nodes), _np(weights))


def _np(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def fit_endpoint(nodes: Tensor, weights: Tensor, evaluations: int,
                 previous: Polynomial | None = None) -> tuple[Polynomial, float]:  # fmt: skip
    """The coefficients (c_0 … c_{e−1}), e = ``evaluations`` >= 1, of the endpoint x̂₀ + p(G)(y − x̂₀)
    that leaves the least KL by the quadrature, and that KL. Newton's method with a backtracking line
    search, from ``denoise``, ``ode``, ``root`` (where e allows) and the best of e − 1 evaluations
    (``previous``, or fitted again), so the fit is never worse (by the quadrature) than any of them."""
    g, w = _np(nodes), _np(weights)
    starts = [np.zeros(evaluations)]
    for name in ("ode", "root"):
        if len(POLYNOMIALS[name]) <= evaluations:
            starts.append(np.array(POLYNOMIALS[name] + (0.0,) * (evaluations - len(POLYNOMIALS[name]))))
    if evaluations > 1:
        fewer = previous if previous is not None else fit_endpoint(nodes, weights, evaluations - 1)[0]
        starts.append(np.array(fewer + (0.0,)))
    ds = (1 - g)[:, None] * np.stack([g**k for k in range(evaluations)], 1)  # ∂s/∂c_k = (1 − g) g^k, (n, e)
    best_c, best = starts[0], math.inf
    for c in starts:
        value = _kl(c, g, w)
        for _ in range(40):
            if not math.isfinite(value):
                break
            # with s = g + ds·c: d/ds of (s²/g − 1 − ln(s²/g))/2 is s/g − 1/s, the second derivative 1/g + 1/s²
            s = g + ds @ c
            grad = ds.T @ (w * (s / g - 1 / s))
            hess = ds.T @ ((w * (1 / g + 1 / s**2))[:, None] * ds)
            hess += 1e-12 * max(float(np.abs(np.diag(hess)).max()), 1e-300) * np.eye(evaluations)
            step = np.linalg.lstsq(hess, -grad, rcond=None)[0]
            if not -float(grad @ step) > 1e-12 * max(1.0, value):  # the Newton decrement: nothing left to gain
                break
            t, new = 1.0, math.inf
            while t > 1e-8:
                new = _kl(c + t * step, g, w)
                if new < value:
                    break
                t /= 2
            if not new < value:
                break
            c, value = c + t * step, new
        if value < best:
            best_c, best = c, value
    return tuple(float(v) for v in best_c), best


def fit_endpoints(nodes: Tensor, weights: Tensor, most: int) -> list[tuple[Polynomial, float]]:
    """``fit_endpoint`` for 1 … ``most`` evaluations (each fit starting from the one before)."""
    out: list[tuple[Polynomial, float]] = []
    for e in range(1, most + 1):
        out.append(fit_endpoint(nodes, weights, e, out[-1][0] if out else None))
    return out


class GaussianSurrogate(torch.nn.Module):
    """The Gaussian the probe's spectrum describes, as an ε-model: one coordinate per quadrature node,
    zero mean, variance λ_j = (σ/α)² g_j/(1 − g_j) at t_min (the variance a linear denoiser of gain g_j
    implies), ε̂ = σ x/(α²λ + σ²). A sampler run on it (one row of ones: every sampler is linear in
    its noise here) gives each direction's gain, and ``surrogate_kl`` the KL, in microseconds."""

    def __init__(self, schedule, nodes: Tensor, variance: float) -> None:
        super().__init__()
        a, s = alpha_sigma(schedule, schedule.t_min)
        g = nodes.double().clamp(SMALLEST_GAIN, 1 - 1e-12)
        self.schedule, self.gain, self.eigenvalues = schedule, g, (s / a) ** 2 * g / (1 - g)
        self.data_moments = (None, variance)
        self._factor: dict[float, Tensor] = {}

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        key = float(t[0])
        if key not in self._factor:
            a, s = alpha_sigma(self.schedule, key)
            self._factor[key] = s / (a**2 * self.eigenvalues + s**2)
        return x * self._factor[key]


def surrogate_kl(out: Tensor, surrogate: GaussianSurrogate, weights: Tensor) -> float:
    """The KL of a sampler's output ``out`` (its gain per node, from noise of ones) on ``surrogate``."""
    ratio = out.double() ** 2 / surrogate.eigenvalues
    value = (weights * 0.5 * (ratio - 1 - ratio.log())).sum().item()
    return value if math.isfinite(value) else math.inf
