"""The truth contract (``stdiff.truth.Truth``) on random truths, against dense float64 references
written independently of the code under test (``tests/truth_reference.py``), with Hypothesis.

Random truths: every registered kernel family (composites included) in time and space, lengthscales
from well- to ill-conditioned up to the accepted limit (a factor's condition number ≤ 1e12; what
is refused is skipped), 1-D and 2-D space, nuggets, means (zero, constant, ±1e3), mixtures of up to
three components with weights down to 0.01; masks of whole frames, scattered entries, one entry,
none and all; noise levels from t = 1e-3 to 20 (OU: α = e^{−t/2}), one per sample.

Tolerances (the stated contract): x̂₀, conditional means and scores within 1e-8 of the dense solve
relative to the largest entry; evidences and log-densities within 1e-6 nats + 1e-12 of their size
(a component 1e3 away has an evidence of −1e8: float64 holds it to 1e-8); responsibilities and
posterior weights within 1e-8; observed entries returned exactly.

The default suite runs a fixed-seed profile (``FIXED``); ``-m slow`` runs ``LONG``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import truth_reference as ref
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from stdiff.kernels import (
    RBF,
    GeneralizedCauchy,
    LogarithmicDecay,
    Matern,
    Periodic,
    PoweredExponential,
    Product,
    RationalQuadratic,
    Scaled,
    Sum,
    Tabulated,
    White,
)
from stdiff.truth import GPMixture, KroneckerGP, Truth

FIXED = settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=5000, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
X0_TOL, EVIDENCE_TOL, WEIGHT_TOL = 1e-8, 1e-6, 1e-8

lengthscales = st.floats(0.3, 4.0)


@st.composite
def kernels(draw, size: int):
    """A kernel of any registered family (``size``: the points it will be evaluated on, for Tabulated)."""
    family = draw(st.sampled_from(["PoweredExponential", "GeneralizedCauchy", "LogarithmicDecay", "RBF", "Matern",
                                   "RationalQuadratic", "Periodic", "White", "Tabulated", "Sum", "Product", "Scaled"]))  # fmt: skip
    ell = draw(lengthscales)
    if family == "PoweredExponential":
        return PoweredExponential(ell, draw(st.floats(0.5, 2.0)))
    if family == "GeneralizedCauchy":
        return GeneralizedCauchy(ell, draw(st.floats(0.5, 2.0)), draw(st.floats(0.5, 2.0)))
    if family == "LogarithmicDecay":
        return LogarithmicDecay(ell, draw(st.floats(0.5, 2.0)))
    if family == "RBF":
        return RBF(ell)
    if family == "Matern":
        return Matern(ell, draw(st.sampled_from([0.5, 1.5, 2.5])))
    if family == "RationalQuadratic":
        return RationalQuadratic(ell, draw(st.floats(0.5, 3.0)))
    if family == "Periodic":
        return Periodic(ell, draw(st.floats(2.5, 8.0)))
    if family == "White":
        return White()
    if family == "Tabulated":  # a random covariance: A Aᵀ + δI
        seed = draw(st.integers(0, 2**16))
        a = torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return Tabulated((a @ a.T / size + draw(st.floats(1e-3, 1.0)) * torch.eye(size, dtype=torch.float64)).tolist())
    if family in ("Sum", "Product"):
        parts = [RBF(ell), Matern(draw(lengthscales), 1.5)]
        return Sum(parts) if family == "Sum" else Product(parts)
    return Scaled(RBF(ell), draw(st.floats(0.1, 10.0)))


@st.composite
def truths(draw) -> Truth:
    frames = draw(st.integers(2, 12))
    space_shape = draw(st.sampled_from([(1,), (2,), (3,), (4,), (6,), (2, 2), (2, 3), (3, 3)]))
    size = math.prod(space_shape)
    components, weights = [], []
    for _ in range(draw(st.integers(1, 3))):
        temporal = draw(kernels(frames))
        spatial = draw(st.one_of(st.none(), kernels(size)))
        if isinstance(spatial, Tabulated) and len(space_shape) == 2:
            spatial = Tabulated(spatial.matrix.tolist(), list(space_shape))
        mean = draw(st.sampled_from([0.0, 1e3, -1e3, draw(st.floats(-2.0, 2.0))]))
        nugget = draw(st.sampled_from([0.0, 0.0, draw(st.floats(1e-4, 0.5))]))
        try:
            components.append(KroneckerGP(temporal, spatial, frames, space_shape, mean, nugget=nugget))
        except ValueError:
            reject()  # refused at construction: outside what the project accepts
        weights.append(draw(st.floats(0.01, 1.0)))
    return components[0] if len(components) == 1 and draw(st.booleans()) else GPMixture(components, weights)


@st.composite
def masks(draw, truth: Truth, batch: int):
    """(observed (B, T, *space) bool, kind): whole frames, scattered, one entry, none or all."""
    kind = draw(st.sampled_from(["frames", "scattered", "one", "none", "all"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    shape = (batch, *truth.sample_shape)
    if kind == "frames":
        frames = torch.rand(batch, truth.frames, generator=g) < 0.5
        return frames.reshape(batch, truth.frames, *[1] * len(truth.space_shape)).expand(shape).clone()
    if kind == "scattered":
        return torch.rand(shape, generator=g) < draw(st.floats(0.1, 0.9))
    if kind == "one":
        out = torch.zeros(batch, truth.dim, dtype=torch.bool)
        out[:, draw(st.integers(0, truth.dim - 1))] = True
        return out.reshape(shape)
    return torch.full(shape, kind == "all")


def ou(t: float) -> tuple[float, float]:
    return math.exp(-t / 2), math.sqrt(-math.expm1(-t))


def close(ours: float, theirs: float, tol: float) -> bool:
    return abs(ours - theirs) <= tol + 1e-12 * abs(theirs)


def near(ours: np.ndarray, theirs: np.ndarray, tol: float) -> bool:
    return np.abs(ours - theirs).max(initial=0.0) <= tol * max(1.0, np.abs(theirs).max(initial=0.0))


def agrees(ours, dense, tol: float, exact, part: int | None = None) -> bool:
    """Within ``tol`` of the float64 dense solve, or, where that solve itself is not accurate enough
    (condition numbers near the accepted 1e12 per factor), of the 40-digit mpmath one, ``exact()``
    (its ``part``-th item)."""
    test = close if isinstance(dense, float) else near
    return test(ours, dense, tol) or test(ours, exact() if part is None else exact()[part], tol)


@st.composite
def cases(draw):
    truth = draw(truths())
    seed = draw(st.integers(0, 2**16))
    times = [10 ** draw(st.floats(-3, math.log10(20))) for _ in range(2)]
    return truth, seed, times, draw(masks(truth, 2))


def check_contract(truth: Truth, seed: int, times: list[float], mask: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(seed)
    b, k = len(times), len(truth.components)
    x0, labels = truth.sample_with_labels(b, g, dtype=torch.float64)
    assert x0.shape == (b, *truth.sample_shape) and labels.shape == (b,) and x0.dtype == torch.float64
    assert truth.weights.shape == (k,) and truth.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    alpha = torch.tensor([ou(t)[0] for t in times], dtype=torch.float64)
    sigma = torch.tensor([ou(t)[1] for t in times], dtype=torch.float64)
    view = (b, *[1] * len(truth.sample_shape))
    x_t = alpha.reshape(view) * x0 + sigma.reshape(view) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    flat_t, flat_0, flat_mask = x_t.reshape(b, -1).numpy(), x0.reshape(b, -1).numpy(), mask.reshape(b, -1).numpy()

    # unconditional: density, score, denoiser with its evidence, responsibilities
    x0_hat, evidence = truth.denoise_with_evidence(x_t, alpha, sigma)
    log_p, score = truth.noised_log_prob(x_t, alpha, sigma), truth.score(x_t, alpha, sigma)
    r = truth.responsibilities(x_t, alpha, sigma)
    assert x0_hat.shape == x_t.shape and evidence.shape == (b,) and log_p.shape == (b,) and r.shape == (b, k)
    for i in range(b):
        a, s = alpha[i].item(), sigma[i].item()
        want_x0, want_ev, want_r = ref.denoise(truth, flat_t[i], a, s)
        exact = lambda i=i, a=a, s=s: ref.mp_denoise(truth, flat_t[i], a, s)
        assert agrees(x0_hat[i].reshape(-1).numpy(), want_x0, X0_TOL, exact, 0), "x̂₀"
        assert agrees(evidence[i].item(), want_ev, EVIDENCE_TOL, exact, 1), "evidence"
        assert agrees(log_p[i].item(), want_ev, EVIDENCE_TOL, exact, 1), "noised log-density"
        assert np.abs(r[i].numpy() - want_r).max(initial=0.0) <= WEIGHT_TOL, "responsibilities"
        want_score = ref.score(truth, flat_t[i], a, s)
        assert np.abs(score[i].reshape(-1).numpy() - want_score).max(initial=0.0) <= X0_TOL * max(1.0, np.abs(want_score).max(initial=0.0))

    # conditional denoiser: x_0 known at the mask
    x0_hat, evidence = truth.denoise_with_evidence(x_t, alpha, sigma, x0, mask)
    assert x0_hat.shape == x_t.shape and evidence.shape == (b,)
    assert torch.equal(x0_hat[mask], x0[mask]), "observed entries exactly"
    for i in range(b):
        args = (flat_t[i], alpha[i].item(), sigma[i].item(), flat_0[i], flat_mask[i])
        want_x0, want_ev, _ = ref.denoise(truth, *args)
        exact = lambda args=args: ref.mp_denoise(truth, *args)
        assert agrees(x0_hat[i].reshape(-1).numpy(), want_x0, X0_TOL, exact, 0), "conditional x̂₀"
        assert agrees(evidence[i].item(), want_ev, EVIDENCE_TOL, exact, 1), "conditional evidence"

    # the posterior given observed entries (one mask for the batch: the first sample's)
    observed = mask[0]
    mean, cov = truth.conditional(x0, observed)
    m = int((~observed).sum())
    assert mean.shape == x0.shape and cov.shape == (b, m, m)
    assert torch.equal(mean[:, observed], x0[:, observed]), "observed entries exactly"
    weights, log_obs = truth.posterior_weights(x0, observed), truth.observed_log_prob(x0, observed)
    assert weights.shape == (b, k) and log_obs.shape == (b,)
    for i in range(b):
        want_mean, want_cov, want_ev, want_pi = ref.conditional(truth, flat_0[i], observed.reshape(-1).numpy())
        scale = max(1.0, np.abs(want_mean).max(initial=0.0))
        assert np.abs(mean[i].reshape(-1).numpy() - want_mean).max(initial=0.0) <= X0_TOL * scale, "posterior mean"
        assert np.abs(cov[i].numpy() - want_cov).max(initial=0.0) <= X0_TOL * max(1.0, np.abs(want_cov).max(initial=0.0)), "posterior cov"
        assert np.abs(weights[i].numpy() - want_pi).max(initial=0.0) <= WEIGHT_TOL, "posterior weights"
        flat_observed = observed.reshape(-1).numpy()
        assert agrees(log_obs[i].item(), want_ev, EVIDENCE_TOL,
                      functools.partial(ref.mp_observed_log_prob, truth, flat_0[i], flat_observed)), "observed log-density"  # fmt: skip
    draws = truth.sample_conditional(x0, observed, 3, g)
    assert draws.shape == (b, 3, *truth.sample_shape) and torch.equal(draws[:, :, observed], x0[:, None, observed].expand(b, 3, -1))


@FIXED
@given(cases())
def test_the_contract_holds_on_random_truths(case):
    check_contract(*case)


@pytest.mark.slow
@LONG
@given(cases())
def test_the_contract_holds_on_random_truths_long(case):
    check_contract(*case)


@FIXED
@given(truths(), st.floats(-3, math.log10(20)), st.integers(0, 2**16))
def test_the_divergence_is_the_trace_of_the_denoisers_jacobian(truth, log_t, seed):
    """∇·ε̂ ``(B,)`` for every truth against central differences of the dense reference's ε̂ = −σ s."""
    alpha, sigma = ou(10**log_t)
    x_t = alpha * truth.sample(2, torch.Generator().manual_seed(seed), dtype=torch.float64)
    div = truth.divergence(x_t, alpha, sigma)
    assert div.shape == (2,) and div.dtype == torch.float64
    for i in range(2):
        x, h, trace = x_t[i].reshape(-1).numpy(), 1e-5 * max(sigma, 1e-3), 0.0
        for j in range(len(x)):
            step = np.zeros_like(x)
            step[j] = h
            trace += -sigma * (ref.score(truth, x + step, alpha, sigma)[j] - ref.score(truth, x - step, alpha, sigma)[j]) / (2 * h)
        assert div[i].item() == pytest.approx(trace, rel=1e-4, abs=1e-4)


def test_scales_of_the_wrong_length_are_refused():
    """Per-sample α of a length that happens to equal another dimension (the spatial points) used to
    broadcast silently and return values 44 % off."""
    gp = KroneckerGP(RBF(2.0), RBF(1.0), 6, (4,))
    x = gp.sample(3, torch.Generator().manual_seed(0), dtype=torch.float64)
    for method in (gp.score, gp.denoise):
        with pytest.raises(ValueError, match=r"alpha must be a scalar or one value per sample \(3\), got 4 values"):
            method(x, torch.full((4,), 0.8), 0.6)
    with pytest.raises(TypeError, match="divergence takes scalar alpha and sigma"):
        gp.divergence(x, torch.full((4,), 0.8), 0.6)


def test_the_audits_failing_case_gives_the_right_posterior_weights():
    """Regression (outside audit, FAIL): two components, one RBF(3) in time × RBF(1.5) in space on 16
    frames × 4 points (each factor inside the check, the product's condition number 4e13), 40 % of
    the entries observed, t = 6–10. The precision form gave that component a posterior weight of
    0.011 instead of 0.937; here x̂₀ and every component's evidence match 40-digit mpmath."""
    smooth = KroneckerGP(RBF(3.0), RBF(1.5), 16, (4,))
    assert 1e13 < math.prod(smooth.condition_numbers()) < 1e14
    mix = GPMixture([smooth, KroneckerGP(Matern(2.0, 1.5), RBF(1.0), 16, (4,), 0.2)], [0.3, 0.7])
    g = torch.Generator().manual_seed(0)
    x0 = smooth.sample(1, g, dtype=torch.float64)
    mask = torch.rand(x0.shape, generator=g) < 0.4
    for t in (6.0, 8.0, 10.0):
        alpha, sigma = ou(t)
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        args = (x_t.reshape(-1).numpy(), alpha, sigma, x0.reshape(-1).numpy(), mask.reshape(-1).numpy())
        evidences = []
        for c in mix.components:
            ours, evidence = c.denoise_with_evidence(x_t, alpha, sigma, x0, mask)
            mp_evidence, mp_x0 = ref.mp_component_evidence(c, *args)
            assert abs(evidence.item() - mp_evidence) < 1e-6
            assert np.abs(ours.reshape(-1).numpy() - mp_x0).max(initial=0.0) < 1e-8 * np.abs(mp_x0).max(initial=0.0)
            evidences.append(mp_evidence)
        joint = np.array(evidences) + np.log([0.3, 0.7])
        want = np.exp(joint - ref.logsumexp(joint))
        got = torch.tensor([c.denoise_with_evidence(x_t, alpha, sigma, x0, mask)[1].item() for c in mix.components])
        got = (got + torch.log(torch.tensor([0.3, 0.7], dtype=torch.float64))).softmax(0).numpy()
        assert np.abs(got - want).max(initial=0.0) < 1e-8 and want[0] > 0.9, (got, want)
