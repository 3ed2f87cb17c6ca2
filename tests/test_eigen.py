"""The eigen-direction statistics (``stdiff.metrics.eigen``): exact floors and noise, their relation
to the full Gaussian-fit KL, the exact model's law through a sampler, planted defects found at
d = 16,384 from 256 samples, and every shipped preset's exact model close to its truth."""

import math

import pytest
import torch
from conftest import CONFIG_ARGS_GAUSSIAN, ROOT
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stdiff.diffusion import ExactDenoiser
from stdiff.kernels import RBF, Matern, PoweredExponential, Separable
from stdiff.metrics import gaussian_fit_kl, pushforward_kl
from stdiff.metrics.eigen import eigen_kl_moments, eigen_statistics, law_eigen_kl, linear_sampler_law
from stdiff.sampling import DDIM, UniPC
from stdiff.schedules import OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP


def stats(gp, x):
    return eigen_statistics(gp, gp.to_eigenbasis(x.double() - gp.mean))


def test_floor_and_noise_are_the_exact_moments_of_exact_samples():
    """Over 3000 sets of 12 exact samples in d = 24, the mean and standard deviation of the
    eigen-direction KL match ``eigen_kl_moments`` within Monte Carlo error; so does the plug-in noise."""
    gp = KroneckerGP(PoweredExponential(2.0), Matern(1.5), frames=6, space_shape=(4,), mean=0.3)
    g = torch.Generator().manual_seed(0)
    values, noises = [], []
    for _ in range(3000):
        s = stats(gp, gp.sample(12, g, dtype=torch.float64))
        values.append(s["eigen_kl"])
        noises.append(s["eigen_kl_noise_own"])
    v = torch.tensor(values, dtype=torch.float64)
    mean, sd = eigen_kl_moments(gp.dim, 12)
    assert abs(v.mean().item() - mean) < 4 * sd / math.sqrt(len(v))
    assert abs(v.std().item() / sd - 1) < 0.06  # the SD of an SD of 3000 draws: about 1.5 %
    assert abs(torch.tensor(noises).pow(2).mean().sqrt().item() / sd - 1) < 0.1  # the plug-in, on average


@settings(max_examples=40, deadline=None)
@given(frames=st.integers(2, 5), h=st.integers(1, 3), w=st.integers(1, 3), separable=st.booleans(),
       scale=st.floats(0.5, 2.0), shift=st.floats(-0.5, 0.5), seed=st.integers(0, 2**31 - 1))  # fmt: skip
@example(frames=2, h=1, w=1, separable=False, scale=1.0, shift=0.0, seed=0)  # shrunk: d = 2 < ten "tenths" (fixed)
def test_eigen_kl_is_the_full_fit_kl_less_a_total_correlation(frames, h, w, separable, scale, shift, seed):
    """For any truth and any samples (here: exact ones scaled and shifted), the eigen-direction KL
    is at most the full Gaussian-fit KL (the difference is the fit's total correlation in the
    eigenbasis, >= 0), and equals it when the samples' covariance is diagonal there."""
    spatial = Separable([Matern(1.5, 1.5), RBF(1.0)]) if separable else Matern(1.2, 2.5)
    gp = KroneckerGP(PoweredExponential(2.0), spatial, frames=frames, space_shape=(h, w), nugget=0.01)
    n = 3 * gp.dim + 5
    x = gp.mean + scale * (gp.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64) - gp.mean) + shift
    s = stats(gp, x)
    full = gaussian_fit_kl(x, gp.mean, gp.covariance())
    assert s["eigen_kl"] <= full + 1e-9 * max(1.0, full)
    # samples whose eigen-coordinates are exactly uncorrelated: the two KLs agree
    y = gp.to_eigenbasis(x - gp.mean).reshape(n, -1)
    y = y - y.mean(0)
    q, _ = torch.linalg.qr(y)  # orthonormal columns: Ĉ diagonal in the eigenbasis
    white = gp.from_eigenbasis((q * y.std(0) * math.sqrt(n - 1)).reshape(n, gp.frames, -1)) + gp.mean
    assert stats(gp, white)["eigen_kl"] == pytest.approx(gaussian_fit_kl(white, gp.mean, gp.covariance()), rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("sampler", [UniPC(steps=6), UniPC(steps=25), DDIM(steps=10)], ids=["unipc6", "unipc25", "ddim10"])
@pytest.mark.parametrize("separable", [True, False])
def test_the_exact_models_law_from_two_draws_is_the_pushforward_kl(sampler, separable):
    """``linear_sampler_law`` (two one-sample draws) gives the exact model's KL through a
    deterministic sampler exactly: ``pushforward_kl`` (d + 1 draws, dense) agrees to 1e-8."""
    spatial = Separable([Matern(2.0, 1.5)] * 2) if separable else Matern(2.0, 2.5)
    gp = KroneckerGP(PoweredExponential(3.0), spatial, frames=4, space_shape=(3, 3), mean=0.2)
    schedule = OrnsteinUhlenbeck(t_min=1e-3, t_max=12.0)
    exact = ExactDenoiser.from_gp(gp, schedule)
    law = linear_sampler_law(gp, sampler, exact)
    dense = pushforward_kl(lambda z: sampler.sample(exact, z.shape, dtype=torch.float64, noise=z), gp)
    assert law_eigen_kl(gp, *law) == pytest.approx(dense, rel=1e-8, abs=1e-10)


def test_a_stochastic_sampler_has_no_linear_law():
    gp = KroneckerGP(PoweredExponential(3.0), None, frames=4, space_shape=(2,))
    exact = ExactDenoiser.from_gp(gp, OrnsteinUhlenbeck(t_min=1e-3, t_max=12.0))
    assert linear_sampler_law(gp, DDIM(steps=10, eta=1.0), exact) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_defects_are_found_at_d_16384_from_256_samples(seed):
    """d = 16,384, n = 256: exact samples raise no flag (every z, the excess's included, within 3);
    variance 5 % high in the smallest tenth of the eigen-directions, a temporal lengthscale 10 %
    long and a per-frame mean shift of ±0.05 (or 0.05 everywhere) are each found beyond 3 noises by
    the statistic meant for them (``python -m stdiff.bench eigen_checks``: medians over 5 seeds
    6.9, 48, 420 and 12 noises)."""
    from stdiff.bench.eigen_checks import defect_truth, planted

    gp, n = defect_truth(), 256
    x = gp.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    s = stats(gp, x)
    assert abs(s["eigen_kl_excess"]) <= 3 * s["eigen_kl_noise"]
    assert max(abs(s[f"eigen_decile{k}/z"]) for k in range(10)) <= 3 and abs(s["frame_mean_z"]) <= 3
    assert stats(gp, planted(gp, x, "variance", seed))["eigen_decile0/z"] > 3
    s = stats(gp, planted(gp, x, "lengthscale", seed))
    assert s["eigen_kl_excess"] > 10 * s["eigen_kl_noise"]
    assert stats(gp, planted(gp, x, "frame_shift", seed))["frame_mean_z"] > 3
    assert stats(gp, planted(gp, x, "shift", seed))["frame_mean_z"] > 3


@pytest.mark.parametrize("configs", CONFIG_ARGS_GAUSSIAN, ids=[str(c[-1].name) for c in CONFIG_ARGS_GAUSSIAN])
def test_every_presets_exact_model_reaches_close_through_its_own_sampler(configs):
    """Every shipped preset with a known truth: the exact model through the preset's own sampler,
    steps and t_min is within "close" (0.01 nats per dimension) of the truth, exactly (a Gaussian
    with a deterministic sampler, ``linear_sampler_law``) or by the early-stopping KL (a mixture, a
    stochastic sampler)."""
    from stdiff.callbacks.verdicts import CLOSE_PER_DIM
    from stdiff.cli import StdiffCLI
    from stdiff.metrics import early_stopping_kl, planned_endpoint

    cli = StdiffCLI(args=[a for c in configs for a in ("--config", str(c))] + ON_CPU_IF_GPU(configs), run=False)
    truth, model = cli.datamodule.truth, cli.model
    if truth is None:
        pytest.skip(f"{type(cli.datamodule).__name__} has no closed-form truth")
    truth = truth.simplified()
    close = CLOSE_PER_DIM * truth.dim
    law = linear_sampler_law(truth, model.sampler, ExactDenoiser.from_gp(truth, model.schedule)) if truth.is_gaussian else None
    if law is not None:
        kl = law_eigen_kl(truth, *law)
    else:  # a mixture, or a stochastic sampler: what stopping at t_min costs
        t0 = torch.tensor(model.schedule.t_min, dtype=torch.float64)
        kl = early_stopping_kl(truth, model.schedule.alpha(t0).item(), model.schedule.sigma(t0).item(),
                               planned_endpoint(model.sampler, truth, model.schedule))
    assert kl <= close, f"{configs[-1].name}: the exact model is {kl:.3g} nats from the truth, above close ({close:.3g})"


def ON_CPU_IF_GPU(configs):
    from test_cli import ON_CPU

    return ON_CPU if any("gpu" in c.parts for c in configs) else []


@pytest.mark.slow
def test_the_video_presets_documented_cpu_command_trains_and_gives_a_verdict(tmp_path):
    """The command in configs/video.yaml's opening comment, as written: 16 × 64 × 64 trains and
    validates on the CPU, and the summary prints the eigen-direction KL, the exact model's floor and
    a verdict (about 2.5 minutes on 2 cores)."""
    import subprocess
    import sys

    line = next(x for x in (ROOT / "configs" / "video.yaml").read_text().splitlines() if "stdiff fit" in x)
    args = line.split("stdiff fit", 1)[1].replace("configs/video.yaml", str(ROOT / "configs" / "video.yaml")).split()
    done = subprocess.run([sys.executable, "-m", "stdiff", "fit", *args, f"--trainer.default_root_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eigen KL excess" in done.stdout and "exact model" in done.stdout and "verdict:" in done.stdout
