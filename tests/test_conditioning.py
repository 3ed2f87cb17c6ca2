"""Conditional generation against the exact GP posterior: masks, the conditioning methods with
the exact model (their bias, measured), the conditional DiT, and predict with observations."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import QUICKSTART

from stdiff.cli import main
from stdiff.conditioning import Forecast, Imputation, Interpolation, MaskMixture, Replacement, Trained, check_mask
from stdiff.diffusion import Denoiser, ExactDenoiser, denoising_loss
from stdiff.kernels import RBF, PoweredExponential
from stdiff.metrics import conditional_report, crps, energy_score, posterior_samples
from stdiff.nn import ConditionalDiT
from stdiff.sampling import EulerMaruyama
from stdiff.schedules import OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP

SHAPE = (12, 3)


def small_gp():
    return KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), frames=SHAPE[0], space_shape=SHAPE[1:])


def test_tasks_observe_what_they_say():
    g = torch.Generator().manual_seed(0)
    assert Forecast(4).observed(SHAPE)[:4].all() and not Forecast(4).observed(SHAPE)[4:].any()
    assert Interpolation(3).observed(SHAPE)[::3].all() and not Interpolation(3).observed(SHAPE)[1::3].any()
    masks = Imputation(0.3).draw(400, SHAPE, g)
    assert abs((~masks).float().mean().item() - 0.3) < 0.02
    runs = Imputation(0.5, block=4).draw(50, SHAPE, g)
    assert all(torch.equal(m[0:4], m[0:1].expand(4, 3)) for m in runs)  # whole blocks of frames
    mixed = MaskMixture([Forecast(6), Interpolation(2)]).draw(100, SHAPE, g)
    assert {tuple(m[:, 0].tolist()) for m in mixed} == {(True,) * 6 + (False,) * 6, (True, False) * 6}


@pytest.mark.parametrize(
    "mask,message",
    [
        (torch.ones(SHAPE, dtype=torch.bool), "every coordinate is observed"),
        (torch.zeros(SHAPE, dtype=torch.bool), "nothing is observed"),
        (torch.ones(5, 3, dtype=torch.bool), r"must have the sample shape \(12, 3\)"),
        (torch.full(SHAPE, 2), "must be boolean"),
    ],
    ids=["all observed", "none observed", "wrong shape", "not boolean"],
)
def test_bad_masks_are_refused_with_the_problem(mask, message):
    with pytest.raises(ValueError, match=message):
        check_mask(mask, SHAPE)
    with pytest.raises(ValueError, match="must be below the number of frames"):
        Forecast(12).observed(SHAPE)


def sample_cases(gp, method, mask, n=16, k=64, steps=60):
    x = gp.sample(n, torch.Generator().manual_seed(1))
    observed = x.repeat_interleave(k, 0)
    model = ExactDenoiser.from_gp(gp, OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0))
    s = method.sample(EulerMaruyama(steps), model, observed, mask.expand_as(observed), torch.Generator().manual_seed(2))
    assert torch.equal(s[mask.expand_as(s)], observed[mask.expand_as(s)])  # the observations kept exactly
    return x, s.reshape(n, k, *SHAPE)


def test_exact_posterior_samples_sit_at_the_floor_of_every_statistic():
    gp, mask = small_gp(), Interpolation(3).observed(SHAPE)
    x = gp.sample(40, torch.Generator().manual_seed(3))
    report = conditional_report(gp, x, mask, posterior_samples(gp, x, mask, 64, torch.Generator().manual_seed(4)))
    assert report["crps_ratio"] == pytest.approx(1.0, abs=0.03)
    # 64 draws' interpolated 5 % and 95 % quantiles hold (59.85 − 3.15)/65 = 0.872 of a new draw, not 0.9
    assert abs(report["kl_excess"]) < 0.5 * report["kl_exact"] and abs(report["coverage90"] - 0.872) < 0.03


def test_crps_from_the_sorted_ensemble_equals_all_pairs_and_each_estimator_has_its_expectation():
    g = torch.Generator().manual_seed(0)
    samples, target = torch.randn(300, 7, generator=g, dtype=torch.float64), torch.randn(300, generator=g, dtype=torch.float64)
    pairs = (samples[:, :, None] - samples[:, None, :]).abs().sum((1, 2))  # the O(k²) definition
    near = (samples - target[:, None]).abs().mean(1)
    assert torch.allclose(crps(samples, target), near - pairs / (2 * 7**2), atol=1e-12)
    assert torch.allclose(crps(samples, target, "fair"), near - pairs / (2 * 7 * 6), atol=1e-12)
    # N(0, 1) ensembles of k = 4 against y: the closed-form CRPS z(2Φ(z) − 1) + 2φ(z) − 1/√π is the
    # fair estimator's expectation; the biased one sits 1/(k√π) above it.
    y = torch.linspace(-2, 2, 9, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    closed = y * (2 * normal.cdf(y) - 1) + 2 * normal.log_prob(y).exp() - 1 / math.sqrt(math.pi)
    ens = torch.randn(9, 40000, 4, generator=g, dtype=torch.float64)
    fair = crps(ens, y[:, None].expand(9, 40000), "fair").mean(1)
    biased = crps(ens, y[:, None].expand(9, 40000)).mean(1)
    assert torch.allclose(fair, closed, atol=0.01)
    assert torch.allclose(biased, closed + 1 / (4 * math.sqrt(math.pi)), atol=0.01)
    assert (biased - fair).min() > 0.1
    s, y1 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    assert energy_score(s[:, :1], y1[:1]).item() == pytest.approx(crps(s[:, 0][None], y1[:1]).item())  # d = 1
    with pytest.raises(ValueError, match=r"estimator must be one of \('biased', 'fair'\), got 'unbiased'"):
        crps(samples, target, "unbiased")
    with pytest.raises(ValueError, match="fair estimator needs at least 2 samples"):
        crps(samples[:, :1], target, "fair")


def test_crps_and_energy_score_equal_properscoring_and_scoringrules():
    ps, sr = pytest.importorskip("properscoring"), pytest.importorskip("scoringrules")  # where installed
    rng = np.random.default_rng(0)
    f, y = rng.normal(size=(50, 9)), rng.normal(size=50)
    ours, fair = crps(torch.tensor(f), torch.tensor(y)).numpy(), crps(torch.tensor(f), torch.tensor(y), "fair").numpy()
    np.testing.assert_allclose(ours, ps.crps_ensemble(y, f), rtol=0, atol=1e-14)
    np.testing.assert_allclose(ours, sr.crps_ensemble(y, f), rtol=0, atol=1e-14)  # its default estimator
    np.testing.assert_allclose(fair, sr.crps_ensemble(y, f, estimator="fair"), rtol=0, atol=1e-14)
    s, obs = rng.normal(size=(9, 4)), rng.normal(size=4)
    for estimator in ("nrg", "fair"):
        ours = energy_score(torch.tensor(s), torch.tensor(obs), "biased" if estimator == "nrg" else "fair").item()
        assert ours == pytest.approx(float(sr.energy_score(obs, s, estimator=estimator)), abs=1e-14)


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "with NaN"])
def test_a_frame_mask_scores_like_the_coordinate_mask_it_stands_for(missing):
    gp, frames = small_gp(), Forecast(6).observed(SHAPE)[:, 0]  # (T,)
    x = gp.sample(6, torch.Generator().manual_seed(3))
    if missing:
        x[1, 2, 0] = x[4, 9, 2] = float("nan")
    full = frames[:, None].expand(SHAPE)
    a = posterior_samples(gp, x, frames, 8, torch.Generator().manual_seed(4))
    b = posterior_samples(gp, x, full, 8, torch.Generator().manual_seed(4))
    assert torch.allclose(a, b, atol=1e-10)
    ra, rb = conditional_report(gp, x, frames, a, estimator="fair"), conditional_report(gp, x, full, a, estimator="fair")
    assert ra["estimator"] == "fair" and ra["scored"] == rb["scored"] == 6 * 6 * 3 - int(missing)
    assert ra["crps"] == pytest.approx(rb["crps"]) and ra["crps_exact"] == pytest.approx(rb["crps_exact"])


def test_spread_measures_interval_width_against_the_posterior_at_any_sample_count():
    gp, mask = small_gp(), Forecast(6).observed(SHAPE)
    x = gp.sample(40, torch.Generator().manual_seed(3))
    exact = posterior_samples(gp, x, mask, 8, torch.Generator().manual_seed(4))
    mean = exact.mean(1, keepdim=True)
    narrow = mean + 0.8 * (exact - mean)  # every case's samples pulled 20 % towards their own mean
    a, b = conditional_report(gp, x, mask, exact), conditional_report(gp, x, mask, narrow)
    assert a["spread"] == pytest.approx(1.0, abs=0.05) and a["spread_exact"] == pytest.approx(1.0, abs=0.05)
    assert b["spread"] == pytest.approx(0.8 * a["spread"], rel=1e-9)
    assert len(b["spread_by_frame"]) == len(b["frames"]) == SHAPE[0] - 6


def test_replacement_with_the_exact_model_is_close_but_biased_and_resampling_reduces_the_bias():
    gp, mask = small_gp(), Forecast(6).observed(SHAPE)
    x, plain = sample_cases(gp, Replacement(1), mask)
    _, resampled = sample_cases(gp, Replacement(4), mask)
    a, b = conditional_report(gp, x, mask, plain), conditional_report(gp, x, mask, resampled)
    assert 1.0 < a["crps_ratio"] < 1.15 and abs(a["coverage90"] - 0.9) < 0.08
    assert b["kl_excess"] < a["kl_excess"]  # RePaint's resampling moves towards the posterior


def test_conditional_dit_loss_counts_only_missing_entries():
    model = Denoiser(SHAPE, lambda s: ConditionalDiT(s, width=16, depth=1, heads=2), OrnsteinUhlenbeck())
    with torch.no_grad():  # away from the zero-initialised output layer, so that inputs matter
        for p in model.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    x0 = small_gp().sample(4, torch.Generator().manual_seed(0))
    mask = Forecast(6).draw(4, SHAPE)
    t, noise = torch.full((4,), 0.5), torch.randn(x0.shape)
    loss = denoising_loss(model, x0, t, noise, where=~mask, observed=x0 * mask, mask=mask)
    x_t = x0 * model.schedule.alpha(t)[:, None, None] + noise * model.schedule.sigma(t)[:, None, None]
    eps = model(x_t, t, observed=x0 * mask, mask=mask)
    torch.testing.assert_close(loss, ((eps - noise) ** 2)[:, 6:].flatten(1).mean(1))
    # x_t at observed entries is hidden: in sampling it drifts off the training distribution
    # (at the missing entries, the only ones the loss and the samples use: with v-prediction the
    # observed entries' ε̂ carries x_t there through the skip σ x_t / (α² + σ²))
    drifted = torch.where(mask, 25 * torch.randn(x_t.shape), x_t)
    torch.testing.assert_close(model(drifted, t, observed=x0 * mask, mask=mask)[:, 6:], eps[:, 6:])
    with pytest.raises(ValueError, match="DiT takes no conditioning inputs"):
        Denoiser(SHAPE, lambda s: __import__("stdiff").nn.DiT(s, width=16, depth=1))(x_t, t, mask=mask)
    assert isinstance(Trained(), Trained)


def test_predict_with_observations_writes_conditional_samples(tmp_path):
    observed = np.random.default_rng(0).standard_normal((2, 32, 8)).astype(np.float32)
    observed[:, 20:] = np.nan  # forecast the last 12 frames
    np.save(tmp_path / "obs.npy", observed)
    main(["predict", "--config", str(QUICKSTART), "--model.denoiser=ExactDenoiser",
          "--model.conditioning=ReconstructionGuidance", f"--data.init_args.observed={tmp_path / 'obs.npy'}",
          "--data.init_args.num_predict=5", "--model.sampler.init_args.steps=4", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "exact_predict_0"
    samples = np.load(run / "samples.npy")
    assert samples.shape == (2, 5, 32, 8) and np.isfinite(samples).all()
    np.testing.assert_array_equal(samples[:, :, :20], np.broadcast_to(observed[:, None, :20], (2, 5, 20, 8)))
    meta = json.loads((run / "samples.json").read_text())
    assert meta["conditioning"].startswith("ReconstructionGuidance") and meta["observed"].endswith("obs.npy")


def test_mask_and_conditioning_registries_list_every_implementation():
    from conftest import stdiff_subclasses

    from stdiff.conditioning import CONDITIONINGS, MASKS, Conditioning, Mask

    assert set(MASKS.values()) == stdiff_subclasses(Mask)
    assert set(CONDITIONINGS.values()) == stdiff_subclasses(Conditioning)


def test_replacement_with_a_multistep_sampler_resamples_without_corrupting_its_history():
    # Replacement steps the sampler itself, twice per time with resample=2: DPM-Solver's history
    # must hold one evaluation per time (a repeated time replaces the last). Replacement's own bias
    # (an ODE sampler misses the posterior mean by up to ~0.7 here) is the same for DDIM, the
    # one-step counterpart; a corrupted history would make it worse.
    from stdiff.conditioning import Replacement
    from stdiff.sampling import DDIM, DPMSolver

    gp = small_gp()
    model = ExactDenoiser.from_gp(gp, OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0))
    mask = Forecast(6).observed(SHAPE)
    x = gp.sample(2, torch.Generator().manual_seed(1)).repeat_interleave(256, 0)
    mean, _ = gp.conditional(x[::256], mask)  # the exact posterior mean
    errors = {}
    for sampler in (DPMSolver(steps=30), DDIM(steps=30)):
        s = Replacement(resample=2).sample(sampler, model, x, mask.expand_as(x), torch.Generator().manual_seed(2))
        assert torch.isfinite(s).all() and torch.equal(s[mask.expand_as(s)], x[mask.expand_as(s)])
        errors[type(sampler).__name__] = (s.reshape(2, 256, *SHAPE).mean(1) - mean)[:, 6:].abs().max().item()
        if isinstance(sampler, DPMSolver):
            lams = [lam for lam, _ in sampler._history]
            assert sampler._taken == 30 and len(lams) == len(set(lams)) == 3
    assert errors["DPMSolver"] <= errors["DDIM"], errors


def test_a_bad_observation_is_named_by_its_index_in_the_file(tmp_path):
    """A one-case file ``(T, *space)`` has no case axis, so neither has the index; ``(n, T, *space)`` has one."""
    from stdiff.data import GPDataModule
    from stdiff.data.files import ArrayFileError
    from stdiff.kernels import RBF, Matern

    def data(name):
        return GPDataModule(Matern(4.0, 1.5), RBF(1.0), frames=32, space_shape=(8,), observed=str(tmp_path / name))

    one = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    one[20:] = np.nan
    one[4, 6] = -np.inf
    np.save(tmp_path / "one.npy", one)
    with pytest.raises(ArrayFileError, match=r"one.npy: entry \[4, 6\] is infinite"):
        data("one.npy").check_observations()
    two = np.stack([np.where(np.isinf(one), 0.0, one)] * 2).astype(np.float32)
    two[1, 2, 3] = 1e25
    np.save(tmp_path / "two.npy", two)
    with pytest.raises(ArrayFileError, match=r"two.npy: entry \[1, 2, 3\] is 1e\+25: beyond 1.8e\+19"):
        data("two.npy").check_observations()


def test_observed_entries_are_kept_wherever_they_are_and_the_task_applies_only_to_a_file_without_nan(tmp_path, caplog):
    """[S] 3: "NaN in obs.npy = to fill in", with configs/conditional/trained.yaml's Forecast(context=16) set."""
    rng = np.random.default_rng(0)
    scattered = rng.standard_normal((2, 32, 8)).astype(np.float32)
    scattered[rng.random((2, 32, 8)) < 0.3] = np.nan  # missing everywhere, observed in frames >= 16 too
    np.save(tmp_path / "obs.npy", scattered)
    task = ["--data.init_args.task=Forecast", "--data.init_args.task.init_args.context=16"]
    main(["predict", "--config", str(QUICKSTART), *task, "--model.denoiser=ExactDenoiser",
          "--model.conditioning=ReconstructionGuidance", f"--data.init_args.observed={tmp_path / 'obs.npy'}",
          "--data.init_args.num_predict=3", "--model.sampler.init_args.steps=4", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    samples = np.load(tmp_path / "lightning_logs" / "exact_predict_0" / "samples.npy")
    kept = ~np.isnan(scattered)
    assert kept[:, 16:].any() and np.isfinite(samples).all()
    np.testing.assert_array_equal(samples[:, 0][kept], scattered[kept])  # frames >= 16 included
    assert "is not applied" in caplog.text
    # a file without NaN: the task chooses what to sample (a forecast of whole sequences), and says so
    from stdiff.conditioning import Forecast
    from stdiff.data import GPDataModule
    from stdiff.kernels import RBF, PoweredExponential

    np.save(tmp_path / "whole.npy", np.nan_to_num(scattered))
    data = GPDataModule(PoweredExponential(4.0, 1.0), RBF(1.0), frames=32, observed=str(tmp_path / "whole.npy"),
                        task=Forecast(16))  # fmt: skip
    _, mask = data.check_observations()
    assert mask[:, :16].all() and not mask[:, 16:].any()
