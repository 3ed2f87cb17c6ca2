"""Noise schedules: closed forms, derived SDE coefficients, inverse log-SNR, validation, and a
user-defined schedule selected from YAML."""

import math

import pytest
import torch
from conftest import FEW_SAMPLES, QUICKSTART, stdiff_subclasses

from stdiff.cli import StdiffCLI
from stdiff.schedules import (
    SCHEDULES,
    Cosine,
    DiscreteBeta,
    LinearBeta,
    NoiseSchedule,
    OrnsteinUhlenbeck,
    SigmoidLogSNR,
    VPSchedule,
)

ALL = [cls() for cls in SCHEDULES.values()]
IDS = list(SCHEDULES)


def grid(s, n=401):
    return torch.linspace(s.t_min, s.t_max, n, dtype=torch.float64)


def test_registry_is_the_set_of_concrete_subclasses():
    assert set(SCHEDULES.values()) == stdiff_subclasses(NoiseSchedule)


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_variance_preserving_and_log_snr_decreasing(s):
    t = grid(s)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-14)
    lam = s.log_snr(t)
    assert (lam.diff() < 0).all()
    torch.testing.assert_close(lam, torch.log(s.alpha(t) ** 2 / s.sigma(t) ** 2), rtol=1e-9, atol=1e-9)
    s.validate()


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_sde_coefficients_match_finite_differences(s):
    t = grid(s, 50)[1:-1]
    h = 1e-6
    d_log_alpha = (s.alpha(t + h).log() - s.alpha(t - h).log()) / (2 * h)
    torch.testing.assert_close(s.drift(t), d_log_alpha, rtol=1e-5, atol=1e-7)
    d_sigma2 = (s.sigma(t + h) ** 2 - s.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(s.diffusion_sq(t), d_sigma2 - 2 * s.drift(t) * s.sigma(t) ** 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_time_at_log_snr_inverts_log_snr(s):
    t = grid(s)
    torch.testing.assert_close(s.time_at_log_snr(s.log_snr(t)), t, rtol=1e-9, atol=1e-12)
    # the generic bisection agrees with any closed form
    torch.testing.assert_close(NoiseSchedule.time_at_log_snr(s, s.log_snr(t)), t, rtol=1e-9, atol=1e-12)


def test_documented_endpoints():
    ou = OrnsteinUhlenbeck()
    assert ou.alpha(torch.tensor(10.0, dtype=torch.float64)).item() == pytest.approx(math.exp(-5))
    assert ou.sigma(torch.tensor(1e-3, dtype=torch.float64)).item() == pytest.approx(math.sqrt(1 - math.exp(-1e-3)))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    lb = LinearBeta()
    torch.testing.assert_close(
        lb.alpha(t), torch.tensor([1.0, math.exp(-0.5 * (0.1 + 0.5 * 19.9))], dtype=torch.float64)
    )
    assert Cosine().alpha(torch.tensor(0.0, dtype=torch.float64)).item() == pytest.approx(1.0)
    sg = SigmoidLogSNR(logsnr_max=8.0, logsnr_min=-12.0, shift=-1.0)
    torch.testing.assert_close(sg.log_snr(t), torch.tensor([7.0, -13.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: OrnsteinUhlenbeck(t_min=2.0, t_max=1.0), r"OrnsteinUhlenbeck.t_max must be > t_min=2.0, got 1.0"),
        (lambda: OrnsteinUhlenbeck(t_min=1.0, t_max=1.0), r"t_max must be > t_min"),
        (lambda: LinearBeta(t_min=0.0), r"LinearBeta.t_min must be a finite number > 0, got 0.0"),
        (lambda: LinearBeta(beta_min=5.0, beta_max=1.0), r"LinearBeta.beta_max must be >= beta_min=5.0, got 1.0"),
        (lambda: Cosine(t_max=1.0), r"Cosine.t_max must be < 1"),
        (lambda: SigmoidLogSNR(logsnr_min=5.0, logsnr_max=1.0), r"SigmoidLogSNR.logsnr_min must be < logsnr_max"),
    ],
)
def test_bad_schedule_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


class Bumpy(VPSchedule):
    """log α that rises in the middle: log-SNR not monotone."""

    def __init__(self, t_min: float = 0.01, t_max: float = 1.0) -> None:
        super().__init__(t_min, t_max)

    def log_alpha(self, t):
        return -t + 0.8 * torch.sin(6 * t) * t


class Exploding(VPSchedule):
    def __init__(self, t_min: float = 0.01, t_max: float = 2.0) -> None:
        super().__init__(t_min, t_max)

    def log_alpha(self, t):
        return -torch.tan(t)  # passes through ±inf at π/2


def test_validate_rejects_non_monotone_and_non_finite_schedules():
    with pytest.raises(ValueError, match=r"Bumpy: log-SNR must decrease strictly .* at t=0\.\d+"):
        Bumpy().validate()
    with pytest.raises(ValueError, match=r"Exploding.(alpha|sigma)\(t\) must be finite and > 0 .* at t="):
        Exploding().validate()


class Quadratic(VPSchedule):
    """A user's schedule, defined outside stdiff: log α(t) = −t²."""

    def __init__(self, t_min: float = 1e-2, t_max: float = 3.0) -> None:
        super().__init__(t_min, t_max)

    def log_alpha(self, t):
        return -(t**2)


def test_user_schedule_selected_by_class_path_trains(tmp_path):
    cli = StdiffCLI(
        args=[
            "fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false",
            "--data.init_args.num_val=16", *FEW_SAMPLES,
            "--model.denoiser.init_args.schedule=test_schedules.Quadratic",
            "--model.denoiser.init_args.schedule.init_args.t_max=2.5",
        ]
    )  # fmt: skip
    assert type(cli.model.denoiser.schedule).__name__ == "Quadratic" and cli.model.denoiser.schedule.t_max == 2.5
    assert cli.trainer.global_step == 3 and torch.isfinite(cli.trainer.callback_metrics["val/loss"])


@pytest.mark.parametrize("sampler", ["Heun", "EulerMaruyama"])
def test_a_user_schedule_without_closed_form_derivatives_samples_in_predict(tmp_path, sampler):
    """Drift and diffusion come from autograd, also under Lightning's inference mode in predict."""
    from stdiff.cli import main

    main(["predict", "--config", str(QUICKSTART), "--model.denoiser=ExactDenoiser", f"--model.sampler={sampler}",
          "--model.denoiser.init_args.schedule=test_schedules.Quadratic", "--model.sampler.init_args.steps=200",
          "--data.init_args.num_predict=64", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    (path,) = tmp_path.glob("lightning_logs/exact_predict_*/samples.npy")
    x = torch.from_numpy(__import__("numpy").load(path))
    assert torch.isfinite(x).all() and 0.7 < x.std() < 1.3


def test_discrete_beta_is_ddpm_exactly_and_linear_beta_is_its_continuous_limit_to_7_percent():
    ddpm = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)  # Ho et al. 2020
    s = DiscreteBeta()
    k = torch.arange(1, 1001, dtype=torch.float64)
    torch.testing.assert_close(s.alpha(k / 1000) ** 2, ddpm, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.alphas_cumprod, ddpm, rtol=1e-12, atol=0)
    assert s.t_min == pytest.approx(1e-3) and s.t_max == 1.0
    gap = LinearBeta().alpha(torch.tensor(1.0, dtype=torch.float64)).item() ** 2 / ddpm[-1].item() - 1
    assert gap == pytest.approx(0.0701, abs=5e-4)  # the figure LinearBeta's docstring gives
    half = (s.alpha(torch.tensor(0.5005, dtype=torch.float64)) ** 2 / ddpm[499:501].mean()).item()
    assert half == pytest.approx(1.0, abs=1e-4)  # between steps: log ᾱ linear, ᾱ in between its neighbours


def test_discrete_beta_reads_diffusers_configs_and_refuses_what_it_cannot_represent(tmp_path):
    import json

    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "trained_betas": None}  # fmt: skip
    s = DiscreteBeta.from_diffusers(config)
    expected = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
    torch.testing.assert_close(s.alphas_cumprod, expected, rtol=1e-12, atol=0)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    assert torch.equal(DiscreteBeta.from_diffusers(tmp_path).alphas_cumprod, s.alphas_cumprod)  # the folder
    cosine = DiscreteBeta.from_diffusers({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 50})
    cosine.validate()
    last = (cosine.alphas_cumprod[-1] / cosine.alphas_cumprod[-2]).item()
    assert last == pytest.approx(1 - 0.999)  # the last β is capped at 0.999
    given = DiscreteBeta(num_train_timesteps=3, trained_betas=[0.1, 0.2, 0.3])
    torch.testing.assert_close(given.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))
    for bad, match in [({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True makes ᾱ_N = 0"),
                       ({"beta_schedule": "quadratic"}, r"beta_schedule must be one of \('linear'"),
                       ({"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}, "trained_betas has 2 values"),
                       ({"num_train_timesteps": 2, "trained_betas": [0.1, 1.0]}, "every β must lie in .0, 1.; β_2 = 1.0")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DiscreteBeta.from_diffusers(bad)
    with pytest.raises(FileNotFoundError, match="no scheduler config at"):
        DiscreteBeta.from_diffusers(tmp_path / "nope.json")
    # damaged files are named, with what is wrong (not a bare JSONDecodeError / UnicodeDecodeError)
    (tmp_path / "truncated.json").write_text(json.dumps(config)[:40])
    with pytest.raises(ValueError, match=r"truncated.json is not valid JSON \(line 1, column \d+: .*truncated or damaged"):
        DiscreteBeta.from_diffusers(tmp_path / "truncated.json")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="binary.json is not a text file"):
        DiscreteBeta.from_diffusers(tmp_path / "binary.json")


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_discrete_beta_equals_diffusers_itself(beta_schedule):
    diffusers = pytest.importorskip("diffusers")  # where installed (not a dependency)
    theirs = diffusers.DDPMScheduler(beta_schedule=beta_schedule, beta_start=0.0001, beta_end=0.02)
    ours = DiscreteBeta.from_diffusers(theirs)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=2e-5, atol=1e-9)  # theirs: float32
