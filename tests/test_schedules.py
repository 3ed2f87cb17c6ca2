"""Noise schedules: closed forms, derived SDE coefficients, inverse log-SNR, validation, and a
user-defined schedule selected from YAML."""

import math

import pytest
import torch
from conftest import QUICKSTART, stdiff_subclasses

from stdiff.cli import StdiffCLI
from stdiff.schedules import SCHEDULES, Cosine, LinearBeta, NoiseSchedule, OrnsteinUhlenbeck, SigmoidLogSNR, VPSchedule

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
            "--data.init_args.num_val=16", "--model.denoiser.init_args.schedule=test_schedules.Quadratic",
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
    (path,) = tmp_path.glob("lightning_logs/version_*/samples.npy")
    x = torch.from_numpy(__import__("numpy").load(path))
    assert torch.isfinite(x).all() and 0.7 < x.std() < 1.3
