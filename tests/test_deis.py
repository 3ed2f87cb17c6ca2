"""DEIS: its weights integrate exactly, order 1 is DDIM, higher orders converge faster, and UniPC's
plan uses its steps where the surrogate says they leave less KL."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stdiff.diffusion import ExactDenoiser
from stdiff.kernels import RBF, PoweredExponential
from stdiff.metrics import early_stopping_kl, pushforward_kl
from stdiff.sampling import DDIM, DEIS
from stdiff.sampling.deis import exp_lagrange_weights, ratio_grid
from stdiff.schedules import OrnsteinUhlenbeck, SigmoidLogSNR
from stdiff.truth import KroneckerGP


def _integral(f, a: float, b: float) -> float:
    nodes, weights = np.polynomial.legendre.leggauss(60)
    u = (a + b) / 2 + (b - a) / 2 * nodes
    return float((b - a) / 2 * (weights * np.exp(u) * f(u)).sum())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-8.0, 3.0), min_size=1, max_size=3, unique=True),
    st.floats(-8.0, 3.0),
    st.floats(-6.0, 0.0),
)
def test_the_weights_integrate_every_polynomial_of_the_nodes_degree_exactly(nodes, u_from, length):
    """Σ_j w_j P(u_j) = ∫ e^u P(u) du for every P of degree < len(nodes): the step is exact where ε is
    polynomial in ln ρ."""
    if min(abs(a - b) for a in nodes for b in nodes if a != b) < 0.05 if len(nodes) > 1 else False:
        return  # nearly coincident nodes: the basis itself is ill-conditioned, not the integral
    weights = exp_lagrange_weights(nodes, u_from, u_from + length)
    scale = _integral(lambda u: np.ones_like(u), u_from, u_from + length)
    for degree in range(len(nodes)):
        exact = _integral(lambda u, k=degree: (u - u_from) ** k, u_from, u_from + length)
        mine = sum(w * (u - u_from) ** degree for w, u in zip(weights, nodes, strict=True))
        assert mine == pytest.approx(exact, rel=1e-7, abs=1e-9 * max(1.0, abs(scale)) * 10**degree), (degree, mine, exact)


def test_coincident_nodes_are_refused():
    with pytest.raises(ZeroDivisionError):
        exp_lagrange_weights([0.5, 0.5], 0.5, 0.0)


@pytest.fixture(scope="module")
def gp_problem():
    gp = KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), frames=8, space_shape=(4,))  # d = 32
    return gp, OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0)


def test_order_one_is_ddim_on_the_same_grid(gp_problem):
    gp, schedule = gp_problem
    model = ExactDenoiser.from_gp(gp, schedule)
    z = torch.randn(16, *gp.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mine = DEIS(steps=9, order=1, rho=7.0).sample(model, z.shape, dtype=torch.float64, noise=z)
    ddim = DDIM(steps=9, spacing="karras", rho=7.0).sample(model, z.shape, dtype=torch.float64, noise=z)
    torch.testing.assert_close(mine, ddim, rtol=1e-9, atol=1e-9)


def test_higher_orders_converge_faster_to_the_law_at_t_min(gp_problem):
    """The distance from the law of the data noised to t_min (what a perfect sampler stopped there
    leaves: the early-stopping KL) falls faster with the order."""
    gp, schedule = gp_problem
    model = ExactDenoiser.from_gp(gp, schedule)
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    bias = early_stopping_kl(gp, schedule.alpha(t0).item(), schedule.sigma(t0).item())

    def error(sampler):
        return abs(pushforward_kl(lambda z: sampler.sample(model, z.shape, dtype=torch.float64, noise=z), gp) - bias)

    assert error(DEIS(steps=20, order=3)) < error(DEIS(steps=20, order=1)) / 100
    errors = [error(DEIS(steps=n, order=3)) for n in (20, 40, 80, 160)]  # measured 1.3e-3, 2.7e-4, 4.3e-5, 1.0e-5
    assert all(b < a / 3 for a, b in itertools.pairwise(errors)) and errors[-1] < bias / 100, errors


@pytest.mark.parametrize("schedule", [OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0), SigmoidLogSNR()], ids=["OU", "sigmoid"])
def test_the_ratio_grid_spaces_the_noise_to_signal_ratio_and_starts_where_asked(schedule):
    times = ratio_grid(schedule, 12, 7.0)
    assert times[0].item() == schedule.t_max and times[-1].item() == schedule.t_min
    rho = torch.exp(-schedule.log_snr(times) / 2)  # σ/α
    ramp = rho ** (1 / 7)
    torch.testing.assert_close(ramp.diff(), torch.full((12,), ramp.diff().mean().item(), dtype=torch.float64))
    later = ratio_grid(schedule, 12, 7.0, lambda_start=-2.0)
    assert (schedule.log_snr(later[:1]) / 2).item() == pytest.approx(max(-2.0, (schedule.log_snr(times[:1]) / 2).item()))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: DEIS(order=4), r"DEIS.order must be 1, 2 or 3, got 4"),
        (lambda: DEIS(rho=0.0), r"DEIS.rho must be a finite number > 0"),
        (lambda: DEIS(lambda_start=math.nan), r"DEIS.lambda_start must be a finite number or null"),
        (lambda: DEIS(steps=0), r"DEIS.steps must be an integer >= 1, got 0"),
        (lambda: DEIS(lower_order_final="yes"), r"DEIS.lower_order_final must be true or false"),
    ],
)
def test_bad_deis_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()
