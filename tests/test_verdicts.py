"""The verdict never blames training for what the sampler or the data cannot give: it is judged
against the exact model through the same sampler, steps and t_min; its noise is that of a
difference of two KLs, on both sides; test draws its own samples; and a class named on the
command line says which of the old class's values it kept."""

import json
import math

import pytest
import torch
from conftest import QUICKSTART

from stdiff.callbacks.verdicts import verdict, verdict_level
from stdiff.cli import ROOTS, main
from stdiff.config_check import check_config
from stdiff.kernels import RBF, GeneralizedCauchy, PoweredExponential
from stdiff.metrics import early_stopping_kl, early_stopping_t_min, gaussian_fit_kl
from stdiff.metrics.distances import excess_noise, kl_noise
from stdiff.schedules import OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP

EXACT = ["--model.denoiser=ExactDenoiser", "--data.init_args.num_val=32", "--diagnostics.num_samples=600",
         "--model.sampler.init_args.steps=10", "--trainer.enable_progress_bar=false", "--diagnostics.figures=false"]  # fmt: skip
CAUCHY = ["--data.init_args.temporal=GeneralizedCauchy"]  # keeps the quickstart's lengthscale 4: Γ nearly singular


def test_the_noise_of_the_excess_is_that_of_a_difference_of_two_kls():
    """Oracle: the excess of exact samples over other exact samples spreads like √2 × one KL's noise
    (150 independent pairs: the sample sd within ~6 % of the truth)."""
    gp = KroneckerGP(PoweredExponential(4.0, 1.0), RBF(1.0), frames=4, space_shape=(4,))
    cov, n = gp.covariance(), 500
    kls = torch.tensor([gaussian_fit_kl(gp.sample(n, torch.Generator().manual_seed(s), dtype=torch.float64), gp.mean,
                                        cov) for s in range(300)])  # fmt: skip
    excess = kls[0::2] - kls[1::2]
    assert excess.std().item() == pytest.approx(excess_noise(16, n), rel=0.15)
    assert excess_noise(16, n) == pytest.approx(math.sqrt(2) * kl_noise(16, n))
    assert excess.std().item() > 1.2 * kl_noise(16, n)  # one KL's noise would call too much a difference


def test_the_verdicts_rule_is_two_sided():
    d, n = 256, 2000  # the quickstart: the excess's noise 0.095
    assert excess_noise(d, n) == pytest.approx(0.0953, abs=1e-3)
    assert verdict_level(0.18, d, n) == verdict_level(-0.18, d, n) == "indistinguishable"
    low = verdict(-0.208, d, n)  # 2.2 × the excess's noise below exact samples: not "within 2 ×"
    assert verdict_level(-0.208, d, n) == "close" and "below exact samples'" in low and "within" not in low


def test_the_verdict_advises_training_only_when_the_exact_model_through_the_sampler_is_close():
    d, n = 256, 2000
    floor = {"exact_model_kl_excess": 2311.0, "early_stopping_kl": 2320.6, "t_min_for_early_stopping": 9.2e-7,
             "smallest_eigenvalue": 1.3e-6, "condition_number": 2.8e7}  # fmt: skip
    for model_excess, exact in ((1880.0, False), (2311.0, True), (5000.0, False)):
        said = verdict(model_excess, d, n, floor, exact)
        assert said.startswith("NOT at the truth, and not for want of training") and "train" not in said.split(
            "training")[1], said  # fmt: skip
        assert "t_min" in said and "9.2e-07" in said and "better-conditioned kernel" in said
    steps = verdict(5.0, d, n, {"exact_model_kl_excess": 4.0, "early_stopping_kl": 0.05})
    assert "model.sampler.init_args.steps" in steps and "t_min (to" not in steps and "+1 nats" in steps
    trained = verdict(5.0, d, n, {"exact_model_kl_excess": 0.05, "early_stopping_kl": 0.05})
    assert trained.startswith("NOT at the truth yet") and "train longer" in trained and "4.95" in trained


def test_early_stopping_t_min_is_where_the_bias_meets_its_target():
    gp = KroneckerGP(GeneralizedCauchy(4.0), RBF(1.0), frames=32, space_shape=(8,))
    schedule = OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0)
    t0 = early_stopping_t_min(gp, schedule, 0.256)
    at = [early_stopping_kl(gp, schedule.alpha(torch.tensor(t, dtype=torch.float64)).item(),
                            schedule.sigma(torch.tensor(t, dtype=torch.float64)).item()) for t in (t0, 1.01 * t0)]  # fmt: skip
    assert at[0] <= 0.256 < at[1] and t0 < 1e-5


def test_the_exact_model_on_a_nearly_singular_kernel_is_not_told_to_train(tmp_path, capsys):
    """README task 1's GeneralizedCauchy keeps lengthscale 4 (said on stderr): Γ ⊗ Σ's condition number
    is 2.8e7 and stopping at t_min = 1e-3 alone costs 2320 nats (528 after the ODE step to σ = 0, 43
    after the root endpoint), for the exact model too. UniPC's plan fits its endpoint to the gain's
    spectrum and ends far below both, close to the truth; DPM-Solver++, which stops at t_min, is told
    what to change, and never to train."""
    main(["validate", "--config", str(QUICKSTART), *CAUCHY, *EXACT, f"--trainer.default_root_dir={tmp_path}"])
    out, err = capsys.readouterr()
    assert "GeneralizedCauchy keeps lengthscale=4.0 (its default: 1.0) from the PoweredExponential" in err
    said = out[out.index("verdict:") :]
    assert "train longer" not in said and "NOT at the truth" not in said, said
    m = json.loads((tmp_path / "lightning_logs" / "exact_validate_0" / "metrics.json").read_text())["metrics"]
    assert m["val/samples/exact_model_kl_excess"] == m["val/samples/kl_excess"]
    assert m["val/samples/early_stopping_kl_root"] == pytest.approx(43.0, rel=1e-3)
    assert m["val/samples/early_stopping_kl_ode"] == pytest.approx(528.2, rel=1e-3)
    assert m["val/samples/early_stopping_kl"] < m["val/samples/early_stopping_kl_root"] / 10  # the fitted endpoint
    assert "endpoint=" not in said  # it has a better one already
    main(["validate", "--config", str(QUICKSTART), *CAUCHY, *EXACT, "--model.sampler=DPMSolver",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    said = capsys.readouterr().out
    said = said[said.index("verdict:") :]
    assert "not for want of training (this is the exact model)" in said and "train longer" not in said
    assert "Stopping at t_min alone costs 2.32e+03" in said and "endpoint=root: 43" in " ".join(said.split())


def test_test_draws_its_own_samples_apart_from_validations(tmp_path, capsys):
    for stage in ("validate", "test"):
        main([stage, "--config", str(QUICKSTART), *EXACT, "--likelihood.num_samples=4", "--likelihood.steps=2",
              f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    runs = tmp_path / "lightning_logs"
    val = json.loads((runs / "exact_validate_0" / "metrics.json").read_text())["metrics"]
    test = json.loads((runs / "exact_test_0" / "metrics.json").read_text())["metrics"]
    assert val["val/samples/kl"] != test["test/samples/kl"] and val["val/samples/kl_floor"] != test["test/samples/kl_floor"]
    for m, p in ((val, "val"), (test, "test")):  # the exact model: within the noise either way
        assert abs(m[f"{p}/samples/kl_excess"]) < 4 * excess_noise(256, 600)


def test_a_class_named_on_the_command_line_says_what_it_kept_from_the_one_it_replaced():
    q = str(QUICKSTART)
    notes = check_config(["fit", "--config", q, *CAUCHY], ROOTS)
    assert len(notes) == 1 and "lengthscale=4.0" in notes[0] and "--data.init_args.temporal.init_args.lengthscale" in notes[0]
    assert check_config(["fit", "--config", q, *CAUCHY, "--data.init_args.temporal.init_args.lengthscale=2"], ROOTS) == []
    assert "steps=25 (its default: 100)" in check_config(["fit", "--config", q, "--model.sampler={class_path: Heun}"],
                                                         ROOTS)[0]  # fmt: skip
    assert check_config(["fit", "--config", q, "--model.sampler={class_path: Heun, init_args: {steps: 8}}"], ROOTS) == []
    assert check_config(["fit", "--config", q, "--data.init_args.temporal=PoweredExponential"], ROOTS) == []  # same class
    assert check_config(["fit", "--config", q, "--model.denoiser=ExactDenoiser"], ROOTS) == []  # its schedule: meant
    assert check_config(["fit", "--config", q, "--data=ArrayDataModule", "--data.init_args.paths=x.npy"], ROOTS) == []
    # files stacked on one another mean to keep what they do not set (trained.yaml keeps width 64)
    assert check_config(["fit", "--config", q, "--config", str(QUICKSTART.parent / "conditional" / "trained.yaml")],
                        ROOTS) == []  # fmt: skip


def test_against_a_fitted_reference_the_verdict_never_advises_training():
    from stdiff.callbacks.summary import summary

    results = {"val/samples/kl": 114.3, "val/samples/kl_floor": 8.78, "val/samples/kl_excess": 106.0,
               "val/samples/exact_model_kl_excess": -0.275}  # fmt: skip
    text = summary(results, "fit", 256, 2000, "lightning_logs/version_3", exact_truth=False, step=3000)
    said = text[text.index("verdict:") :]
    assert said.startswith("verdict: far from the fitted Gaussian reference (KL excess 106 nats") and "train" not in said
    assert "not its law" in said
