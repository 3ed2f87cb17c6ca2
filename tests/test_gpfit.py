"""Gaussian references fitted to data (stdiff.truth.fitting) against oracles: the generating GP's own
parameters, the dense multivariate normal, and closed forms; with and without missing values."""

import math
import warnings

import pytest
import torch

from stdiff.kernels import RBF, Matern, PoweredExponential
from stdiff.truth import KroneckerGP
from stdiff.truth.fitting import (
    FitWarning,
    expected_moments,
    fit_kernels,
    flip_flop,
    held_out_note,
    held_out_warning,
    observed_log_likelihood,
)
from stdiff.truth.gneiting import fit_gneiting, gneiting_covariance

COORDS = torch.tensor([[0.0, 0.0], [1.0, 0.3], [2.5, 1.0], [0.4, 2.0], [3.0, 3.0], [1.7, 2.2]], dtype=torch.float64)


def mvn_log_prob(x, cov, mean=0.0):
    return torch.distributions.MultivariateNormal(torch.full((len(cov),), mean, dtype=torch.float64), cov).log_prob(x)


def generating_gp(nugget=0.2):
    return KroneckerGP(Matern(3.0, 1.5), RBF(1.5), 8, (6,), 0.5, coordinates=COORDS, nugget=nugget)


def with_missing(x, fraction=0.1, seed=1):
    x = x.clone()
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < fraction] = math.nan
    return x


def test_a_nugget_keeps_density_score_samples_and_posterior_exact():
    gp = generating_gp()
    cov = gp.covariance()
    assert torch.allclose(cov.diagonal(), torch.full((48,), 1.2, dtype=torch.float64))
    x = gp.sample(4000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(gp.log_prob(x[:5]), mvn_log_prob(x[:5].reshape(5, -1), cov, 0.5))
    xc = (x.reshape(len(x), -1) - 0.5)
    assert (xc.T @ xc / len(x) - cov).abs().max() < 0.1  # samples carry the nugget
    a, s = 0.8, 0.6  # score of N(aμ, a²K + s²I) against the dense formula
    dense = -torch.linalg.solve(a**2 * cov + s**2 * torch.eye(48, dtype=torch.float64), (x[:3].reshape(3, -1) - a * 0.5).T).T
    assert torch.allclose(gp.score(x[:3], a, s).reshape(3, -1), dense)
    frames = torch.tensor([True] * 5 + [False] * 3)  # a frame mask with a nugget goes through the dense path
    mean, c = gp.conditional(x[:2], frames)
    o, m = frames.repeat_interleave(6), ~frames.repeat_interleave(6)
    expected = 0.5 + (cov[m][:, o] @ torch.linalg.solve(cov[o][:, o], (x[:2].reshape(2, -1)[:, o] - 0.5).T)).T
    assert torch.allclose(mean.reshape(2, -1)[:, m], expected) and c.shape == (2, 18, 18)  # one per case


def test_station_coordinates_give_sigma():
    gp = generating_gp(0.0)
    assert torch.allclose(gp.sigma, RBF(1.5)(COORDS))
    with pytest.raises(ValueError, match=r"coordinates must be \(S, k\) for S = space_shape\[0\]"):
        KroneckerGP(Matern(3.0, 1.5), RBF(1.5), 8, (5,), coordinates=COORDS)


def test_coincident_points_are_refused_unless_a_nugget_keeps_the_covariance_positive_definite():
    twice = COORDS.clone()
    twice[4] = twice[1] + 1e-12  # the same station, to round-off
    with pytest.raises(ValueError, match=r"2 of the 6 points share a place with another \(counting rows from 0: rows \[1, 4\]"):
        KroneckerGP(Matern(3.0, 1.5), RBF(1.5), 8, (6,), coordinates=twice)
    x = generating_gp().sample(200, torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"rows \[1, 4\].*or fit a nugget \(nugget=True\)"):
        fit_kernels(x, Matern(1.0, 1.5), RBF(1.0), (6,), coordinates=twice)
    # With a nugget the covariance is positive definite: the fit is an ordinary one (it "converged" at
    # -8.3e11 nats per window without one, against about -100 here)
    with pytest.raises(ValueError, match=r"give a nugget > 0 .* and jitter='auto'"):
        KroneckerGP(Matern(3.0, 1.5), RBF(1.5), 8, (6,), coordinates=twice)
    gp = KroneckerGP(Matern(3.0, 1.5), RBF(1.5), 8, (6,), coordinates=twice, nugget=0.2, jitter="auto")
    assert torch.isfinite(gp.log_prob(x[:3])).all()
    _, report = fit_kernels(x, Matern(1.0, 1.5), RBF(1.0), (6,), steps=50, nugget=True, coordinates=twice)
    assert -200 < report["log_likelihood_per_window"] < 0
    with pytest.raises(ValueError, match=r"row 2, column 0 is 1e\+200: beyond ±1e\+100"):
        KroneckerGP(Matern(3.0, 1.5), RBF(1.5), 8, (6,), coordinates=COORDS.index_fill(0, torch.tensor([2]), 1e200))
    distinct = COORDS * 1e90  # large but distinct: used
    assert torch.allclose(KroneckerGP(Matern(3.0, 1.5), RBF(1.5e90), 8, (6,), coordinates=distinct).sigma, RBF(1.5)(COORDS))


def test_observed_data_likelihood_and_expected_moments_are_those_of_the_marginal():
    gp = generating_gp()
    cov = gp.covariance()
    x = with_missing(gp.sample(20, torch.Generator().manual_seed(2), dtype=torch.float64).reshape(20, -1), 0.3)
    direct = torch.stack([mvn_log_prob(r[~r.isnan()], cov[~r.isnan()][:, ~r.isnan()], 0.5) for r in x]).mean()
    assert observed_log_likelihood(x, cov, 0.5).item() == pytest.approx(direct.item(), rel=1e-10)
    _, loglik = expected_moments(x, cov, 0.5)
    assert loglik.item() == pytest.approx(direct.item(), rel=1e-10)
    row = x[0]  # one window by hand: filled-in conditional mean plus conditional covariance on the missing block
    o, m = ~row.isnan(), row.isnan()
    filled = torch.zeros(48, dtype=torch.float64)
    filled[o] = row[o] - 0.5
    filled[m] = cov[m][:, o] @ torch.linalg.solve(cov[o][:, o], row[o] - 0.5)
    by_hand = torch.outer(filled, filled)
    by_hand[m.nonzero()[:, 0][:, None], m.nonzero()[:, 0]] += cov[m][:, m] - cov[m][:, o] @ torch.linalg.solve(cov[o][:, o], cov[o][:, m])
    assert torch.allclose(expected_moments(x[:1], cov, 0.5)[0], by_hand)


@pytest.mark.parametrize("missing", [0.0, 0.15], ids=["complete", "15% missing"])
def test_fit_kernels_recovers_the_generating_gp_with_a_nugget_and_coordinates(missing):
    gp = generating_gp()
    x = with_missing(gp.sample(400, torch.Generator().manual_seed(3), dtype=torch.float64), missing)
    fitted, report = fit_kernels(x, Matern(1.0, 1.5), RBF(1.0), (6,), nugget=True, coordinates=COORDS)
    assert report["converged"] and (report["em_iterations"] > 0) == (missing > 0)
    assert fitted.temporal.lengthscale == pytest.approx(3.0, rel=0.1)
    assert fitted.spatial.kernel.lengthscale == pytest.approx(1.5, rel=0.1)
    assert fitted.nugget == pytest.approx(0.2, rel=0.15) and fitted.coordinates is not None
    # a maximum of the observed-data likelihood: at least that of the generating parameters
    flat = x.reshape(len(x), -1)
    assert report["log_likelihood_per_window"] >= observed_log_likelihood(flat, gp.covariance(), 0.5).item() - 1e-3


def test_fit_kernels_says_when_it_stopped_short():
    x = generating_gp(0.0).sample(100, torch.Generator().manual_seed(4), dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = fit_kernels(x, Matern(0.5, 1.5), RBF(5.0), (6,), steps=2, coordinates=COORDS)
    assert not report["converged"] and report["iterations"] == 2
    assert any(issubclass(w.category, FitWarning) and "reference_steps" in str(w.message) for w in caught)
    _, full = fit_kernels(x, Matern(0.5, 1.5), RBF(5.0), (6,), coordinates=COORDS)
    assert full["converged"] and full["log_likelihood_per_window"] > report["log_likelihood_per_window"]


def test_a_held_out_likelihood_above_the_training_one_comes_with_its_reason():
    gp = generating_gp(0.0)
    x = gp.sample(120, torch.Generator().manual_seed(5), dtype=torch.float64)
    quiet = gp.mean + 0.5 * (gp.sample(40, torch.Generator().manual_seed(6), dtype=torch.float64) - gp.mean)  # var / 4
    _, report = fit_kernels(x, Matern(0.5, 1.5), RBF(5.0), (6,), held_out=quiet, coordinates=COORDS)
    assert report["held_out_log_likelihood_per_window"] > report["log_likelihood_per_window"]
    assert report["held_out_variance_ratio"] == pytest.approx(0.25, rel=0.2)
    note = held_out_note(report)
    assert "not a sign of leakage" in note and f"{report['held_out_variance_ratio']:.3g}× the training" in note
    _, same = fit_kernels(x, Matern(0.5, 1.5), RBF(5.0), (6,), held_out=x[:40], coordinates=COORDS)
    assert same["held_out_variance_ratio"] == pytest.approx(1.0, rel=0.3)
    if same["held_out_log_likelihood_per_window"] <= same["log_likelihood_per_window"]:
        assert held_out_note(same) is None


def test_flip_flop_with_missing_values_is_close_to_the_complete_fit():
    gp = KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.2), 6, (5,))
    x = gp.sample(600, torch.Generator().manual_seed(5), dtype=torch.float64)
    complete, _ = flip_flop(x, (5,))
    partial, report = flip_flop(with_missing(x, 0.2), (5,))
    assert report["em_iterations"] > 0 and report["converged"]
    assert (partial.covariance() - complete.covariance()).abs().max() < 0.1
    assert (partial.covariance() - gp.covariance()).abs().max() < 0.2


def test_gneiting_covariance_is_separable_at_beta_zero_and_fits_at_least_as_well_as_its_separable_case():
    times = torch.arange(5, dtype=torch.float64)
    c = gneiting_covariance(times, COORDS, 2.0, 0.5, 0.8, 0.0, 0.7, 0.6, 1.3)
    temporal = (0.5 * times[:, None].sub(times).abs() ** 1.6 + 1) ** -1.3
    spatial = torch.exp(-0.7 * torch.cdist(COORDS, COORDS) ** 1.2)
    assert torch.allclose(c, 2.0 * torch.kron(temporal, spatial))
    inter = gneiting_covariance(times, COORDS, 1.0, 2.0, 1.0, 1.0, 0.5, 1.0, 0.5)
    assert torch.linalg.eigvalsh(inter).min() > 0  # full interaction is still a covariance
    truth = torch.distributions.MultivariateNormal(torch.zeros(30, dtype=torch.float64), inter + 0.05 * torch.eye(30, dtype=torch.float64))
    torch.manual_seed(6)
    x = truth.sample((500,)).reshape(500, 5, 6)
    full = fit_gneiting(x, COORDS)
    separable = fit_gneiting(x, COORDS, separable=True)
    assert full["converged"] and separable["beta"] == 0.0 and full["beta"] > 0.5
    # 0.05 nats a window over 500 windows: a likelihood-ratio statistic of 50 for one parameter
    assert full["log_likelihood_per_window"] > separable["log_likelihood_per_window"] + 0.05


def test_the_reference_report_is_one_item_a_line():
    from stdiff.truth.fitting import format_report

    text = format_report({"method": "kernels", "nugget": 0.0123456, "windows": 40, "scales": [0.5, 1.234567]})
    lines = text.splitlines()
    assert lines[0] == "fitted Gaussian reference (not the data's true distribution):" and len(lines) == 5
    assert lines[2] == "  nugget   0.01235" and lines[4] == "  scales   [0.5, 1.235]" and max(map(len, lines)) < 80


def test_a_reference_much_worse_held_out_than_in_training_warns():
    """Held-out windows of the same law: no warning. Windows of the same variance whose values are
    shuffled in time (the fitted correlations no longer hold): the gap per value is far beyond
    what their variance explains, and the warning says so with both numbers."""
    gp = generating_gp(0.0)
    x = gp.sample(120, torch.Generator().manual_seed(5), dtype=torch.float64)
    fresh = gp.sample(40, torch.Generator().manual_seed(6), dtype=torch.float64)
    _, report = fit_kernels(x, Matern(0.5, 1.5), RBF(5.0), (6,), held_out=fresh, coordinates=COORDS)
    assert held_out_warning(report) is None and abs(report["held_out_gap_per_value"]) < 0.1
    shuffled = fresh[:, torch.randperm(fresh.shape[1], generator=torch.Generator().manual_seed(7))]
    _, report = fit_kernels(x, Matern(0.5, 1.5), RBF(5.0), (6,), held_out=shuffled, coordinates=COORDS)
    message = held_out_warning(report)
    assert report["held_out_variance_ratio"] == pytest.approx(1.0, rel=0.2)
    assert message is not None and f"a gap of {report['held_out_gap_per_value']:.3g}" in message
    assert "held-out log-likelihood" in message
