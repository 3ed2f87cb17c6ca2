"""KroneckerGP against dense float64 oracles: covariance of samples, log-density, exact score."""

import math
import random

import pytest
import torch

from stdiff.kernels import (
    RBF,
    GeneralizedCauchy,
    LogarithmicDecay,
    Matern,
    PoweredExponential,
    RationalQuadratic,
    Separable,
    White,
)
from stdiff.truth import KroneckerGP


def random_gp(seed: int) -> KroneckerGP:
    """A random GP with T·S <= 256: random kernel families, parameters, grid shape and mean."""
    rng = random.Random(seed)
    families = [
        lambda: PoweredExponential(rng.uniform(0.5, 6), rng.uniform(0.3, 2.0)),
        lambda: GeneralizedCauchy(rng.uniform(0.5, 6), rng.uniform(0.3, 2.0), rng.uniform(0.2, 3)),
        lambda: LogarithmicDecay(rng.uniform(0.5, 6), rng.uniform(0.3, 2)),
        lambda: Matern(rng.uniform(0.5, 3), rng.choice([0.5, 1.5, 2.5])),
        lambda: RationalQuadratic(rng.uniform(0.5, 2), rng.uniform(0.3, 3)),
        lambda: RBF(rng.uniform(0.3, 1.2)) + 0.1 * White(),
    ]
    frames = rng.randint(2, 16)
    space = rng.choice([(rng.randint(1, 256 // frames),), (rng.randint(1, 4), rng.randint(1, 4))])
    spatial = rng.choice(families)() if rng.random() < 0.8 else None
    return KroneckerGP(rng.choice(families)(), spatial, frames, space, mean=rng.uniform(-2, 2))


def test_sample_covariance_matches_kronecker_product():
    gp = KroneckerGP(PoweredExponential(3.0, 1.5), Matern(1.5, 2.5), frames=12, space_shape=(2, 4), mean=0.7)
    n = 20_000
    x = gp.sample(n, torch.Generator().manual_seed(0)).double().reshape(n, -1)
    k = gp.covariance()
    centred = x - 0.7
    emp = centred.T @ centred / n
    # Var of an empirical covariance entry of a Gaussian: (K_ii K_jj + K_ij²) / n.
    sd = ((k.diag()[:, None] * k.diag()[None, :] + k**2) / n).sqrt()
    z = (emp - k) / sd
    assert z.abs().max() < 5.5, f"largest deviation {z.abs().max():.2f} standard errors"
    assert 0.7 < (z**2).mean() < 1.3, "spread of deviations does not match the sample size"
    mean_z = (x.mean(0) - 0.7) / (k.diag() / n).sqrt()
    assert mean_z.abs().max() < 5.5


def test_sample_shape_dtype_and_reproducibility():
    gp = KroneckerGP(RBF(2.0), None, frames=5, space_shape=(3, 4))
    a = gp.sample(7, torch.Generator().manual_seed(1))
    b = gp.sample(7, torch.Generator().manual_seed(1))
    assert a.shape == (7, 5, 3, 4) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert gp.sample(2, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("seed", range(12))
def test_score_matches_dense_solve(seed):
    gp = random_gp(seed)
    assert gp.dim <= 256
    gen = torch.Generator().manual_seed(seed)
    b = 6
    alpha = torch.rand(b, generator=gen, dtype=torch.float64) * 0.99 + 0.01
    sigma = torch.rand(b, generator=gen, dtype=torch.float64) * 0.99 + 0.01
    x_t = torch.randn(b, *gp.sample_shape, generator=gen, dtype=torch.float64) * 2
    score = gp.score(x_t, alpha, sigma).reshape(b, -1)
    k, mu = gp.covariance(), gp.mean.reshape(-1)
    for i in range(b):
        a = alpha[i] ** 2 * k + sigma[i] ** 2 * torch.eye(gp.dim, dtype=torch.float64)
        dense = -torch.linalg.solve(a, x_t[i].reshape(-1) - alpha[i] * mu)
        rel = (score[i] - dense).norm() / dense.norm()
        assert rel < 1e-8, f"{gp}: relative error {rel:.2e}"


def test_score_accepts_scalars_and_keeps_dtype():
    gp = KroneckerGP(Matern(2.0), RBF(1.0), frames=4, space_shape=(3,))
    x = torch.randn(2, 4, 3)
    s = gp.score(x, 0.5, math.sqrt(0.75))
    assert s.shape == x.shape and s.dtype == torch.float32
    torch.testing.assert_close(s, gp.score(x, torch.tensor([0.5, 0.5]), torch.tensor([0.75, 0.75]).sqrt()))


@pytest.mark.parametrize("seed", range(6))
def test_log_prob_matches_multivariate_normal(seed):
    gp = random_gp(100 + seed)
    dense = torch.distributions.MultivariateNormal(gp.mean.reshape(-1), covariance_matrix=gp.covariance())
    x = gp.sample(5, torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = dense.log_prob(x.reshape(5, -1))
    torch.testing.assert_close(gp.log_prob(x), expected, rtol=1e-8, atol=1e-8)


def test_identity_spatial_covariance():
    gp = KroneckerGP(PoweredExponential(2.0), None, frames=6, space_shape=(5,))
    torch.testing.assert_close(gp.sigma, torch.eye(5, dtype=torch.float64))


def test_not_positive_definite_names_kernel_parameters_and_eigenvalue():
    with pytest.raises(
        ValueError,
        match=r"temporal kernel RBF\(lengthscale=20.0\) is not positive definite on 64 "
        r"frames: smallest eigenvalue -?\d\.\d+e[-+]\d+",
    ):
        KroneckerGP(RBF(20.0), frames=64)
    with pytest.raises(ValueError, match=r"spatial kernel .* a \(32, 32\) grid"):
        KroneckerGP(Matern(1.0), RationalQuadratic(30.0, 1e3), frames=4, space_shape=(32, 32))
    # a separable kernel (an RBF is one) is factorised per axis: the message names the axis
    with pytest.raises(ValueError, match=r"spatial kernel RBF\(lengthscale=30.0\) .* axis 0 \(32 points\) of the \(32, 32\) grid"):
        KroneckerGP(Matern(1.0), RBF(30.0), frames=4, space_shape=(32, 32))


def test_jitter_makes_an_ill_conditioned_kernel_usable():
    gp = KroneckerGP(RBF(20.0), frames=64, jitter=1e-6)
    cond_t, _ = gp.condition_numbers()
    assert cond_t < 1e12
    torch.testing.assert_close(gp.gamma.diag(), torch.full((64,), 1 + 1e-6, dtype=torch.float64))
    assert gp.conditioning["temporal"]["jitter"] == 1e-6
    assert gp.conditioning["temporal"]["condition_number"] == pytest.approx(cond_t)


def test_auto_jitter_adds_just_enough_and_reports_it():
    gp = KroneckerGP(RBF(20.0), Matern(1.0), frames=64, space_shape=(4,), jitter="auto")
    temporal, spatial = gp.conditioning["temporal"], gp.conditioning["spatial"]
    assert spatial["jitter"] == 0.0  # well conditioned: left exact
    assert temporal["smallest_eigenvalue_without_jitter"] < gp.gamma_evals[-1].item() / 1e12
    assert temporal["condition_number"] == pytest.approx(1e11, rel=1e-6)
    # exactly Γ + δI, eigen-decomposition included
    exact = RBF(20.0)(torch.arange(64.0, dtype=torch.float64)[:, None])
    torch.testing.assert_close(gp.gamma, exact + temporal["jitter"] * torch.eye(64, dtype=torch.float64))
    recon = gp.gamma_evecs @ torch.diag(gp.gamma_evals) @ gp.gamma_evecs.T
    torch.testing.assert_close(recon, gp.gamma, atol=1e-12, rtol=0)
    report = gp.report()
    assert f"jitter {temporal['jitter']:.3g} added" in report and "condition number 1e+11" in report
    assert "spatial Σ: condition number" in report and "no jitter" in report
    # a well-conditioned kernel is left exactly as it is
    assert KroneckerGP(PoweredExponential(2.0), frames=8, jitter="auto").conditioning["temporal"]["jitter"] == 0.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"frames": 1}, r"frames must be an integer >= 2, got 1"),
        ({"frames": 0}, r"frames must be an integer >= 2, got 0"),
        ({"space_shape": ()}, r"space_shape must have 1, 2 or 3 entries"),
        ({"space_shape": (0,)}, r"space_shape entry .* must be an integer >= 1, got 0"),
        ({"space_shape": (4, -2)}, r"space_shape entry .* got -2"),
        ({"space_shape": (2, 2, 2, 2)}, r"space_shape must have 1, 2 or 3 entries"),
        ({"jitter": -1.0}, r"jitter must be a finite number >= 0 or 'auto', got -1.0"),
        ({"mean": float("nan")}, r"mean must be a finite number"),
    ],
)
def test_bad_shapes_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KroneckerGP(PoweredExponential(2.0), **kwargs)


def test_score_rejects_wrong_shape():
    gp = KroneckerGP(PoweredExponential(2.0), frames=4, space_shape=(3,))
    with pytest.raises(ValueError, match=r"x_t must end in the sample shape \(4, 3\)"):
        gp.score(torch.zeros(2, 4, 5), 1.0, 0.1)


@pytest.mark.parametrize("seed", range(6))
def test_conditional_splits_the_density_exactly(seed):
    """log p(x) = log p(x_o) + log p(x_m | x_o): the conditional (mean, covariance) and the
    marginal of the observed part, checked against the exact joint density, for a coordinate
    mask and for a frame mask (both paths also agree with each other)."""
    gp = random_gp(seed)
    g = torch.Generator().manual_seed(seed)
    x = gp.sample(3, g).double()
    frames = torch.rand(gp.frames, generator=g) < 0.5
    frames[0] = True  # at least one observed and, below, one missing frame
    frames[-1] = False
    coordinates = torch.rand(gp.sample_shape, generator=g) < 0.5
    k = gp.covariance()
    for mask in (coordinates, frames.reshape(-1, *[1] * len(gp.space_shape)).expand(gp.sample_shape)):
        mean, cov = gp.conditional(x, mask)
        o, m = mask.reshape(-1), ~mask.reshape(-1)
        flat, flat_mean = x.reshape(3, -1), mean.reshape(3, -1)
        assert torch.equal(flat_mean[:, o], flat[:, o])
        marginal = torch.distributions.MultivariateNormal(torch.full((int(o.sum()),), gp.mean_value), k[o][:, o])
        missing = torch.distributions.MultivariateNormal(flat_mean[:, m], cov)
        torch.testing.assert_close(marginal.log_prob(flat[:, o]) + missing.log_prob(flat[:, m]), gp.log_prob(x))
    by_frames = gp.conditional(x, frames)
    torch.testing.assert_close(by_frames[0], mean)
    torch.testing.assert_close(by_frames[1], cov)


def test_forecast_of_a_markov_process_needs_only_the_last_frame():
    """An exponential temporal kernel is a (discretised) Ornstein–Uhlenbeck process: given every
    past frame, the next one has mean ρ x_last and covariance (1 − ρ²) Σ, ρ = e^{−1/ℓ}."""
    gp = KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.5), frames=10, space_shape=(5,), mean=0.0)
    x = gp.sample(4, torch.Generator().manual_seed(0)).double()
    past = torch.arange(10) < 9
    mean, cov = gp.conditional(x, past)
    rho = math.exp(-1 / 3.0)
    torch.testing.assert_close(mean[:, -1], rho * x[:, -2])
    torch.testing.assert_close(cov, ((1 - rho**2) * gp.sigma).expand(4, 5, 5))  # one covariance, every case


def test_conditional_rejects_bad_masks():
    gp = KroneckerGP(PoweredExponential(3.0), None, frames=4, space_shape=(3,))
    x = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match=r"observed must be a boolean mask of shape \(4,\) \(frames\) or \(4, 3\)"):
        gp.conditional(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got torch.int64 \(4,\)"):
        gp.conditional(x, torch.ones(4, dtype=torch.long))
    big = KroneckerGP(PoweredExponential(3.0), None, frames=64, space_shape=(65,))
    scattered = torch.ones(64, 65, dtype=torch.bool)
    scattered[0, 0] = False  # a frame seen in part: not whole frames
    with pytest.raises(ValueError, match=r"T·S = 4160 > 4096; observe whole frames"):
        big.conditional(torch.zeros(64, 65), scattered)
    mean, cov = gp.conditional(x, torch.zeros(4, dtype=torch.bool))  # nothing observed: the prior
    torch.testing.assert_close(cov, gp.covariance().expand(2, 12, 12))
    assert torch.equal(mean, torch.zeros(2, 4, 3, dtype=torch.float64))


@pytest.mark.parametrize(("spatial", "shape"), [
    (RBF(2.5), (4, 3)), (Separable([Matern(3.0, 2.5), RBF(1.5)]), (4, 3)), (None, (4, 3)),
    (RBF(2.5), (3, 2, 2)), (Separable([Matern(3.0, 2.5), RBF(1.5), Matern(2.0, 0.5)]), (3, 2, 2)),
], ids=["rbf", "matern_rbf", "identity", "rbf_3d", "separable_3d"])  # fmt: skip
def test_separable_space_matches_the_dense_kronecker_algebra(spatial, shape):
    """Σ held as one factor per grid axis (Γ ⊗ Σ_H ⊗ Σ_W, or Γ ⊗ Σ_D ⊗ Σ_H ⊗ Σ_W on 3-D grids)
    gives what the dense Σ gives: eigenvalues, log-density, score, eigenbasis round trip, samples'
    covariance; Σ is never formed unless asked."""
    gp = KroneckerGP(PoweredExponential(3.0), spatial, frames=5, space_shape=shape, nugget=0.02)
    assert gp.separable and not gp.space.dense_formed
    x = gp.sample(6, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert not gp.space.dense_formed  # sampling and the eigenbasis work by factors
    sigma = torch.eye(12, dtype=torch.float64) if spatial is None else spatial(gp.points())
    cov = torch.kron(gp.gamma, sigma) + 0.02 * torch.eye(60, dtype=torch.float64)
    torch.testing.assert_close(gp.covariance(), cov)
    torch.testing.assert_close(gp.eigenvalues().reshape(-1).sort().values, torch.linalg.eigvalsh(cov), atol=1e-12, rtol=1e-10)
    dense = torch.distributions.MultivariateNormal(gp.mean.reshape(-1), cov)
    torch.testing.assert_close(gp.log_prob(x), dense.log_prob(x.reshape(6, -1)), atol=1e-9, rtol=1e-10)
    score = -torch.linalg.solve(0.36 * cov + 0.64 * torch.eye(60, dtype=torch.float64), (x.reshape(6, -1) - 0.6 * gp.mean.reshape(-1)).T).T
    torch.testing.assert_close(gp.score(x, 0.6, 0.8).reshape(6, -1), score, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(gp.from_eigenbasis(gp.to_eigenbasis(x)), x, atol=1e-12, rtol=0)
    draws = gp.sample(40000, torch.Generator().manual_seed(1), dtype=torch.float64).reshape(40000, -1)
    assert (torch.cov(draws.T) - cov).abs().max() < 0.05


def test_separable_kernel_is_the_product_over_axes_and_refuses_the_wrong_number_of_axes():
    k = Separable([Matern(2.0, 1.5), RBF(3.0)])
    x = torch.tensor([[0.0, 1.0], [2.0, 5.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(k(x), Matern(2.0, 1.5)(x[:, :1]) * RBF(3.0)(x[:, 1:]))
    torch.testing.assert_close(RBF(2.0)(x), Separable(RBF(2.0).axis_kernels(2))(x))  # the RBF is separable
    assert Matern(2.0).axis_kernels(2) is None and (2.0 * RBF(1.0)).axis_kernels(2) is not None
    with pytest.raises(ValueError, match="Separable has 2 axis kernels, the coordinates have 3 axes"):
        k(torch.zeros(2, 3))


def test_a_128_by_128_separable_grid_costs_two_small_eigendecompositions():
    """S = 16,384: a dense Σ would be 2 GiB and an eigendecomposition of order 16,384; by factors
    it is two of order 128 and the eigenvalues, 16 × 16,384 of them, are exact products."""
    gp = KroneckerGP(PoweredExponential(4.0), Separable([Matern(3.0, 2.5)] * 2), frames=16, space_shape=(128, 128))
    assert gp.num_points == 16384 and not gp.space.dense_formed
    (_, ev_h, _), (_, ev_w, _) = gp.space.factors
    lam = gp.eigenvalues()
    assert lam.shape == (16, 16384)
    torch.testing.assert_close(lam[3, 5 * 128 + 7], gp.gamma_evals[3] * ev_h[5] * ev_w[7])
    x = gp.sample(2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 16, 128, 128) and torch.isfinite(gp.log_prob(x)).all()
