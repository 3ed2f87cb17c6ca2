"""The probability-flow likelihood against closed forms: the exact model of a GP has the noised GP's
density, N(αμ, α²Γ⊗Σ + σ²I) at t_min, and the exact model of another GP gives the true KL."""

import math

import pytest
import torch

from stdiff.diffusion import Denoiser, ExactDenoiser
from stdiff.kernels import RBF, Matern, PoweredExponential
from stdiff.likelihood import log_likelihood
from stdiff.nn import DiT
from stdiff.schedules import OrnsteinUhlenbeck, SigmoidLogSNR
from stdiff.truth import KroneckerGP


@pytest.fixture(scope="module")
def gp():
    return KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), frames=8, space_shape=(4,))  # d = 32


def at_t_min(gp, schedule, x):
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    return gp.noised_log_prob(x, schedule.alpha(t0).item(), schedule.sigma(t0).item())


@pytest.mark.parametrize("schedule", [OrnsteinUhlenbeck(1e-3, 10.0), SigmoidLogSNR(1e-3, 1.0, 8.0, -10.0)],
                         ids=["ou", "sigmoid"])  # fmt: skip
def test_exact_model_reproduces_the_noised_gp_density(gp, schedule):
    x = gp.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    got = log_likelihood(ExactDenoiser.from_gp(gp, schedule), x, steps=200, divergence="exact")
    assert got.divergence == "exact" and got.log_prob.shape == (64,)
    err = (got.log_prob - at_t_min(gp, schedule, x)).abs().max().item() / gp.dim
    assert err < 1e-3, f"ODE likelihood off by {err:.2e} nats per dimension"
    # ... and, t_min being small, KroneckerGP.log_prob itself to within the early-stopping gap
    assert (got.log_prob - gp.log_prob(x)).abs().mean().item() / gp.dim < 2e-3


def test_error_falls_with_steps_at_second_order(gp):
    schedule = OrnsteinUhlenbeck(1e-3, 10.0)
    x = gp.sample(16, torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = ExactDenoiser.from_gp(gp, schedule)
    errs = [(log_likelihood(exact, x, steps=k, extrapolate=False).log_prob - at_t_min(gp, schedule, x)).abs().mean().item()
            for k in (25, 50)]  # fmt: skip
    assert 3 < errs[0] / errs[1] < 5, errs


def test_the_default_integrator_error_is_reported_and_below_the_standard_error():
    """Issue [T]: 100 plain steps were 9e-4 nats/dim below the exact density at t_min; Richardson's
    extrapolation over 100 and 50 steps leaves 3e-5, and the correction it reports (the bound
    ``stdiff test`` prints) is below the standard error of 256 samples of the quickstart's GP."""
    gp = KroneckerGP(PoweredExponential(4.0, 1.0), RBF(1.0), frames=32, space_shape=(8,))
    schedule = OrnsteinUhlenbeck(1e-3, 10.0)
    exact = ExactDenoiser.from_gp(gp, schedule)
    x = gp.sample(256, torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = at_t_min(gp, schedule, x)
    g = torch.Generator().manual_seed(0)
    plain = log_likelihood(exact, x, divergence="hutchinson", generator=g, control=exact, extrapolate=False)
    got = log_likelihood(exact, x, divergence="hutchinson", generator=g, control=exact)
    plain_err, err = ((r.log_prob - truth).mean().item() / gp.dim for r in (plain, got))
    assert 7e-4 < -plain_err < 1.1e-3 and abs(err) < 5e-5, (plain_err, err)
    assert abs(err) < got.integrator_error < got.nll_se, (err, got.integrator_error, got.nll_se)
    assert got.integrator_error == pytest.approx(-plain_err, rel=0.05)
    assert got.evaluations == 201 + 101
    # What the ODE targets: the density at t_min, below the data's own by 2.1e-4 nats/dim here (documented)
    many = gp.sample(20_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    offset = (gp.log_prob(many) - at_t_min(gp, schedule, many)).mean().item() / gp.dim
    assert offset == pytest.approx(2.1e-4, abs=1e-5)


def test_hutchinson_agrees_with_the_exact_divergence_within_its_error(gp):
    schedule = OrnsteinUhlenbeck(1e-3, 10.0)
    x = gp.sample(128, torch.Generator().manual_seed(2), dtype=torch.float64)
    model = ExactDenoiser.from_gp(gp, schedule)
    exact = log_likelihood(model, x, steps=30, divergence="exact").log_prob
    est = log_likelihood(model, x, steps=30, divergence="hutchinson", probes=4,
                         generator=torch.Generator().manual_seed(3)).log_prob  # fmt: skip
    diff = est - exact
    se = diff.std().item() / math.sqrt(len(diff))
    assert diff.std().item() > 0  # an estimate, not the exact value
    assert abs(diff.mean().item()) < 4 * se, (diff.mean().item(), se)


def test_true_kl_between_two_gps(gp):
    # The exact model of another GP is a learned distribution whose KL to the data is known:
    # E_p[log p(x) − log q_{t_min}(x)] = KL(p ‖ q_{t_min}) in closed form.
    from stdiff.metrics import gaussian_kl

    schedule = OrnsteinUhlenbeck(1e-3, 10.0)
    other = KroneckerGP(Matern(2.0, nu=1.5), RBF(1.3), frames=8, space_shape=(4,))
    x = gp.sample(500, torch.Generator().manual_seed(4), dtype=torch.float64)
    learned = log_likelihood(ExactDenoiser.from_gp(other, schedule), x, steps=100, divergence="exact").log_prob
    assert (learned - at_t_min(other, schedule, x)).abs().mean() < 0.1  # nats, on samples of the other GP
    gap = gp.log_prob(x) - learned
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    a, s = schedule.alpha(t0).item(), schedule.sigma(t0).item()
    q = other.covariance() * a**2 + s**2 * torch.eye(gp.dim, dtype=torch.float64)
    closed = gaussian_kl(gp.mean.reshape(-1), gp.covariance(), a * other.mean.reshape(-1), q)  # about 12.5 nats
    se = gap.std().item() / math.sqrt(len(x))
    assert abs(gap.mean().item() - closed) < 4 * se + 0.1, (gap.mean().item(), closed, se)


def test_network_likelihood_is_finite_and_estimators_agree():
    schedule = OrnsteinUhlenbeck(1e-2, 8.0)
    torch.manual_seed(0)
    model = Denoiser((4, 3), lambda shape: DiT(shape, width=16, depth=1, heads=2), schedule)
    for p in model.parameters():  # a non-trivial network (the zero-initialised output would give ε̂ = 0)
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(128, 4, 3)
    exact = log_likelihood(model, x, steps=20, divergence="exact").log_prob
    est = log_likelihood(model, x, steps=20, divergence="hutchinson", probes=8,
                         generator=torch.Generator().manual_seed(1)).log_prob  # fmt: skip
    assert torch.isfinite(exact).all()
    diff = est - exact
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(len(diff)) + 1e-6


def test_zero_noise_model_gives_the_scaled_prior():
    # ε̂ = 0: x/α is constant along the ODE, so the model is N(0, (α_0/α_N)² (α_N² + σ_N²) I).
    schedule = OrnsteinUhlenbeck(1e-3, 10.0)

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.schedule = schedule

        def forward(self, x, t):
            return 0 * x

    x = torch.randn(8, 3, 2, dtype=torch.float64)
    got = log_likelihood(Zero(), x, steps=10, divergence="exact").log_prob
    ends = torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64)
    a, s = schedule.alpha(ends), schedule.sigma(ends)
    var = (a[0] / a[1]) ** 2 * (a[1] ** 2 + s[1] ** 2)
    expected = -0.5 * (x.pow(2).flatten(1).sum(1) / var + 6 * torch.log(2 * math.pi * var))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "likelihood steps must be an integer >= 2, got 0"),
        ({"steps": 1}, "likelihood steps must be an integer >= 2, got 1"),
        ({"divergence": "trace"}, "divergence must be one of auto, exact, hutchinson, got 'trace'"),
        ({"probes": 0}, "likelihood probes must be an integer >= 1, got 0"),
    ],
)
def test_bad_likelihood_options(gp, kwargs, match):
    model = ExactDenoiser.from_gp(gp, OrnsteinUhlenbeck())
    with pytest.raises(ValueError, match=match):
        log_likelihood(model, gp.sample(2), **kwargs)


def test_missing_values_are_refused(gp):
    x = gp.sample(2)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="needs finite samples"):
        log_likelihood(ExactDenoiser.from_gp(gp, OrnsteinUhlenbeck()), x)


def test_control_variate_removes_the_hutchinson_noise_it_explains(gp):
    schedule = OrnsteinUhlenbeck(1e-3, 10.0)
    x = gp.sample(128, torch.Generator().manual_seed(5), dtype=torch.float64)
    exact_model = ExactDenoiser.from_gp(gp, schedule)
    exact = log_likelihood(exact_model, x, steps=30, divergence="exact").log_prob
    # the model is its own control: nothing left to estimate, the exact divergence comes out
    same = log_likelihood(exact_model, x, steps=30, divergence="hutchinson", control=exact_model,
                          generator=torch.Generator().manual_seed(6)).log_prob  # fmt: skip
    torch.testing.assert_close(same, exact, rtol=0, atol=1e-8)
    # another model: still unbiased, and less noisy than without the control
    other = ExactDenoiser.from_gp(KroneckerGP(PoweredExponential(2.5, 1.0), RBF(1.1), 8, (4,)), schedule)
    truth = log_likelihood(other, x, steps=30, divergence="exact").log_prob
    plain, controlled = (
        log_likelihood(
            other, x, steps=30, divergence="hutchinson", control=c, generator=torch.Generator().manual_seed(7)
        ).log_prob
        - truth
        for c in (None, exact_model)
    )
    assert abs(controlled.mean().item()) < 4 * controlled.std().item() / math.sqrt(len(x)) + 1e-9
    assert controlled.std() < 0.5 * plain.std(), (controlled.std().item(), plain.std().item())
